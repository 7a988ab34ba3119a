//! The extension's own catalog as this library finds it: which version of the SQL is
//! installed, and whether a column of a catalog table exists.
//!
//! Between replacing the shared library and `ALTER EXTENSION pg_credcrypt UPDATE`, the new
//! library serves the previous version's SQL (docs/architecture.md, "Library compatibility"):
//! the data path (trigger, encrypt/decrypt, views, policies, audit) works unchanged, and the
//! administrative functions that need the new SQL refuse with a clear error until the update.

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode::*;

use crate::errors::fail;

/// The SQL version this library was built with.
pub(crate) const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The installed version of the extension in this database, if it is installed.
pub(crate) fn installed_version() -> Option<String> {
    crate::postgres::spi::one::<String>(
        "SELECT extversion FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'pg_credcrypt'",
        &[],
    )
    .ok()
    .flatten()
}

/// Refuses (55000) to go on when the installed SQL is older than this library (except inside
/// the extension's own install or update script, which is what brings the SQL up to date).
pub(crate) fn require_current_sql() {
    // SAFETY: reads a backend-global flag set while an extension script runs.
    if unsafe { pg_sys::creating_extension } {
        return;
    }
    match installed_version() {
        Some(v) if v == LIBRARY_VERSION => {}
        v => fail(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "the pg_credcrypt library is version {LIBRARY_VERSION}, its SQL in this database is {}",
                v.as_deref().unwrap_or("not installed")
            ),
            Some("this administrative function needs the SQL of the library's version; encryption, decryption and protected columns keep working meanwhile".into()),
            "Run ALTER EXTENSION pg_credcrypt UPDATE in this database (docs/operations.md, upgrading).",
        ),
    }
}

/// Whether `credcrypt.<table>` has column `column` (looked up in the system caches each time:
/// the answer changes with ALTER EXTENSION … UPDATE).
pub(crate) fn has_column(table: &std::ffi::CStr, column: &std::ffi::CStr) -> bool {
    // SAFETY: catalog cache lookups by name; missing objects answer InvalidOid / 0.
    unsafe {
        let ns = pg_sys::get_namespace_oid(c"credcrypt".as_ptr(), true);
        if ns == pg_sys::InvalidOid {
            return false;
        }
        let rel = pg_sys::get_relname_relid(table.as_ptr(), ns);
        rel != pg_sys::InvalidOid && pg_sys::get_attnum(rel, column.as_ptr()) > 0
    }
}
