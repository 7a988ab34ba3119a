//! The search-path pin and the identity switch under every privilege guard: see
//! [`crate::postgres::guard`], which decides *whom* to run as; this module only does the
//! switching (and SPI uses the pin for every statement).

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode::*;

use crate::errors::fail;

/// Restores a nested GUC level (and optionally an identity) when dropped.
///
/// With an identity (code ran as another role, security-restricted), every setting changed
/// inside is undone — also session-level `set_config(…, false)` and `SET` — as PostgreSQL
/// does after VACUUM, ANALYZE and index builds (`AtEOXact_GUC(false, …)`): a table owner's
/// trigger, policy or index function must not leave a `search_path` or an RLS owner setting
/// in the administrator's session. Without one (the extension's own statements, as the
/// caller), only the pin is popped and the statements' own transaction-local settings stay
/// (`set_owner`).
struct Restore {
    level: std::ffi::c_int,
    identity: Option<(pg_sys::Oid, std::ffi::c_int)>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        // SAFETY: pops the GUC nest level opened below and restores the identity saved below,
        // on the main thread, in LIFO order with any inner guard.
        unsafe {
            pg_sys::AtEOXact_GUC(self.identity.is_none(), self.level);
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
