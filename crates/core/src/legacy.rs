//! Values that applications encrypted themselves, before pg_credcrypt: classification of any
//! stored value (including bcrypt hashes, which are one-way and stay as they are), and
//! decryption of Node.js `crypto` AES-256-GCM values.
//!
//! Node applications commonly store `iv:authTag:ciphertext`, each part in hex (or each in
//! standard base64), produced by `crypto.createCipheriv('aes-256-gcm', key, iv)` with a 12- or
//! 16-byte IV, a 16-byte tag and no associated data. The legacy key is 32 bytes, given as
//! standard base64 or 64 hex digits.

use aes_gcm::aead::consts::{U12, U16};
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::AeadInPlace as _;
use aes_gcm::{aes::Aes256, AesGcm, KeyInit as _};
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Result};
use crate::format::{Ciphertext, Provider};
use crate::local::KeyId;

/// What a stored value is, as far as a migration is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A pg_credcrypt value with the local provider and this key id.
    Local(KeyId),
    /// A pg_credcrypt value with a Transit key and version.
    Transit {
        /// Transit key name.
        key: String,
        /// Key version.
        version: u32,
    },
    /// A pg_credcrypt envelope value: Transit key name and data key id.
    Envelope {
        /// Transit key name wrapping the data key.
        key: String,
        /// Data key id.
        data_key: KeyId,
    },
    /// A pg_credcrypt reference to a secret kept in OpenBao KV v2: mount and KV version.
    Kv {
        /// KV engine mount.
        mount: String,
        /// KV version of the secret.
        version: u32,
    },
    /// A bare Transit value (`vault:vN:…`) written by an application calling Transit itself.
    BareVault(u32),
    /// A Node.js `crypto` AES-256-GCM value (`iv:authTag:ciphertext`, hex or base64).
    LegacyNode,
    /// A bcrypt hash (`$2a$`, `$2b$`, `$2y$`; [`crate::hashes::parse_bcrypt`]) with this cost: a
    /// one-way hash, not a secret to encrypt; migrations leave it untouched.
    Bcrypt {
        /// The hash's cost (4 to 31).
        cost: u32,
    },
    /// A `cc1:` value that does not parse.
    Malformed,
    /// Anything else: plaintext.
    Plaintext,
}

impl Source {
    /// Short name used in reports: local, transit, envelope, kv, vault, legacy, bcrypt, malformed,
    /// plaintext.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Local(_) => "local",
            Source::Transit { .. } => "transit",
            Source::Envelope { .. } => "envelope",
            Source::Kv { .. } => "kv",
            Source::BareVault(_) => "vault",
            Source::LegacyNode => "legacy",
            Source::Bcrypt { .. } => "bcrypt",
            Source::Malformed => "malformed",
            Source::Plaintext => "plaintext",
        }
    }
}

/// Classifies a stored value without decrypting it.
pub fn classify(value: &str) -> Source {
    if value.starts_with("cc1:") {
        return match Ciphertext::parse(value) {
            Ok(ct) => match ct.provider {
                Provider::Local => ct.local_key_id().map_or(Source::Malformed, Source::Local),
                Provider::Transit => {
                    Source::Transit { key: ct.key_name.to_owned(), version: ct.transit_version().unwrap_or(0) }
                }
                Provider::Envelope => match ct.data_key_id() {
                    Some(data_key) => Source::Envelope { key: ct.key_name.to_owned(), data_key },
                    None => Source::Malformed,
                },
                Provider::Kv => match ct.kv_version() {
                    Some(version) => Source::Kv { mount: ct.key_name.to_owned(), version },
                    None => Source::Malformed,
                },
            },
            Err(_) => Source::Malformed,
        };
    }
    if let Some(v) = bare_vault_version(value) {
        return Source::BareVault(v);
    }
    if let Some(h) = crate::hashes::parse_bcrypt(value) {
        return Source::Bcrypt { cost: h.cost };
    }
    if parse_node(value).is_some() {
        return Source::LegacyNode;
    }
    Source::Plaintext
}

fn bare_vault_version(value: &str) -> Option<u32> {
    let rest = value.strip_prefix("vault:v")?;
    let (v, payload) = rest.split_once(':')?;
    let version: u32 = v.parse().ok()?;
    let ok = version > 0
        && !v.starts_with('0')
        && payload.len() >= 16
        && payload.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
    ok.then_some(version)
}

/// The three parts of a Node value: (iv, tag, ciphertext).
type NodeParts = (Vec<u8>, Vec<u8>, Vec<u8>);

