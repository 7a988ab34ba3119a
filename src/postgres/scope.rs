//! Backend-local switches that only the extension's own code can set, around its own
//! statements: the maintenance path through row-level security, and the list of values the
//! extension writes itself (already encrypted and verified), which the protection trigger lets
//! through untouched.
//!
//! Neither is a setting: no `SET`, `set_config`, `ALTER ROLE … SET`, connection option or
//! `SET ROLE` reaches them. Both are scoped to one table, and the maintenance path also to one
//! role (the table's owner, as whom the extension runs maintenance statements): code that
//! happens to run meanwhile as somebody else — a `SECURITY DEFINER` function called by a
//! trigger, say — does not get through.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::pg_sys;
use zeroize::Zeroizing;

thread_local! {
    /// The table under maintenance (its OID) and the role maintenance runs as, or (0, 0).
    static MAINTENANCE: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
    /// The table whose protection trigger `protect_column` is creating right now, or 0.
    static PROTECTING: Cell<u32> = const { Cell::new(0) };
    /// The values the extension's current write statement puts into a table, if any.
    static WRITES: RefCell<Option<Rc<Writes>>> = const { RefCell::new(None) };
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

/// Runs `f` (protect_column's CREATE TRIGGER on `relid`) with that announced to the DDL check.
pub(crate) fn protecting<R>(relid: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let _reset = Reset(&PROTECTING, PROTECTING.with(|p| p.replace(relid.to_u32())));
    f()
}

/// Whether `protect_column` is creating the protection trigger of `relid` (for the DDL check;
/// nothing but that statement sets it).
pub(crate) fn protect_in_progress(relid: pg_sys::Oid) -> bool {
    let p = PROTECTING.with(Cell::get);
    p != 0 && p == relid.to_u32()
}

/// Whether the maintenance path is open for table `relid` and the current user.
pub(crate) fn maintenance_active(relid: pg_sys::Oid) -> bool {
    let (table, role) = MAINTENANCE.with(Cell::get);
    table != 0 && table == relid.to_u32() && role == crate::postgres::guard::current_user().to_u32()
}

/// The values one statement of the extension writes: for one designation of one (leaf) table,
/// the exact value each row, by tuple id, is to get. The protection trigger lets such a value
/// through untouched only in that row, for that designation, and only while its bind values are
/// unchanged; everything else — other protected columns of the row, other rows, rows that other
/// triggers insert meanwhile, a value another trigger changed — it protects as usual.
pub(crate) struct Writes {
    /// The table the statement writes (a leaf of a partition tree: `UPDATE ONLY`).
    pub relid: pg_sys::Oid,
    /// The designation whose values are written.
    pub binding_id: String,
    /// Value (and its blind index, for a designation with one) by tuple id (block, offset) of
    /// the row before the update.
    pub values: HashMap<(u32, u16), Announced>,
}

/// One value the extension writes itself, and the blind index that goes with it.
#[derive(Clone)]
pub(crate) struct Announced {
    /// The value to store (a verified ciphertext, or a plaintext being decrypted back).
    pub value: Zeroizing<String>,
    /// Its blind index (None: NULL).
    pub index: Option<Vec<u8>>,
}

/// Runs `f` (the extension's write statement) with `writes` announced to the protection trigger.
pub(crate) fn with_writes<R>(writes: Writes, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Rc<Writes>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            WRITES.with(|w| *w.borrow_mut() = prev);
        }
    }
    let _restore = Restore(WRITES.with(|w| w.replace(Some(Rc::new(writes)))));
    f()
}

/// The value the extension's current statement writes itself into the row at `tid` of `relid`
/// for designation `binding_id`, if it does.
pub(crate) fn own_write(relid: pg_sys::Oid, binding_id: &str, tid: (u32, u16)) -> Option<Announced> {
    WRITES.with(|w| {
        let w = w.borrow();
        let w = w.as_ref()?;
        if w.relid != relid || w.binding_id != binding_id {
            return None;
        }
        w.values.get(&tid).cloned()
    })
}

/// A tuple id in its text form `(block,offset)`.
pub(crate) fn parse_tid(s: &str) -> Option<(u32, u16)> {
    let (b, o) = s.trim().strip_prefix('(')?.strip_suffix(')')?.split_once(',')?;
    Some((b.trim().parse().ok()?, o.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn tuple_ids_parse() {
        assert_eq!(super::parse_tid("(12,3)"), Some((12, 3)));
        assert_eq!(super::parse_tid("(4294967295,65535)"), Some((u32::MAX, u16::MAX)));
        assert_eq!(super::parse_tid("12,3"), None);
        assert_eq!(super::parse_tid("(1,70000)"), None);
    }
}
