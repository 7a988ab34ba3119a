//! `credcrypt.protect_trigger()`: the BEFORE INSERT OR UPDATE row trigger that
//! `protect_column` installs, one per table, configured from `credcrypt.protected_columns`.
//!
//! For every designation of the table, the new row's value is:
//! - NULL (or an absent/null jsonb key): left alone, and the mask column set to NULL;
//! - unchanged by an UPDATE with the same bind values: left alone (no decryption), and the mask
//!   column kept as it was (a statement cannot forge a mask);
//! - unchanged by an UPDATE that changed a bind value: decrypted with the old row's context and
//!   encrypted again with the new one (re-binding);
//! - a pg_credcrypt ciphertext (`cc1:`) that this backend produced in the current statement
//!   (`INSERT … ON CONFLICT DO UPDATE SET col = EXCLUDED.col`, which is what ORMs' upserts send):
//!   kept when it was bound to this row, re-bound to this row otherwise (the conflicting row of
//!   a natural-key upsert has another id than the proposed one);
//! - any other pg_credcrypt ciphertext: kept if it is under the designation's key and decrypts
//!   with this row's context; refused otherwise, so a ciphertext copied from another row,
//!   column or table, or made with another key, is caught when it is written;
//! - anything else: plaintext, encrypted with the designation's key and context.
//!
//! Encryption that cannot happen raises an error, so the statement fails and nothing is written.
//! So does a trigger that finds no designation for its table, and a trigger that is not the
//! last BEFORE ROW trigger to fire (a later one could put plaintext back): the protection
//! fails closed.
//!
//! jsonb documents are read and edited with PostgreSQL's own jsonb code, in PostgreSQL memory:
//! the path is followed inside the stored document without converting it, and the one string
//! is replaced with `jsonb_set`.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::ffi::CStr;
use std::hash::{BuildHasher as _, Hasher as _};
use std::num::NonZeroUsize;

use credcrypt_core::column::ContextBuilder;
use credcrypt_core::{mask, Ciphertext, Error, ErrorKind, KeyRef, Provider};
use pgrx::prelude::*;
use pgrx::{heap_getattr_raw, PgTupleDesc};
use zeroize::Zeroizing;

use super::catalog::{self, Designation};
use super::designations::TRIGGER_NAME;
use crate::providers::{decrypt_many, encrypt_many, encrypt_per_row, kv, ColumnKey};

/// How many recently produced ciphertexts a backend remembers (for `ON CONFLICT DO UPDATE`).
const RECENT: usize = 32;

/// A ciphertext this backend produced: a keyed hash of it, the context it is bound to, its
/// mask and blind index, and the statement (command id) that produced it.
struct Recent {
    fingerprint: u64,
    context: String,
    derived: Derived,
    command: pg_sys::CommandId,
}

/// What the trigger derives from a plaintext besides its ciphertext: the mask and the blind
/// index (each None when the designation has none, or the value is NULL).
#[derive(Clone, Default)]
struct Derived {
    mask: Option<String>,
    index: Option<[u8; credcrypt_core::blind::INDEX_LEN]>,
}

thread_local! {
    /// The command id an SPI write inside this statement advanced the counter to, and the
    /// statement's own command id ([`statement`]).
    static STATEMENT_ALIAS: std::cell::Cell<Option<(pg_sys::CommandId, pg_sys::CommandId)>> = const { std::cell::Cell::new(None) };
    /// Values the current statement (command id) encrypted for Transit-protected columns.
    static TRANSIT_VALUES: std::cell::Cell<(pg_sys::CommandId, u64)> = const { std::cell::Cell::new((0, 0)) };
    static RECENTLY_PRODUCED: RefCell<VecDeque<Recent>> = const { RefCell::new(VecDeque::new()) };
    /// Random SipHash keys, per backend: fingerprints cannot be predicted or forged.
    static HASH_KEYS: RandomState = RandomState::new();
}

fn fingerprint(ciphertext: &str) -> u64 {
    HASH_KEYS.with(|k| {
        let mut h = k.build_hasher();
        h.write(ciphertext.as_bytes());
        h.finish()
    })
}

fn command_id() -> pg_sys::CommandId {
    // SAFETY: reads the current command id (false: does not mark it used).
    unsafe { pg_sys::GetCurrentCommandId(false) }
}

/// The statement firing the trigger, as a command id. An envelope data key created while a
/// value is encrypted is an SPI INSERT, which advances the command counter in the middle of
/// the statement; [`encrypting`] records that, so the rest of the statement keeps its id and
/// the next statement gets a new one.
fn statement() -> pg_sys::CommandId {
    statement_of(command_id())
}

/// [`statement`] for the current command id `now`.
fn statement_of(now: pg_sys::CommandId) -> pg_sys::CommandId {
    STATEMENT_ALIAS.with(|a| match a.get() {
        Some((after, statement)) if after == now => statement,
        _ => now,
    })
}

