//! `credcrypt.protect_trigger()`: the BEFORE INSERT OR UPDATE row trigger that
//! `protect_column` installs, one per table, configured from `credcrypt.protected_columns`.
//!
//! For every designation of the table, the new row's value is:
//! - NULL (or an absent/null jsonb key): left alone, and the mask column set to NULL;
//! - unchanged by an UPDATE with the same bind values: left alone (no decryption), and the mask
//!   column kept as it was (a statement cannot forge a mask);
//! - unchanged by an UPDATE that changed a bind value: decrypted with the old row's context and
//!   encrypted again with the new one (re-binding);
//! - a pg_credcrypt ciphertext (`cc1:`): kept if it decrypts with this row's context (checked by
//!   decryption, or known because this backend has just produced it, as in `INSERT … ON
//!   CONFLICT DO UPDATE SET col = EXCLUDED.col`); refused otherwise, so a ciphertext copied from
//!   another row, column or table is caught when it is written;
//! - anything else: plaintext, encrypted with the designation's key and context.
//!
//! Encryption that cannot happen raises an error, so the statement fails and nothing is written.

use std::cell::{Cell, RefCell};
use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::ffi::CStr;
use std::hash::{BuildHasher as _, Hasher as _};
use std::num::NonZeroUsize;

use credcrypt_core::column::column_context;
use credcrypt_core::{mask, Ciphertext, Error, ErrorKind};
use pgrx::prelude::*;
use pgrx::{heap_getattr_raw, PgTupleDesc};
use zeroize::Zeroizing;

use super::catalog::{self, Designation};
use crate::api::crypto::{decrypt_many, encrypt_many};
use crate::errors::OrRaise as _;

/// How many recently produced ciphertexts a backend remembers (for `ON CONFLICT DO UPDATE`).
const RECENT: usize = 32;

/// A ciphertext this backend produced: a keyed hash of (ciphertext, context) and its mask.
struct Recent {
    fingerprint: u64,
    mask: Option<String>,
}

thread_local! {
    static RECENTLY_PRODUCED: RefCell<VecDeque<Recent>> = const { RefCell::new(VecDeque::new()) };
    /// The table (OID of the protected table, the root of a partition tree) whose writes the
    /// extension is making itself, or 0.
    static BYPASS: Cell<u32> = const { Cell::new(0) };
    /// Random SipHash keys, per backend: fingerprints cannot be predicted or forged.
    static HASH_KEYS: RandomState = RandomState::new();
}

fn fingerprint(ciphertext: &str, context: &str) -> u64 {
    HASH_KEYS.with(|k| {
        let mut h = k.build_hasher();
        h.write(ciphertext.as_bytes());
        h.write_u8(0xff);
        h.write(context.as_bytes());
        h.finish()
    })
}

/// Runs `f` with the trigger switched off for writes to `table` (and its partitions) in this
/// backend: for the extension's own maintenance writes, which have already encrypted and
/// verified every value they write. The switch is a backend-local variable that no SQL
/// statement can set.
pub(crate) fn with_bypass<R>(table: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    struct Reset(u32);
    impl Drop for Reset {
        fn drop(&mut self) {
            BYPASS.with(|b| b.set(self.0));
        }
    }
    let _reset = Reset(BYPASS.with(|b| b.replace(table.to_u32())));
    f()
}

fn remember(ciphertext: &str, context: &str, mask: Option<&str>) {
    let fingerprint = fingerprint(ciphertext, context);
    RECENTLY_PRODUCED.with(|r| {
        let mut r = r.borrow_mut();
        if r.len() == RECENT {
            r.pop_front();
        }
        r.push_back(Recent { fingerprint, mask: mask.map(str::to_owned) });
    });
}

/// The mask of a value this backend produced for `context`, if it did.
fn recently_produced(ciphertext: &str, context: &str) -> Option<Option<String>> {
    let fingerprint = fingerprint(ciphertext, context);
    RECENTLY_PRODUCED.with(|r| r.borrow().iter().rev().find(|e| e.fingerprint == fingerprint).map(|e| e.mask.clone()))
}

/// One row (tuple + descriptor) of the firing relation.
#[derive(Clone, Copy)]
struct Row {
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
}

impl Row {
    fn datum(&self, attnum: i16) -> Option<pg_sys::Datum> {
        let n = NonZeroUsize::new(usize::try_from(attnum).ok()?)?;
        // SAFETY: tuple and descriptor come from the trigger data of the firing relation, and
        // attnum was resolved against that descriptor.
        unsafe { heap_getattr_raw(self.tuple, n, self.desc) }
    }

