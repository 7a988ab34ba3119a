//! Crypto-shredding: `credcrypt.shred_key(key_name)` destroys a Transit key (a tenant's
//! per-row key) in OpenBao, removes the envelope data keys it wrapped, and records the erasure
//! in `credcrypt.erasures`. Every value under the key is then undecryptable, everywhere the
//! key's ciphertexts went — the table, its WAL, dumps and backups, standbys — and fails with
//! the "key destroyed" error (38000) rather than as tampering (39000).
//!
//! Order, so that no failure leaves a half-done erasure unrecorded: the catalog work (count,
//! data keys removed, erasure row) happens first in the caller's transaction, OpenBao's
//! destruction last; if OpenBao refuses, the statement fails and the transaction rolls the
//! catalog back. A crash between OpenBao's answer and the commit leaves the key destroyed
//! without a record: `security_report()` then reports the values whose key is missing.

use credcrypt_core::wire::Op;
use credcrypt_core::KeyRef;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode::*;

use crate::errors::{fail, raise, OrRaise as _};
use crate::postgres::guard::as_catalog_owner;
use crate::postgres::spi;
use crate::postgres::spi::fail as spi_fail;
use crate::providers::transit::backend;

/// What `shred_key` did.
pub(crate) struct Shredded {
    pub key_name: String,
    pub values_unreadable: i64,
    pub data_keys_removed: i32,
    pub erased_at: String,
}

/// The Transit key a `transit:<name>` or `envelope:<name>` reference names.
fn transit_name(key_name: &str) -> String {
    match KeyRef::parse(key_name).or_raise() {
        KeyRef::Transit(n) | KeyRef::Envelope(n) => n,
        KeyRef::Local | KeyRef::Kv(_) => fail(
            ERRCODE_INVALID_PARAMETER_VALUE,
            "only a Transit key can be shredded",
            None,
            "shred_key destroys an OpenBao Transit key: pass 'envelope:<name>' or 'transit:<name>' (a tenant's per-row key).",
        ),
    }
}

/// `shred_key(key_name)`.
pub(crate) fn shred(key_name: &str, count: impl Fn(&str) -> i64) -> Shredded {
    crate::postgres::catalog::require_current_sql();
    let name = transit_name(key_name);
    // A key that protects whole columns, or roots a blind index, is not a tenant's key:
    // destroying it would erase every row of those columns. Refused.
    let whole = spi::one::<String>(
        "SELECT pg_catalog.format('%s.%I', relid, column_name) FROM credcrypt.protected_columns \
          WHERE key_name OPERATOR(pg_catalog.=) ANY (ARRAY['transit:' OPERATOR(pg_catalog.||) $1, 'envelope:' OPERATOR(pg_catalog.||) $1]) LIMIT 1",
        &[name.as_str().into()],
    )
    .unwrap_or_else(|e| spi_fail(e));
    if let Some(column) = whole {
        fail(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("Transit key {name} is the key of every value of {column}"),
            Some("shred_key destroys a tenant's per-row key, not the key of a whole column".into()),
            "Move the column to another key first (CALL credcrypt.reencrypt_column), or unprotect it.",
        );
    }
    let rooted = as_catalog_owner(|| {
        spi::one::<i64>(
            "SELECT pg_catalog.count(*) FROM credcrypt.index_keys WHERE root OPERATOR(pg_catalog.=) ('transit:' OPERATOR(pg_catalog.||) $1)",
            &[name.as_str().into()],
        )
    })
    .unwrap_or_else(|e| spi_fail(e))
    .unwrap_or(0);
    if rooted > 0 {
        fail(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("Transit key {name} wraps {rooted} blind-index key(s)"),
            None,
            "Blind indexes rooted in this key would stop working: it is not a tenant's key.",
        );
    }
    // Writers of this key's data keys wait, and a concurrent shred of it waits (the erasure row's
    // key): the count and the removal see the same data keys.
    as_catalog_owner(|| spi::run("LOCK TABLE credcrypt.data_keys IN SHARE ROW EXCLUSIVE MODE", &[]))
        .unwrap_or_else(|e| spi_fail(e));
    let values_unreadable = count(&name);
    // SAFETY: reads the current user's name (an existing role): who erases, recorded as such
    // (the row is written as the catalog's owner).
    let caller = unsafe { std::ffi::CStr::from_ptr(pg_sys::GetUserNameFromId(pg_sys::GetUserId(), false)) }
        .to_string_lossy()
        .into_owned();
    let (data_keys_removed, erased_at) = as_catalog_owner(|| {
        let removed = spi::rows_mut(
            "DELETE FROM credcrypt.data_keys WHERE transit_key OPERATOR(pg_catalog.=) $1 RETURNING 1",
            &[name.as_str().into()],
            |_| Ok(()),
        )?
        .len() as i32;
        let at = spi::rows_mut(
            "INSERT INTO credcrypt.erasures (key_name, values_unreadable, data_keys_removed, erased_by) \
             VALUES ($1, $2, $3, $4) RETURNING erased_at::pg_catalog.text",
            &[name.as_str().into(), values_unreadable.into(), removed.into(), caller.as_str().into()],
            |r| r.get::<String>(1),
        )?
        .into_iter()
        .flatten()
        .next()
        .unwrap_or_default();
        Ok::<_, pgrx::spi::SpiError>((removed, at))
    })
    .unwrap_or_else(|e| spi_fail(e));
    // Every backend (here and on standbys, through the WAL) forgets the data keys it cached.
    invalidate_data_keys();
    // Last: OpenBao destroys the key. A refusal fails the statement (the catalog rolls back).
    let answer = backend::call(Op::DeleteKey, &name, &[]).or_raise();
    if let Some(Err(f)) = answer.into_iter().next() {
        raise(backend::fail_to_error(&f));
    }
    Shredded { key_name: name, values_unreadable, data_keys_removed, erased_at }
}

/// Sends a relcache invalidation for `credcrypt.data_keys`: every backend's envelope caches are
/// emptied when it processes it (providers::envelope).
fn invalidate_data_keys() {
    // SAFETY: catalog cache lookups by name, and an invalidation of an existing relation.
    unsafe {
        let ns = pg_sys::get_namespace_oid(c"credcrypt".as_ptr(), true);
        if ns != pg_sys::InvalidOid {
            let rel = pg_sys::get_relname_relid(c"data_keys".as_ptr(), ns);
            if rel != pg_sys::InvalidOid {
                pg_sys::CacheInvalidateRelcacheByRelid(rel);
            }
        }
    }
}