/// Runs an encryption (which may write `credcrypt.data_keys` through SPI) without changing
/// what [`statement`] answers for the rest of this statement; `f` gets the statement. An
/// encryption that cannot write (`may_write` false: the local key) skips the check after it.
fn encrypting<R>(may_write: bool, f: impl FnOnce(pg_sys::CommandId) -> R) -> R {
    if !may_write {
        return f(statement());
    }
    let before = command_id();
    let statement = statement_of(before);
    let r = f(statement);
    let after = command_id();
    if after != before {
        // Mark the new command id used, so that the next statement gets another one (a fresh
        // id that cannot be mistaken for this statement's), and map it to this statement.
        // SAFETY: only reached after an SPI write of this transaction: writes are allowed.
        let after = unsafe { pg_sys::GetCurrentCommandId(true) };
        STATEMENT_ALIAS.with(|a| a.set(Some((after, statement))));
    }
    r
}

/// Forgets the values produced in the transaction that just ended, and its count of Transit
/// values (command ids start again in the next transaction); never raises.
fn forget_produced() {
    RECENTLY_PRODUCED.with(|r| {
        if let Ok(mut r) = r.try_borrow_mut() {
            r.clear();
        }
    });
    TRANSIT_VALUES.with(|t| t.set((0, 0)));
    STATEMENT_ALIAS.with(|a| a.set(None));
}

/// Registers the end-of-transaction cleanup (from `_PG_init`).
pub fn init() {
    crate::postgres::xact::at_transaction_end(forget_produced);
}

fn remember(command: pg_sys::CommandId, ciphertext: &str, context: &str, derived: &Derived) {
    let fingerprint = fingerprint(ciphertext);
    RECENTLY_PRODUCED.with(|r| {
        let mut r = r.borrow_mut();
        // Once full, the oldest entry's strings are reused (once per row written: no allocation).
        let entry = match r.len() {
            RECENT => r.pop_front().map(|mut e| {
                e.fingerprint = fingerprint;
                e.context.clear();
                e.context.push_str(context);
                e.derived.mask.clone_from(&derived.mask);
                e.derived.index = derived.index;
                e.command = command;
                e
            }),
            _ => None,
        };
        r.push_back(entry.unwrap_or_else(|| Recent {
            fingerprint,
            context: context.to_owned(),
            derived: derived.clone(),
            command,
        }));
    });
}

/// The context, mask and index of a value this backend produced in the current statement, if
/// it did.
fn recently_produced(ciphertext: &str) -> Option<(String, Derived)> {
    let fingerprint = fingerprint(ciphertext);
    let command = statement();
    RECENTLY_PRODUCED.with(|r| {
        r.borrow()
            .iter()
            .rev()
            .find(|e| e.fingerprint == fingerprint && e.command == command)
            .map(|e| (e.context.clone(), e.derived.clone()))
    })
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

    /// A jsonb attribute, detoasted (in the trigger's memory context).
    fn jsonb(&self, attnum: i16) -> Option<Jsonb> {
        let d = self.datum(attnum)?;
        // SAFETY: the attribute's type was checked to be jsonb when the designation loaded;
        // pg_detoast_datum returns the datum itself or a palloc'd detoasted copy.
        Some(Jsonb(unsafe { pg_sys::pg_detoast_datum(d.cast_mut_ptr()) }.cast::<pg_sys::Jsonb>()))
    }

    /// The text output of a bind attribute (in memory of the trigger's call); None for NULL.
    /// The integer types and text/varchar — the usual bind columns — are formatted here, as
    /// their output functions do (decimal with a leading `-`; the text itself), without a call
    /// through the function manager; any other type calls its output function. A value whose
    /// text is not UTF-8 (a database in another encoding) is an error: taken as NULL, as it
    /// was, every such row shared one context and a ciphertext moved between them unnoticed.
    fn bind_text(&self, attnum: i16, out_fn: pg_sys::Oid) -> Result<Option<Cow<'_, str>>, Error> {
        let Some(d) = self.datum(attnum) else { return Ok(None) };
        if let Some(n) = integer_of(d, out_fn) {
            return Ok(Some(Cow::Owned(n.to_string())));
        }
        let bytes: &[u8] = match out_fn.to_u32() {
            pg_sys::F_TEXTOUT | pg_sys::F_VARCHAROUT => {
                // SAFETY: a text or varchar attribute (its output function says so).
                unsafe { <&[u8] as FromDatum>::from_polymorphic_datum(d, false, pg_sys::TEXTOID) }.unwrap_or_default()
            }
            _ => {
                // SAFETY: out_fn is the attribute type's output function (catalog lookup).
                let c = unsafe { pg_sys::OidOutputFunctionCall(out_fn, d) };
                // SAFETY: output functions return a palloc'd NUL-terminated string.
                unsafe { CStr::from_ptr(c) }.to_bytes()
            }
        };
        match std::str::from_utf8(bytes) {
            Ok(text) => Ok(Some(Cow::Borrowed(text))),
            Err(_) => Err(Error::new(ErrorKind::InvalidArgument, "a bind column's value is not valid UTF-8")
                .with_detail("pg_credcrypt binds a value to its row by the UTF-8 text of the bind columns")
                .with_hint("In a database whose encoding is not UTF-8, bind to an integer, uuid or ASCII key (docs/protected-columns.md, Binding).")),
        }
    }

    /// The key a value of `d` in this row is encrypted with: the designation's, or for a
    /// per-row key, the one its bind column names.
    fn key<'d>(&self, d: &'d Designation) -> Result<Cow<'d, KeyRef>, Error> {
        let value = match d.key_bind.and_then(|i| d.binds.get(i)) {
            Some(&(n, f)) => self.bind_text(n, f)?,
            None => None,
        };
        d.key.for_row(value.as_deref())
    }

    /// The row's context for `d` (what [`credcrypt_core::column::column_context`] gives for the
    /// bind values' text), built in one string: integer and uuid bind values are written as
    /// their output functions print them, without calling those.
    fn context(&self, d: &Designation) -> Result<String, Error> {
        let mut out = ContextBuilder::new(&d.binding_id, 24 * d.binds.len())?;
        for &(n, f) in &d.binds {
            let Some(v) = self.datum(n) else {
                out.push(None);
                continue;
            };
            if let Some(i) = integer_of(v, f) {
                out.push_integer(i);
            } else if f.to_u32() == pg_sys::F_UUID_OUT {
                // SAFETY: a uuid datum points at its 16 bytes (pass by reference, fixed length,
                // never toasted), inside the tuple.
                out.push_uuid(unsafe { &*v.cast_mut_ptr::<[u8; 16]>() });
            } else {
                out.push(self.bind_text(n, f)?.as_deref());
            }
        }
        out.finish()
    }
}