    /// A text (or varchar) attribute, detoasted.
    fn text(&self, attnum: i16) -> Option<&str> {
        let d = self.datum(attnum)?;
        // SAFETY: the attribute's type was checked to be text/varchar by protect_column.
        unsafe { <&str as FromDatum>::from_polymorphic_datum(d, false, pg_sys::TEXTOID) }
    }

    /// A jsonb attribute.
    fn jsonb(&self, attnum: i16) -> Option<serde_json::Value> {
        let d = self.datum(attnum)?;
        // SAFETY: the attribute's type was checked to be jsonb by protect_column.
        unsafe { pgrx::JsonB::from_polymorphic_datum(d, false, pg_sys::JSONBOID) }.map(|j| j.0)
    }

    /// The text output of a bind attribute (in memory of the trigger's call).
    fn bind_text(&self, attnum: i16, out_fn: pg_sys::Oid) -> Option<&str> {
        let d = self.datum(attnum)?;
        // SAFETY: out_fn is the attribute type's output function (catalog lookup).
        let c = unsafe { pg_sys::OidOutputFunctionCall(out_fn, d) };
        // SAFETY: output functions return a palloc'd NUL-terminated string in the server
        // encoding; bindable types print ASCII, or text that is valid in the database.
        unsafe { CStr::from_ptr(c) }.to_str().ok()
    }

    fn context(&self, d: &Designation) -> String {
        let values: Vec<Option<&str>> = d.binds.iter().map(|&(n, f)| self.bind_text(n, f)).collect();
        column_context(&d.binding_id, &values).or_raise()
    }
}

/// Adds the table and column to an error's detail (never a value).
fn located(e: Error, d: &Designation, table: &dyn Fn() -> String) -> Error {
    let table = table();
    let place = if d.json_path.is_empty() {
        format!("column \"{}\" of table {table}", d.column)
    } else {
        format!("key {{{}}} of column \"{}\" of table {table}", d.json_path.join(","), d.column)
    };
    let detail = match &e.detail {
        Some(x) => format!("{place}: {x}"),
        None => place,
    };
    Error { detail: Some(detail), ..e }
}

fn encrypt(d: &Designation, plain: &[u8], context: &str) -> Result<String, Error> {
    let mut v = encrypt_many(&[plain], &d.key, &[Some(context)])?;
    v.pop().ok_or_else(|| Error::malformed("empty answer"))
}

fn decrypt(ciphertext: &str, context: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut v = decrypt_many(&[ciphertext], &[Some(context)], None)?;
    v.pop().ok_or_else(|| Error::malformed("empty answer"))
}

fn mask_of(d: &Designation, plain: &[u8]) -> Option<String> {
    let (_, p, s) = d.mask?;
    Some(match std::str::from_utf8(plain) {
        Ok(text) => mask::mask(text, p, s),
        Err(_) => mask::mask(&String::from_utf8_lossy(plain), p, s),
    })
}

/// What to store for one protected value.
enum Outcome {
    /// Keep the value; the mask column keeps its old value (UPDATE) or is left alone.
    KeepWithOldMask,
    /// Store this value (None = NULL) and this mask.
    Store { value: Option<String>, mask: Option<String> },
    /// Keep the value, set the mask.
    KeepWithMask(Option<String>),
}

/// Decides what to store for a protected value. `old` is the OLD row's value and context on
/// UPDATE; `context` the NEW row's.
fn protect_value(
    d: &Designation,
    new: Option<&str>,
    old: Option<(Option<&str>, &dyn Fn() -> String)>,
    context: &str,
) -> Result<Outcome, Error> {
    let Some(v) = new else {
        return Ok(Outcome::Store { value: None, mask: None });
    };
    if let Some((Some(old_v), old_context)) = old {
        if old_v == v {
            let old_context = old_context();
            if old_context == context || !v.starts_with("cc1:") {
                return Ok(Outcome::KeepWithOldMask);
            }
            // A bind column changed: re-bind the unchanged value to the new row.
            let plain = decrypt(v, &old_context)?;
            let ct = encrypt(d, &plain, context)?;
            let m = mask_of(d, &plain);
            remember(&ct, context, m.as_deref());
            return Ok(Outcome::Store { value: Some(ct), mask: m });
        }
    }
    if v.starts_with("cc1:") {
        Ciphertext::parse(v)?;
        if let Some(m) = recently_produced(v, context) {
            return Ok(Outcome::KeepWithMask(m));
        }
        let plain = decrypt(v, context).map_err(|e| match e.kind {
            ErrorKind::AuthenticationFailed => e.with_detail(
                "the value is a ciphertext that does not belong to this row (it was encrypted for another row, column or table)",
            ),
            _ => e,
        })?;
        return Ok(Outcome::KeepWithMask(mask_of(d, &plain)));
    }
    let ct = encrypt(d, v.as_bytes(), context)?;
    let m = mask_of(d, v.as_bytes());
    remember(&ct, context, m.as_deref());
    Ok(Outcome::Store { value: Some(ct), mask: m })
}

