//! Secrets kept in an OpenBao KV v2 engine: the paths they are stored at and the binding that
//! ties each stored secret to the row (and context) it belongs to.
//!
//! A `kv` reference (`cc1:kv:<mount>:<KV version>:<c|n>:<path>`, see [`crate::format`]) stores no
//! ciphertext: it names a KV path. Paths are built here from a prefix (a setting, by default
//! [`DEFAULT_KV_PREFIX`]) and the row's coordinates:
//!
//! ```text
//! <prefix>/<database>/<schema>.<table>/<column>/<identity>/<16 hex random>   one protected value
//! <prefix>/<database>/values/<32 hex random>                                  encrypt_credential
//! ```
//!
//! Each name and each identity value becomes one safe segment ([`kv_name_segment`]): kept as is
//! when it is 1 to [`MAX_PLAIN_SEGMENT_LEN`] characters from `[A-Za-z0-9_-]`, otherwise `~`
//! followed by the first 32 lowercase hex digits of the SHA-256 of its UTF-8 bytes. A path
//! therefore never carries arbitrary bytes (no `/`, `.`, `..`, `%` or control characters from a
//! table name or a row value), and a hashed value can never be mistaken for a plain one: `~` is
//! not in the plain set. Plain and hashed names contain no `.`, so `<schema>.<table>` splits in
//! one way only, and no such segment is `values`.
//!
//! The identity segment ([`kv_identity_segment`]) joins the encoded identity values with `,`; a
//! NULL value is `~null`; no identity columns give `~`; a joined list longer than
//! [`MAX_KV_SEGMENT_LEN`] is replaced by `~~` and 32 hex digits of the SHA-256 of that list.
//!
//! A path reveals the database, table and column names and the row identity (as given when safe,
//! hashed otherwise — the hash of a guessable value such as an e-mail address can be found by
//! trying candidates), never the secret.

use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};
use crate::format::{valid_kv_path, KV_PATH_RULES, MAX_KV_PATH_LEN, MAX_KV_SEGMENT_LEN};
use crate::verify::constant_time_eq;

/// The default path prefix under which pg_credcrypt stores KV secrets.
pub const DEFAULT_KV_PREFIX: &str = "pg_credcrypt";

/// Longest name or identity value kept as is in a path segment; longer ones are hashed.
pub const MAX_PLAIN_SEGMENT_LEN: usize = 64;

/// Domain separator of [`kv_binding`].
const BINDING_DOMAIN: &[u8] = b"pg_credcrypt/kv-binding/v1";

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

/// `marker` followed by the first 32 lowercase hex digits of SHA-256(`bytes`).
fn hashed_segment(marker: &str, bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    format!("{marker}{}", hex_lower(&digest[..16]))
}

fn is_plain(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_PLAIN_SEGMENT_LEN
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// Encodes a name or identity value as one path segment: the value itself when it is 1 to
/// [`MAX_PLAIN_SEGMENT_LEN`] characters from `[A-Za-z0-9_-]`, otherwise `~` and the first 32
/// lowercase hex digits of the SHA-256 of its UTF-8 bytes (33 characters).
pub fn kv_name_segment(value: &str) -> String {
    if is_plain(value) {
        value.to_owned()
    } else {
        hashed_segment("~", value.as_bytes())
    }
}

/// Encodes a row identity (the values of the bind columns, in order) as one path segment: each
/// value by [`kv_name_segment`], NULL as `~null`, joined with `,`; `~` for no bind columns. When
/// the joined list is longer than [`MAX_KV_SEGMENT_LEN`], the segment is `~~` and the first 32
/// lowercase hex digits of the SHA-256 of the joined list. Distinct identities give distinct
/// segments (up to SHA-256 collisions): `,` and `~` never occur in a plain value, and a hashed
/// value is 33 characters while `~null` is 5.
pub fn kv_identity_segment(identity: &[Option<&str>]) -> String {
    if identity.is_empty() {
        return "~".to_owned();
    }
    let joined = identity.iter().map(|v| v.map_or_else(|| "~null".to_owned(), kv_name_segment)).collect::<Vec<_>>();
    let joined = joined.join(",");
    if joined.len() > MAX_KV_SEGMENT_LEN {
        hashed_segment("~~", joined.as_bytes())
    } else {
        joined
    }
}

fn check_prefix(prefix: &str) -> Result<()> {
    if valid_kv_path(prefix) {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::InvalidArgument, "invalid KV path prefix").with_detail(KV_PATH_RULES))
    }
}

