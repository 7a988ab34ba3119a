//! bcrypt hashes made by other implementations verify (and only with the right secret).
//!
//! How the fixtures were made (cost 4, so the tests stay fast):
//! - `python3 -m venv /tmp/bcv && /tmp/bcv/bin/pip install bcrypt` (bcrypt 5.0.0), then
//!   `bcrypt.hashpw(secret, bcrypt.gensalt(rounds=4))`, which writes `$2b$`;
//! - Python bcrypt 5 refuses secrets over 72 bytes, so the 100-byte one, and the hash of `abc`
//!   for the NUL test, were made with the system's libxcrypt 4.4.33 (`crypt(secret, setting)`
//!   through ctypes, setting from `bcrypt.gensalt(rounds=4)`), an independent C implementation;
//! - the `$2a$` and `$2y$` forms are the `$2b$` hashes with the prefix changed: libxcrypt
//!   recomputes exactly those strings for the same secrets, and Python and libxcrypt agree on
//!   every fixture;
//! - the `$2y$` cost-10 hash of `rasmuslerdorf` is the example of PHP's `password_verify`
//!   manual page; both Python bcrypt and libxcrypt verify it.

use credcrypt_core::hashes::{parse_bcrypt, verify_bcrypt, BcryptVariant, MAX_BCRYPT_COST};
use credcrypt_core::legacy::{classify, Source};
use credcrypt_core::ErrorKind;

/// `(secret, $2b$ hash)` made by Python bcrypt 5.0.0.
fn python_fixtures() -> Vec<(Vec<u8>, &'static str)> {
    vec![
        (b"".to_vec(), "$2b$04$mhx2iHhUwEUNZ/28ptbz1.eMUQEPW7tFaOwJPk4xUuWaQoTXlPfwu"),
        (b"correct horse battery staple".to_vec(), "$2b$04$IA6/dZ3VUIVyue5lV2vNfe9TZhEx586dd0H2842SvJFFW2BH86ic6"),
        // 72 bytes: b"0123456789" * 8, cut to 72.
        (secret72(), "$2b$04$zKVUZnz2kGoUaIIRjSx2Ru5FmP8QlVL3MarDQYyxl9lj65hUpLK9u"),
        ("pässwörd-密码-🔑".as_bytes().to_vec(), "$2b$04$qOdL0zrQxkw6os7Uy1UOMOoXyMZBeH4Zpv2clqIHN8N.jr.odBNcS"),
    ]
}

fn secret72() -> Vec<u8> {
    b"0123456789".repeat(8)[..72].to_vec()
}

/// 100 bytes: 0x21..=0x7e, then `XYZxyz`. Hashed by libxcrypt (`$2b$`, cost 4).
fn secret100() -> Vec<u8> {
    (0x21u8..0x7f).chain(*b"XYZxyz").collect()
}
const HASH100: &str = "$2b$04$Z9Gu/WNAna929llFZp2cle9Ao03xNWBjyOaLdfEBl.f5HLBPf7jW.";

fn with_prefix(hash: &str, prefix: &str) -> String {
    format!("{prefix}{}", &hash[4..])
}

#[test]
fn right_secrets_verify_wrong_ones_do_not() {
    for (secret, hash) in python_fixtures() {
        for prefix in ["$2b$", "$2a$", "$2y$"] {
            let h = with_prefix(hash, prefix);
            assert!(verify_bcrypt(&h, &secret).unwrap(), "{h}");
            let mut wrong = secret.clone();
            match wrong.first_mut() {
                Some(b) => *b ^= 0x01,
                None => wrong.push(b'x'),
            }
            assert!(!verify_bcrypt(&h, &wrong).unwrap(), "{h}");
            assert!(!verify_bcrypt(&h, b" ").unwrap(), "{h}");
            if !secret.is_empty() {
                assert!(!verify_bcrypt(&h, b"").unwrap(), "{h}");
                assert!(!verify_bcrypt(&h, &secret[..secret.len() - 1]).unwrap(), "{h}");
            }
            assert_eq!(classify(&h), Source::Bcrypt { cost: 4 });
        }
    }
    // Another hash of a right secret does not verify the others' secrets.
    let f = python_fixtures();
    assert!(!verify_bcrypt(f[1].1, &f[3].0).unwrap());
}

