//! The providers: which key encrypts, where a value is decrypted, and the local fallback.
//!
//! - [`local`]: the local AES-256-GCM key ring (`local`);
//! - [`transit`]: OpenBao Transit through the background worker (`transit:<key>`);
//! - [`envelope`]: local data keys wrapped by a Transit key (`envelope:<key>`);
//! - [`kv`]: secrets stored in OpenBao KV v2 through the worker (`kv:<mount>`), with
//!   [`kv_journal`], the worker's record of writes whose transaction has not ended.
//!
//! Everything above (the SQL functions, the protection trigger, migrations) calls
//! [`encrypt_many`]/[`encrypt_with`] and [`decrypt_many`]/[`decrypt_each`] and never a provider
//! directly. The local fallback applies to outages only (OpenBao unreachable or sealed), and
//! never to migrations.

pub mod blind;
pub mod envelope;
pub mod kv;
pub mod kv_journal;
pub mod local;
pub mod transit;

use credcrypt_core::format::{self, Ciphertext};
use credcrypt_core::wire::{FailKind, Op, ReqItem};
pub(crate) use credcrypt_core::Decrypted;
use credcrypt_core::{Error, ErrorKind, KeyRef, KeyTemplate, Provider};
use pgrx::IntoDatum as _;
use zeroize::Zeroizing;

use crate::gucs::{self, Fallback};
use transit::backend::{self, fail_to_error};

/// Resolves a key argument (NULL → `credcrypt.default_key`).
pub(crate) fn key_ref(key_name: Option<&str>) -> Result<KeyRef, Error> {
    match key_name {
        Some(k) => KeyRef::parse(k),
        None => KeyRef::parse(&gucs::default_key()),
    }
}

/// The key of a protected column: one key, or one per row — a per-row key reference
/// (`envelope:tenant-{org_id}`), resolved with the value of a bind column in each row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ColumnKey {
    /// Every value under this key.
    Fixed(KeyRef),
    /// Each row's value under the key its bind column names.
    PerRow(KeyTemplate),
}

impl ColumnKey {
    /// Parses a designation's key: a key reference, or a per-row key reference.
    pub(crate) fn parse(s: &str) -> Result<ColumnKey, Error> {
        match KeyTemplate::parse(s)? {
            Some(t) => Ok(ColumnKey::PerRow(t)),
            None => KeyRef::parse(s).map(ColumnKey::Fixed),
        }
    }

    /// The key of a row whose template column holds `value` (ignored for a fixed key).
    pub(crate) fn for_row(&self, value: Option<&str>) -> Result<std::borrow::Cow<'_, KeyRef>, Error> {
        match self {
            ColumnKey::Fixed(k) => Ok(std::borrow::Cow::Borrowed(k)),
            ColumnKey::PerRow(t) => t.resolve(value).map(std::borrow::Cow::Owned),
        }
    }
}

impl std::fmt::Display for ColumnKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ColumnKey::Fixed(k) => k.fmt(f),
            ColumnKey::PerRow(t) => t.fmt(f),
        }
    }
}

/// Encrypts values with a per-row key (`key`, resolved for their row): never falls back to the
/// local key (a value outside its tenant's key would survive the key's destruction); when
/// OpenBao has no such key and `credcrypt.auto_create_keys` is on, asks the worker to create it
/// (creating an existing key changes nothing, so concurrent first writes create it once) and
/// encrypts again.
pub(crate) fn encrypt_per_row(
    plaintexts: &[&[u8]],
    key: &KeyRef,
    contexts: &[Option<&str>],
) -> Result<Vec<String>, Error> {
    match encrypt_with(plaintexts, key, contexts, false) {
        Err(e) if e.kind == ErrorKind::TransitKeyNotFound && gucs::auto_create_keys() => {
            // (encrypt_with refused the name above if it was shredded here.)
            let name = key.transit_name().ok_or(e)?;
            let created = backend::call(Op::CreateKey, name, &[])?;
            if let Some(Err(f)) = created.into_iter().next() {
                return Err(fail_to_error(&f));
            }
            encrypt_with(plaintexts, key, contexts, false)
        }
        Err(e) if e.kind == ErrorKind::TransitKeyNotFound => Err(e.with_detail(
            "the per-row key does not exist in OpenBao: create it there, or set credcrypt.auto_create_keys = on (docs/openbao.md)",
        )),
        r => r,
    }
}