fn check_length(path: String) -> Result<String> {
    if path.len() > MAX_KV_PATH_LEN {
        return Err(Error::new(ErrorKind::TooLarge, "the KV path prefix is too long").with_detail(format!(
            "the path of a value would be {} bytes; the limit is {MAX_KV_PATH_LEN} bytes",
            path.len()
        )));
    }
    debug_assert!(valid_kv_path(&path));
    Ok(path)
}

/// The KV path of one protected value:
/// `<prefix>/<database>/<schema>.<table>/<column>/<identity>/<16 hex random>`, each name encoded by
/// [`kv_name_segment`], the identity by [`kv_identity_segment`] and `random` as 16 lowercase hex
/// digits. Errors: `InvalidArgument` when `prefix` is not a valid KV path ([`valid_kv_path`]: it
/// may have several segments), `TooLarge` when the prefix makes the path longer than
/// [`MAX_KV_PATH_LEN`]. Neither echoes the prefix.
pub fn kv_row_path(
    prefix: &str,
    database: &str,
    schema: &str,
    table: &str,
    column: &str,
    identity: &[Option<&str>],
    random: &[u8; 8],
) -> Result<String> {
    check_prefix(prefix)?;
    check_length(format!(
        "{prefix}/{}/{}.{}/{}/{}/{}",
        kv_name_segment(database),
        kv_name_segment(schema),
        kv_name_segment(table),
        kv_name_segment(column),
        kv_identity_segment(identity),
        hex_lower(random)
    ))
}

/// The KV path of a value stored by a bare `encrypt_credential` call (no table):
/// `<prefix>/<database>/values/<32 hex random>`. Errors as for [`kv_row_path`]. It cannot equal a
/// row path, which has two more segments, and no table segment is `values` (it contains a `.`).
pub fn kv_value_path(prefix: &str, database: &str, random: &[u8; 16]) -> Result<String> {
    check_prefix(prefix)?;
    check_length(format!("{prefix}/{}/values/{}", kv_name_segment(database), hex_lower(random)))
}

