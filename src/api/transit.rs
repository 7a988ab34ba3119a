//! Transit-only functions: `import_transit_ciphertext`, `rotate_key`, `status`.

use std::sync::atomic::Ordering::SeqCst;

use credcrypt_core::wire::Op;
use credcrypt_core::{format, Error, ErrorKind, KeyRef};
use pgrx::prelude::*;

use crate::errors::OrRaise as _;
use crate::providers::transit::{backend, queue};

fn transit_name(key_name: &str) -> String {
    match KeyRef::parse(key_name).or_raise() {
        KeyRef::Transit(n) => n,
        KeyRef::Local | KeyRef::Envelope(_) | KeyRef::Kv(_) => crate::errors::raise(
            Error::new(ErrorKind::InvalidKeyRef, "a Transit key reference is required")
                .with_detail("use 'transit:<key name>'"),
        ),
    }
}

/// Wraps a bare Transit ciphertext (`vault:vN:…`, as applications that call Transit directly
/// store them) into format v1 without decrypting it. `has_context` records whether the
/// application passed `associated_data`.
#[pg_extern(immutable, parallel_safe, strict)]
fn import_transit_ciphertext(ciphertext: &str, key_name: &str, has_context: default!(bool, false)) -> String {
    format::wrap_transit(&transit_name(key_name), ciphertext, has_context).or_raise()
}

/// Rotates a Transit key and returns its new latest version. New values use the new
/// version; old values still decrypt until `min_decryption_version` is raised in OpenBao.
/// For `envelope:<key>`, also rewraps every data key of that Transit key (table rows are not
/// touched); for both, the blind-index roots it wraps.
#[pg_extern(volatile)]
fn rotate_key(key_name: &str) -> i32 {
    let envelope = matches!(KeyRef::parse(key_name).or_raise(), KeyRef::Envelope(_));
    let name = match KeyRef::parse(key_name).or_raise() {
        KeyRef::Envelope(n) => n,
        _ => transit_name(key_name),
    };
    let answer = backend::call(Op::Rotate, &name, &[]).or_raise();
    let v =
        answer.into_iter().next().ok_or_else(|| Error::internal("the worker sent no answer to a rotation")).or_raise();
    let v = v.map_err(|f| backend::fail_to_error(&f)).or_raise();
    let version = std::str::from_utf8(&v)
        .ok()
        .and_then(|s| s.parse::<i32>().ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| Error::internal("the worker's rotation answer is not a version number"))
        .or_raise();
    if envelope {
        crate::providers::envelope::rewrap_all(&name).or_raise();
    }
    // Blind-index roots wrapped by this key move to the new version too.
    crate::protect::blind::rewrap_roots(&name).or_raise();
    version
}

