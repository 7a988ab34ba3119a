//! Decrypt auditing: `credcrypt.audit_decrypt = off | log | table`.
//!
//! The SQL decrypt functions report how many values they decrypted, and for protected columns
//! which designation they belonged to (recognised from the column context's binding id). The
//! counts are kept per (role, designation) and written when the query ends (ExecutorEnd hook):
//! one LOG line, or one row in `credcrypt.decrypt_audit`. Never a value.
//!
//! `table` falls back to the log where a write is impossible: on a hot standby, in a read-only
//! transaction, in a parallel worker. Rows written in a transaction that then rolls back would be
//! lost with it, so they are logged at abort ("rolled back"): a reader cannot hide a decryption
//! by rolling back.

use std::cell::RefCell;

use credcrypt_core::column::{BINDING_ID_LEN, CONTEXT_PREFIX};
use pgrx::prelude::*;

use crate::gucs::{self, AuditDecrypt};

/// Decryptions not yet written: (role name, binding id or None, count).
type Pending = Vec<(String, Option<String>, i64)>;

thread_local! {
    static PENDING: RefCell<Pending> = const { RefCell::new(Vec::new()) };
    /// Audit rows written in the current transaction, as log lines to emit if it aborts.
    /// With the subtransaction each row was written in.
    static WRITTEN: RefCell<Vec<(pg_sys::SubTransactionId, String)>> = const { RefCell::new(Vec::new()) };
    /// Records taken from PENDING whose row or log line is not written yet: logged at abort,
    /// so that an audit write that fails (after the plaintext was returned) still leaves a
    /// record.
    static UNWRITTEN: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// Executor depth at the start of each open subtransaction (restored if it aborts: a caught
    /// error skips ExecutorEnd).
    static DEPTH_AT: RefCell<Vec<(pg_sys::SubTransactionId, u32)>> = const { RefCell::new(Vec::new()) };
}

static mut PREV_EXECUTOR_END: pg_sys::ExecutorEnd_hook_type = None;
static mut PREV_EXECUTOR_START: pg_sys::ExecutorStart_hook_type = None;

thread_local! {
    /// Executor nesting depth: counts are written when the outermost query ends, so the
    /// queries the extension runs itself (SPI) do not split a statement's record.
    static DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Records `contexts.len()` decryptions by the current role (no-op when auditing is off).
pub(crate) fn record(contexts: &[Option<&str>]) {
    if gucs::audit_decrypt() == AuditDecrypt::Off || contexts.is_empty() {
        return;
    }
    // SAFETY: reads the backend's current user id.
    let role = role_name(unsafe { pg_sys::GetUserId() });
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        for c in contexts {
            let binding = c
                .and_then(|c| c.strip_prefix(CONTEXT_PREFIX))
                .and_then(|rest| rest.get(..BINDING_ID_LEN))
                .map(str::to_owned);
            match p.iter_mut().find(|e| e.0 == role && e.1 == binding) {
                Some(e) => e.2 += 1,
                None => p.push((role.clone(), binding, 1)),
            }
        }
    });
}

fn role_name(oid: pg_sys::Oid) -> String {
    thread_local! {
        /// The last role looked up (decryptions come in runs by one role).
        static LAST: RefCell<Option<(pg_sys::Oid, String)>> = const { RefCell::new(None) };
    }
    if let Some(name) = LAST.with(|l| l.borrow().as_ref().filter(|(o, _)| *o == oid).map(|(_, n)| n.clone())) {
        return name;
    }
    let name = lookup_role_name(oid);
    LAST.with(|l| *l.borrow_mut() = Some((oid, name.clone())));
    name
}