thread_local! {
    /// Key names this backend found in no erasure record, forgotten when `credcrypt.data_keys`
    /// is invalidated (every `shred_key` sends that invalidation; a backend processes it at its
    /// next transaction or lock, so a transaction already open during a shred may still see
    /// "not erased" — its writes then reach OpenBao, where the key is gone unless somebody made
    /// it again within that window) and bounded.
    static NOT_ERASED: std::cell::RefCell<std::collections::HashSet<String>> =
        std::cell::RefCell::new(std::collections::HashSet::new());
}

const NOT_ERASED_MAX: usize = 4096;

/// Fails with "key destroyed" when Transit key `name` was shredded in this database.
fn refuse_erased(name: &str) -> Result<(), Error> {
    if NOT_ERASED.with(|s| s.borrow().contains(name)) {
        return Ok(());
    }
    // An erasure record that cannot be read is an error, never "not erased".
    if let Some(at) = erasure_lookup(name)? {
        return Err(Error::new(ErrorKind::KeyDestroyed, "this key was destroyed (crypto-shredded)")
            .with_detail(format!("Transit key {name} was destroyed at {at}; write under a new key name")));
    }
    envelope::note_catalog_oid(); // its invalidation is what forgets the answer
    NOT_ERASED.with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            if s.len() >= NOT_ERASED_MAX {
                s.clear();
            }
            s.insert(name.to_owned());
        }
    });
    Ok(())
}

/// Forgets which key names were found not erased (the `credcrypt.data_keys` invalidation
/// that `shred_key` sends; never raises).
pub(crate) fn forget_erasure_checks() {
    NOT_ERASED.with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            s.clear();
        }
    });
}

/// When Transit key `name` was destroyed (`credcrypt.shred_key`), if it was: read from
/// `credcrypt.erasures` with the latest snapshot. Only the SQL of 0.3.0 on has the table.
pub(crate) fn erasure_of(name: &str) -> Option<String> {
    erasure_lookup(name).ok().flatten()
}

/// [`erasure_of`], with the catalog error when the record cannot be read.
fn erasure_lookup(name: &str) -> Result<Option<String>, Error> {
    if !crate::postgres::catalog::has_column(c"erasures", c"key_name") {
        return Ok(None);
    }
    let name_datum = name.into_datum();
    crate::postgres::guard::as_catalog_owner(|| {
        crate::postgres::spi::rows_latest(
            c"SELECT erased_at::pg_catalog.text FROM credcrypt.erasures \
               WHERE key_name OPERATOR(pg_catalog.=) $1 ORDER BY erased_at DESC LIMIT 1",
            &[(pgrx::pg_sys::TEXTOID, name_datum)],
            |r| r.get::<String>(1).unwrap_or_default(),
        )
    })
    .map(|v| v.into_iter().next())
    .map_err(|e| {
        Error::new(ErrorKind::CatalogMismatch, "credcrypt.erasures could not be read").with_detail(e.to_string())
    })
}

/// `e` (a "key not found" error for Transit key `name`), or the "key destroyed" error when the
/// key was destroyed on purpose.
pub(crate) fn destroyed_or(name: &str, e: Error) -> Error {
    match erasure_of(name) {
        Some(at) => Error::new(
            ErrorKind::KeyDestroyed,
            "the key of this value was destroyed (crypto-shredded): the value can never be decrypted",
        )
        .with_detail(format!("Transit key {name} was destroyed at {at}")),
        None => e,
    }
}

