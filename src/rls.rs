//! The maintenance path through row-level security.
//!
//! Policies created by `credcrypt.enable_owner_rls` let a row through when
//! `credcrypt._maintenance_active()` is true. That function reads a backend-local Rust variable
//! which only [`maintenance`] sets, around the extension's own statements (the empty-column
//! check of `protect_column`, `unprotect_column … decrypt_existing`, the re-encryption
//! procedure). It is not a GUC: no `SET`, `set_config`, `ALTER ROLE … SET` or connection
//! option can reach it, so a user cannot open the path. The administrative functions that use
//! it are executable by `credcrypt_admin` only and require ownership of the table.

use std::cell::Cell;

use pgrx::prelude::*;

thread_local! {
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the maintenance path open for this backend; closes it afterwards, also when
/// `f` raises an error.
pub(crate) fn maintenance<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            ACTIVE.with(|a| a.set(self.0));
        }
    }
    let _reset = Reset(ACTIVE.with(|a| a.replace(true)));
    f()
}

/// True only while one of credcrypt's maintenance routines runs in this backend. Used by the
/// policies of `enable_owner_rls`; it cannot be switched on from SQL.
#[pg_extern(volatile, parallel_unsafe, name = "_maintenance_active")]
fn maintenance_active() -> bool {
    ACTIVE.with(Cell::get)
}
