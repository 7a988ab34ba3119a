//! Entry points of re-encryption migrations: `CALL credcrypt.reencrypt_column` (PL/pgSQL in
//! sql/migrate.sql, so that it can COMMIT after every batch) calls these. The work is in
//! [`crate::migrate`].

use pgrx::prelude::*;

use crate::migrate::{batch, run, sources};
use crate::postgres::relation::leaves;

/// Whether `value` still needs work to be on `target` (a key reference) at `version`.
#[pg_extern(immutable, parallel_safe, strict, name = "_reencrypt_needed")]
fn reencrypt_needed(value: &str, target: &str, version: &str) -> bool {
    sources::needed(value, target, version)
}

/// Where a stored value comes from, as one short text (see [`sources::source_of`]).
#[pg_extern(immutable, parallel_safe, strict, name = "_value_source")]
fn value_source(value: &str) -> String {
    sources::source_of(value)
}

/// `_reencrypt_prepare(tbl, col, target_key, dry_run)`: starts a run ([`run::prepare`]).
#[pg_extern(volatile, name = "_reencrypt_prepare")]
#[search_path(pg_catalog, pg_temp)]
pub(crate) fn reencrypt_prepare(
    tbl: pg_sys::Oid,
    col: &str,
    target_key: Option<&str>,
    dry_run: bool,
) -> TableIterator<'static, (name!(run_id, i64), name!(total, i64))> {
    TableIterator::once(run::prepare(tbl, col, target_key, dry_run, None))
}

/// `_reencrypt_start(tbl, col, target_key, dry_run, context_format)`: starts a run, also on a
/// column an application encrypts itself with `context_format` ([`run::prepare`]).
#[pg_extern(volatile, name = "_reencrypt_start")]
#[search_path(pg_catalog, pg_temp)]
pub(crate) fn reencrypt_start(
    tbl: pg_sys::Oid,
    col: &str,
    target_key: Option<&str>,
    dry_run: bool,
    context_format: Option<&str>,
) -> TableIterator<'static, (name!(run_id, i64), name!(total, i64))> {
    TableIterator::once(run::prepare(tbl, col, target_key, dry_run, context_format))
}

/// The designations a run works on, for the procedure's loop ([`run::run_bindings`]).
#[pg_extern(stable, name = "_reencrypt_bindings")]
#[search_path(pg_catalog, pg_temp)]
pub(crate) fn reencrypt_bindings(run_id: i64) -> TableIterator<'static, (name!(binding_id, String),)> {
    TableIterator::new(run::run_bindings(run_id).into_iter().map(|b| (b,)))
}

/// The leaf tables of a protected table, for the procedure's loop.
#[pg_extern(stable, name = "_reencrypt_leaves")]
#[search_path(pg_catalog, pg_temp)]
pub(crate) fn reencrypt_leaves(tbl: pg_sys::Oid) -> TableIterator<'static, (name!(leaf, pg_sys::Oid),)> {
    TableIterator::new(leaves(tbl).into_iter().map(|(o, _)| (o,)))
}

/// `_reencrypt_batch(run_id, leaf, binding_id, after, batch_size)` (the procedure of 0.1.0):
/// one batch, errors raised as they happen.
#[pg_extern(volatile, name = "_reencrypt_batch")]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)] // the row type is spelled out for pgrx's SQL generation
pub(crate) fn reencrypt_batch(
    run_id: i64,
    leaf: pg_sys::Oid,
    binding_id: &str,
    after: &str,
    batch_size: i32,
) -> TableIterator<
    'static,
    (name!(next_after, String), name!(rows_seen, i32), name!(changed, i32), name!(failed, i32), name!(finished, bool)),
> {
    let b = batch::batch(run_id, leaf, binding_id, after, batch_size);
    TableIterator::once((b.next, b.seen, b.changed, b.failed, b.finished))
}

/// `_reencrypt_step(run_id, leaf, binding_id, after, batch_size)`: one batch in a
/// subtransaction ([`batch::step`]); a failure comes back as columns, for the procedure to
/// commit the run's state and raise it.
#[pg_extern(volatile, name = "_reencrypt_step")]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)] // the row type is spelled out for pgrx's SQL generation
pub(crate) fn reencrypt_step(
    run_id: i64,
    leaf: pg_sys::Oid,
    binding_id: &str,
    after: &str,
    batch_size: i32,
) -> TableIterator<
    'static,
    (
        name!(next_after, String),
        name!(rows_seen, i32),
        name!(changed, i32),
        name!(failed, i32),
        name!(finished, bool),
        name!(error_code, Option<String>),
        name!(error_message, Option<String>),
        name!(error_detail, Option<String>),
        name!(error_hint, Option<String>),
    ),
> {
    match batch::step(run_id, leaf, binding_id, after, batch_size) {
        Ok(b) => TableIterator::once((b.next, b.seen, b.changed, b.failed, b.finished, None, None, None, None)),
        Err(e) => {
            TableIterator::once((after.to_owned(), 0, 0, 0, true, Some(e.sqlstate), Some(e.message), e.detail, e.hint))
        }
    }
}

/// Values of the designation in `leaf` that still need work (failures of this run excluded).
#[pg_extern(volatile, name = "_reencrypt_remaining")]
#[search_path(pg_catalog, pg_temp)]
pub(crate) fn reencrypt_remaining(run_id: i64, leaf: pg_sys::Oid, binding_id: &str) -> i64 {
    run::remaining(run_id, leaf, binding_id)
}

/// Closes a run and returns its summary line (the procedure of 0.1.0).
#[pg_extern(volatile, name = "_reencrypt_finish")]
#[search_path(pg_catalog, pg_temp)]
pub(crate) fn reencrypt_finish(run_id: i64) -> String {
    run::close(run_id).summary
}

/// Closes a run ([`run::close`]): the final verification count, the summary, and whether every
/// value is now on the target (always true for a dry run).
#[pg_extern(volatile, name = "_reencrypt_close")]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)] // the row type is spelled out for pgrx's SQL generation
pub(crate) fn reencrypt_close(
    run_id: i64,
) -> TableIterator<
    'static,
    (name!(summary, String), name!(complete, bool), name!(unreadable, i64), name!(remaining, i64)),
> {
    let c = run::close(run_id);
    TableIterator::once((c.summary, c.complete, c.unreadable, c.remaining))
}