/// The error for a `kv:<mount>` key reference where this build does not serve it yet: a key
/// inside a jsonb column, a blind index's root (docs/openbao.md).
pub(crate) fn kv_not_served() -> Error {
    Error::new(ErrorKind::UnsupportedProvider, "the OpenBao KV provider (kv:<mount>) cannot be used here yet")
        .with_detail("kv:<mount> serves values and protected text columns; not (yet) a key inside a jsonb column, a blind index or a per-row key")
}

/// Whether a Transit failure may fall back to the local key (OpenBao unreachable only).
fn may_fall_back(e: &Error) -> bool {
    e.kind == ErrorKind::ProviderUnavailable && gucs::fallback() == Fallback::Local
}

fn fallback_local(plaintexts: &[&[u8]], contexts: &[Option<&str>], cause: &Error) -> Result<Vec<String>, Error> {
    let out = local::with_keyring(|ring| {
        plaintexts
            .iter()
            .zip(contexts)
            .map(|(p, c)| ring.encrypt(p, c.map(str::as_bytes)))
            .collect::<Result<Vec<_>, _>>()
    })?;
    if let Some(q) = crate::providers::transit::queue::get() {
        q.stats.fallbacks.fetch_add(out.len() as u64, std::sync::atomic::Ordering::SeqCst);
    }
    pgrx::warning!(
        "pg_credcrypt: OpenBao unavailable ({}); {} value(s) encrypted with the local key (credcrypt.fallback = local)",
        cause.message,
        out.len()
    );
    Ok(out)
}

/// Encrypts many values with one key; one Transit round trip for the whole set. Falls back to
/// the local key when OpenBao is unreachable and `credcrypt.fallback = local`.
pub(crate) fn encrypt_many(
    plaintexts: &[&[u8]],
    key: &KeyRef,
    contexts: &[Option<&str>],
) -> Result<Vec<String>, Error> {
    encrypt_with(plaintexts, key, contexts, true)
}

/// [`encrypt_many`], with the local fallback allowed or not (migrations never fall back).
pub(crate) fn encrypt_with(
    plaintexts: &[&[u8]],
    key: &KeyRef,
    contexts: &[Option<&str>],
    allow_fallback: bool,
) -> Result<Vec<String>, Error> {
    // In a query with a parallel plan (reachable only through a caller's own function marked
    // PARALLEL SAFE or RESTRICTED around ours), the erasure record, data keys and kv journal
    // could only be read with the query's snapshot — one from before a shred_key — and nothing
    // could be written: refused, and nothing cached. The local key needs no catalog.
    if !matches!(key, KeyRef::Local) && crate::postgres::xact::in_parallel_mode() {
        return Err(Error::new(ErrorKind::InParallelQuery, "cannot encrypt with this key inside a parallel query")
            .with_detail(format!(
                "key {key}: its key catalogs cannot be read reliably, or written, in parallel mode"
            )));
    }
    // A key shredded here is not written under again, even if a key of that name exists again
    // in OpenBao (made from another database, or by hand): whatever the path (the trigger,
    // encrypt_credential(s), a re-encryption), the old values would then fail as tampering
    // instead of as destroyed, and new ones would revive an erased tenant.
    if let KeyRef::Transit(name) | KeyRef::Envelope(name) = key {
        refuse_erased(name)?;
    }
    match key {
        // Never the local fallback: a kv secret lives only in OpenBao.
        KeyRef::Kv(mount) => kv::encrypt(mount, plaintexts, contexts),
        KeyRef::Envelope(name) => match envelope::encrypt(name, plaintexts, contexts) {
            Err(e) if allow_fallback && may_fall_back(&e) => {
                let contexts: Vec<Option<&str>> = contexts.iter().map(|c| c.filter(|c| !c.is_empty())).collect();
                fallback_local(plaintexts, &contexts, &e)
            }
            r => r,
        },
        KeyRef::Local => local::with_keyring(|ring| {
            plaintexts.iter().zip(contexts).map(|(p, c)| ring.encrypt(p, c.map(str::as_bytes))).collect()
        }),
        KeyRef::Transit(name) => {
            let contexts: Vec<Option<&str>> = contexts.iter().map(|c| c.filter(|c| !c.is_empty())).collect();
            if contexts.iter().flatten().any(|c| reserved(c)) {
                return Err(reserved_error());
            }
            let items: Vec<ReqItem<'_>> = plaintexts
                .iter()
                .zip(&contexts)
                .map(|(p, c)| ReqItem { data: p, context: c.map(str::as_bytes) })
                .collect();
            let answers = match backend::call(Op::Encrypt, name, &items) {
                Ok(a) => a,
                Err(e) if allow_fallback && may_fall_back(&e) => return fallback_local(plaintexts, &contexts, &e),
                Err(e) => return Err(e),
            };
            answers
                .into_iter()
                .zip(&contexts)
                .map(|(a, c)| {
                    let vault = a.map_err(|f| fail_to_error(&f))?;
                    let vault =
                        std::str::from_utf8(&vault).map_err(|_| Error::malformed("Transit answered non-text"))?;
                    format::wrap_transit(name, vault, c.is_some())
                })
                .collect()
        }
    }
}

