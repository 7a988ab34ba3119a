//! Tables rewritten in this transaction (the `table_rewrite` event): `ALTER TABLE … ALTER
//! COLUMN … TYPE … USING` rewrites every row without firing row triggers, so the DDL check
//! at `ddl_command_end` scans a rewritten protected table for values that are not
//! ciphertexts (sql/protect.sql, `credcrypt._on_ddl_end`).

use std::cell::RefCell;
use std::collections::HashSet;

use pgrx::pg_sys;

thread_local! {
    static REWRITTEN: RefCell<HashSet<u32>> = RefCell::new(HashSet::new());
}

/// Records that `relid` is being rewritten.
pub(crate) fn note(relid: pg_sys::Oid) {
    REWRITTEN.with(|r| r.borrow_mut().insert(relid.to_u32()));
}

/// Whether `relid` was rewritten in this transaction.
pub(crate) fn rewritten(relid: pg_sys::Oid) -> bool {
    REWRITTEN.with(|r| r.borrow().contains(&relid.to_u32()))
}

/// Forgets the list when the transaction ends (never raises).
fn forget() {
    REWRITTEN.with(|r| {
        if let Ok(mut r) = r.try_borrow_mut() {
            r.clear();
        }
    });
}

/// Registers the end-of-transaction cleanup (from `_PG_init`).
pub fn init() {
    crate::postgres::xact::at_transaction_end(forget);
}