/// The binding stored with a KV secret, checked when a reference is read: 64 lowercase hex
/// digits of
///
/// ```text
/// SHA-256("pg_credcrypt/kv-binding/v1" ‖ 0x00 ‖ u64be(len mount) ‖ mount ‖ u64be(len path) ‖ path
///         ‖ ("n" | "c" ‖ u64be(len context) ‖ context))
/// ```
///
/// The KV version is deliberately left out: every version of a row's secret carries the same
/// binding. A reference copied into a row with another context, or read with another context,
/// gives another binding; without a context nothing ties a reference to a row. An empty context is the same as none, as for the other
/// providers (flag `n`).
pub fn kv_binding(mount: &str, path: &str, context: Option<&[u8]>) -> String {
    let mut h = Sha256::new();
    h.update(BINDING_DOMAIN);
    h.update([0u8]);
    for part in [mount.as_bytes(), path.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    match context.filter(|c| !c.is_empty()) {
        None => h.update(b"n"),
        Some(c) => {
            h.update(b"c");
            h.update((c.len() as u64).to_be_bytes());
            h.update(c);
        }
    }
    hex_lower(&h.finalize())
}

/// Whether a binding read from KV equals the expected one, compared in constant time (the
/// lengths, 64 for any well-formed binding, are not hidden).
pub fn kv_binding_matches(stored: &str, expected: &str) -> bool {
    constant_time_eq(stored.as_bytes(), expected.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{kv_reference, valid_kv_segment, Ciphertext};

    const R8: [u8; 8] = [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77];

    #[test]
    fn segments() {
        for safe in ["users", "api_key", "Tenant-42", "0", "_", "-", &"a".repeat(64)] {
            assert_eq!(kv_name_segment(safe), safe);
        }
        // Expected values from Python: hashlib.sha256(b"…").hexdigest()[:32].
        assert_eq!(kv_name_segment(""), "~e3b0c44298fc1c149afbf4c8996fb924");
        assert_eq!(kv_name_segment("my table"), "~0d24581ae439efb17cc00f11104ff904");
        for unsafe_ in
            ["a.b", ".", "..", "a/b", "a b", "ünï", "x%2f", "a,b", "~x", "~null", "a=b", "\0", &"a".repeat(65)]
        {
            let s = kv_name_segment(unsafe_);
            assert_eq!(s.len(), 33, "{unsafe_:?}");
            assert!(s.starts_with('~') && s[1..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert!(valid_kv_segment(&s));
        }
        assert_ne!(kv_name_segment("a.b"), kv_name_segment("a.c"));
    }

    #[test]
    fn identities() {
        assert_eq!(kv_identity_segment(&[]), "~");
        assert_eq!(kv_identity_segment(&[None]), "~null");
        assert_eq!(kv_identity_segment(&[Some("42")]), "42");
        assert_eq!(kv_identity_segment(&[Some("acme"), Some("42"), None]), "acme,42,~null");
        let uuid = "0b6f9a6e-6a4d-4c58-9b1e-3f0c8d2a1b7e";
        assert_eq!(kv_identity_segment(&[Some(uuid)]), uuid);
        // A value that looks like an encoding is itself hashed.
        assert_ne!(kv_identity_segment(&[Some("~null")]), kv_identity_segment(&[None]));
        assert_ne!(kv_identity_segment(&[Some("a,b")]), kv_identity_segment(&[Some("a"), Some("b")]));
        assert_ne!(kv_identity_segment(&[Some("")]), kv_identity_segment(&[]));
        assert_ne!(kv_identity_segment(&[Some("")]), kv_identity_segment(&[None]));
        // Too long once joined: hashed as a whole, still one valid segment.
        let v = "a".repeat(64);
        let four = [Some(v.as_str()); 4];
        assert_eq!(kv_identity_segment(&four[..3]).len(), 194);
        let s = kv_identity_segment(&four);
        assert!(s.starts_with("~~") && s.len() == 34 && valid_kv_segment(&s), "{s}");
        let many = [None; 100];
        assert!(valid_kv_segment(&kv_identity_segment(&many)));
    }

    #[test]
    fn row_paths() {
        let p = kv_row_path("pg_credcrypt", "app", "public", "users", "api_key", &[Some("42")], &R8).unwrap();
        assert_eq!(p, "pg_credcrypt/app/public.users/api_key/42/0011223344556677");
        let p = kv_row_path("org/team-a/pg", "app", "Sales Data", "clients", "token", &[], &R8).unwrap();
        assert_eq!(p, format!("org/team-a/pg/app/{}.clients/token/~/0011223344556677", kv_name_segment("Sales Data")));
        // The example of docs/format.md (hash from Python: sha256(b"alice@example.com")).
        let p =
            kv_row_path("pg_credcrypt", "app", "public", "users", "api_key", &[Some("alice@example.com"), None], &R8);
        assert_eq!(
            p.unwrap(),
            "pg_credcrypt/app/public.users/api_key/~ff8d9819fc0e12bf0d24892e45987e24,~null/0011223344556677"
        );
        let p = kv_row_path("pg_credcrypt", "app", "s", "t", "c", &[None, Some("x/../y")], &R8).unwrap();
        assert!(p.starts_with("pg_credcrypt/app/s.t/c/~null,~") && !p.contains(".."), "{p}");
        // The reference built from any row path parses and gives the path back.
        let r = kv_reference("secret", 1, true, &p).unwrap();
        assert_eq!(Ciphertext::parse(&r).unwrap().kv_path(), Some(p.as_str()));
        for bad in ["", "/pg", "pg/", "a//b", "..", "pg/../x", "pg:x", "my prefix"] {
            let e = kv_row_path(bad, "app", "s", "t", "c", &[], &R8).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument, "{bad:?}");
            assert!(bad.len() < 3 || !e.detail.unwrap_or_default().contains(bad));
        }
        let long_prefix = vec!["p".repeat(200); 5].join("/");
        assert_eq!(kv_row_path(&long_prefix, "app", "s", "t", "c", &[], &R8).unwrap_err().kind, ErrorKind::TooLarge);
        // Longest names and identity still fit under the default prefix.
        let n = "n".repeat(64);
        let i = "i".repeat(64);
        let id = [Some(i.as_str()); 3];
        let p = kv_row_path(DEFAULT_KV_PREFIX, &n, &n, &n, &n, &id, &R8).unwrap();
        assert!(valid_kv_path(&p));
    }

    #[test]
    fn value_paths() {
        let r: [u8; 16] = std::array::from_fn(|i| i as u8 * 17);
        let p = kv_value_path("pg_credcrypt", "app", &r).unwrap();
        assert_eq!(p, "pg_credcrypt/app/values/00112233445566778899aabbccddeeff");
        assert!(kv_value_path("pg_credcrypt", "my-db.prod", &r).unwrap().starts_with("pg_credcrypt/~"));
        assert_eq!(kv_value_path("a/", "app", &r).unwrap_err().kind, ErrorKind::InvalidArgument);
    }

    #[test]
    fn bindings() {
        let b = kv_binding("secret", "pg/app/s.t/c/1/0011223344556677", Some(b"ctx"));
        assert_eq!(b.len(), 64);
        assert!(b.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert!(kv_binding_matches(&b, &kv_binding("secret", "pg/app/s.t/c/1/0011223344556677", Some(b"ctx"))));
        let others = [
            kv_binding("secret2", "pg/app/s.t/c/1/0011223344556677", Some(b"ctx")),
            kv_binding("secret", "pg/app/s.t/c/2/0011223344556677", Some(b"ctx")),
            kv_binding("secret", "pg/app/s.t/c/1/0011223344556677", Some(b"ctx2")),
            kv_binding("secret", "pg/app/s.t/c/1/0011223344556677", None),
            // Field boundaries are unambiguous.
            kv_binding("secretp", "g/app/s.t/c/1/0011223344556677", Some(b"ctx")),
        ];
        for o in &others {
            assert!(!kv_binding_matches(&b, o));
        }
        assert_eq!(kv_binding("m", "p", None), kv_binding("m", "p", Some(b"")));
        assert!(!kv_binding_matches(&b, &b[..63]));
        assert!(!kv_binding_matches(&b, &b.to_uppercase()));
        assert!(!kv_binding_matches("", &b));
        // Pinned, so a change of the encoding is noticed (bindings already stored would stop
        // matching). From Python: hashlib.sha256(b"pg_credcrypt/kv-binding/v1\0" +
        // struct.pack(">Q", 1) + b"m" + struct.pack(">Q", 1) + b"p" + b"c" + struct.pack(">Q", 3) +
        // b"abc").hexdigest(), and the same ending in b"n" (no context).
        assert_eq!(
            kv_binding("m", "p", Some(b"abc")),
            "db7b31ff63b258dda4c6fe629c025c2b358103e0f784aeddcb5017ccbf3e85e3"
        );
        assert_eq!(kv_binding("m", "p", None), "b3baad1b003c88b4248a6a1b30485fc01a0c8254d8d1fef6c37ebad0d35baf01");
    }
}
