//! Property tests for the format and the local provider.
//!
//! `PROPTEST_CASES` raises the number of cases (scripts/fuzz.sh runs these for a long time).

use credcrypt_core::format::{kv_reference, Ciphertext, Provider};
use credcrypt_core::kv::kv_row_path;
use credcrypt_core::{ErrorKind, Keyring, LocalKey};
use proptest::prelude::*;

fn ring(seed: u8) -> Keyring {
    let key: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(7).wrapping_add(seed));
    Keyring { current: Some(LocalKey::new(&key)), previous: vec![] }
}

fn small_cases() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(small_cases())]

    /// Random bytes of 0..64 KiB round-trip, with and without context.
    #[test]
    fn round_trip(pt in proptest::collection::vec(any::<u8>(), 0..65_536), ctx in proptest::option::of(proptest::collection::vec(any::<u8>(), 1..64))) {
        let r = ring(1);
        let ct = r.encrypt(&pt, ctx.as_deref()).unwrap();
        prop_assert!(ct.is_ascii());
        prop_assert!(Ciphertext::parse(&ct).is_ok());
        let back = r.decrypt(&ct, ctx.as_deref()).unwrap();
        prop_assert_eq!(back.as_slice(), pt.as_slice());
    }

    /// Two encryptions of the same value differ (random nonce).
    #[test]
    fn nondeterministic(pt in proptest::collection::vec(any::<u8>(), 0..256)) {
        let r = ring(2);
        prop_assert_ne!(r.encrypt(&pt, None).unwrap(), r.encrypt(&pt, None).unwrap());
    }

    /// Every truncation of a ciphertext is rejected.
    #[test]
    fn truncations_rejected(pt in proptest::collection::vec(any::<u8>(), 0..128), ctx in proptest::option::of("[a-z:0-9]{1,16}")) {
        let r = ring(3);
        let ct = r.encrypt(&pt, ctx.as_deref().map(str::as_bytes)).unwrap();
        for cut in 0..ct.len() {
            prop_assert!(r.decrypt(&ct[..cut], ctx.as_deref().map(str::as_bytes)).is_err(), "accepted a truncation at {}", cut);
        }
    }

    /// Wrong context, missing context, extra context and a wrong key all fail authentication.
    #[test]
    fn context_and_key_bound(pt in proptest::collection::vec(any::<u8>(), 0..128), a in "[a-z0-9]{1,12}", b in "[a-z0-9]{1,12}") {
        prop_assume!(a != b);
        let r = ring(4);
        let ct = r.encrypt(&pt, Some(a.as_bytes())).unwrap();
        prop_assert_eq!(r.decrypt(&ct, Some(b.as_bytes())).unwrap_err().kind, ErrorKind::AuthenticationFailed);
        prop_assert_eq!(r.decrypt(&ct, None).unwrap_err().kind, ErrorKind::AuthenticationFailed);
        let plain = r.encrypt(&pt, None).unwrap();
        prop_assert_eq!(r.decrypt(&plain, Some(a.as_bytes())).unwrap_err().kind, ErrorKind::AuthenticationFailed);
        // Same key id forged onto another key: authentication, not a wrong-key pass.
        prop_assert_eq!(ring(5).decrypt(&ct, Some(a.as_bytes())).unwrap_err().kind, ErrorKind::UnknownKeyId);
    }

    /// The parser never panics and never accepts arbitrary strings as decryptable.
    #[test]
    fn parser_total(s in ".{0,200}") {
        // Whatever the input: an answer, never a panic; only `cc1:` values can parse; random
        // input never decrypts; and no error echoes the input back.
        if Ciphertext::parse(&s).is_ok() {
            prop_assert!(s.starts_with("cc1:"));
        }
        let e = ring(6).decrypt(&s, None).expect_err("random input decrypted");
        if s.len() >= 8 {
            prop_assert!(!e.message.contains(&s), "error echoes the input: {}", e.message);
            prop_assert!(!e.detail.as_deref().unwrap_or("").contains(&s), "detail echoes the input");
        }
    }

    /// Structured garbage after a valid header never panics.
    #[test]
    fn parser_structured(provider in "(local|transit|envelope|kv|x)", key in "[a-z.-]{0,10}", ver in "[0-9a-f]{0,20}", flag in "[cnx]", payload in "[A-Za-z0-9_:=+/-]{0,80}") {
        let s = format!("cc1:{provider}:{key}:{ver}:{flag}:{payload}");
        let _ = Ciphertext::parse(&s);
        let e = ring(7).decrypt(&s, None).expect_err("structured garbage decrypted");
        prop_assert!(!e.detail.as_deref().unwrap_or("").contains(&payload) || payload.len() < 8);
    }
}

/// A KV path: 1 to 6 segments from the allowed characters, none `.` or `..`.
fn kv_path() -> impl Strategy<Value = String> {
    proptest::collection::vec("[A-Za-z0-9_.=,~-]{1,24}".prop_filter("dot segments", |s| s != "." && s != ".."), 1..6)
        .prop_map(|v| v.join("/"))
}

/// The fields of a parsed KV reference.
fn kv_fields(s: &str) -> Option<(String, u32, bool, String)> {
    let c = Ciphertext::parse(s).ok()?;
    if c.provider != Provider::Kv {
        return None;
    }
    Some((c.key_name.to_owned(), c.kv_version()?, c.has_context, c.kv_path()?.to_owned()))
}