/// Follows `path` (object keys) inside a JSON document.
fn json_get<'v>(doc: &'v serde_json::Value, path: &[String]) -> Option<&'v serde_json::Value> {
    path.iter().try_fold(doc, |v, k| v.as_object()?.get(k))
}

/// Whether `path` crosses a value that is neither an object nor null (an array, say), where
/// SQL's `#>` would look inside but the trigger cannot: refused rather than left in plaintext.
fn json_path_blocked(doc: &serde_json::Value, path: &[String]) -> bool {
    let mut v = doc;
    for k in path {
        match v {
            serde_json::Value::Object(m) => match m.get(k) {
                Some(next) => v = next,
                None => return false,
            },
            serde_json::Value::Null => return false,
            _ => return true,
        }
    }
    false
}

fn json_get_mut<'v>(doc: &'v mut serde_json::Value, path: &[String]) -> Option<&'v mut serde_json::Value> {
    path.iter().try_fold(doc, |v, k| v.as_object_mut()?.get_mut(k))
}

/// The string at `path`: None when absent or null; an error when it is not a string.
fn json_str<'v>(doc: Option<&'v serde_json::Value>, path: &[String]) -> Result<Option<&'v str>, Error> {
    if doc.is_some_and(|d| json_path_blocked(d, path)) {
        return Err(Error::new(
            ErrorKind::NotAString,
            "the protected jsonb path crosses a value that is not an object",
        ));
    }
    match doc.and_then(|d| json_get(d, path)) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Error::new(ErrorKind::NotAString, "a protected jsonb key holds a value that is not a string")),
    }
}

/// Replacement values for the new tuple: (attnum, value) — value None is NULL.
type Replacements = Vec<(i16, Option<pg_sys::Datum>)>;

fn set(repl: &mut Replacements, attnum: i16, value: Option<pg_sys::Datum>) {
    if let Some(e) = repl.iter_mut().find(|e| e.0 == attnum) {
        e.1 = value;
    } else {
        repl.push((attnum, value));
    }
}

fn text_datum(s: Option<String>) -> Option<pg_sys::Datum> {
    s.and_then(IntoDatum::into_datum)
}

fn apply_mask(repl: &mut Replacements, d: &Designation, old: Option<Row>, outcome: &Outcome) {
    let Some((mask_att, _, _)) = d.mask else { return };
    match outcome {
        Outcome::KeepWithOldMask => {
            if let Some(old) = old {
                let m = old.text(mask_att).map(str::to_owned);
                set(repl, mask_att, text_datum(m));
            }
        }
        Outcome::Store { mask, .. } | Outcome::KeepWithMask(mask) => set(repl, mask_att, text_datum(mask.clone())),
    }
}

