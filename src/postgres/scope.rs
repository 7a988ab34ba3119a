//! Backend-local switches that only the extension's own code can set, around its own
//! statements: the maintenance path through row-level security, and the protection trigger's
//! bypass for writes the extension has already encrypted and verified.
//!
//! Neither is a setting: no `SET`, `set_config`, `ALTER ROLE … SET`, connection option or
//! `SET ROLE` reaches them. Both are scoped to one table, and the maintenance path also to one
//! role (the table's owner, as whom the extension runs maintenance statements): code that
//! happens to run meanwhile as somebody else — a `SECURITY DEFINER` function called by a
//! trigger, say — does not get through.

use std::cell::Cell;

use pgrx::pg_sys;

thread_local! {
    /// The table under maintenance (its OID) and the role maintenance runs as, or (0, 0).
    static MAINTENANCE: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
    /// The table (the root of a partition tree) whose writes the extension makes itself, or 0.
    static BYPASS: Cell<u32> = const { Cell::new(0) };
}

/// Restores a cell's previous value when dropped (also when an error unwinds).
struct Reset<T: Copy + 'static>(&'static std::thread::LocalKey<Cell<T>>, T);

impl<T: Copy + 'static> Drop for Reset<T> {
    fn drop(&mut self) {
        let v = self.1;
        self.0.with(|c| c.set(v));
    }
}

/// Runs `f` as the owner of `relid` (security-restricted, search path pinned) with the
/// maintenance path open for that table and that role only.
pub(crate) fn maintain<R>(relid: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    crate::postgres::guard::as_table_owner(relid, || {
        let role = crate::postgres::guard::current_user();
        let _reset = Reset(&MAINTENANCE, MAINTENANCE.with(|m| m.replace((relid.to_u32(), role.to_u32()))));
        f()
    })
}

/// Whether the maintenance path is open for table `relid` and the current user.
pub(crate) fn maintenance_active(relid: pg_sys::Oid) -> bool {
    let (table, role) = MAINTENANCE.with(Cell::get);
    table != 0 && table == relid.to_u32() && role == crate::postgres::guard::current_user().to_u32()
}

/// Runs `f` with the protection trigger switched off for writes to `table` (and its
/// partitions) in this backend.
pub(crate) fn with_bypass<R>(table: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let _reset = Reset(&BYPASS, BYPASS.with(|b| b.replace(table.to_u32())));
    f()
}

/// The table whose writes bypass the protection trigger, or 0.
pub(crate) fn bypassed() -> u32 {
    BYPASS.with(Cell::get)
}
