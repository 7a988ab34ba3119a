//! The OpenBao KV v2 provider, backend side (`kv:<mount>`): the secret is stored in KV by the
//! background worker, the value is a reference `cc1:kv:<mount>:<version>:<c|n>:<path>`
//! (docs/format.md). The token stays in the worker.
//!
//! - **Writes** ([`encrypt`]) get a fresh random path under
//!   `<credcrypt.kv_path_prefix>/<database>/values/`, so a write never meets another version
//!   (`cas = 0`). Before the first write of a (sub)transaction, the backend makes its
//!   transaction id durable ([`durable_xid`]); the worker journals each write under it and
//!   destroys the versions of transactions that did not commit (`providers::kv_journal`).
//! - **Reads** ([`decrypt`]) send the expected binding (mount, path, context), which the worker
//!   compares in constant time with the one stored beside the secret before the secret leaves
//!   it: a reference read with another context fails authentication (39000).
//! - Only paths under this database's prefix are read or written, so a reference cannot reach
//!   another database's secrets or other secrets the worker's token may read.
//! - The local fallback never applies: without OpenBao nothing is written.

use credcrypt_core::format::{self, Ciphertext};
use credcrypt_core::kv::{kv_binding, kv_value_path};
use credcrypt_core::wire::{FailKind, KvWriteMeta, Op, ReqItem};
use credcrypt_core::{Error, ErrorKind};
use pgrx::pg_sys;

use super::transit::backend::{self, fail_to_error};
use super::Decrypted;
use crate::gucs;

