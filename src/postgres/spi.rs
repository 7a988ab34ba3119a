//! Read-only SPI queries that also work on a hot standby.
//!
//! pgrx's `Spi::get_one_with_args` and friends first mark the transaction as writing, which
//! assigns a transaction id — impossible during recovery ("cannot assign TransactionIds during
//! recovery"). Every query of the extension that only reads goes through these helpers, which
//! run it read-only; a query with no row answers `None`.

use pgrx::datum::{DatumWithOid, FromDatum, IntoDatum};
use pgrx::spi::{Spi, SpiError, SpiResult};

fn none_if_empty<T>(r: SpiResult<T>, empty: T) -> SpiResult<T> {
    match r {
        Err(SpiError::InvalidPosition) => Ok(empty),
        r => r,
    }
}

/// The first column of the first row of a read-only query.
pub(crate) fn one<A: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid<'_>]) -> SpiResult<Option<A>> {
    Spi::connect(|c| none_if_empty(c.select(sql, Some(1), args).and_then(|t| t.first().get_one::<A>()), None))
}

/// The first two columns of the first row of a read-only query.
pub(crate) fn two<A: FromDatum + IntoDatum, B: FromDatum + IntoDatum>(
    sql: &str,
    args: &[DatumWithOid<'_>],
) -> SpiResult<(Option<A>, Option<B>)> {
    Spi::connect(|c| {
        none_if_empty(c.select(sql, Some(1), args).and_then(|t| t.first().get_two::<A, B>()), (None, None))
    })
}

/// The first three columns of the first row of a read-only query.
pub(crate) fn three<A: FromDatum + IntoDatum, B: FromDatum + IntoDatum, C: FromDatum + IntoDatum>(
    sql: &str,
    args: &[DatumWithOid<'_>],
) -> SpiResult<(Option<A>, Option<B>, Option<C>)> {
    Spi::connect(|c| {
        none_if_empty(c.select(sql, Some(1), args).and_then(|t| t.first().get_three::<A, B, C>()), (None, None, None))
    })
}
