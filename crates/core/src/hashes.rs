//! Legacy one-way hashes: bcrypt hashes (`$2a$`, `$2b$`, `$2y$`) that applications stored in
//! credential columns before pg_credcrypt. They cannot be decrypted, only recognised (so a usage
//! report counts them and a migration leaves them untouched, see [`crate::legacy::Source::Bcrypt`])
//! and checked against a presented secret ([`verify_bcrypt`]).
//!
//! A bcrypt hash is exactly 60 ASCII characters:
//!
//! ```text
//! $2b$12$<22-character salt><31-character hash>
//! ```
//!
//! with a two-digit cost from `04` to `31` and salt and hash in bcrypt's base64 alphabet
//! `./A-Za-z0-9`, canonical (the unused low bits of the last salt and hash characters are zero).
//! `$2x$` (crypt_blowfish's marker for hashes made by its pre-2011 sign-extension bug) and every
//! other spelling are refused.
//!
//! Verification uses the `bcrypt` crate, which recomputes the hash and compares the 23 hash
//! bytes with `subtle`'s constant-time equality. bcrypt itself only reads the first
//! [`BCRYPT_MAX_SECRET_LEN`] (72) bytes of a secret: a longer presented secret verifies exactly
//! when its first 72 bytes do (as with the OpenBSD, PHP and libxcrypt implementations that made
//! such hashes), so anything after byte 72 is ignored. A NUL byte is an ordinary byte here, not
//! the end of the secret: `"abc\0def"` does not verify against the hash of `"abc"` that a C
//! implementation (which stops at the NUL) would have made from it.

use crate::error::{Error, ErrorKind, Result};

/// Highest bcrypt cost [`verify_bcrypt`] computes. Each step doubles the work: cost 14 is 2^14
/// Blowfish key expansions, about 1.3 s of one core (cost 16 measured 5.2 s, and bcrypt cannot
/// be interrupted by `statement_timeout`), above the 10 to 12 that applications use; cost 31
/// would take days. A hash above the bound is refused with [`ErrorKind::TooLarge`] before any
/// work, so a planted hash cannot tie up a backend for long.
pub const MAX_BCRYPT_COST: u32 = 14;

/// Number of leading bytes of a secret that bcrypt uses; the rest is ignored.
pub const BCRYPT_MAX_SECRET_LEN: usize = 72;

/// bcrypt's base64 alphabet.
const ALPHABET: &[u8; 64] = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// The version marker of a bcrypt hash. All three compute the same hash for the secrets this
/// module verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BcryptVariant {
    /// `$2a$`.
    A,
    /// `$2b$` (OpenBSD since 2014, Python `bcrypt`).
    B,
    /// `$2y$` (PHP, crypt_blowfish).
    Y,
}

impl BcryptVariant {
    /// The marker without dollars: `2a`, `2b` or `2y`.
    pub fn as_str(self) -> &'static str {
        match self {
            BcryptVariant::A => "2a",
            BcryptVariant::B => "2b",
            BcryptVariant::Y => "2y",
        }
    }
}

/// What a well-formed bcrypt hash says about itself (nothing secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BcryptHash {
    /// The version marker.
    pub variant: BcryptVariant,
    /// The cost (log2 of the number of key expansions), 4 to 31.
    pub cost: u32,
}

fn index(b: u8) -> Option<usize> {
    ALPHABET.iter().position(|&a| a == b)
}

/// Parses a bcrypt hash strictly (see the module documentation); `None` for anything else.
pub fn parse_bcrypt(hash: &str) -> Option<BcryptHash> {
    let b = hash.as_bytes();
    if b.len() != 60 || b[0] != b'$' || b[1] != b'2' || b[3] != b'$' || b[6] != b'$' {
        return None;
    }
    let variant = match b[2] {
        b'a' => BcryptVariant::A,
        b'b' => BcryptVariant::B,
        b'y' => BcryptVariant::Y,
        _ => return None,
    };
    if !b[4].is_ascii_digit() || !b[5].is_ascii_digit() {
        return None;
    }
    let cost = u32::from(b[4] - b'0') * 10 + u32::from(b[5] - b'0');
    if !(4..=31).contains(&cost) {
        return None;
    }
    // 22 characters carry the 16-byte salt (4 spare bits), 31 the 23-byte hash (2 spare bits).
    let (salt, digest) = b[7..].split_at(22);
    let all_valid = salt.iter().chain(digest).all(|&c| index(c).is_some());
    let canonical = index(salt[21]).is_some_and(|i| i % 16 == 0) && index(digest[30]).is_some_and(|i| i % 4 == 0);
    (all_valid && canonical).then_some(BcryptHash { variant, cost })
}

/// Whether `value` is a well-formed bcrypt hash ([`parse_bcrypt`]).
pub fn is_bcrypt(value: &str) -> bool {
    parse_bcrypt(value).is_some()
}

