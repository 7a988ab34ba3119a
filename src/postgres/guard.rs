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

pub(crate) use crate::postgres::restricted::{as_role_restricted, current_user, pinned_search_path};

/// The owner of relation `relid`; an error when it does not exist.
pub(crate) fn relation_owner(relid: pg_sys::Oid) -> pg_sys::Oid {
    let owner = pinned_search_path(|| {
        crate::postgres::spi::one::<pg_sys::Oid>(
            "SELECT relowner FROM pg_catalog.pg_class WHERE oid OPERATOR(pg_catalog.=) $1",
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

thread_local! {
    /// The catalog's owner, by the OID of the pg_credcrypt extension it was read for: a
    /// positive answer only, and dropped when the extension is re-created (new OID).
    static CATALOG_OWNER: std::cell::Cell<(pg_sys::Oid, pg_sys::Oid)> =
        const { std::cell::Cell::new((pg_sys::InvalidOid, pg_sys::InvalidOid)) };
}

/// The role that owns `credcrypt.protected_columns` (the extension's catalog), cached per
/// extension OID; an error when there is no catalog.
pub(crate) fn catalog_owner() -> pg_sys::Oid {
    // SAFETY: a syscache lookup by name; missing_ok.
    let ext = unsafe { pg_sys::get_extension_oid(c"pg_credcrypt".as_ptr(), true) };
    let (cached_ext, cached_owner) = CATALOG_OWNER.with(std::cell::Cell::get);
    if ext != pg_sys::InvalidOid && ext == cached_ext {
        return cached_owner;
    }
    let owner = lookup_catalog_owner();
    if ext != pg_sys::InvalidOid {
        CATALOG_OWNER.with(|c| c.set((ext, owner)));
    }
    owner
}

fn lookup_catalog_owner() -> pg_sys::Oid {
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
