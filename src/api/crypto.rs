//! `encrypt_credential(s)`, `decrypt_credential(s)`, `decrypt_credential_bytea`,
//! `verify_credential`: argument handling, auditing and error mapping; the work is the
//! providers' ([`crate::providers`]).

use credcrypt_core::{verify, Error, ErrorKind};
use pgrx::datum::Array;
use pgrx::prelude::*;
use zeroize::Zeroizing;

use crate::api::secret::{SecretBytes, SecretText};
use crate::errors::OrRaise as _;
use crate::providers::{decrypt_many, encrypt_many, key_ref};

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
/// `context` is bound as associated data (NULL or '' binds none). PARALLEL UNSAFE, like
/// [`encrypt_credentials`]: an encryption may write (an envelope or per-row data key, a kv
/// value's durable transaction id), which PostgreSQL refuses in a query with a parallel plan.
#[pg_extern(name = "encrypt_credential", volatile, parallel_unsafe)]
fn encrypt_credential_text(
    plaintext: Option<&str>,
    key_name: default!(Option<&str>, "NULL"),
    context: default!(Option<&str>, "NULL"),
) -> Option<String> {
    plaintext.map(|p| encrypt_one(p.as_bytes(), key_name, context))
}

/// Encrypts a binary credential (bytea). Same contract as the text form.
#[pg_extern(name = "encrypt_credential", volatile, parallel_unsafe)]
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
///
/// A bcrypt hash (`$2a$`, `$2b$`, `$2y$`) that an application stored before adopting
/// pg_credcrypt is checked as a bcrypt hash (the context does not apply to it): such rows keep
/// verifying until the application rotates the credential. Costs above 14 are refused (54000).
#[pg_extern(stable, parallel_safe)]
fn verify_credential(
    ciphertext: Option<&str>,
    candidate: Option<&str>,
    context: default!(Option<&str>, "NULL"),
) -> Option<bool> {
    let (ciphertext, candidate) = (ciphertext?, candidate?);
    if credcrypt_core::hashes::is_bcrypt(ciphertext) {
        let ok = credcrypt_core::hashes::verify_bcrypt(ciphertext, candidate.as_bytes())
            .map_err(|e| name_the_column(e, context))
            .or_raise();
        crate::audit::record(&[context]);
        return Some(ok);
    }
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
#[pg_extern(volatile, parallel_unsafe)]
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
