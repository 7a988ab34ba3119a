//! Constant-time comparisons: of a secret with a candidate, and of equal-length byte strings.

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

/// Compares two byte strings in constant time for strings of equal length: every byte is looked
/// at, whatever the position of the first difference. Strings of different lengths are unequal
/// at once, so the length is not hidden: use it for values of a public, fixed length (digests,
/// bindings, MACs), and [`secret_eq`] when the length itself is secret.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
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

    #[test]
    fn constant_time() {
        use super::constant_time_eq;
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