/// The value of an int2, int4 or int8 datum (by its type's output function), read as
/// DatumGetInt16/32/64 do (pass by value); None for any other type.
fn integer_of(d: pg_sys::Datum, out_fn: pg_sys::Oid) -> Option<i64> {
    match out_fn.to_u32() {
        pg_sys::F_INT8OUT => Some(d.value() as i64),
        pg_sys::F_INT4OUT => Some(i64::from(d.value() as i32)),
        pg_sys::F_INT2OUT => Some(i64::from(d.value() as i16)),
        _ => None,
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

/// The key a new value of `d` is encrypted with: the designation's, except for a Transit key
/// once the statement has written more than `credcrypt.transit_bulk_threshold` Transit values
/// (a bulk load): then envelope data keys wrapped by the same Transit key, one Transit call per
/// data key instead of one per row. The value stays bound to its row; the column accepts it as
/// under its key ([`under_designated_key`]); a migration to the Transit key converts it.
fn key_for(key: &KeyRef, command: pg_sys::CommandId) -> Cow<'_, KeyRef> {
    let KeyRef::Transit(name) = key else { return Cow::Borrowed(key) };
    let Some(threshold) = crate::gucs::transit_bulk_threshold() else { return Cow::Borrowed(key) };
    let n = TRANSIT_VALUES.with(|t| {
        let (c, n) = t.get();
        let n = if c == command { n.saturating_add(1) } else { 1 };
        t.set((command, n));
        n
    });
    if n > threshold {
        Cow::Owned(KeyRef::Envelope(name.clone()))
    } else {
        Cow::Borrowed(key)
    }
}

/// Where a value to encrypt comes from: the statement's own plaintext, or a value already stored
/// in a row (re-binding it after a bind column changed).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Plaintext,
    StoredValue,
}

/// Encrypts a plaintext for `d` and this row (`context`) and masks it. A value encrypted from the
/// statement's own plaintext is remembered as this statement's own (for the UPDATE half of an
/// upsert, which may re-bind it to the existing row); a re-bound stored value never is: the
/// writer did not supply its plaintext, and another row of the same statement (a data-modifying
/// CTE feeding it on) must not get it.
fn produce(d: &Designation, key: &KeyRef, plain: &[u8], context: &str, origin: Origin) -> Result<Outcome, Error> {
    let (ct, statement) = encrypting(!matches!(key, KeyRef::Local), |statement| {
        let key = key_for(key, statement);
        let mut v = match (&d.key, key.as_ref()) {
            (_, KeyRef::Kv(mount)) => {
                let place = KV_ROW.with(|r| {
                    r.borrow().as_ref().map(|r| {
                        let identity: Vec<Option<&str>> = r.identity.iter().map(Option::as_deref).collect();
                        kv::row_place(mount, &r.schema, &r.table, &d.binding_id, &identity, r.old.as_deref())
                    })
                });
                let place = place.ok_or_else(|| Error::internal("a kv value without its row"))??;
                kv::write(mount, &[plain], &[Some(context)], &[place])?
            }
            (ColumnKey::Fixed(_), _) => encrypt_many(&[plain], &key, &[Some(context)])?,
            (ColumnKey::PerRow(_), _) => encrypt_per_row(&[plain], &key, &[Some(context)])?,
        };
        v.pop().ok_or_else(|| Error::malformed("empty answer")).map(|ct| (ct, statement))
    })?;
    let derived = derive(d, plain)?;
    if origin == Origin::Plaintext {
        remember(statement, &ct, context, &derived);
    }
    Ok(Outcome::Store { value: Some(ct), derived })
}