/// A snapshot of the worker's shared counters.
struct Snapshot {
    preloaded: bool,
    worker_pid: Option<i32>,
    worker_starts: i64,
    active_address: Option<String>,
    token_ttl_seconds: Option<i64>,
    requests: i64,
    values_served: i64,
    batches: i64,
    mean_batch_size: Option<f64>,
    failovers: i64,
    token_renewals: i64,
    fallback_encryptions: i64,
    worker_timeouts: i64,
    /// Requests in the queue now: claimed by a backend and not yet answered.
    queue_depth: i64,
    /// Per failure kind: (name, count, last time in unix ms).
    errors: Vec<(&'static str, i64, i64)>,
    last_error: Option<String>,
}

/// Names of the failure kinds, by `FailKind` number.
const KIND_NAMES: [&str; queue::ERROR_KINDS] = [
    "",
    "unavailable",
    "sealed",
    "permission_denied",
    "key_not_found",
    "unsupported_key",
    "authentication_failed",
    "invalid_input",
    "config",
    "too_large",
    "other",
    "rejected",
    "protocol",
    "version_retired",
    "destroyed",
];

fn snapshot() -> Snapshot {
    let Some(q) = queue::get() else {
        return Snapshot {
            preloaded: false,
            worker_pid: None,
            worker_starts: 0,
            active_address: None,
            token_ttl_seconds: None,
            requests: 0,
            values_served: 0,
            batches: 0,
            mean_batch_size: None,
            failovers: 0,
            token_renewals: 0,
            fallback_encryptions: 0,
            worker_timeouts: 0,
            queue_depth: 0,
            errors: Vec::new(),
            last_error: Some("pg_credcrypt is not in shared_preload_libraries".to_owned()),
        };
    };
    let s = &q.stats;
    let pid = q.worker_pid.load(SeqCst);
    let (addr, last_error) = q.text();
    let ttl_ms = s.token_ttl_ms.load(SeqCst);
    let ttl = (ttl_ms >= 0).then(|| {
        let at = s.token_ttl_at_ms.load(SeqCst);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(at);
        ((ttl_ms - (now - at)).max(0)) / 1000
    });
    let batches = s.batches.load(SeqCst) as i64;
    let items = s.items.load(SeqCst) as i64;
    let errors = (1..queue::ERROR_KINDS)
        .filter_map(|i| {
            let n = s.errors[i].load(SeqCst) as i64;
            (n > 0).then(|| (KIND_NAMES[i], n, s.errors_at[i].load(SeqCst)))
        })
        .collect();
    Snapshot {
        preloaded: true,
        worker_pid: (pid != 0).then_some(pid),
        worker_starts: s.worker_starts.load(SeqCst) as i64,
        active_address: (!addr.is_empty()).then_some(addr),
        token_ttl_seconds: ttl,
        requests: s.requests.load(SeqCst) as i64,
        values_served: items,
        batches,
        mean_batch_size: (batches > 0).then(|| items as f64 / batches as f64),
        failovers: s.failovers.load(SeqCst) as i64,
        token_renewals: s.renewals.load(SeqCst) as i64,
        fallback_encryptions: s.fallbacks.load(SeqCst) as i64,
        worker_timeouts: s.timeouts.load(SeqCst) as i64,
        queue_depth: q.depth() as i64,
        errors,
        last_error: (!last_error.is_empty()).then_some(last_error),
    }
}

/// `{kind: count}` (the row of 0.1.0).
fn error_counts(errors: &[(&'static str, i64, i64)]) -> pgrx::JsonB {
    pgrx::JsonB(serde_json::Value::Object(errors.iter().map(|(k, n, _)| ((*k).to_owned(), (*n).into())).collect()))
}

/// `{kind: {"count": n, "last": "<ISO time>"}}`.
fn error_details(errors: &[(&'static str, i64, i64)]) -> pgrx::JsonB {
    let iso = |ms: i64| {
        // SAFETY: converts a unix time to PostgreSQL's timestamptz and formats it.
        let ts = pgrx::datum::TimestampWithTimeZone::try_from(
            unsafe { pg_sys::time_t_to_timestamptz(ms / 1000) } + (ms % 1000) * 1000,
        );
        ts.map(|t| t.to_iso_string()).unwrap_or_default()
    };
    pgrx::JsonB(serde_json::Value::Object(
        errors
            .iter()
            .map(|(k, n, at)| {
                (
                    (*k).to_owned(),
                    serde_json::json!({"count": n, "last": if *at > 0 { iso(*at) } else { String::new() }}),
                )
            })
            .collect(),
    ))
}

/// The Transit provider's state (the row of 0.1.0: kept for its SQL until the extension is
/// updated).
#[pg_extern(volatile, name = "_status_0_1")]
#[allow(clippy::type_complexity)] // the row type is spelled out for pgrx's SQL generation
fn status() -> TableIterator<
    'static,
    (
        name!(preloaded, bool),
        name!(worker_pid, Option<i32>),
        name!(worker_starts, i64),
        name!(active_address, Option<String>),
        name!(token_ttl_seconds, Option<i64>),
        name!(requests, i64),
        name!(values_served, i64),
        name!(batches, i64),
        name!(mean_batch_size, Option<f64>),
        name!(failovers, i64),
        name!(token_renewals, i64),
        name!(fallback_encryptions, i64),
        name!(errors, pgrx::JsonB),
        name!(last_error, Option<String>),
    ),
> {
    let s = snapshot();
    TableIterator::once((
        s.preloaded,
        s.worker_pid,
        s.worker_starts,
        s.active_address,
        s.token_ttl_seconds,
        s.requests,
        s.values_served,
        s.batches,
        s.mean_batch_size,
        s.failovers,
        s.token_renewals,
        s.fallback_encryptions,
        error_counts(&s.errors),
        s.last_error,
    ))
}

/// The Transit provider's state: worker, OpenBao address, token, counters, failures per kind
/// with the time of the last one, requests that timed out waiting for the worker, last error,
/// and the requests waiting in the queue now.
#[pg_extern(volatile, name = "status")]
#[allow(clippy::type_complexity)] // the row type is spelled out for pgrx's SQL generation
fn status_v2() -> TableIterator<
    'static,
    (
        name!(preloaded, bool),
        name!(worker_pid, Option<i32>),
        name!(worker_starts, i64),
        name!(active_address, Option<String>),
        name!(token_ttl_seconds, Option<i64>),
        name!(requests, i64),
        name!(values_served, i64),
        name!(batches, i64),
        name!(mean_batch_size, Option<f64>),
        name!(failovers, i64),
        name!(token_renewals, i64),
        name!(fallback_encryptions, i64),
        name!(errors, pgrx::JsonB),
        name!(last_error, Option<String>),
        name!(worker_timeouts, i64),
        name!(error_details, pgrx::JsonB),
        name!(queue_depth, i64),
    ),
> {
    let s = snapshot();
    TableIterator::once((
        s.preloaded,
        s.worker_pid,
        s.worker_starts,
        s.active_address,
        s.token_ttl_seconds,
        s.requests,
        s.values_served,
        s.batches,
        s.mean_batch_size,
        s.failovers,
        s.token_renewals,
        s.fallback_encryptions,
        error_counts(&s.errors),
        s.last_error,
        s.worker_timeouts,
        error_details(&s.errors),
        s.queue_depth,
    ))
}

/// `shred_key(key_name)` — crypto-shredding (docs/protected-columns.md, "Per-row keys"): the
/// Transit key is destroyed in OpenBao, the data keys it wrapped removed, and the erasure
/// recorded. SQL wrapper: `credcrypt.shred_key`.
#[pg_extern(volatile, strict, name = "_shred_key")]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)] // the row type is spelled out for pgrx's SQL generation
fn shred_key(
    key_name: &str,
) -> TableIterator<
    'static,
    (name!(key_name, String), name!(values_unreadable, i64), name!(data_keys_removed, i32), name!(erased_at, String)),
> {
    let s = crate::shred::shred(key_name, crate::reports::usage::values_under);
    TableIterator::once((s.key_name, s.values_unreadable, s.data_keys_removed, s.erased_at))
}
