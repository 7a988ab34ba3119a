//! The extension's own SQL statements, through SPI.
//!
//! Every helper here runs its statement with `search_path = pg_catalog, pg_temp`
//! ([`crate::postgres::restricted::pinned_search_path`]): whoever calls the extension, and whatever
//! schemas or temporary objects are on their path, the statement's unqualified names resolve
//! to PostgreSQL's own objects. (The statements also qualify what they use; the pin is the
//! second line.)
//!
//! Read-only helpers ([`one`], [`two`], [`three`], [`rows`]) also work on a hot standby:
//! pgrx's `Spi::get_one_with_args` and friends first mark the transaction as writing, which
//! assigns a transaction id — impossible during recovery. [`rows_latest`] reads with
//! PostgreSQL's latest snapshot instead of the transaction's, for catalog rows that must be
//! current even inside a REPEATABLE READ transaction. [`run`] and [`rows_mut`] write.

use pgrx::datum::{DatumWithOid, FromDatum, IntoDatum};
use pgrx::pg_sys;
use pgrx::spi::{Spi, SpiError, SpiHeapTupleData, SpiResult};

use crate::postgres::restricted::pinned_search_path;

/// Raises the error of one of the extension's own statements that failed (a bug, or a catalog
/// that is not what the extension made: `XX000`).
pub(crate) fn fail(e: SpiError) -> ! {
    crate::errors::fail(
        pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("pg_credcrypt: catalog query failed: {e}"),
        None,
        "Report this as a bug.",
    )
}

/// [`one`], raising [`fail`] on error.
pub(crate) fn get<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid<'_>]) -> Option<T> {
    one::<T>(sql, args).unwrap_or_else(|e| fail(e))
}

/// [`run`], raising [`fail`] on error.
pub(crate) fn exec(sql: &str, args: &[DatumWithOid<'_>]) {
    run(sql, args).unwrap_or_else(|e| fail(e));
}

fn none_if_empty<T>(r: SpiResult<T>, empty: T) -> SpiResult<T> {
    match r {
        Err(SpiError::InvalidPosition) => Ok(empty),
        r => r,
    }
}

/// The first column of the first row of a read-only query.
pub(crate) fn one<A: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid<'_>]) -> SpiResult<Option<A>> {
    pinned_search_path(|| {
        Spi::connect(|c| none_if_empty(c.select(sql, Some(1), args).and_then(|t| t.first().get_one::<A>()), None))
    })
}