/// For a `kv:` designation, where the row being written keeps its secret (set by [`fire`]
/// around each such designation): the firing table's schema and name, the bind values (the
/// row's identity) and the old row's value.
struct KvRow {
    schema: String,
    table: String,
    identity: Vec<Option<String>>,
    old: Option<String>,
}

thread_local! {
    static KV_ROW: std::cell::RefCell<Option<KvRow>> = const { std::cell::RefCell::new(None) };
}

/// The mask and blind index of a plaintext of `d`.
fn derive(d: &Designation, plain: &[u8]) -> Result<Derived, Error> {
    let index = match &d.blind {
        Some((_, bi)) => Some(bi.index(&d.binding_id, plain)?),
        None => None,
    };
    Ok(Derived { mask: mask_of(d, plain), index })
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
    /// Keep the value; the mask and index columns keep their old values (UPDATE) or are left
    /// alone.
    KeepWithOldMask,
    /// Store this value (None = NULL), and this mask and index.
    Store { value: Option<String>, derived: Derived },
    /// Keep the value, set the mask and index.
    KeepWithMask(Derived),
}

/// Whether a parsed ciphertext is under the designation's key (any version of it). A Transit
/// column also holds envelope values of its Transit key (bulk loads, [`key_for`]).
fn under_designated_key(key: &KeyRef, parsed: &Ciphertext<'_>) -> bool {
    match (key, parsed.provider) {
        (KeyRef::Local, Provider::Local) => true,
        (KeyRef::Kv(m), Provider::Kv) => parsed.key_name == m,
        (KeyRef::Transit(n), Provider::Transit | Provider::Envelope) | (KeyRef::Envelope(n), Provider::Envelope) => {
            parsed.key_name == n
        }
        _ => false,
    }
}

/// Decrypts `v` (bound to `from`) and encrypts it again for `context`.
fn rebind(d: &Designation, key: &KeyRef, v: &str, from: &str, context: &str) -> Result<Outcome, Error> {
    let plain = decrypt(v, from)?;
    produce(d, key, &plain, context, Origin::StoredValue)
}

/// Decides what to store for a protected value. `old` is the OLD row's value and context on
/// UPDATE; `context` and `key` the NEW row's.
fn protect_value(
    d: &Designation,
    key: &KeyRef,
    new: Option<&str>,
    old: Option<(Option<&str>, &dyn Fn() -> String)>,
    context: &str,
) -> Result<Outcome, Error> {
    let Some(v) = new else {
        return Ok(Outcome::Store { value: None, derived: Derived::default() });
    };
    if let Some((Some(old_v), old_context)) = old {
        if old_v == v {
            let old_context = old_context();
            if old_context == context || !v.starts_with("cc1:") {
                return Ok(Outcome::KeepWithOldMask);
            }
            // A bind column changed: re-bind the unchanged value to the new row.
            return rebind(d, key, v, &old_context, context);
        }
    }
    if v.starts_with("cc1:") {
        let parsed = Ciphertext::parse(v)?;
        // A value this backend produced in this statement (the INSERT half of an upsert).
        if let Some((produced_for, derived)) = recently_produced(v) {
            if produced_for == context {
                return Ok(Outcome::KeepWithMask(derived));
            }
            return rebind(d, key, v, &produced_for, context);
        }
        if !under_designated_key(key, &parsed) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "the value is encrypted with another key than the column's",
            )
            .with_detail(format!(
                "the column is protected with {}; write the plaintext and the column encrypts it",
                d.key
            )));
        }
        let plain = decrypt(v, context).map_err(|e| match e.kind {
            ErrorKind::AuthenticationFailed => e.with_detail(
                "the value is a ciphertext that does not belong to this row (it was encrypted for another row, column or table)",
            ),
            _ => e,
        })?;
        if parsed.provider == Provider::Kv {
            // A kv reference names a path that some row owns, and a DELETE destroys the path its
            // row references: two rows must never share one (with bind columns that are not
            // unique, a copied reference would pass the binding check). The secret is copied to
            // this row's own place.
            return produce(d, key, &plain, context, Origin::StoredValue);
        }
        return Ok(Outcome::KeepWithMask(derive(d, &plain)?));
    }
    produce(d, key, v.as_bytes(), context, Origin::Plaintext)
}