/// A Transit value waiting for its batch: (position, `vault:vN:` payload, context).
type TransitEntry<'a> = (usize, &'a str, Option<&'a str>);

/// Decrypts many values (any provider, mixed); bare `vault:vN:` values use `key_name`.
/// The first failing value fails the call.
pub(crate) fn decrypt_many(
    ciphertexts: &[&str],
    contexts: &[Option<&str>],
    key_name: Option<&str>,
) -> Result<Vec<Zeroizing<Vec<u8>>>, Error> {
    decrypt_each(ciphertexts, contexts, key_name)?.into_iter().collect()
}

/// Decrypts many values, one result per value. The outer error is for the whole call
/// (OpenBao unreachable, worker not configured): no value could be tried.
pub(crate) fn decrypt_each(
    ciphertexts: &[&str],
    contexts: &[Option<&str>],
    key_name: Option<&str>,
) -> Result<Vec<Decrypted>, Error> {
    let mut out: Vec<Decrypted> = ciphertexts.iter().map(|_| Err(Error::malformed("not processed"))).collect();
    // Transit values grouped by key: (index, payload, context).
    let mut transit: std::collections::BTreeMap<String, Vec<TransitEntry<'_>>> = Default::default();
    let mut envelope = Vec::new();
    let mut kv_values = Vec::new();
    for (i, (ct, ctx)) in ciphertexts.iter().zip(contexts).enumerate() {
        let ctx = ctx.filter(|c| !c.is_empty());
        match classify_for_decrypt(ct, ctx, key_name) {
            Ok(Route::Local(parsed)) => {
                out[i] = local::with_keyring(|ring| ring.decrypt_parsed(&parsed, ctx.map(str::as_bytes)));
            }
            Ok(Route::Envelope(parsed)) => envelope.push((i, parsed, ctx)),
            Ok(Route::Kv(parsed)) => kv_values.push((i, parsed, ctx)),
            Ok(Route::Transit(name, payload)) => transit.entry(name).or_default().push((i, payload, ctx)),
            Err(e) => out[i] = Err(e),
        }
    }
    if !envelope.is_empty() {
        for (i, r) in envelope::decrypt(&envelope)? {
            out[i] = r;
        }
    }
    if !kv_values.is_empty() {
        for (i, r) in kv::decrypt(&kv_values)? {
            out[i] = r;
        }
    }
    for (name, mut entries) in transit {
        // Envelope data keys are wrapped with associated data that starts with the reserved
        // prefix: no caller may pass it, so no data key unwraps through the decrypt functions
        // (it would decrypt values offline) — not even a copy from a dump or another database.
        entries.retain(|(i, _, c)| {
            let refused = c.is_some_and(reserved);
            if refused {
                out[*i] = Err(reserved_error());
            }
            !refused
        });
        // Data keys of 0.1.0 were wrapped without associated data: those still in the table are
        // refused by value.
        let bare: Vec<String> =
            entries.iter().filter(|(_, _, c)| c.is_none()).map(|(_, p, _)| (*p).to_owned()).collect();
        if !bare.is_empty() {
            let wrapped = envelope::wrapped_among(&bare)?;
            entries.retain(|(i, p, c)| {
                let refused = c.is_none() && wrapped.contains(*p);
                if refused {
                    out[*i] = Err(Error::new(ErrorKind::InvalidArgument, "the value is an envelope data key")
                        .with_detail("wrapped data keys in credcrypt.data_keys cannot be decrypted through SQL"));
                }
                !refused
            });
        }
        let items: Vec<ReqItem<'_>> =
            entries.iter().map(|(_, p, c)| ReqItem { data: p.as_bytes(), context: c.map(str::as_bytes) }).collect();
        let answers = match backend::call(Op::Decrypt, &name, &items) {
            Err(e) if e.kind == ErrorKind::TransitKeyNotFound => return Err(destroyed_or(&name, e)),
            r => r?,
        };
        for ((i, payload, _), a) in entries.iter().zip(answers) {
            out[*i] = a.map_err(|f| match f.kind {
                // A key of a shredded name made again (from another database, or by hand)
                // does not authenticate the old values: they are destroyed, not tampered with.
                FailKind::AuthenticationFailed => destroyed_or(&name, Error::auth_failed()),
                FailKind::KeyNotFound => destroyed_or(&name, fail_to_error(&f)),
                FailKind::VersionRetired => {
                    let version = payload.strip_prefix("vault:v").and_then(|r| r.split(':').next()).unwrap_or("?");
                    Error::new(
                        ErrorKind::KeyVersionRetired,
                        format!(
                            "version {version} of Transit key {name} is older than the key's min_decryption_version"
                        ),
                    )
                }
                _ => fail_to_error(&f),
            });
        }
    }
    Ok(out)
}