#[test]
fn only_the_first_72_bytes_count() {
    // 72 bytes: one more byte is ignored, one less is another secret.
    let s72 = secret72();
    let h72 = python_fixtures()[2].1;
    let mut longer = s72.clone();
    longer.extend_from_slice(b"ignored");
    assert!(verify_bcrypt(h72, &longer).unwrap());
    assert!(!verify_bcrypt(h72, &s72[..71]).unwrap());
    // 100 bytes hashed by libxcrypt: the whole secret verifies, so does its 72-byte prefix and
    // anything that differs only after byte 72; a change within the first 72 bytes does not.
    let s100 = secret100();
    assert_eq!(s100.len(), 100);
    for prefix in ["$2b$", "$2a$", "$2y$"] {
        let h = with_prefix(HASH100, prefix);
        assert!(verify_bcrypt(&h, &s100).unwrap());
        assert!(verify_bcrypt(&h, &s100[..72]).unwrap());
        let mut tail = s100.clone();
        tail[80] ^= 0x20;
        assert!(verify_bcrypt(&h, &tail).unwrap());
        let mut head = s100.clone();
        head[71] ^= 0x20;
        assert!(!verify_bcrypt(&h, &head).unwrap());
        assert!(!verify_bcrypt(&h, &s100[..71]).unwrap());
    }
}

#[test]
fn nul_bytes_are_ordinary_bytes() {
    // Python bcrypt hashes b"abc\0def" with the NUL and what follows.
    let h = "$2b$04$0YkypqDyr6RHvsf78JWU2u/ML1cmKYck/BPviBDm7QKKOLHu8pD8.";
    assert!(verify_bcrypt(h, b"abc\0def").unwrap());
    assert!(!verify_bcrypt(h, b"abc").unwrap());
    assert!(!verify_bcrypt(h, b"abc\0").unwrap());
    // libxcrypt's hash of "abc" (a C implementation stops at a NUL): "abc\0def" does not match.
    let c = "$2b$04$RFzsgOGr5Xgn9BIDSTtdGuyWludGQ7PjpKc.02IU5QClLEG54DO0O";
    assert!(verify_bcrypt(c, b"abc").unwrap());
    assert!(!verify_bcrypt(c, b"abc\0def").unwrap());
    assert!(!verify_bcrypt(c, b"abc\0").unwrap());
}

#[test]
fn php_manual_vector() {
    let h = "$2y$10$.vGA1O9wmRjrwAVXD98HNOgsNpDczlqm3Jq7KnEd1rVAGv3Fykk1a";
    assert_eq!(parse_bcrypt(h).map(|p| (p.variant, p.cost)), Some((BcryptVariant::Y, 10)));
    assert!(verify_bcrypt(h, b"rasmuslerdorf").unwrap());
    assert!(!verify_bcrypt(h, b"rasmuslerdorF").unwrap());
}

#[test]
fn malformed_hashes_are_errors_not_panics() {
    let good = python_fixtures()[1].1;
    let mut cases: Vec<String> = vec![
        String::new(),
        "$".into(),
        "$2b$".into(),
        "$2b$04$".into(),
        good[..59].into(),
        format!("{good}."),
        good.replace("$2b$", "$2x$"),
        good.replace("$2b$", "$2c$"),
        good.replace("$04$", "$00$"),
        good.replace("$04$", "$99$"),
        good.replace("$04$", "$-4$"),
        good.replace('/', "+"),
        // Non-canonical last salt character (low bits set).
        format!("{}P{}", &good[..28], &good[29..]),
        // Non-canonical last hash character.
        format!("{}7", &good[..59]),
        // 60 bytes but not ASCII: a multi-byte character where the cost is.
        format!("$2b$é{}", &good[6..]),
        "\0".repeat(60),
        "x".repeat(10_000),
    ];
    // Every single-byte change to a non-alphabet character.
    for i in 0..good.len() {
        for c in [b':', b' ', b'$', b'\n', 0x7f] {
            let mut m = good.as_bytes().to_vec();
            if m[i] != c {
                m[i] = c;
                cases.push(String::from_utf8(m).unwrap());
            }
        }
    }
    for bad in &cases {
        let e = verify_bcrypt(bad, b"x").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Malformed, "{bad:?}");
        assert_ne!(classify(bad), Source::Bcrypt { cost: 4 }, "{bad:?}");
        if bad.len() > 8 {
            assert!(!e.message.contains(bad.as_str()) && !e.detail.unwrap().contains(bad.as_str()));
        }
    }
}

#[test]
fn cost_bound_is_enforced_before_any_work() {
    assert_eq!(MAX_BCRYPT_COST, 14);
    let good = python_fixtures()[1].1;
    let t = std::time::Instant::now();
    for cost in (MAX_BCRYPT_COST + 1)..=31 {
        let h = good.replace("$04$", &format!("${cost:02}$"));
        assert_eq!(classify(&h), Source::Bcrypt { cost });
        let e = verify_bcrypt(&h, b"correct horse battery staple").unwrap_err();
        assert_eq!(e.kind, ErrorKind::TooLarge, "cost {cost}");
        assert!(!e.detail.unwrap().contains(&good[7..]));
    }
    // Cost 17 alone would take seconds; fifteen refusals take no time at all.
    assert!(t.elapsed() < std::time::Duration::from_secs(1));
}
