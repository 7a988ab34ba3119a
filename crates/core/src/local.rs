//! The local provider: AES-256-GCM with a 96-bit random nonce and a 128-bit tag.
//!
//! A [`Keyring`] holds the current key (used to encrypt and decrypt) and any number of previous
//! keys (decrypt only). Every ciphertext records the [`KeyId`] of the key that sealed it, so
//! decryption picks the right key without trial decryption.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::blind::IndexRoot;
use crate::error::{Error, ErrorKind, Result};
use crate::format::{self, Ciphertext, Provider, NONCE_LEN, TAG_LEN};
use crate::{nonce, MAX_CONTEXT_LEN, MAX_PLAINTEXT_LEN};

/// Domain-separation label hashed in front of the key to derive its id.
const KEY_ID_LABEL: &[u8] = b"pg_credcrypt/local-key-id/v1\0";

/// A key fingerprint: the first 8 bytes of SHA-256(label ‖ key). Public; reveals nothing
/// usable about the key (a 64-bit truncated hash of a 256-bit random key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// A random id (64 bits from the OS CSPRNG): the id of an envelope data key.
    pub fn random() -> Result<Self> {
        let mut b = [0u8; 8];
        getrandom::getrandom(&mut b)
            .map_err(|_| Error::new(ErrorKind::RandomFailure, "the operating system's random source failed"))?;
        Ok(KeyId(b))
    }

    /// Computes the id of a 32-byte key.
    pub fn of(key: &[u8; 32]) -> Self {
        let mut h = Sha256::new();
        h.update(KEY_ID_LABEL);
        h.update(key);
        let digest = h.finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }

    /// 16 lowercase hexadecimal digits.
    pub fn to_hex(self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(16);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 15) as usize] as char);
        }
        s
    }

    /// Parses exactly 16 lowercase hexadecimal digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 16 {
            return None;
        }
        let nib = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut id = [0u8; 8];
        for (i, out) in id.iter_mut().enumerate() {
            *out = (nib(b[2 * i])? << 4) | nib(b[2 * i + 1])?;
        }
        Some(KeyId(id))
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// One local AES-256-GCM key. The key schedule is zeroized on drop (aes `zeroize` feature),
/// and so is the blind-index root derived from it.
#[derive(Clone)]
pub struct LocalKey {
    id: KeyId,
    cipher: Aes256Gcm,
    index_root: IndexRoot,
}

impl std::fmt::Debug for LocalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Treats an empty context like no context, so `''` and `NULL` are interchangeable.
pub fn normalize_context(context: Option<&[u8]>) -> Option<&[u8]> {
    context.filter(|c| !c.is_empty())
}

fn check_sizes(plaintext_len: usize, context: Option<&[u8]>) -> Result<()> {
    if plaintext_len > MAX_PLAINTEXT_LEN {
        return Err(Error::new(ErrorKind::TooLarge, "value is too large to encrypt")
            .with_detail(format!("{plaintext_len} bytes; the limit is {MAX_PLAINTEXT_LEN} bytes")));
    }
    if let Some(c) = context {
        if c.len() > MAX_CONTEXT_LEN {
            return Err(Error::new(ErrorKind::TooLarge, "context is too large")
                .with_detail(format!("{} bytes; the limit is {MAX_CONTEXT_LEN} bytes", c.len())));
        }
    }
    Ok(())
}

impl LocalKey {
    /// Builds a key from its 32 bytes.
    pub fn new(key: &[u8; 32]) -> Self {
        Self { id: KeyId::of(key), cipher: Aes256Gcm::new(key.into()), index_root: IndexRoot::new(key) }
    }

    /// The root of the blind-index keys of `local` designations made while this key was current.
    pub fn index_root(&self) -> &IndexRoot {
        &self.index_root
    }

    /// The key's fingerprint.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Encrypts with a fresh random nonce.
    pub fn encrypt(&self, plaintext: &[u8], context: Option<&[u8]>) -> Result<String> {
        check_sizes(plaintext.len(), context)?;
        let nonce = nonce::random_nonce()?;
        self.encrypt_with_nonce(plaintext, context, nonce)
    }

    /// Encrypts with a caller-chosen nonce. Only for published test vectors: reusing a nonce
    /// with the same key destroys GCM's security.
    #[doc(hidden)]
    pub fn encrypt_with_nonce(
        &self,
        plaintext: &[u8],
        context: Option<&[u8]>,
        nonce: [u8; NONCE_LEN],
    ) -> Result<String> {
        check_sizes(plaintext.len(), context)?;
        let context = normalize_context(context);
        self.seal_with_nonce(format::local_header(self.id, context.is_some()), plaintext, context, nonce)
    }

    /// Encrypts under a caller-built header (the envelope provider's), with a fresh nonce. The
    /// header is the first part of the associated data, as for local values.
    pub fn seal(&self, header: String, plaintext: &[u8], context: Option<&[u8]>) -> Result<String> {
        check_sizes(plaintext.len(), context)?;
        self.seal_with_nonce(header, plaintext, normalize_context(context), nonce::random_nonce()?)
    }