/// Whether a context is in the namespace of the envelope data keys' associated data.
fn reserved(context: &str) -> bool {
    context.starts_with(envelope::RESERVED_CONTEXT)
}

fn reserved_error() -> Error {
    Error::new(ErrorKind::InvalidArgument, "the context is reserved for envelope data keys").with_detail(format!(
        "contexts that start with {} cannot be used with Transit keys",
        envelope::RESERVED_CONTEXT
    ))
}

/// Where a value is decrypted.
enum Route<'a> {
    Local(Ciphertext<'a>),
    Envelope(Ciphertext<'a>),
    Kv(Ciphertext<'a>),
    /// Transit key name and `vault:vN:` payload.
    Transit(String, &'a str),
}

fn classify_for_decrypt<'a>(ct: &'a str, ctx: Option<&str>, key_name: Option<&str>) -> Result<Route<'a>, Error> {
    if ct.starts_with("vault:v") {
        let KeyRef::Transit(name) = key_ref(key_name)? else {
            return Err(Error::new(ErrorKind::InvalidKeyRef, "a bare vault: value needs a Transit key")
                .with_detail("pass key_name => 'transit:<name>' or set credcrypt.default_key to it"));
        };
        format::wrap_transit(&name, ct, ctx.is_some())?; // validates the value's syntax
        return Ok(Route::Transit(name, ct));
    }
    let parsed = Ciphertext::parse(ct)?;
    match parsed.provider {
        Provider::Local => Ok(Route::Local(parsed)),
        Provider::Envelope => Ok(Route::Envelope(parsed)),
        Provider::Kv => Ok(Route::Kv(parsed)),
        Provider::Transit => match (parsed.has_context, ctx.is_some()) {
            (true, false) => {
                Err(Error::auth_failed().with_detail("the value is bound to a context, and none was given"))
            }
            (false, true) => {
                Err(Error::auth_failed().with_detail("the value is bound to no context, and one was given"))
            }
            _ => Ok(Route::Transit(parsed.key_name.to_owned(), parsed.payload)),
        },
    }
}