thread_local! {
    /// The (sub)transaction whose id this backend last made durable.
    static DURABLE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The current (sub)transaction's full id, assigned if need be, with a WAL record that carries
/// it flushed to disk. Without such a record, crash recovery could hand the same id out again,
/// and the worker's journal would judge this transaction's writes by someone else's commit.
fn durable_xid() -> Result<u64, Error> {
    // SAFETY: assigns (or returns) the current subtransaction's id; an ERROR (in recovery, in
    // a parallel worker) propagates as a PostgreSQL error.
    let fxid = unsafe { pg_sys::GetCurrentFullTransactionId() }.value;
    if DURABLE.with(std::cell::Cell::get) == fxid {
        return Ok(fxid);
    }
    let lsn = crate::postgres::spi::one::<String>(
        "SELECT pg_catalog.pg_logical_emit_message(true, 'pg_credcrypt', ''::pg_catalog.text)::pg_catalog.text",
        &[],
    )
    .map_err(|e| Error::new(ErrorKind::Internal, "could not log the transaction id").with_detail(e.to_string()))?
    .and_then(|s| {
        let (hi, lo) = s.split_once('/')?;
        Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
    })
    .ok_or_else(|| Error::internal("pg_logical_emit_message answered no LSN"))?;
    // SAFETY: flushes WAL up to a position this backend has just written.
    unsafe { pg_sys::XLogFlush(lsn) };
    DURABLE.with(|d| d.set(fxid));
    Ok(fxid)
}

/// This database's part of the KV space: `<prefix>/<database>` (as the path builder spells it).
fn database_dir() -> Result<String, Error> {
    let probe = kv_value_path(&gucs::kv_path_prefix(), &database_name(), &[0u8; 16])?;
    Ok(probe.rsplit_once("/values/").map(|(d, _)| d.to_owned()).unwrap_or_default())
}

fn database_name() -> String {
    // SAFETY: MyDatabaseId is this backend's database; get_database_name palloc's a copy.
    unsafe {
        let p = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        if p.is_null() {
            return String::new();
        }
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// Where a value is written: a path, and the version it is at (0 for a new path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KvPlace {
    /// The KV path.
    pub path: String,
    /// Its current version, which the write must find (`cas`).
    pub cas: u64,
}

/// Stores each plaintext as version 1 of a new KV secret under `mount`; returns the references.
pub(crate) fn encrypt(mount: &str, plaintexts: &[&[u8]], contexts: &[Option<&str>]) -> Result<Vec<String>, Error> {
    let prefix = gucs::kv_path_prefix();
    let db = database_name();
    let places = contexts
        .iter()
        .map(|_| {
            let random = credcrypt_core::nonce::random_bytes::<16>()?;
            Ok(KvPlace { path: kv_value_path(&prefix, &db, &random)?, cas: 0 })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    write(mount, plaintexts, contexts, &places)
}

/// Where the value of a protected column goes for a row: `<prefix>/<database>/<schema>.<table>/
/// <binding id>/<identity>/<random>`; the old value's path when it is this designation's and
/// this row's (a new version of it: the history is kept), a new one otherwise.
pub(crate) fn row_place(
    mount: &str,
    schema: &str,
    table: &str,
    binding_id: &str,
    identity: &[Option<&str>],
    old: Option<&str>,
) -> Result<KvPlace, Error> {
    let random = credcrypt_core::nonce::random_bytes::<8>()?;
    let fresh = credcrypt_core::kv::kv_row_path(
        &gucs::kv_path_prefix(),
        &database_name(),
        schema,
        table,
        binding_id,
        identity,
        &random,
    )?;
    let stem = fresh.rsplit_once('/').map_or("", |(s, _)| s);
    if let Some(old) = old.and_then(|o| Ciphertext::parse(o).ok()) {
        if let (Some(m), Some(p), Some(v)) = (old.kv_mount(), old.kv_path(), old.kv_version()) {
            if m == mount && p.rsplit_once('/').is_some_and(|(s, _)| s == stem) {
                return Ok(KvPlace { path: p.to_owned(), cas: u64::from(v) });
            }
        }
    }
    Ok(KvPlace { path: fresh, cas: 0 })
}

/// The schema and name of relation `oid` (for a KV path; empty if it is gone).
pub(crate) fn relation_names(oid: pg_sys::Oid) -> (String, String) {
    // SAFETY: syscache lookups by OID; both return palloc'd copies or NULL.
    unsafe {
        let name = pg_sys::get_rel_name(oid);
        let ns = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(oid));
        let text = |p: *mut std::ffi::c_char| {
            if p.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        (text(ns), text(name))
    }
}

/// Asks the worker to destroy every version of each target once this (sub)transaction
/// commits: a path, or [`binding_target`].
pub(crate) fn forget(mount: &str, targets: &[String]) -> Result<(), Error> {
    if targets.is_empty() {
        return Ok(());
    }
    let xid = durable_xid()?.to_string();
    let items: Vec<ReqItem<'_>> =
        targets.iter().map(|t| ReqItem { data: t.as_bytes(), context: Some(xid.as_bytes()) }).collect();
    backend::call(Op::KvForget, mount, &items).map(|_| ())
}

/// Whether `path` is one the protection trigger writes for designation `binding_id` in this
/// database (`<prefix>/<database>/<table segment>/<binding id>/…`): the only paths a row's
/// DELETE or UPDATE may destroy. A reference that names anything else (planted with
/// `existing_values => 'migrate'`, or written past the trigger) is never destroyed through it.
pub(crate) fn path_of_designation(path: &str, binding_id: &str) -> bool {
    let Ok(dir) = database_dir() else { return false };
    path.strip_prefix(dir.as_str())
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.split_once('/'))
        .and_then(|(_, rest)| rest.strip_prefix(binding_id))
        .is_some_and(|rest| rest.starts_with('/'))
}

/// The forget target of every secret of a protected column (its binding id) in this database.
pub(crate) fn binding_target(binding_id: &str) -> Result<String, Error> {
    Ok(format!("binding:{}:{binding_id}", database_dir()?))
}

/// Writes each plaintext at its place under `mount`; returns the references.
pub(crate) fn write(
    mount: &str,
    plaintexts: &[&[u8]],
    contexts: &[Option<&str>],
    places: &[KvPlace],
) -> Result<Vec<String>, Error> {
    if plaintexts.is_empty() {
        return Ok(Vec::new());
    }
    let xid = durable_xid()?;
    let mut metas = Vec::with_capacity(plaintexts.len());
    for (c, place) in contexts.iter().zip(places) {
        let path = place.path.clone();
        let ctx = c.filter(|c| !c.is_empty());
        let binding = kv_binding(mount, &path, ctx.map(str::as_bytes));
        metas.push((KvWriteMeta { xid, cas: place.cas, binding, path }.encode(), ctx.is_some()));
    }
    let items: Vec<ReqItem<'_>> =
        plaintexts.iter().zip(&metas).map(|(p, (m, _))| ReqItem { data: p, context: Some(m.as_bytes()) }).collect();
    let answers = backend::call(Op::KvWrite, mount, &items)?;
    answers
        .into_iter()
        .zip(&metas)
        .map(|(a, (m, has_context))| {
            let v = a.map_err(|f| fail_to_error(&f))?;
            let version: u32 = std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Error::new(ErrorKind::ProviderProtocol, "the worker answered no KV version"))?;
            let path = m.splitn(4, ' ').nth(3).unwrap_or_default();
            format::kv_reference(mount, version, *has_context, path)
        })
        .collect()
}

/// A kv value waiting for its read: (position, parsed reference, context).
pub(crate) type KvEntry<'a> = (usize, Ciphertext<'a>, Option<&'a str>);

/// Reads the secrets of kv references, one result per entry (by position). The outer error
/// is for the whole call (OpenBao unreachable, worker not configured).
pub(crate) fn decrypt(entries: &[KvEntry<'_>]) -> Result<Vec<(usize, Decrypted)>, Error> {
    let dir = database_dir()?;
    let mut out = Vec::with_capacity(entries.len());
    let mut by_mount: std::collections::BTreeMap<&str, Vec<(usize, String, String)>> = Default::default();
    for (i, parsed, ctx) in entries {
        let (Some(mount), Some(path), Some(version)) = (parsed.kv_mount(), parsed.kv_path(), parsed.kv_version())
        else {
            out.push((*i, Err(Error::malformed("not a kv reference"))));
            continue;
        };
        if !path.strip_prefix(dir.as_str()).is_some_and(|r| r.starts_with('/')) {
            out.push((
                *i,
                Err(Error::new(ErrorKind::InvalidArgument, "the kv reference is outside this database's KV path")
                    .with_detail(
                        "pg_credcrypt reads only paths under credcrypt.kv_path_prefix and this database's name",
                    )),
            ));
            continue;
        }
        match (parsed.has_context, ctx.is_some()) {
            (true, false) => {
                out.push((
                    *i,
                    Err(Error::auth_failed().with_detail("the value is bound to a context, and none was given")),
                ));
                continue;
            }
            (false, true) => {
                out.push((
                    *i,
                    Err(Error::auth_failed().with_detail("the value is bound to no context, and one was given")),
                ));
                continue;
            }
            _ => {}
        }
        let binding = kv_binding(mount, path, ctx.map(str::as_bytes));
        by_mount.entry(mount).or_default().push((*i, format!("{version}:{path}"), binding));
    }
    for (mount, reads) in by_mount {
        let items: Vec<ReqItem<'_>> =
            reads.iter().map(|(_, d, b)| ReqItem { data: d.as_bytes(), context: Some(b.as_bytes()) }).collect();
        let answers = backend::call(Op::KvRead, mount, &items)?;
        for (k, ((i, _, _), a)) in reads.iter().zip(answers).enumerate() {
            let r = match a {
                // The answers of a request did not fit one slot: read this one alone.
                Err(f) if f.kind == FailKind::TooLarge => {
                    backend::call(Op::KvRead, mount, &items[k..=k])?.pop().unwrap_or_else(|| {
                        Err(credcrypt_core::wire::Fail { kind: FailKind::Other, message: "no answer".into() })
                    })
                }
                a => a,
            };
            out.push((*i, r.map_err(|f| fail_to_error(&f))));
        }
    }
    Ok(out)
}