/// A detoasted jsonb document (palloc'd or in the tuple; valid for the trigger call).
#[derive(Clone, Copy)]
struct Jsonb(*mut pg_sys::Jsonb);

/// What a protected jsonb path leads to.
enum JsonAt<'d> {
    /// Absent, or JSON null.
    Nothing,
    /// A string (its bytes, inside the document).
    Str(&'d [u8]),
}

fn is_object(c: *const pg_sys::JsonbContainer) -> bool {
    // SAFETY: c points at a container inside a detoasted jsonb document.
    unsafe { (*c).header & pg_sys::JB_FOBJECT != 0 }
}

/// Follows `path` (object keys) inside the document, without copying it.
fn json_at<'d>(doc: Jsonb, path: &[String]) -> Result<JsonAt<'d>, Error> {
    let blocked =
        || Error::new(ErrorKind::NotAString, "the protected jsonb path crosses a value that is not an object");
    // SAFETY: doc is a valid detoasted jsonb; its root container lives as long as the document.
    let mut container: *mut pg_sys::JsonbContainer = unsafe { std::ptr::addr_of_mut!((*doc.0).root) };
    for (i, key) in path.iter().enumerate() {
        if !is_object(container) {
            // A scalar document: JSON null counts as absent, anything else blocks the path.
            let mut scalar = pg_sys::JsonbValue::default();
            // SAFETY: container is the document's root (only the root can be a scalar).
            let is_null = unsafe { pg_sys::JsonbExtractScalar(container, &mut scalar) }
                && scalar.type_ == pg_sys::jbvType::jbvNull;
            return if is_null { Ok(JsonAt::Nothing) } else { Err(blocked()) };
        }
        let mut found = pg_sys::JsonbValue::default();
        let len = std::ffi::c_int::try_from(key.len()).map_err(|_| blocked())?;
        // SAFETY: container is an object container of the document; the key bytes are valid
        // for the call (the function copies nothing and keeps no pointer to them).
        let v = unsafe { pg_sys::getKeyJsonValueFromContainer(container, key.as_ptr().cast(), len, &mut found) };
        if v.is_null() {
            return Ok(JsonAt::Nothing);
        }
        let last = i + 1 == path.len();
        match found.type_ {
            pg_sys::jbvType::jbvNull => return Ok(JsonAt::Nothing),
            pg_sys::jbvType::jbvString if last => {
                // SAFETY: a string value points into the document, `len` bytes.
                let bytes = unsafe {
                    std::slice::from_raw_parts(found.val.string.val.cast::<u8>(), found.val.string.len as usize)
                };
                return Ok(JsonAt::Str(bytes));
            }
            pg_sys::jbvType::jbvBinary if !last => {
                // SAFETY: a binary value is a nested container of the document.
                container = unsafe { found.val.binary.data };
            }
            _ if last => {
                return Err(Error::new(
                    ErrorKind::NotAString,
                    "a protected jsonb key holds a value that is not a string",
                ))
            }
            _ => return Err(blocked()),
        }
    }
    Ok(JsonAt::Nothing)
}

/// The string at `path`, as UTF-8 text (jsonb strings always are).
fn json_str<'d>(doc: Option<Jsonb>, path: &[String]) -> Result<Option<&'d str>, Error> {
    let Some(doc) = doc else { return Ok(None) };
    match json_at(doc, path)? {
        JsonAt::Nothing => Ok(None),
        JsonAt::Str(b) => std::str::from_utf8(b).map(Some).map_err(|_| Error::malformed("a jsonb string is not UTF-8")),
    }
}