/// The trigger function installed by `protect_column` (see the module documentation).
#[pg_trigger]
fn protect_trigger<'a>(t: &'a PgTrigger<'a>) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, Infallible> {
    let td = t.trigger_data();
    let ev = td.tg_event;
    let is_insert = pgrx::trigger_fired_by_insert(ev);
    let is_update = pgrx::trigger_fired_by_update(ev);
    if !pgrx::trigger_fired_before(ev) || !pgrx::trigger_fired_for_row(ev) || !(is_insert || is_update) {
        crate::errors::fail(
            PgSqlErrorCode::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
            "credcrypt.protect_trigger() must be fired BEFORE INSERT OR UPDATE FOR EACH ROW",
            None,
            "Install it with credcrypt.protect_column(), which creates the trigger correctly.",
        );
    }
    // SAFETY: a firing row trigger has a valid relation and tuples.
    let (rel, desc) = unsafe { (td.tg_relation, (*td.tg_relation).rd_att) };
    let (new_tuple, old_tuple) =
        if is_insert { (td.tg_trigtuple, None) } else { (td.tg_newtuple, Some(td.tg_trigtuple)) };
    let result = |tuple: pg_sys::HeapTuple| {
        // SAFETY: the tuple belongs to the firing relation, whose descriptor outlives the call.
        Ok(Some(unsafe { PgHeapTuple::from_heap_tuple(PgTupleDesc::from_pg_unchecked(desc), tuple) }))
    };
    // SAFETY: valid relation (above).
    let relid = unsafe { (*rel).rd_id };
    // SAFETY: the descriptor is the relation's own.
    let cfg = unsafe { catalog::lookup(relid, desc) }.or_raise();
    // The extension's own maintenance writes to this table only: writes that other triggers
    // make meanwhile to other tables are protected as usual.
    let bypass = BYPASS.with(Cell::get);
    if cfg.designations.is_empty() || (bypass != 0 && (bypass == relid.to_u32() || bypass == cfg.root)) {
        return result(new_tuple);
    }
    let table = || t.table_name().unwrap_or_default();
    let new = Row { tuple: new_tuple, desc };
    let old = old_tuple.map(|tuple| Row { tuple, desc });
    let mut repl: Replacements = Vec::new();
    // jsonb documents being edited, by attribute number: (document, changed).
    let mut docs: Vec<(i16, Option<serde_json::Value>, bool)> = Vec::new();

    for d in &cfg.designations {
        let context = new.context(d);
        let old_context = || old.map(|o| o.context(d)).unwrap_or_default();
        if d.json_path.is_empty() {
            let old_arg = old.as_ref().map(|o| (o.text(d.attnum), &old_context as &dyn Fn() -> String));
            let outcome =
                protect_value(d, new.text(d.attnum), old_arg, &context).map_err(|e| located(e, d, &table)).or_raise();
            apply_mask(&mut repl, d, old, &outcome);
            if let Outcome::Store { value, .. } = outcome {
                set(&mut repl, d.attnum, text_datum(value));
            }
            continue;
        }
        if !docs.iter().any(|e| e.0 == d.attnum) {
            docs.push((d.attnum, new.jsonb(d.attnum), false));
        }
        let old_doc = old.and_then(|o| o.jsonb(d.attnum));
        let entry = docs.iter_mut().find(|e| e.0 == d.attnum).expect("just inserted");
        let old_v = json_str(old_doc.as_ref(), &d.json_path).map_err(|e| located(e, d, &table)).or_raise();
        let new_v = json_str(entry.1.as_ref(), &d.json_path).map_err(|e| located(e, d, &table)).or_raise();
        let old_arg = old.map(|_| (old_v, &old_context as &dyn Fn() -> String));
        let outcome = protect_value(d, new_v, old_arg, &context).map_err(|e| located(e, d, &table)).or_raise();
        apply_mask(&mut repl, d, old, &outcome);
        if let Outcome::Store { value: Some(ct), .. } = outcome {
            if let Some(slot) = entry.1.as_mut().and_then(|doc| json_get_mut(doc, &d.json_path)) {
                // The plaintext string is replaced; wipe the buffer that held it.
                let previous = std::mem::replace(slot, serde_json::Value::String(ct));
                if let serde_json::Value::String(s) = previous {
                    drop(Zeroizing::new(s));
                }
                entry.2 = true;
            }
        }
    }
    for (attnum, doc, changed) in docs {
        if changed {
            set(&mut repl, attnum, doc.and_then(|d| pgrx::JsonB(d).into_datum()));
        }
    }
    if repl.is_empty() {
        return result(new_tuple);
    }
    let mut cols: Vec<std::ffi::c_int> = repl.iter().map(|e| std::ffi::c_int::from(e.0)).collect();
    let mut values: Vec<pg_sys::Datum> = repl.iter().map(|e| e.1.unwrap_or(pg_sys::Datum::from(0))).collect();
    let mut nulls: Vec<bool> = repl.iter().map(|e| e.1.is_none()).collect();
    // SAFETY: columns were resolved against `desc`; the arrays have `cols.len()` elements.
    let modified = unsafe {
        pg_sys::heap_modify_tuple_by_cols(
            new_tuple,
            desc,
            cols.len() as std::ffi::c_int,
            cols.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_mut_ptr(),
        )
    };
    result(modified)
}
