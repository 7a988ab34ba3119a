//! Blind indexes: a keyed, truncated HMAC-SHA-256 of a protected value, stored beside its
//! ciphertext so that an ordinary btree index answers "which row holds this secret?" without
//! decrypting anything.
//!
//! An index value is 18 bytes: the index key's **version** (2 bytes, big-endian) followed by
//! the first 16 bytes of `HMAC-SHA-256(index key, plaintext)`. The version lets a rotation tell
//! which rows still carry an index made with an older key, and lets a lookup ask for the value
//! under every key version still in use.
//!
//! Index keys are distinct per designation (one protected column, or one jsonb key) and per
//! version, so the same secret in two tables — or under two versions — gives unrelated values:
//!
//! ```text
//! root  = HKDF-Extract(salt = "pg_credcrypt/blind-index-root/v1", ikm = root key material)
//! key   = HKDF-Expand(root, info = "pg_credcrypt/blind-index/v1:" ‖ binding id ‖ ":" ‖ version, 32)
//! value = version (u16 BE) ‖ HMAC-SHA-256(key, plaintext)[..16]
//! ```
//!
//! The root key material is the local key (for `local` designations) or 32 random bytes that
//! OpenBao Transit generated and wrapped (for `transit:` and `envelope:` designations); the
//! extension crate decides which. 128 bits of HMAC leave collisions out of reach (birthday
//! bound 2^64 values per designation) while keeping the index small.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::column::is_binding_id;
use crate::error::{Error, ErrorKind, Result};

/// Bytes of the truncated HMAC in an index value.
pub const MAC_LEN: usize = 16;

/// Bytes of an index value: version (2) ‖ truncated HMAC (16).
pub const INDEX_LEN: usize = 2 + MAC_LEN;

/// Salt of the root extraction.
const ROOT_SALT: &[u8] = b"pg_credcrypt/blind-index-root/v1";

/// Prefix of the per-designation expansion's info.
const KEY_INFO: &str = "pg_credcrypt/blind-index/v1:";

/// One designation's index key of one version. The key bytes are zeroized on drop.
pub struct IndexKey {
    version: u16,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexKey").field("version", &self.version).finish_non_exhaustive()
    }
}

/// A root from which every designation's index keys are derived: the HKDF pseudo-random key,
/// zeroized on drop.
#[derive(Clone)]
pub struct IndexRoot(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for IndexRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IndexRoot(..)")
    }
}

impl IndexRoot {
    /// The root for 32 bytes of key material (a local key, or a Transit-generated key).
    pub fn new(material: &[u8; 32]) -> Self {
        let (prk, _) = Hkdf::<Sha256>::extract(Some(ROOT_SALT), material);
        let mut root = Zeroizing::new([0u8; 32]);
        root.copy_from_slice(&prk);
        IndexRoot(root)
    }

    /// The index key of designation `binding_id`, version `version` (≥ 1).
    pub fn derive(&self, binding_id: &str, version: u16) -> Result<IndexKey> {
        if !is_binding_id(binding_id) {
            return Err(Error::new(ErrorKind::InvalidArgument, "a binding id is 32 lower-case hexadecimal digits"));
        }
        if version == 0 {
            return Err(Error::new(ErrorKind::InvalidArgument, "blind index key versions start at 1"));
        }
        let info = format!("{KEY_INFO}{binding_id}:{version}");
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::from_prk(self.0.as_slice())
            .and_then(|h| h.expand(info.as_bytes(), key.as_mut_slice()).map_err(|_| hkdf::InvalidPrkLength))
            .map_err(|_| Error::internal("HKDF expansion of 32 bytes failed"))?;
        Ok(IndexKey { version, key })
    }
}

impl IndexKey {
    /// The key's version.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The index value of `plaintext`: version ‖ HMAC-SHA-256(key, plaintext)[..16].
    pub fn index(&self, plaintext: &[u8]) -> [u8; INDEX_LEN] {
        // HMAC accepts keys of any length: new_from_slice cannot fail for 32 bytes.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.as_slice()).expect("HMAC takes any key length");
        mac.update(plaintext);
        let tag = mac.finalize().into_bytes();
        let mut out = [0u8; INDEX_LEN];
        out[..2].copy_from_slice(&self.version.to_be_bytes());
        out[2..].copy_from_slice(&tag[..MAC_LEN]);
        out
    }
}

/// The key version an index value was made with, if it has the shape of one.
pub fn version_of(value: &[u8]) -> Option<u16> {
    (value.len() == INDEX_LEN).then(|| u16::from_be_bytes([value[0], value[1]])).filter(|v| *v > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const B1: &str = "00112233445566778899aabbccddeeff";
    const B2: &str = "ffeeddccbbaa99887766554433221100";

    #[test]
    fn deterministic_per_designation_and_version() {
        let root = IndexRoot::new(&[7u8; 32]);
        let k1 = root.derive(B1, 1).unwrap();
        assert_eq!(k1.index(b"sk-live-1"), root.derive(B1, 1).unwrap().index(b"sk-live-1"));
        assert_ne!(k1.index(b"sk-live-1"), k1.index(b"sk-live-2"));
        // Another designation, another version, another root: unrelated values.
        let other_designation = root.derive(B2, 1).unwrap().index(b"sk-live-1");
        let other_version = root.derive(B1, 2).unwrap().index(b"sk-live-1");
        let other_root = IndexRoot::new(&[8u8; 32]).derive(B1, 1).unwrap().index(b"sk-live-1");
        let mine = k1.index(b"sk-live-1");
        for v in [other_designation, other_version, other_root] {
            assert_ne!(v[2..], mine[2..]);
        }
        assert_eq!(version_of(&mine), Some(1));
        assert_eq!(version_of(&other_version), Some(2));
    }

    #[test]
    fn not_the_unkeyed_hash() {
        use sha2::Digest;
        let v = IndexRoot::new(&[1u8; 32]).derive(B1, 1).unwrap().index(b"secret");
        let plain_hash = Sha256::digest(b"secret");
        assert_ne!(v[2..], plain_hash[..MAC_LEN]);
    }

    /// A fixed vector, recomputed independently (scripts/check_vectors.py).
    #[test]
    fn vector() {
        let v = IndexRoot::new(&[0x42u8; 32]).derive(B1, 3).unwrap().index(b"sk-live-51HxAbCdEf0123456789a1b2");
        let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(&hex[..4], "0003");
        assert_eq!(hex.len(), 2 * INDEX_LEN);
        assert_eq!(hex, BLIND_VECTOR_HEX);
    }

    /// Published in docs/format.md and recomputed by scripts/check_vectors.py.
    const BLIND_VECTOR_HEX: &str = "0003fa314a2222f7a58e75d6bc7082ef3409";

    #[test]
    fn bad_inputs_are_refused() {
        let root = IndexRoot::new(&[0u8; 32]);
        assert!(root.derive("nothex", 1).is_err());
        assert!(root.derive(B1, 0).is_err());
        assert_eq!(version_of(&[0u8; 5]), None);
        assert_eq!(version_of(&[0u8; INDEX_LEN]), None);
    }
}
