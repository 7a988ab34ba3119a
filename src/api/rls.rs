//! Entry points of the row-level-security helper: `enable_owner_rls`, `disable_owner_rls`,
//! `set_owner`, and the two functions its policies call. The work is in [`crate::rls`].

use pgrx::prelude::*;

use crate::rls;

/// True only while one of credcrypt's maintenance routines works on table `tbl` in this
/// backend, as the role it runs them as. Used by the policies of `enable_owner_rls` (each
/// passes its own table, so other tables stay closed even to code that runs during
/// maintenance); it cannot be switched on from SQL.
#[pg_extern(volatile, parallel_unsafe, strict, name = "_maintenance_active")]
fn maintenance_active(tbl: pg_sys::Oid) -> bool {
    crate::postgres::scope::maintenance_active(tbl)
}

/// The owner an `enable_owner_rls` policy compares with: the setting's value for this
/// transaction, or NULL when it is unset or empty (so that no row matches: fail closed).
#[pg_extern(stable, parallel_safe, strict, name = "_owner_setting")]
fn owner_setting(setting: &str) -> Option<String> {
    rls::owner_setting(setting)
}

/// `enable_owner_rls(tbl, owner_column, setting)` of 0.1.0 (returns nothing).
#[pg_extern(volatile, name = "_enable_owner_rls")]
#[search_path(pg_catalog, pg_temp)]
fn enable_owner_rls_impl(tbl: pg_sys::Oid, owner_column: &str, setting: &str) {
    rls::enable(tbl, owner_column, setting);
}

/// `enable_owner_rls(tbl, owner_column, setting)` — SQL wrapper `credcrypt.enable_owner_rls`.
/// Returns the policies it (re)created and whether row-level security was already enabled and
/// forced before this call.
#[pg_extern(volatile, name = "_owner_rls_on")]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)] // the row type is spelled out for pgrx's SQL generation
pub(crate) fn enable_owner_rls_v2(
    tbl: pg_sys::Oid,
    owner_column: &str,
    setting: &str,
) -> TableIterator<'static, (name!(policies, Vec<String>), name!(was_enabled, bool), name!(was_forced, bool))> {
    let (had_rls, had_force) = rls::enable(tbl, owner_column, setting);
    TableIterator::once((rls::POLICIES.iter().map(|(p, _)| (*p).to_owned()).collect(), had_rls, had_force))
}

/// `disable_owner_rls(tbl)` — SQL wrapper `credcrypt.disable_owner_rls`. Undoes exactly what
/// `enable_owner_rls` did: drops its policies and restores the table's previous RLS flags.
#[pg_extern(volatile, name = "_disable_owner_rls")]
#[search_path(pg_catalog, pg_temp)]
fn disable_owner_rls_impl(tbl: pg_sys::Oid) {
    rls::disable(tbl);
}

/// `disable_owner_rls(tbl)` returning how many policies it dropped and the table's row-level
/// security flags afterwards (as they were before the first `enable_owner_rls`).
#[pg_extern(volatile, name = "_owner_rls_off")]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)] // the row type is spelled out for pgrx's SQL generation
pub(crate) fn disable_owner_rls_v2(
    tbl: pg_sys::Oid,
) -> TableIterator<'static, (name!(policies_dropped, i32), name!(row_security, bool), name!(forced, bool))> {
    TableIterator::once(rls::disable(tbl))
}

/// Sets the owner setting for the current transaction only (`set_config(setting, value, true)`):
/// what a NestJS interceptor or a Prisma `$transaction` calls first. Outside a transaction
/// block it would last for this one statement only, so it warns.
#[pg_extern(volatile)]
fn set_owner(value: Option<&str>, setting: default!(&str, "'app.current_user_id'")) -> Option<String> {
    rls::set_owner(value, setting)
}
