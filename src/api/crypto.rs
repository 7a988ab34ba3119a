//! `encrypt_credential`, `decrypt_credential`, `decrypt_credential_bytea`, `verify_credential`.

use credcrypt_core::format::Ciphertext;
use credcrypt_core::{verify, Error, ErrorKind, KeyRef, Provider};
use pgrx::prelude::*;
use zeroize::Zeroizing;

use crate::api::secret::{SecretBytes, SecretText};
use crate::errors::OrRaise as _;
use crate::{gucs, keys};

fn unsupported_transit() -> Error {
    Error::new(ErrorKind::UnsupportedProvider, "the OpenBao Transit provider is not available in this version")
}

fn encrypt_bytes(plaintext: &[u8], key_name: Option<&str>, context: Option<&str>) -> String {
    let reference = match key_name {
        Some(k) => KeyRef::parse(k),
        None => KeyRef::parse(&gucs::default_key()),
    }
    .or_raise();
    match reference {
        KeyRef::Local => keys::with_keyring(|ring| ring.encrypt(plaintext, context.map(str::as_bytes))).or_raise(),
        KeyRef::Transit(_) => crate::errors::raise(unsupported_transit()),
    }
}

/// Decrypts any supported ciphertext into a zeroizing buffer.
pub(crate) fn decrypt_bytes(ciphertext: &str, context: Option<&str>) -> Zeroizing<Vec<u8>> {
    let parsed = Ciphertext::parse(ciphertext).or_raise();
    match parsed.provider {
        Provider::Local => {
            keys::with_keyring(|ring| ring.decrypt_parsed(&parsed, context.map(str::as_bytes))).or_raise()
        }
        Provider::Transit => crate::errors::raise(unsupported_transit()),
    }
}

/// Encrypts a text credential. NULL in, NULL out; `key_name` NULL means `credcrypt.default_key`;
/// `context` is bound as associated data (NULL or '' binds none).
#[pg_extern(name = "encrypt_credential", volatile, parallel_safe)]
fn encrypt_credential_text(
    plaintext: Option<&str>,
    key_name: default!(Option<&str>, "NULL"),
    context: default!(Option<&str>, "NULL"),
) -> Option<String> {
    plaintext.map(|p| encrypt_bytes(p.as_bytes(), key_name, context))
}

/// Encrypts a binary credential (bytea). Same contract as the text form.
#[pg_extern(name = "encrypt_credential", volatile, parallel_safe)]
fn encrypt_credential_bytea(
    plaintext: Option<&[u8]>,
    key_name: default!(Option<&str>, "NULL"),
    context: default!(Option<&str>, "NULL"),
) -> Option<String> {
    plaintext.map(|p| encrypt_bytes(p, key_name, context))
}

/// Decrypts to text. The value must have been text (valid UTF-8, no NUL byte).
#[pg_extern(stable, parallel_safe)]
fn decrypt_credential(ciphertext: Option<&str>, context: default!(Option<&str>, "NULL")) -> Option<SecretText> {
    let ciphertext = ciphertext?;
    let plain = decrypt_bytes(ciphertext, context);
    if std::str::from_utf8(&plain).is_err() || plain.contains(&0) {
        crate::errors::raise(Error::new(ErrorKind::NotUtf8, "decrypted value is not valid text"));
    }
    Some(SecretText(plain))
}

/// Decrypts to bytea.
#[pg_extern(stable, parallel_safe)]
fn decrypt_credential_bytea(ciphertext: Option<&str>, context: default!(Option<&str>, "NULL")) -> Option<SecretBytes> {
    Some(SecretBytes(decrypt_bytes(ciphertext?, context)))
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
    let plain = decrypt_bytes(ciphertext, context);
    Some(verify::secret_eq(&plain, candidate.as_bytes()))
}