proptest! {
    #![proptest_config(small_cases())]

    /// KV references round-trip, and every single-bit change of one either fails to parse or
    /// names another mount, version, context flag or path (never the same secret under another
    /// spelling: the reference rebuilt from its fields is the changed text itself).
    #[test]
    fn kv_reference_bit_flips(mount in "[A-Za-z0-9_-][A-Za-z0-9_.-]{0,20}", version in 1u32..=i32::MAX as u32, ctx in any::<bool>(), path in kv_path()) {
        let r = kv_reference(&mount, version, ctx, &path).unwrap();
        let original = (mount.clone(), version, ctx, path.clone());
        prop_assert_eq!(kv_fields(&r), Some(original.clone()));
        let bytes = r.as_bytes();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut m = bytes.to_vec();
                m[i] ^= 1 << bit;
                let Ok(s) = std::str::from_utf8(&m) else { continue };
                if let Ok(c) = Ciphertext::parse(s) {
                    // Nothing else than a kv reference: a flip cannot reach another provider's syntax.
                    prop_assert_eq!(c.provider, Provider::Kv, "{}", s);
                    let f = kv_fields(s).unwrap();
                    prop_assert_ne!(&f, &original, "bit {} of byte {} flipped and still the same reference", bit, i);
                    prop_assert_eq!(kv_reference(&f.0, f.1, f.2, &f.3).unwrap(), s);
                }
            }
        }
    }

    /// Row paths built from arbitrary names and identities always make valid references.
    #[test]
    fn kv_row_paths_are_valid(names in proptest::collection::vec(".{0,80}", 4), identity in proptest::collection::vec(proptest::option::of(".{0,80}"), 0..8), random in any::<[u8; 8]>()) {
        let id: Vec<Option<&str>> = identity.iter().map(|v| v.as_deref()).collect();
        let p = kv_row_path("pg_credcrypt", &names[0], &names[1], &names[2], &names[3], &id, &random).unwrap();
        prop_assert_eq!(p.split('/').count(), 6);
        let r = kv_reference("secret", 1, true, &p).unwrap();
        prop_assert_eq!(Ciphertext::parse(&r).unwrap().kv_path(), Some(p.as_str()));
    }
}

/// Every single-bit flip of every byte of a ciphertext is rejected (exhaustive for a few values).
#[test]
fn every_bit_flip_rejected() {
    let r = ring(8);
    for (pt, ctx) in
        [(&b""[..], None), (&b"sk-live-0123456789abcdef"[..], Some(&b"tenant:7"[..])), (&[0xffu8; 100][..], None)]
    {
        let ct = r.encrypt(pt, ctx).unwrap();
        let bytes = ct.as_bytes();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut m = bytes.to_vec();
                m[i] ^= 1 << bit;
                if let Ok(s) = std::str::from_utf8(&m) {
                    assert!(r.decrypt(s, ctx).is_err(), "bit {bit} of byte {i} flipped and still accepted");
                }
            }
        }
    }
}

/// Previous keys decrypt; new values use the current key.
#[test]
fn rotation() {
    let old = ring(9);
    let ct_old = old.encrypt(b"v", None).unwrap();
    let rotated = Keyring { current: ring(10).current, previous: vec![old.current.clone().unwrap()] };
    assert_eq!(rotated.decrypt(&ct_old, None).unwrap().as_slice(), b"v");
    let ct_new = rotated.encrypt(b"v", None).unwrap();
    let id = rotated.current.as_ref().unwrap().id().to_hex();
    assert!(ct_new.contains(&id));
    assert_eq!(ring(10).decrypt(&ct_old, None).unwrap_err().kind, ErrorKind::UnknownKeyId);
    assert_eq!(Keyring::default().decrypt(&ct_old, None).unwrap_err().kind, ErrorKind::KeyNotConfigured);
    assert_eq!(Keyring::default().encrypt(b"v", None).unwrap_err().kind, ErrorKind::KeyNotConfigured);
}

/// 1 MiB works; one byte over the limit is refused with TooLarge.
#[test]
fn sizes() {
    let r = ring(11);
    let mib = vec![b'a'; 1 << 20];
    let ct = r.encrypt(&mib, None).unwrap();
    assert_eq!(r.decrypt(&ct, None).unwrap().len(), 1 << 20);
    let over = vec![0u8; credcrypt_core::MAX_PLAINTEXT_LEN + 1];
    assert_eq!(r.encrypt(&over, None).unwrap_err().kind, ErrorKind::TooLarge);
}

/// An empty context is the same as no context.
#[test]
fn empty_context_is_none() {
    let r = ring(12);
    let ct = r.encrypt(b"x", Some(b"")).unwrap();
    assert!(ct.contains(":n:"));
    assert_eq!(r.decrypt(&ct, None).unwrap().as_slice(), b"x");
}

/// Error messages never contain the plaintext, the context or the ciphertext.
#[test]
fn errors_are_clean() {
    let r = ring(13);
    let secret = b"sk-live-SUPERSECRETVALUE";
    let ct = r.encrypt(secret, Some(b"ctx-SECRET")).unwrap();
    let mut errs = vec![r.decrypt(&ct, Some(b"other")).unwrap_err(), ring(14).decrypt(&ct, None).unwrap_err()];
    let mut tampered = ct.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    errs.push(r.decrypt(std::str::from_utf8(&tampered).unwrap(), Some(b"ctx-SECRET")).unwrap_err());
    errs.push(r.decrypt("sk-live-SUPERSECRETVALUE", None).unwrap_err());
    for e in errs {
        let s = format!("{e:?} {e}");
        assert!(!s.contains("SUPERSECRET") && !s.contains("ctx-SECRET") && !s.contains(&ct[40..]), "{s}");
    }
}