fn parse_node(value: &str) -> Option<NodeParts> {
    let mut it = value.split(':');
    let (a, b, c) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || c.is_empty() {
        return None;
    }
    // All three parts in hex, or all three in base64 (decided for the whole value, so a base64
    // part that happens to look like hex is not misread).
    let is_hex =
        |s: &str| s.len().is_multiple_of(2) && s.bytes().all(|x| x.is_ascii_digit() || (b'a'..=b'f').contains(&x));
    let (iv, tag, ct) = if [a, b, c].iter().all(|s| is_hex(s)) {
        (hex(a)?, hex(b)?, hex(c)?)
    } else {
        let d = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).ok();
        (d(a)?, d(b)?, d(c)?)
    };
    ((iv.len() == 12 || iv.len() == 16) && tag.len() == 16 && !ct.is_empty()).then_some((iv, tag, ct))
}

fn hex(s: &str) -> Option<Vec<u8>> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Parses a legacy key: 32 bytes as standard base64 or 64 hex digits (surrounding whitespace
/// ignored). Never echoes the content.
pub fn parse_legacy_key(text: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
    let t = std::str::from_utf8(text).map_err(|_| bad_key())?.trim();
    let bytes = Zeroizing::new(if t.len() == 64 {
        hex(t).ok_or_else(bad_key)?
    } else {
        base64::engine::general_purpose::STANDARD.decode(t).map_err(|_| bad_key())?
    });
    let mut key = Zeroizing::new([0u8; 32]);
    if bytes.len() != 32 {
        return Err(bad_key());
    }
    key.copy_from_slice(&bytes);
    Ok(key)
}

fn bad_key() -> Error {
    Error::new(ErrorKind::InvalidKeyConfig, "credcrypt.legacy_key_file does not hold a 32-byte key")
        .with_detail("expected 64 hex digits or standard base64 of 32 bytes")
}

/// Decrypts a Node.js `iv:authTag:ciphertext` value (hex or base64) with `key`.
pub fn decrypt_node(value: &str, key: &[u8; 32]) -> Result<Zeroizing<Vec<u8>>> {
    let (iv, tag, ct) = parse_node(value).ok_or_else(|| Error::malformed("not an iv:authTag:ciphertext value"))?;
    let mut buf = Zeroizing::new(ct);
    let key = GenericArray::from_slice(key);
    let tag = GenericArray::from_slice(&tag);
    let ok = if iv.len() == 12 {
        AesGcm::<Aes256, U12>::new(key).decrypt_in_place_detached(GenericArray::from_slice(&iv), b"", &mut buf, tag)
    } else {
        AesGcm::<Aes256, U16>::new(key).decrypt_in_place_detached(GenericArray::from_slice(&iv), b"", &mut buf, tag)
    };
    ok.map_err(|_| {
        Error::auth_failed().with_detail("the legacy value does not decrypt with credcrypt.legacy_key_file")
    })?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify("sk-live-1234"), Source::Plaintext);
        assert_eq!(classify("vault:v3:AAAAAAAAAAAAAAAAAAAAAAAAAAAA"), Source::BareVault(3));
        assert_eq!(classify("vault:v0:AAAAAAAAAAAAAAAAAAAAAAAAAAAA"), Source::Plaintext);
        assert_eq!(classify("cc1:nonsense"), Source::Malformed);
        let node_hex = format!("{}:{}:{}", "ab".repeat(12), "cd".repeat(16), "ef".repeat(5));
        assert_eq!(classify(&node_hex), Source::LegacyNode);
        assert_eq!(classify("a:b:c"), Source::Plaintext);
        assert_eq!(classify("user:pass:host"), Source::Plaintext);
        let kv = classify("cc1:kv:secret:7:c:pg_credcrypt/app/public.users/api_key/42/0011223344556677");
        assert_eq!(kv, Source::Kv { mount: "secret".into(), version: 7 });
        assert_eq!(kv.kind(), "kv");
        assert_eq!(classify("cc1:kv:secret:07:c:a"), Source::Malformed);
        let h = "$2b$04$IA6/dZ3VUIVyue5lV2vNfe9TZhEx586dd0H2842SvJFFW2BH86ic6";
        for p in ["$2a$", "$2b$", "$2y$"] {
            assert_eq!(classify(&format!("{p}{}", &h[4..])), Source::Bcrypt { cost: 4 });
        }
        assert_eq!(classify(&h.replace("$04$", "$31$")), Source::Bcrypt { cost: 31 });
        assert_eq!(classify(&h.replace("$04$", "$31$")).kind(), "bcrypt");
        // Not bcrypt: $2x$, a wrong length, a cost out of range.
        assert_eq!(classify(&h.replace("$2b$", "$2x$")), Source::Plaintext);
        assert_eq!(classify(&h[..59]), Source::Plaintext);
        assert_eq!(classify(&h.replace("$04$", "$03$")), Source::Plaintext);
    }

    #[test]
    fn legacy_keys() {
        assert!(parse_legacy_key(&b"00".repeat(32)).is_ok());
        assert!(parse_legacy_key(b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").is_ok());
        assert_eq!(parse_legacy_key(b"short").unwrap_err().kind, ErrorKind::InvalidKeyConfig);
    }
}
