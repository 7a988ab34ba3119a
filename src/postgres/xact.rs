//! One transaction callback and one subtransaction callback for the whole extension: the
//! features that keep backend-local state per transaction (the decrypt audit, the envelope
//! data keys, the trigger's recently produced values) register plain Rust functions here, from
//! `_PG_init`, and the dispatcher calls them in registration order. PostgreSQL sees two
//! callbacks, whatever the number of listeners.
//!
//! Listeners must not raise: a transaction callback that errors during abort turns the abort
//! into a FATAL. They only clear or move backend-local state, and log.

use std::cell::{Cell, RefCell};

use pgrx::pg_guard;
use pgrx::pg_sys;

/// A transaction listener: called with every `XactEvent`.
pub(crate) type XactListener = fn(pg_sys::XactEvent::Type);
/// A subtransaction listener: called with every `SubXactEvent`, the subtransaction's id and
/// its parent's.
pub(crate) type SubXactListener = fn(pg_sys::SubXactEvent::Type, pg_sys::SubTransactionId, pg_sys::SubTransactionId);

thread_local! {
    static XACT: RefCell<Vec<XactListener>> = const { RefCell::new(Vec::new()) };
    static SUBXACT: RefCell<Vec<SubXactListener>> = const { RefCell::new(Vec::new()) };
    static ENDS: RefCell<Vec<fn()>> = const { RefCell::new(Vec::new()) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

fn register_once() {
    if REGISTERED.with(|r| r.replace(true)) {
        return;
    }
    // SAFETY: called from _PG_init on the main thread, once per process (REGISTERED).
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

/// Adds a transaction listener (from `_PG_init`).
pub(crate) fn on_transaction(f: XactListener) {
    register_once();
    XACT.with(|l| l.borrow_mut().push(f));
}

/// Adds a function called once when the transaction ends — committed, aborted or prepared —
/// for state that lives exactly as long as a transaction (from `_PG_init`).
pub(crate) fn at_transaction_end(f: fn()) {
    register_once();
    ENDS.with(|l| l.borrow_mut().push(f));
}

/// Whether `event` ends the transaction in this backend.
fn ends(event: pg_sys::XactEvent::Type) -> bool {
    use pg_sys::XactEvent::*;
    matches!(
        event,
        XACT_EVENT_ABORT
            | XACT_EVENT_PARALLEL_ABORT
            | XACT_EVENT_COMMIT
            | XACT_EVENT_PARALLEL_COMMIT
            | XACT_EVENT_PREPARE
    )
}

/// Adds a subtransaction listener (from `_PG_init`).
pub(crate) fn on_subtransaction(f: SubXactListener) {
    register_once();
    SUBXACT.with(|l| l.borrow_mut().push(f));
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    // Copied out: a listener may not re-enter the list, but nothing is borrowed while it runs.
    let listeners: Vec<XactListener> = XACT.with(|l| l.borrow().clone());
    for f in listeners {
        f(event);
    }
    if ends(event) {
        let ends: Vec<fn()> = ENDS.with(|l| l.borrow().clone());
        for f in ends {
            f();
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    my: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    let listeners: Vec<SubXactListener> = SUBXACT.with(|l| l.borrow().clone());
    for f in listeners {
        f(event, my, parent);
    }
}

/// Whether this backend runs a query with a parallel plan (the leader or a worker), where
/// PostgreSQL refuses writes and newer snapshots.
pub fn in_parallel_mode() -> bool {
    // SAFETY: reads the transaction state's parallel-mode counter.
    unsafe { pgrx::pg_sys::IsInParallelMode() }
}