fn lookup_role_name(oid: pg_sys::Oid) -> String {
    // SAFETY: catalog lookup; missing_ok = true returns NULL for a dropped role.
    let p = unsafe { pg_sys::GetUserNameFromId(oid, true) };
    if p.is_null() {
        format!("oid {}", oid.to_u32())
    } else {
        // SAFETY: NUL-terminated palloc'd name.
        unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// "schema.table.column" (and the json path) of a binding id, if it is a designation here.
/// Read as the catalog's owner with the search path pinned, and formatted here: nothing of the
/// caller's can change the name recorded.
pub(crate) fn designation_name(binding: &str) -> Option<String> {
    let row = crate::postgres::guard::as_catalog_owner(|| {
        crate::postgres::spi::three::<String, String, Vec<String>>(
            "SELECT p.relid::pg_catalog.regclass::pg_catalog.text, p.column_name::pg_catalog.text, p.json_path \
               FROM credcrypt.protected_columns p WHERE p.binding_id OPERATOR(pg_catalog.=) $1",
            &[binding.into()],
        )
    });
    match row {
        Ok((Some(table), Some(column), path)) => {
            let path = path.unwrap_or_default();
            let mut name = format!("{table}.{}", pgrx::spi::quote_identifier(column));
            if !path.is_empty() {
                name.push_str(&format!(" {{{}}}", path.join(",")));
            }
            Some(name)
        }
        _ => None,
    }
}

fn can_write_table() -> bool {
    // SAFETY: plain reads of backend state.
    unsafe { !pg_sys::RecoveryInProgress() && !pg_sys::XactReadOnly && pg_sys::ParallelWorkerNumber < 0 }
}

/// Writes the pending records (called at the end of every query that decrypted something).
fn flush() {
    let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    if pending.is_empty() {
        return;
    }
    // At the end of a top-level query the portal's snapshot is gone; SPI needs one.
    // SAFETY: snapshot stack manipulation, balanced below (and reset by abort on error).
    let pushed = unsafe {
        if pg_sys::ActiveSnapshotSet() {
            false
        } else {
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            true
        }
    };
    write(pending);
    if pushed {
        // SAFETY: pops the snapshot pushed above.
        unsafe { pg_sys::PopActiveSnapshot() };
    }
}

fn line(role: &str, count: i64, object: &str) -> String {
    format!("pg_credcrypt audit: role \"{role}\" decrypted {count} value(s) of {object}")
}

fn write(pending: Pending) {
    let mode = gucs::audit_decrypt();
    // First a record of everything, before any lookup or write that could fail.
    UNWRITTEN.with(|u| {
        let mut u = u.borrow_mut();
        for (role, binding, count) in &pending {
            let object = match binding {
                Some(b) => format!("the protected column with binding id {b}"),
                None => "values outside protected columns".into(),
            };
            u.push(line(role, *count, &object));
        }
    });
    for (role, binding, count) in pending {
        let what = binding.as_deref().and_then(designation_name);
        let object = what.clone().unwrap_or_else(|| "values outside protected columns".into());
        let line = line(&role, count, &object);
        if mode == AuditDecrypt::Table && can_write_table() {
            crate::postgres::guard::as_catalog_owner(|| {
                crate::postgres::spi::run(
                    "INSERT INTO credcrypt.decrypt_audit (role_name, object, values_decrypted) VALUES ($1, $2, $3)",
                    &[role.as_str().into(), what.as_deref().into(), count.into()],
                )
            })
            .unwrap_or_else(|e| {
                crate::errors::fail(
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    format!("pg_credcrypt: could not write the decrypt audit: {e}"),
                    None,
                    "Check credcrypt.decrypt_audit, or set credcrypt.audit_decrypt = 'log'.",
                )
            });
            // SAFETY: reads the current subtransaction id.
            let sub = unsafe { pg_sys::GetCurrentSubTransactionId() };
            WRITTEN.with(|w| w.borrow_mut().push((sub, line)));
        } else {
            pgrx::log!("{line}");
        }
        UNWRITTEN.with(|u| {
            let mut u = u.borrow_mut();
            if !u.is_empty() {
                u.remove(0);
            }
        });
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_start(query_desc: *mut pg_sys::QueryDesc, eflags: std::ffi::c_int) {
    DEPTH.with(|d| d.set(d.get() + 1));
    // SAFETY: chaining to the previous hook or the standard implementation, as PostgreSQL expects.
    unsafe {
        match PREV_EXECUTOR_START {
            Some(prev) => prev(query_desc, eflags),
            None => pg_sys::standard_ExecutorStart(query_desc, eflags),
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_end(query_desc: *mut pg_sys::QueryDesc) {
    // SAFETY: chaining to the previous hook or the standard implementation, as PostgreSQL expects.
    unsafe {
        match PREV_EXECUTOR_END {
            Some(prev) => prev(query_desc),
            None => pg_sys::standard_ExecutorEnd(query_desc),
        }
    }
    let outermost = DEPTH.with(|d| {
        d.set(d.get().saturating_sub(1));
        d.get() == 0
    });
    if outermost {
        flush();
    }
}

/// Transaction listener ([`crate::postgres::xact`]).
fn on_xact(event: pg_sys::XactEvent::Type) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            DEPTH.with(|d| d.set(0));
            DEPTH_AT.with(|d| d.borrow_mut().clear());
            for (_, line) in WRITTEN.with(|w| std::mem::take(&mut *w.borrow_mut())) {
                pgrx::log!("{line} (audit row rolled back with its transaction)");
            }
            for line in UNWRITTEN.with(|u| std::mem::take(&mut *u.borrow_mut())) {
                pgrx::log!("{line} (the audit record could not be written)");
            }
            for (role, _, count) in PENDING.with(|p| std::mem::take(&mut *p.borrow_mut())) {
                pgrx::log!("pg_credcrypt audit: role \"{role}\" decrypted {count} value(s) in a statement that failed");
            }
        }
        // A prepared transaction may still be rolled back (ROLLBACK PREPARED), with its audit
        // rows, by anyone who can: its records go to the log now, so no reader can hide a
        // decryption behind two-phase commit.
        pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE => {
            for (_, line) in WRITTEN.with(|w| std::mem::take(&mut *w.borrow_mut())) {
                pgrx::log!("{line} (in a prepared transaction: the audit row is lost if it is rolled back)");
            }
            for line in UNWRITTEN.with(|u| std::mem::take(&mut *u.borrow_mut())) {
                pgrx::log!("{line}");
            }
            for (role, _, count) in PENDING.with(|p| std::mem::take(&mut *p.borrow_mut())) {
                pgrx::log!("pg_credcrypt audit: role \"{role}\" decrypted {count} value(s)");
            }
        }
        pg_sys::XactEvent::XACT_EVENT_PREPARE => {
            DEPTH_AT.with(|d| d.borrow_mut().clear());
            DEPTH.with(|d| d.set(0));
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT => {
            WRITTEN.with(|w| w.borrow_mut().clear());
            DEPTH_AT.with(|d| d.borrow_mut().clear());
            DEPTH.with(|d| d.set(0));
            // Anything not written yet (a statement whose end was never seen) goes to the log.
            for line in UNWRITTEN.with(|u| std::mem::take(&mut *u.borrow_mut())) {
                pgrx::log!("{line}");
            }
            for (role, _, count) in PENDING.with(|p| std::mem::take(&mut *p.borrow_mut())) {
                pgrx::log!("pg_credcrypt audit: role \"{role}\" decrypted {count} value(s)");
            }
        }
        _ => {}
    }
}

/// Subtransaction listener ([`crate::postgres::xact`]).
fn on_subxact(event: pg_sys::SubXactEvent::Type, my: pg_sys::SubTransactionId, _parent: pg_sys::SubTransactionId) {
    match event {
        pg_sys::SubXactEvent::SUBXACT_EVENT_START_SUB => {
            let depth = DEPTH.with(std::cell::Cell::get);
            DEPTH_AT.with(|d| d.borrow_mut().push((my, depth)));
        }
        pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => DEPTH_AT.with(|d| d.borrow_mut().retain(|(s, _)| *s != my)),
        pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => {
            // Restore the executor depth, and log the rows this subtransaction (or a child of
            // it: ids only grow) wrote, which its rollback removed: a caught error must not
            // hide a decryption.
            if let Some(depth) = DEPTH_AT.with(|d| {
                let mut d = d.borrow_mut();
                let at = d.iter().position(|(s, _)| *s == my)?;
                let depth = d[at].1;
                d.truncate(at);
                Some(depth)
            }) {
                DEPTH.with(|d| d.set(depth));
            }
            let gone: Vec<String> = WRITTEN.with(|w| {
                let mut w = w.borrow_mut();
                let (gone, kept): (Vec<_>, Vec<_>) = w.drain(..).partition(|(s, _)| *s >= my);
                *w = kept;
                gone.into_iter().map(|(_, l)| l).collect()
            });
            for line in gone {
                pgrx::log!("{line} (audit row rolled back with its subtransaction)");
            }
        }
        _ => {}
    }
}

/// Installs the executor hooks and the transaction listeners (from `_PG_init`).
pub fn init() {
    // SAFETY: _PG_init runs once per process on the main thread; the previous hook is chained.
    unsafe {
        PREV_EXECUTOR_END = pg_sys::ExecutorEnd_hook;
        pg_sys::ExecutorEnd_hook = Some(executor_end);
        PREV_EXECUTOR_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
    }
    crate::postgres::xact::on_transaction(on_xact);
    crate::postgres::xact::on_subtransaction(on_subxact);
}
