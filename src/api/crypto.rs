//! `encrypt_credential(s)`, `decrypt_credential(s)`, `decrypt_credential_bytea`,
//! `verify_credential`: one code path per provider, shared by the single and bulk forms.

use credcrypt_core::format::{self, Ciphertext};
use credcrypt_core::wire::{Fail, FailKind, Op, ReqItem};
use credcrypt_core::{verify, Error, ErrorKind, KeyRef, Provider};
use pgrx::datum::Array;
use pgrx::prelude::*;
use zeroize::Zeroizing;

use crate::api::secret::{SecretBytes, SecretText};
use crate::errors::OrRaise as _;
use crate::gucs::{self, Fallback};
use crate::keys;
use crate::transit::backend::{self, fail_to_error};

/// Resolves a key argument (NULL → `credcrypt.default_key`).
pub(crate) fn key_ref(key_name: Option<&str>) -> Result<KeyRef, Error> {
    match key_name {
        Some(k) => KeyRef::parse(k),
        None => KeyRef::parse(&gucs::default_key()),
    }
}

fn item_error(f: &Fail) -> Error {
    fail_to_error(f)
}

/// Whether a Transit failure may fall back to the local key (OpenBao unreachable only).
fn may_fall_back(e: &Error) -> bool {
    e.kind == ErrorKind::ProviderUnavailable && gucs::FALLBACK.get() == Fallback::Local
}

