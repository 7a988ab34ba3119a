//! Constant-time comparison of a secret with a candidate.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

/// Compares two byte strings without early exit: both are hashed with SHA-256 and the digests
/// compared in constant time, so neither the position of the first difference nor the stored
/// secret's length leaks through timing.
pub fn secret_eq(secret: &[u8], candidate: &[u8]) -> bool {
    let a = Sha256::digest(secret);
    let b = Sha256::digest(candidate);
    a.as_slice().ct_eq(b.as_slice()).into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn compares() {
        assert!(super::secret_eq(b"abc", b"abc"));
        assert!(!super::secret_eq(b"abc", b"abd"));
        assert!(!super::secret_eq(b"abc", b"abcd"));
        assert!(super::secret_eq(b"", b""));
    }
}
