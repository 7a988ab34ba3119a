//! Privilege and name-resolution guards: the one place where pg_credcrypt changes who it runs
//! as, or which `search_path` its own statements see.
//!
//! - [`pinned_search_path`]: `search_path = pg_catalog, pg_temp` for the statements `f` runs,
//!   so no function, operator, type or relation of a caller's schema (or a temporary one) is
//!   picked up by name.
//! - [`as_catalog_owner`]: the extension's catalog writes, as the role that owns
//!   `credcrypt.protected_columns` (the role that created the extension).
//! - [`as_table_owner`]: statements on a user table that the extension runs for an
//!   administrator (maintenance scans and writes), as the table's owner — the way PostgreSQL
//!   runs VACUUM, ANALYZE and REINDEX: whatever the table's own triggers, rules, index
//!   expressions or policies execute runs with the owner's rights, never the administrator's.
//!
//! Both identity switches set `SECURITY_RESTRICTED_OPERATION` (no `SET ROLE`, no temporary
//! objects, no session-lasting changes from inside) and pin the search path. The caller's
//! identity and settings are restored afterwards; on error, PostgreSQL's (sub)transaction abort
//! restores them.

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode::*;

use crate::errors::fail;

/// Restores a nested GUC level (and optionally an identity) when dropped.
struct Restore {
    level: std::ffi::c_int,
    identity: Option<(pg_sys::Oid, std::ffi::c_int)>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        // SAFETY: pops the GUC nest level opened below and restores the identity saved below,
        // on the main thread, in LIFO order with any inner guard.
        unsafe {
            pg_sys::AtEOXact_GUC(true, self.level);
            if let Some((user, ctx)) = self.identity {
                pg_sys::SetUserIdAndSecContext(user, ctx);
            }
        }
    }
}

/// Opens a GUC nest level with `search_path = pg_catalog, pg_temp`.
fn pin() -> std::ffi::c_int {
    // SAFETY: NewGUCNestLevel/set_config_option are the documented way to change a setting
    // for a nested scope (as fmgr does for a function's SET clause); undone by `Restore`.
    unsafe {
        let level = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        level
    }
}

/// Runs `f` with `search_path = pg_catalog, pg_temp`.
pub(crate) fn pinned_search_path<R>(f: impl FnOnce() -> R) -> R {
    let _restore = Restore { level: pin(), identity: None };
    f()
}

/// Runs `f` as `role`, inside a security-restricted operation, with the search path pinned.
pub(crate) fn as_role_restricted<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    if role == pg_sys::InvalidOid {
        fail(ERRCODE_INTERNAL_ERROR, "pg_credcrypt: no role to run as", None, "Report this as a bug.");
    }
    let (mut user, mut ctx) = (pg_sys::InvalidOid, 0);
    // SAFETY: reads the backend's current identity; restored by the guard.
    unsafe { pg_sys::GetUserIdAndSecContext(&mut user, &mut ctx) };
    // The identity is restored after the GUC level is popped (field order of the guard is
    // irrelevant: both happen in one Drop, GUC first).
    let level = pin();
    let _restore = Restore { level, identity: Some((user, ctx)) };
    // SAFETY: switches the current user for the scope of the guard.
    unsafe {
        pg_sys::SetUserIdAndSecContext(
            role,
            ctx | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION) as std::ffi::c_int,
        );
    }
    f()
}

/// The current user.
pub(crate) fn current_user() -> pg_sys::Oid {
    // SAFETY: reads the backend's current user id.
    unsafe { pg_sys::GetUserId() }
}

/// The owner of relation `relid`; an error when it does not exist.
pub(crate) fn relation_owner(relid: pg_sys::Oid) -> pg_sys::Oid {
    let owner = pinned_search_path(|| {
        crate::postgres::spi::one::<pg_sys::Oid>(
            "SELECT relowner FROM pg_catalog.pg_class WHERE oid = $1",
            &[relid.into()],
        )
    });
    match owner {
        Ok(Some(o)) if o != pg_sys::InvalidOid => o,
        _ => fail(
            ERRCODE_UNDEFINED_TABLE,
            "table does not exist",
            None,
            "Pass an existing table, e.g. 'public.accounts'.",
        ),
    }
}

/// The role that owns `credcrypt.protected_columns` (the extension's catalog).
pub(crate) fn catalog_owner() -> pg_sys::Oid {
    let owner = pinned_search_path(|| {
        crate::postgres::spi::one::<pg_sys::Oid>(
            "SELECT c.relowner FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
              WHERE n.nspname OPERATOR(pg_catalog.=) 'credcrypt' AND c.relname OPERATOR(pg_catalog.=) 'protected_columns'",
            &[],
        )
    });
    match owner {
        Ok(Some(o)) if o != pg_sys::InvalidOid => o,
        _ => fail(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "pg_credcrypt's catalog credcrypt.protected_columns was not found",
            None,
            "CREATE EXTENSION pg_credcrypt in this database (or ALTER EXTENSION pg_credcrypt UPDATE).",
        ),
    }
}

/// Runs `f` as the owner of the extension's catalog (see the module documentation).
pub(crate) fn as_catalog_owner<R>(f: impl FnOnce() -> R) -> R {
    as_role_restricted(catalog_owner(), f)
}

/// Runs `f` as the owner of table `relid` (see the module documentation).
pub(crate) fn as_table_owner<R>(relid: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    as_role_restricted(relation_owner(relid), f)
}