fn fallback_local(plaintexts: &[&[u8]], contexts: &[Option<&str>], cause: &Error) -> Result<Vec<String>, Error> {
    let out = keys::with_keyring(|ring| {
        plaintexts
            .iter()
            .zip(contexts)
            .map(|(p, c)| ring.encrypt(p, c.map(str::as_bytes)))
            .collect::<Result<Vec<_>, _>>()
    })?;
    if let Some(q) = crate::transit::queue::get() {
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
    match key {
        KeyRef::Envelope(name) => match crate::envelope::encrypt(name, plaintexts, contexts) {
            Err(e) if allow_fallback && may_fall_back(&e) => {
                let contexts: Vec<Option<&str>> = contexts.iter().map(|c| c.filter(|c| !c.is_empty())).collect();
                fallback_local(plaintexts, &contexts, &e)
            }
            r => r,
        },
        KeyRef::Local => keys::with_keyring(|ring| {
            plaintexts.iter().zip(contexts).map(|(p, c)| ring.encrypt(p, c.map(str::as_bytes))).collect()
        }),
        KeyRef::Transit(name) => {
            let contexts: Vec<Option<&str>> = contexts.iter().map(|c| c.filter(|c| !c.is_empty())).collect();
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
                    let vault = a.map_err(|f| item_error(&f))?;
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

/// One decrypted value, or why it could not be decrypted.
pub(crate) type Decrypted = Result<Zeroizing<Vec<u8>>, Error>;

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
    for (i, (ct, ctx)) in ciphertexts.iter().zip(contexts).enumerate() {
        let ctx = ctx.filter(|c| !c.is_empty());
        match classify_for_decrypt(ct, ctx, key_name) {
            Ok(Route::Local(parsed)) => {
                out[i] = keys::with_keyring(|ring| ring.decrypt_parsed(&parsed, ctx.map(str::as_bytes)));
            }
            Ok(Route::Envelope(parsed)) => envelope.push((i, parsed, ctx)),
            Ok(Route::Transit(name, payload)) => transit.entry(name).or_default().push((i, payload, ctx)),
            Err(e) => out[i] = Err(e),
        }
    }
    if !envelope.is_empty() {
        for (i, r) in crate::envelope::decrypt(&envelope)? {
            out[i] = r;
        }
    }
    for (name, mut entries) in transit {
        // Envelope data keys are Transit values without associated data under the same key:
        // never hand one out through the decrypt functions (it would decrypt values offline).
        let bare: Vec<String> =
            entries.iter().filter(|(_, _, c)| c.is_none()).map(|(_, p, _)| (*p).to_owned()).collect();
        if !bare.is_empty() {
            let wrapped = crate::envelope::wrapped_among(&bare)?;
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
        let answers = backend::call(Op::Decrypt, &name, &items)?;
        for ((i, payload, _), a) in entries.iter().zip(answers) {
            out[*i] = a.map_err(|f| match f.kind {
                FailKind::AuthenticationFailed => Error::auth_failed(),
                FailKind::VersionRetired => {
                    let version = payload.strip_prefix("vault:v").and_then(|r| r.split(':').next()).unwrap_or("?");
                    Error::new(
                        ErrorKind::KeyVersionRetired,
                        format!(
                            "version {version} of Transit key {name} is older than the key's min_decryption_version"
                        ),
                    )
                }
                _ => item_error(&f),
            });
        }
    }
    Ok(out)
}

/// Where a value is decrypted.
enum Route<'a> {
    Local(Ciphertext<'a>),
    Envelope(Ciphertext<'a>),
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

fn encrypt_one(plaintext: &[u8], key_name: Option<&str>, context: Option<&str>) -> String {
    let key = key_ref(key_name).or_raise();
    let mut v = encrypt_many(&[plaintext], &key, &[context]).or_raise();
    v.pop().unwrap_or_default()
}

/// Adds to a decryption error which protected column the value belongs to, when its context
/// is a column context (a decrypted view, a migration): the table and column, never a value.
fn name_the_column(e: Error, context: Option<&str>) -> Error {
    let binding = context
        .and_then(|c| c.strip_prefix(credcrypt_core::column::CONTEXT_PREFIX))
        .and_then(|rest| rest.get(..credcrypt_core::column::BINDING_ID_LEN));
    match binding.and_then(crate::audit::designation_name) {
        Some(name) => {
            let detail = match &e.detail {
                Some(d) => format!("a value of {name}: {d}"),
                None => format!("a value of {name}"),
            };
            Error { detail: Some(detail), ..e }
        }
        None => e,
    }
}

fn decrypt_one(ciphertext: &str, context: Option<&str>, key_name: Option<&str>) -> Zeroizing<Vec<u8>> {
    let mut v = decrypt_many(&[ciphertext], &[context], key_name).map_err(|e| name_the_column(e, context)).or_raise();
    crate::audit::record(&[context]);
    v.pop().unwrap_or_default()
}

fn as_text(plain: Zeroizing<Vec<u8>>) -> SecretText {
    if std::str::from_utf8(&plain).is_err() || plain.contains(&0) {
        crate::errors::raise(Error::new(ErrorKind::NotUtf8, "decrypted value is not valid text"));
    }
    SecretText(plain)
}

/// Encrypts a text credential. NULL in, NULL out; `key_name` NULL means `credcrypt.default_key`;
/// `context` is bound as associated data (NULL or '' binds none).
#[pg_extern(name = "encrypt_credential", volatile, parallel_safe)]
fn encrypt_credential_text(
    plaintext: Option<&str>,
    key_name: default!(Option<&str>, "NULL"),
    context: default!(Option<&str>, "NULL"),
) -> Option<String> {
    plaintext.map(|p| encrypt_one(p.as_bytes(), key_name, context))
}

/// Encrypts a binary credential (bytea). Same contract as the text form.
#[pg_extern(name = "encrypt_credential", volatile, parallel_safe)]
fn encrypt_credential_bytea(
    plaintext: Option<&[u8]>,
    key_name: default!(Option<&str>, "NULL"),
    context: default!(Option<&str>, "NULL"),
) -> Option<String> {
    plaintext.map(|p| encrypt_one(p, key_name, context))
}

/// Decrypts to text. The value must have been text (valid UTF-8, no NUL byte). `key_name`
/// names the Transit key of a bare `vault:vN:…` value written by an application.
#[pg_extern(stable, parallel_safe)]
pub(crate) fn decrypt_credential(
    ciphertext: Option<&str>,
    context: default!(Option<&str>, "NULL"),
    key_name: default!(Option<&str>, "NULL"),
) -> Option<SecretText> {
    Some(as_text(decrypt_one(ciphertext?, context, key_name)))
}

/// Decrypts to bytea.
#[pg_extern(stable, parallel_safe)]
fn decrypt_credential_bytea(
    ciphertext: Option<&str>,
    context: default!(Option<&str>, "NULL"),
    key_name: default!(Option<&str>, "NULL"),
) -> Option<SecretBytes> {
    Some(SecretBytes(decrypt_one(ciphertext?, context, key_name)))
}

/// Checks a presented secret against a stored ciphertext without returning the plaintext.
/// The comparison is constant-time. A value that cannot be decrypted raises an error rather
/// than answering false, so tampering is never mistaken for a wrong secret.
#[pg_extern(stable, parallel_safe)]
fn verify_credential(
    ciphertext: Option<&str>,
    candidate: Option<&str>,
    context: default!(Option<&str>, "NULL"),
) -> Option<bool> {
    let (ciphertext, candidate) = (ciphertext?, candidate?);
    let plain = decrypt_one(ciphertext, context, None);
    Some(verify::secret_eq(&plain, candidate.as_bytes()))
}

/// The non-NULL elements of a bulk argument with their positions and contexts. `contexts`,
/// when given, must have one element per value (22023 otherwise).
struct Bulk<'a> {
    len: usize,
    positions: Vec<usize>,
    values: Vec<&'a str>,
    contexts: Vec<Option<&'a str>>,
}

impl<'a> Bulk<'a> {
    fn new<'m: 'a>(values: &'a Array<'m, &'m str>, contexts: Option<&'a Array<'m, &'m str>>) -> Self {
        let all: Vec<Option<&'a str>> = values.iter().collect();
        let ctx: Option<Vec<Option<&'a str>>> = contexts.map(|c| c.iter().collect());
        if let Some(c) = &ctx {
            if c.len() != all.len() {
                crate::errors::raise(
                    Error::new(ErrorKind::InvalidArgument, "contexts must have as many elements as the values")
                        .with_detail(format!("{} values, {} contexts", all.len(), c.len())),
                );
            }
        }
        let positions: Vec<usize> = (0..all.len()).filter(|&i| all[i].is_some()).collect();
        Bulk {
            len: all.len(),
            values: positions.iter().map(|&i| all[i].unwrap_or_default()).collect(),
            contexts: positions.iter().map(|&i| ctx.as_ref().and_then(|c| c[i])).collect(),
            positions,
        }
    }

    /// Puts results back at their positions; NULL elsewhere.
    fn scatter(&self, results: Vec<String>) -> Vec<Option<String>> {
        let mut out = vec![None; self.len];
        for (&i, r) in self.positions.iter().zip(results) {
            out[i] = Some(r);
        }
        out
    }
}

/// Encrypts an array of values in one round trip (Transit) — for bulk callers. NULL elements
/// stay NULL; `contexts`, when given, must have one element per value.
#[pg_extern(volatile, parallel_safe)]
fn encrypt_credentials<'a>(
    plaintexts: Option<Array<'a, &'a str>>,
    key_name: default!(Option<&'a str>, "NULL"),
    contexts: default!(Option<Array<'a, &'a str>>, "NULL"),
) -> Option<Vec<Option<String>>> {
    let plaintexts = plaintexts?;
    let bulk = Bulk::new(&plaintexts, contexts.as_ref());
    let key = key_ref(key_name).or_raise();
    let values: Vec<&[u8]> = bulk.values.iter().map(|v| v.as_bytes()).collect();
    let encrypted = encrypt_many(&values, &key, &bulk.contexts).or_raise();
    Some(bulk.scatter(encrypted))
}

/// Decrypts an array of values (any provider, mixed) in one round trip per Transit key.
#[pg_extern(stable, parallel_safe)]
fn decrypt_credentials<'a>(
    ciphertexts: Option<Array<'a, &'a str>>,
    contexts: default!(Option<Array<'a, &'a str>>, "NULL"),
) -> Option<Vec<Option<String>>> {
    let ciphertexts = ciphertexts?;
    let bulk = Bulk::new(&ciphertexts, contexts.as_ref());
    let plain = decrypt_many(&bulk.values, &bulk.contexts, None).or_raise();
    crate::audit::record(&bulk.contexts);
    // Text arrays cannot carry zeroizing buffers; the copies are PostgreSQL's from here on.
    let texts = plain
        .into_iter()
        .map(|p| {
            String::from_utf8(p.to_vec()).ok().filter(|s| !s.contains('\0')).unwrap_or_else(|| {
                crate::errors::raise(Error::new(ErrorKind::NotUtf8, "decrypted value is not valid text"))
            })
        })
        .collect();
    Some(bulk.scatter(texts))
}