/// Checks `presented` against the bcrypt hash `hash`: `Ok(true)` when it matches, `Ok(false)`
/// when not. Only the first [`BCRYPT_MAX_SECRET_LEN`] bytes of `presented` count; NUL bytes are
/// ordinary bytes (module documentation). The comparison is constant-time; the running time
/// depends only on the cost. Errors, never echoing the hash: `Malformed` when `hash` is not a
/// well-formed bcrypt hash; `TooLarge` when its cost exceeds [`MAX_BCRYPT_COST`] (nothing is
/// computed then).
pub fn verify_bcrypt(hash: &str, presented: &[u8]) -> Result<bool> {
    let parsed = parse_bcrypt(hash).ok_or_else(|| {
        Error::new(ErrorKind::Malformed, "value is not a valid bcrypt hash").with_detail(
            "a bcrypt hash is 60 characters: $2a$, $2b$ or $2y$, a two-digit cost from 04 to 31, $, \
             then a 22-character salt and a 31-character hash in bcrypt's base64 alphabet ./A-Za-z0-9",
        )
    })?;
    if parsed.cost > MAX_BCRYPT_COST {
        return Err(Error::new(ErrorKind::TooLarge, "bcrypt cost exceeds the verification limit").with_detail(
            format!(
                "the hash has cost {}; pg_credcrypt verifies bcrypt hashes of cost {MAX_BCRYPT_COST} or less",
                parsed.cost
            ),
        )
        .with_hint("Verify such a hash in the application, or rotate the credential: the new value is encrypted, not hashed."));
    }
    // The crate truncates to 72 bytes, keeps NUL bytes, and compares with subtle's ct_eq.
    bcrypt::verify(presented, hash).map_err(|_| Error::internal("the bcrypt library refused a well-formed hash"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Python bcrypt 5.0.0: bcrypt.hashpw(b"correct horse battery staple", bcrypt.gensalt(4)).
    const H: &str = "$2b$04$IA6/dZ3VUIVyue5lV2vNfe9TZhEx586dd0H2842SvJFFW2BH86ic6";

    #[test]
    fn parses() {
        assert_eq!(parse_bcrypt(H), Some(BcryptHash { variant: BcryptVariant::B, cost: 4 }));
        for (p, v) in [("$2a$", BcryptVariant::A), ("$2y$", BcryptVariant::Y)] {
            assert_eq!(parse_bcrypt(&format!("{p}{}", &H[4..])).unwrap().variant, v);
        }
        assert_eq!(parse_bcrypt(&H.replace("$04$", "$31$")).unwrap().cost, 31);
        for bad in [
            "",
            &H[..59],
            &format!("{H}u"),
            &H.replace("$2b$", "$2x$"),
            &H.replace("$2b$", "$2$b"),
            &H.replace("$2b$", "$2B$"),
            &H.replace("$2b$", "$3b$"),
            &H.replace("$04$", "$03$"),
            &H.replace("$04$", "$32$"),
            &H.replace("$04$", "$4$$"),
            &H.replace("$04$", "$+4$"),
            &H.replace("$04$", "$ 4$"),
            &H.replace("IA6/", "IA6+"),
            &H.replace("IA6/", "IA6="),
            &H.replace("$04$IA", "$04$ü"),
        ] {
            assert_eq!(parse_bcrypt(bad), None, "{bad:?}");
        }
    }

    /// Our parser accepts exactly the salts and hashes the bcrypt crate decodes (canonical base64).
    #[test]
    fn parser_agrees_with_the_crate_on_trailing_bits() {
        for &c in ALPHABET {
            let mut salt_end = H.as_bytes().to_vec();
            salt_end[28] = c;
            let mut hash_end = H.as_bytes().to_vec();
            hash_end[59] = c;
            for v in [salt_end, hash_end] {
                let s = String::from_utf8(v).unwrap();
                assert_eq!(parse_bcrypt(&s).is_some(), bcrypt::verify(b"x", &s).is_ok(), "{s}");
            }
        }
    }

    #[test]
    fn cost_bound() {
        // Refused before any work: a cost-31 verification would otherwise take days.
        for cost in ["17", "20", "31"] {
            let e = verify_bcrypt(&H.replace("$04$", &format!("${cost}$")), b"x").unwrap_err();
            assert_eq!(e.kind, ErrorKind::TooLarge);
            assert!(!e.detail.unwrap().contains(&H[7..]));
        }
        // A hash at the bound is a well-formed hash that simply does not match (not run here:
        // cost 16 takes seconds in a debug build). Just below the bound is shown by the fixtures.
    }

    #[test]
    fn malformed_is_an_error() {
        for bad in ["", "sk-live-1234", "$2b$04$short", &H.replace("$2b$", "$2x$"), &"$".repeat(60)] {
            let e = verify_bcrypt(bad, b"x").unwrap_err();
            assert_eq!(e.kind, ErrorKind::Malformed);
            assert!(bad.len() < 4 || !e.message.contains(bad) && !e.detail.unwrap().contains(bad));
        }
    }
}