/// `jsonb_set(doc, path, to_jsonb(value), false)`, in PostgreSQL memory.
fn json_set(doc: pg_sys::Datum, path: &[String], value: String) -> Result<pg_sys::Datum, Error> {
    let path_datum = path.to_vec().into_datum().unwrap_or(pg_sys::Datum::from(0));
    let value_datum = pgrx::JsonB(serde_json::Value::String(value)).into_datum().unwrap_or(pg_sys::Datum::from(0));
    // SAFETY: jsonb_set's V1 arguments: a jsonb document, a text[] path, a jsonb value and the
    // create_missing flag (false: the key exists, it was just read).
    unsafe {
        pgrx::direct_function_call_as_datum(
            pg_sys::jsonb_set,
            &[Some(doc), Some(path_datum), Some(value_datum), Some(pg_sys::Datum::from(false))],
        )
    }
    .ok_or_else(|| Error::internal("jsonb_set returned NULL"))
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

fn bytea_datum(b: Option<&[u8]>) -> Option<pg_sys::Datum> {
    b.and_then(IntoDatum::into_datum)
}

/// Sets the mask and blind index columns of `d` from `outcome`: the trigger owns them, so a
/// statement can forge neither (an UPDATE that keeps the value keeps the old row's).
fn apply_derived(repl: &mut Replacements, d: &Designation, old: Option<Row>, outcome: &Outcome) {
    let mask_att = d.mask.map(|(a, _, _)| a);
    let index_att = d.blind.as_ref().map(|(a, _)| *a);
    match outcome {
        Outcome::KeepWithOldMask => {
            if let Some(old) = old {
                if let Some(a) = mask_att {
                    set(repl, a, text_datum(old.text(a).map(str::to_owned)));
                }
                if let Some(a) = index_att {
                    set(repl, a, old.datum(a));
                }
            }
        }
        Outcome::Store { derived, .. } | Outcome::KeepWithMask(derived) => {
            if let Some(a) = mask_att {
                set(repl, a, text_datum(derived.mask.clone()));
            }
            if let Some(a) = index_att {
                set(repl, a, bytea_datum(derived.index.as_ref().map(|i| i.as_slice())));
            }
        }
    }
}

/// Why the trigger does not write the row: a value it cannot protect (a core error, with its
/// SQLSTATE), or a table whose protection is not what `protect_column` made (`55000`), or a
/// trigger attached the wrong way (`09000`).
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// A value could not be protected (encryption failed, a ciphertext of another row…).
    #[error("{0}")]
    Value(#[from] Error),
    /// The table's protection is broken: refused rather than store plaintext.
    #[error("{message}")]
    Refused {
        /// What is wrong.
        message: String,
        /// How to fix it.
        hint: &'static str,
    },
    /// The trigger function was attached other than BEFORE INSERT OR UPDATE FOR EACH ROW.
    #[error("credcrypt.protect_trigger() must be fired BEFORE INSERT OR UPDATE FOR EACH ROW")]
    Misattached,
}

impl TriggerError {
    /// Raises the error as a PostgreSQL ERROR with its SQLSTATE and hint. (pgrx would report an
    /// `Err` returned from a trigger as an internal error, so the entry point raises it.)
    pub fn raise(self) -> ! {
        match self {
            TriggerError::Value(e) => crate::errors::raise(e),
            TriggerError::Refused { message, hint } => {
                crate::errors::fail(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, message, None, hint)
            }
            TriggerError::Misattached => crate::errors::fail(
                PgSqlErrorCode::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
                "credcrypt.protect_trigger() must be fired BEFORE INSERT OR UPDATE FOR EACH ROW",
                None,
                "Install it with credcrypt.protect_column(), which creates the trigger correctly.",
            ),
        }
    }
}

fn refused(message: String, hint: &'static str) -> TriggerError {
    TriggerError::Refused { message, hint }
}

/// Whether a trigger fires in this session (`session_replication_role`), as PostgreSQL decides.
fn enabled(tg: &pg_sys::Trigger) -> bool {
    // SAFETY: reads a plain integer setting.
    let replica = unsafe { pg_sys::SessionReplicationRole } == pg_sys::SESSION_REPLICATION_ROLE_REPLICA as i32;
    let e = tg.tgenabled as u8;
    if replica {
        e == b'R' || e == b'A'
    } else {
        e == b'O' || e == b'A'
    }
}

/// Checks that this trigger is the unrestricted, last BEFORE ROW trigger for `event` of the
/// relation: a BEFORE trigger that fires after it could write plaintext back.
fn check_position(rel: pg_sys::Relation, me: &pg_sys::Trigger, event: u32) -> Result<(), TriggerError> {
    let want = pg_sys::TRIGGER_TYPE_ROW
        | pg_sys::TRIGGER_TYPE_BEFORE
        | pg_sys::TRIGGER_TYPE_INSERT
        | pg_sys::TRIGGER_TYPE_UPDATE;
    if (me.tgtype as u32)
        & (want | pg_sys::TRIGGER_TYPE_DELETE | pg_sys::TRIGGER_TYPE_TRUNCATE | pg_sys::TRIGGER_TYPE_INSTEAD)
        != want
        || !me.tgqual.is_null()
        || me.tgnattr != 0
    {
        return Err(refused(
            "the protection trigger must be BEFORE INSERT OR UPDATE FOR EACH ROW, with no column list and no WHEN condition".into(),
            "Let credcrypt.protect_column() create it (unprotect_column, then protect_column again).",
        ));
    }
    // SAFETY: the firing relation's trigger descriptor, sorted by name (the firing order).
    let triggers: &[pg_sys::Trigger] = unsafe {
        let td = (*rel).trigdesc;
        if td.is_null() {
            return Ok(());
        }
        std::slice::from_raw_parts((*td).triggers, usize::try_from((*td).numtriggers).unwrap_or(0))
    };
    let Some(at) = triggers.iter().position(|tg| tg.tgoid == me.tgoid) else { return Ok(()) };
    for tg in &triggers[at + 1..] {
        let ty = tg.tgtype as u32;
        let before_row = ty & pg_sys::TRIGGER_TYPE_LEVEL_MASK == pg_sys::TRIGGER_TYPE_ROW
            && ty & pg_sys::TRIGGER_TYPE_TIMING_MASK == pg_sys::TRIGGER_TYPE_BEFORE;
        if before_row && ty & event != 0 && enabled(tg) {
            // SAFETY: tgname is a NUL-terminated name.
            let name = unsafe { CStr::from_ptr(tg.tgname) }.to_string_lossy();
            return Err(refused(
                format!("trigger \"{name}\" fires after the protection trigger {TRIGGER_NAME}: it could store plaintext"),
                "Rename that trigger so that its name sorts before zz_credcrypt_protect (triggers fire in name order), or drop it.",
            ));
        }
    }
    Ok(())
}

/// The tuple id (block, offset) of a heap tuple.
///
/// # Safety
/// `t` is a valid heap tuple.
unsafe fn tid_of(t: pg_sys::HeapTuple) -> (u32, u16) {
    // SAFETY: the caller passes a valid tuple.
    let tid = unsafe { (*t).t_self };
    ((u32::from(tid.ip_blkid.bi_hi) << 16) | u32::from(tid.ip_blkid.bi_lo), tid.ip_posid)
}

/// One firing of the trigger function installed by `protect_column` (see the module
/// documentation); the SQL entry point is `crate::api::protect::protect_trigger`.
pub(crate) fn fire<'a>(t: &'a PgTrigger<'a>) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, TriggerError> {
    let td = t.trigger_data();
    let ev = td.tg_event;
    let is_insert = pgrx::trigger_fired_by_insert(ev);
    let is_update = pgrx::trigger_fired_by_update(ev);
    if !pgrx::trigger_fired_before(ev) || !pgrx::trigger_fired_for_row(ev) || !(is_insert || is_update) {
        return Err(TriggerError::Misattached);
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
    let cfg = unsafe { catalog::lookup(relid, desc) }?;
    let table = || t.table_name().unwrap_or_default();
    if cfg.designations.is_empty() {
        return Err(refused(
            format!("table {} has the protection trigger but no protected column", table()),
            "Protect a column with credcrypt.protect_column(), or drop the trigger zz_credcrypt_protect if the table needs no protection.",
        ));
    }
    // SAFETY: tg_trigger is the firing trigger.
    let me = unsafe { &*td.tg_trigger };
    check_position(rel, me, if is_insert { pg_sys::TRIGGER_TYPE_INSERT } else { pg_sys::TRIGGER_TYPE_UPDATE })?;
    let new = Row { tuple: new_tuple, desc };
    let old = old_tuple.map(|tuple| Row { tuple, desc });
    let mut repl: Replacements = Vec::new();
    // jsonb documents being edited, by attribute number: (original, current datum, changed).
    let mut docs: Vec<(i16, Option<Jsonb>, Option<pg_sys::Datum>, bool)> = Vec::new();

    // SAFETY: the old tuple of an UPDATE carries its tuple id.
    let old_tid = old_tuple.map(|t| unsafe { tid_of(t) });
    for d in &cfg.designations {
        let context = new.context(d)?;
        let key = new.key(d).map_err(|e| located(e, d, &table))?;
        // An old row whose context cannot be built cannot match: re-binding then fails closed.
        let old_context = || old.map(|o| o.context(d).unwrap_or_default()).unwrap_or_default();
        // A value the extension writes itself (a verified re-encryption, or the plaintext of
        // unprotect_column … decrypt_existing): through untouched if it is exactly that value,
        // in that row, with the row's bind values unchanged.
        if let Some(expected) = old_tid.and_then(|tid| crate::postgres::scope::own_write(relid, &d.binding_id, tid)) {
            let now = if d.json_path.is_empty() {
                new.text(d.attnum)
            } else {
                json_str(new.jsonb(d.attnum), &d.json_path).map_err(|e| located(e, d, &table))?
            };
            if now == Some(expected.value.as_str()) && context == old_context() {
                // Its blind index, computed with the value, is written here: a statement
                // cannot forge it.
                if let Some((a, _)) = &d.blind {
                    set(&mut repl, *a, bytea_datum(expected.index.as_deref()));
                }
                continue;
            }
        }
        if d.json_path.is_empty() {
            let old_arg = old.as_ref().map(|o| (o.text(d.attnum), &old_context as &dyn Fn() -> String));
            if matches!(key.as_ref(), KeyRef::Kv(_)) {
                let row = KvRow {
                    schema: t.table_schema().unwrap_or_default(),
                    table: table(),
                    identity: d
                        .binds
                        .iter()
                        .map(|&(n, f)| new.bind_text(n, f).map(|v| v.map(Cow::into_owned)))
                        .collect::<Result<_, _>>()
                        .map_err(|e| located(e, d, &table))?,
                    old: old.as_ref().and_then(|o| o.text(d.attnum)).map(str::to_owned),
                };
                KV_ROW.with(|r| *r.borrow_mut() = Some(row));
            }
            let outcome = protect_value(d, &key, new.text(d.attnum), old_arg, &context);
            KV_ROW.with(|r| *r.borrow_mut() = None);
            let outcome = outcome.map_err(|e| located(e, d, &table))?;
            apply_derived(&mut repl, d, old, &outcome);
            if let Outcome::Store { value, .. } = outcome {
                set(&mut repl, d.attnum, text_datum(value));
            }
            continue;
        }
        if !docs.iter().any(|e| e.0 == d.attnum) {
            let doc = new.jsonb(d.attnum);
            docs.push((d.attnum, doc, doc.map(|j| pg_sys::Datum::from(j.0)), false));
        }
        let entry = docs.iter_mut().find(|e| e.0 == d.attnum).expect("just inserted");
        let old_doc = old.and_then(|o| o.jsonb(d.attnum));
        let old_v = json_str(old_doc, &d.json_path).map_err(|e| located(e, d, &table))?;
        let new_v = json_str(entry.1, &d.json_path).map_err(|e| located(e, d, &table))?;
        let old_arg = old.map(|_| (old_v, &old_context as &dyn Fn() -> String));
        let outcome = protect_value(d, &key, new_v, old_arg, &context).map_err(|e| located(e, d, &table))?;
        apply_derived(&mut repl, d, old, &outcome);
        if let Outcome::Store { value: Some(ct), .. } = outcome {
            if let Some(current) = entry.2 {
                entry.2 = Some(json_set(current, &d.json_path, ct)?);
                entry.3 = true;
            }
        }
    }
    for (attnum, _, doc, changed) in docs {
        if changed {
            set(&mut repl, attnum, doc);
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

/// One firing of `credcrypt.kv_trigger()`, which `protect_column` installs beside the protection
/// trigger on a table with a `kv:` designation: `zz_credcrypt_kv` AFTER UPDATE OR DELETE FOR
/// EACH ROW asks the worker to destroy, once the transaction commits, every version of the KV
/// secrets a row no longer references (a deleted row's; an updated row's old path when its value
/// moved to another one: a migration to another key, a re-bound value, an upsert's new value);
/// `zz_credcrypt_kv_truncate` BEFORE TRUNCATE refuses TRUNCATE, which fires no row trigger and
/// would leave the secrets in OpenBao.
pub(crate) fn fire_kv<'a>(t: &'a PgTrigger<'a>) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, TriggerError> {
    let td = t.trigger_data();
    let ev = td.tg_event;
    if pgrx::trigger_fired_by_truncate(ev) {
        return Err(refused(
            format!("TRUNCATE of {} would leave its OpenBao KV secrets readable", t.table_name().unwrap_or_default()),
            "DELETE FROM the table instead: the secrets of deleted rows are destroyed when the transaction commits.",
        ));
    }
    let is_update = pgrx::trigger_fired_by_update(ev);
    if pgrx::trigger_fired_before(ev)
        || !pgrx::trigger_fired_for_row(ev)
        || !(is_update || pgrx::trigger_fired_by_delete(ev))
    {
        return Err(TriggerError::Misattached);
    }
    // SAFETY: a firing row trigger has a valid relation and tuples.
    let (rel, desc) = unsafe { (td.tg_relation, (*td.tg_relation).rd_att) };
    // SAFETY: valid relation (above); the descriptor is the relation's own.
    let cfg = unsafe { catalog::lookup((*rel).rd_id, desc) }?;
    let old = Row { tuple: td.tg_trigtuple, desc };
    let new = is_update.then_some(Row { tuple: td.tg_newtuple, desc });
    let kv_of = |v: Option<&str>| {
        let c = Ciphertext::parse(v?).ok()?;
        Some((c.kv_mount()?.to_owned(), c.kv_path()?.to_owned()))
    };
    let mut targets: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for d in cfg.designations.iter().filter(|d| d.json_path.is_empty()) {
        let Some((mount, path)) = kv_of(old.text(d.attnum)) else { continue };
        if !kv::path_of_designation(&path, &d.binding_id) {
            continue;
        }
        let still = new.as_ref().and_then(|n| kv_of(n.text(d.attnum))).is_some_and(|(_, p)| p == path);
        if !still {
            targets.entry(mount).or_default().push(path);
        }
    }
    for (mount, paths) in targets {
        kv::forget(&mount, &paths)?;
    }
    Ok(None)
}
