//! Transit-only functions: `import_transit_ciphertext`, `rotate_key`, `status`.

use std::sync::atomic::Ordering::SeqCst;

use credcrypt_core::wire::Op;
use credcrypt_core::{format, Error, ErrorKind, KeyRef};
use pgrx::prelude::*;

use crate::errors::OrRaise as _;
use crate::transit::{backend, queue};

fn transit_name(key_name: &str) -> String {
    match KeyRef::parse(key_name).or_raise() {
        KeyRef::Transit(n) => n,
        KeyRef::Local | KeyRef::Envelope(_) => crate::errors::raise(
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
/// touched).
#[pg_extern(volatile)]
fn rotate_key(key_name: &str) -> i32 {
    let envelope = matches!(KeyRef::parse(key_name).or_raise(), KeyRef::Envelope(_));
    let name = match KeyRef::parse(key_name).or_raise() {
        KeyRef::Envelope(n) => n,
        _ => transit_name(key_name),
    };
    let answer = backend::call(Op::Rotate, &name, &[]).or_raise();
    let v = answer.into_iter().next().ok_or_else(|| Error::malformed("empty answer")).or_raise();
    let v = v.map_err(|f| backend::fail_to_error(&f)).or_raise();
    let version = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    if envelope {
        crate::envelope::rewrap_all(&name).or_raise();
    }
    version
}

/// The Transit provider's state: worker, OpenBao address, token, counters, last error.
#[pg_extern(volatile)]
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
    let Some(q) = queue::get() else {
        return TableIterator::once((
            false,
            None,
            0,
            None,
            None,
            0,
            0,
            0,
            None,
            0,
            0,
            0,
            pgrx::JsonB(serde_json::json!({})),
            Some("pg_credcrypt is not in shared_preload_libraries".to_owned()),
        ));
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
    let names = [
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
    ];
    let mut errors = serde_json::Map::new();
    for (i, c) in s.errors.iter().enumerate().skip(1) {
        let n = c.load(SeqCst);
        if n > 0 {
            errors.insert(names[i].to_owned(), n.into());
        }
    }
    TableIterator::once((
        true,
        (pid != 0).then_some(pid),
        s.worker_starts.load(SeqCst) as i64,
        (!addr.is_empty()).then_some(addr),
        ttl,
        s.requests.load(SeqCst) as i64,
        items,
        batches,
        (batches > 0).then(|| items as f64 / batches as f64),
        s.failovers.load(SeqCst) as i64,
        s.renewals.load(SeqCst) as i64,
        s.fallbacks.load(SeqCst) as i64,
        pgrx::JsonB(serde_json::Value::Object(errors)),
        (!last_error.is_empty()).then_some(last_error),
    ))
}