    /// AES-256-GCM of `plaintext` under `header` ‖ `context` as associated data.
    fn seal_with_nonce(
        &self,
        header: String,
        plaintext: &[u8],
        context: Option<&[u8]>,
        nonce: [u8; NONCE_LEN],
    ) -> Result<String> {
        let aad = format::associated_data(&header, context);
        // nonce ‖ plaintext, sealed in place, then the tag: no plaintext copy survives.
        let mut buf = Zeroizing::new(Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN));
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(plaintext);
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut buf[NONCE_LEN..])
            .map_err(|_| Error::new(ErrorKind::TooLarge, "value is too large to encrypt"))?;
        buf.extend_from_slice(&tag);
        Ok(format::finish_local(header, &buf))
    }

    /// Decrypts a parsed local or envelope ciphertext with this key, checking the context flag.
    pub fn open(&self, ct: &Ciphertext<'_>, context: Option<&[u8]>) -> Result<Zeroizing<Vec<u8>>> {
        let context = normalize_context(context);
        check_sizes(0, context)?;
        match (ct.has_context, context.is_some()) {
            (true, false) => {
                return Err(Error::auth_failed().with_detail("the value is bound to a context, and none was given"))
            }
            (false, true) => {
                return Err(Error::auth_failed().with_detail("the value is bound to no context, and one was given"))
            }
            _ => {}
        }
        if ct.local_bytes.len() < NONCE_LEN + TAG_LEN {
            return Err(Error::malformed("payload is shorter than nonce and tag"));
        }
        self.decrypt_parsed(ct, context)
    }

    fn decrypt_parsed(&self, ct: &Ciphertext<'_>, context: Option<&[u8]>) -> Result<Zeroizing<Vec<u8>>> {
        let bytes = &ct.local_bytes;
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        let aad = format::associated_data(ct.header, context);
        let mut out = Zeroizing::new(body.to_vec());
        self.cipher
            .decrypt_in_place_detached(Nonce::from_slice(nonce), &aad, &mut out, Tag::from_slice(tag))
            .map_err(|_| Error::auth_failed())?;
        Ok(out)
    }
}

/// The local keys a backend knows: the current one and previous ones (decrypt only).
#[derive(Debug, Default, Clone)]
pub struct Keyring {
    /// Key used for new encryptions (and decryption).
    pub current: Option<LocalKey>,
    /// Keys used for decryption only, after a rotation.
    pub previous: Vec<LocalKey>,
}

impl Keyring {
    /// Encrypts with the current key.
    pub fn encrypt(&self, plaintext: &[u8], context: Option<&[u8]>) -> Result<String> {
        self.current_key()?.encrypt(plaintext, context)
    }

    /// The current key, or the "not configured" error.
    pub fn current_key(&self) -> Result<&LocalKey> {
        self.current.as_ref().ok_or_else(|| {
            Error::new(ErrorKind::KeyNotConfigured, "no local encryption key is configured")
                .with_detail("neither credcrypt.local_key_file nor credcrypt.local_key is set")
        })
    }

    /// Finds the key with `id` among the current and previous keys.
    pub fn find(&self, id: KeyId) -> Option<&LocalKey> {
        self.current.iter().chain(self.previous.iter()).find(|k| k.id == id)
    }

    /// Decrypts a parsed local ciphertext.
    pub fn decrypt_parsed(&self, ct: &Ciphertext<'_>, context: Option<&[u8]>) -> Result<Zeroizing<Vec<u8>>> {
        if ct.provider != Provider::Local {
            return Err(Error::new(ErrorKind::UnsupportedProvider, "value was not encrypted by the local provider"));
        }
        let context = normalize_context(context);
        check_sizes(0, context)?;
        match (ct.has_context, context.is_some()) {
            (true, false) => {
                return Err(Error::auth_failed().with_detail("the value is bound to a context, and none was given"));
            }
            (false, true) => {
                return Err(Error::auth_failed().with_detail("the value is bound to no context, and one was given"));
            }
            _ => {}
        }
        let id = ct.local_key_id().ok_or_else(|| Error::malformed("missing local key id"))?;
        let key = self.find(id).ok_or_else(|| {
            if self.current.is_none() && self.previous.is_empty() {
                self.current_key().err().unwrap_or_else(Error::auth_failed)
            } else {
                Error::new(ErrorKind::UnknownKeyId, "no configured local key matches the value's key id")
                    .with_detail(format!("key id {id}"))
            }
        })?;
        key.decrypt_parsed(ct, context)
    }

    /// Parses and decrypts a local ciphertext.
    pub fn decrypt(&self, text: &str, context: Option<&[u8]>) -> Result<Zeroizing<Vec<u8>>> {
        self.decrypt_parsed(&Ciphertext::parse(text)?, context)
    }
}