/// The first two columns of the first row of a read-only query.
pub(crate) fn two<A: FromDatum + IntoDatum, B: FromDatum + IntoDatum>(
    sql: &str,
    args: &[DatumWithOid<'_>],
) -> SpiResult<(Option<A>, Option<B>)> {
    pinned_search_path(|| {
        Spi::connect(|c| {
            none_if_empty(c.select(sql, Some(1), args).and_then(|t| t.first().get_two::<A, B>()), (None, None))
        })
    })
}

/// The first three columns of the first row of a read-only query.
pub(crate) fn three<A: FromDatum + IntoDatum, B: FromDatum + IntoDatum, C: FromDatum + IntoDatum>(
    sql: &str,
    args: &[DatumWithOid<'_>],
) -> SpiResult<(Option<A>, Option<B>, Option<C>)> {
    pinned_search_path(|| {
        Spi::connect(|c| {
            none_if_empty(
                c.select(sql, Some(1), args).and_then(|t| t.first().get_three::<A, B, C>()),
                (None, None, None),
            )
        })
    })
}

/// Every row of a read-only query, each turned into a `T` by `row`.
pub(crate) fn rows<T>(
    sql: &str,
    args: &[DatumWithOid<'_>],
    mut row: impl FnMut(&SpiHeapTupleData<'_>) -> SpiResult<T>,
) -> SpiResult<Vec<T>> {
    pinned_search_path(|| {
        Spi::connect(|c| {
            let mut out = Vec::new();
            for r in c.select(sql, None, args)? {
                out.push(row(&r)?);
            }
            Ok(out)
        })
    })
}

/// Every row of a statement that writes or locks (`UPDATE … RETURNING`, `SELECT … FOR UPDATE`).
pub(crate) fn rows_mut<T>(
    sql: &str,
    args: &[DatumWithOid<'_>],
    mut row: impl FnMut(&SpiHeapTupleData<'_>) -> SpiResult<T>,
) -> SpiResult<Vec<T>> {
    pinned_search_path(|| {
        Spi::connect_mut(|c| {
            let mut out = Vec::new();
            for r in c.update(sql, None, args)? {
                out.push(row(&r)?);
            }
            Ok(out)
        })
    })
}

/// Runs a statement that writes.
pub(crate) fn run(sql: &str, args: &[DatumWithOid<'_>]) -> SpiResult<()> {
    pinned_search_path(|| Spi::run_with_args(sql, args))
}

/// SPI's three argument arrays (types, values, nulls as `' '`/`'n'`) from (type, value) pairs.
fn spi_args(
    args: &[(pg_sys::Oid, Option<pg_sys::Datum>)],
) -> (Vec<pg_sys::Oid>, Vec<pg_sys::Datum>, Vec<std::ffi::c_char>) {
    let types = args.iter().map(|a| a.0).collect();
    let values = args.iter().map(|a| a.1.unwrap_or(pg_sys::Datum::from(0))).collect();
    let nulls =
        args.iter().map(|a| if a.1.is_some() { b' ' as std::ffi::c_char } else { b'n' as std::ffi::c_char }).collect();
    (types, values, nulls)
}

/// Runs a data-modifying statement with a **generic** plan: one the planner makes without
/// looking at the parameters' values. For the write-back of a batch (`UPDATE … FROM
/// unnest($1::tid[]) … WHERE t.ctid = v.c`): planned with the values, the 2,000-element arrays
/// look large enough that a hash join over a sequential scan of the whole table seems cheaper
/// than 2,000 tuple-id lookups, and every batch read the whole table (a migration of 100,000
/// rows in batches of 2,000 read it 50 times); the generic plan looks each row up by its tuple
/// id. `args` are (type, value) pairs; `None` is NULL.
pub(crate) fn run_generic(sql: &str, args: &[(pg_sys::Oid, Option<pg_sys::Datum>)]) -> SpiResult<()> {
    let sql = std::ffi::CString::new(sql).map_err(|_| SpiError::SpiError(pgrx::spi::SpiErrorCodes::Argument))?;
    pinned_search_path(|| {
        Spi::connect_mut(|_client| {
            let (mut types, mut values, nulls) = spi_args(args);
            // SAFETY: SPI is connected; the plan is freed below (an ERROR frees it with SPI's
            // memory context); values and nulls have one element per argument type.
            unsafe {
                let plan = pg_sys::SPI_prepare_cursor(
                    sql.as_ptr(),
                    types.len() as std::ffi::c_int,
                    types.as_mut_ptr(),
                    pg_sys::CURSOR_OPT_GENERIC_PLAN as std::ffi::c_int,
                );
                if plan.is_null() {
                    return Err(SpiError::SpiError(pgrx::spi::SpiErrorCodes::Argument));
                }
                let rc = pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), nulls.as_ptr(), false, 0);
                pg_sys::SPI_freeplan(plan);
                if rc < 0 {
                    return Err(SpiError::SpiError(pgrx::spi::SpiErrorCodes::OpUnknown));
                }
                Ok(())
            }
        })
    })
}

/// A row read by [`rows_latest`].
pub(crate) struct LatestRow {
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
}

impl LatestRow {
    /// Column `n` (1-based) as a `T`.
    pub(crate) fn get<T: FromDatum>(&self, n: i32) -> Option<T> {
        let mut isnull = false;
        // SAFETY: tuple and descriptor come from SPI_tuptable of the query just executed and
        // stay valid until SPI_finish; `n` is within the query's column count (the callers'
        // SQL is fixed).
        unsafe {
            let typ = pg_sys::SPI_gettypeid(self.desc, n);
            let d = pg_sys::SPI_getbinval(self.tuple, self.desc, n, &mut isnull);
            T::from_polymorphic_datum(d, isnull, typ)
        }
    }
}

/// Every row of a read-only query run with PostgreSQL's **latest** snapshot (the way
/// referential-integrity checks read): rows committed after this transaction's snapshot was
/// taken are seen, even in REPEATABLE READ or SERIALIZABLE (except in parallel mode, where
/// PostgreSQL allows only the query's snapshot). For the catalog of protected
/// columns, where a stale answer would mean storing plaintext. `args` are (type, value) pairs;
/// `None` is NULL.
pub(crate) fn rows_latest<T>(
    sql: &std::ffi::CStr,
    args: &[(pg_sys::Oid, Option<pg_sys::Datum>)],
    mut row: impl FnMut(&LatestRow) -> T,
) -> SpiResult<Vec<T>> {
    pinned_search_path(|| {
        Spi::connect(|_client| {
            let (mut types, mut values, nulls) = spi_args(args);
            // SAFETY: SPI is connected (Spi::connect); the plan is freed below; the snapshot is
            // PostgreSQL's static latest snapshot, pushed and popped by SPI itself.
            unsafe {
                let plan = pg_sys::SPI_prepare(sql.as_ptr(), types.len() as std::ffi::c_int, types.as_mut_ptr());
                if plan.is_null() {
                    return Err(SpiError::SpiError(pgrx::spi::SpiErrorCodes::Argument));
                }
                // PostgreSQL refuses a new snapshot in parallel mode (a query with a parallel
                // plan, in its leader and workers: "cannot update SecondarySnapshot during a
                // parallel operation"); there the query's own snapshot is used (null: SPI's
                // active one). Only reads run in parallel mode (decryptions, blind index
                // lookups); a row committed after the query began is then not seen, which fails
                // closed (a data key not found), never open.
                let snapshot = if crate::postgres::xact::in_parallel_mode() {
                    std::ptr::null_mut()
                } else {
                    pg_sys::GetLatestSnapshot()
                };
                let rc = pg_sys::SPI_execute_snapshot(
                    plan,
                    values.as_mut_ptr(),
                    nulls.as_ptr(),
                    snapshot,
                    std::ptr::null_mut(),
                    true,
                    false,
                    0,
                );
                if rc != pg_sys::SPI_OK_SELECT as std::ffi::c_int {
                    pg_sys::SPI_freeplan(plan);
                    return Err(SpiError::SpiError(pgrx::spi::SpiErrorCodes::OpUnknown));
                }
                let table = pg_sys::SPI_tuptable;
                let n = pg_sys::SPI_processed as usize;
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    let r = LatestRow { tuple: *(*table).vals.add(i), desc: (*table).tupdesc };
                    out.push(row(&r));
                }
                pg_sys::SPI_freeplan(plan);
                Ok(out)
            }
        })
    })
}
