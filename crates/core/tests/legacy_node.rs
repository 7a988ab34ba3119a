//! Legacy application ciphertexts produced by real Node.js `crypto` (tests/fixtures/node_legacy.js,
//! output committed in tests/fixtures/node_legacy.json): classified and decrypted.

use credcrypt_core::legacy::{classify, decrypt_node, parse_legacy_key, Source};

const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

#[test]
fn node_fixtures_decrypt() {
    let text = include_str!("fixtures/node_legacy.json");
    let cases: Vec<serde_json::Value> = serde_json::from_str(text).expect("fixture JSON");
    let key = parse_legacy_key(KEY_HEX.as_bytes()).expect("key");
    assert_eq!(cases.len(), 5);
    for c in cases {
        let value = c["value"].as_str().expect("value");
        let plain = c["plaintext"].as_str().expect("plaintext");
        assert_eq!(classify(value), Source::LegacyNode, "{value}");
        assert_eq!(decrypt_node(value, &key).expect("decrypts").as_slice(), plain.as_bytes());
        // One flipped character, or another key: refused.
        let mut tampered = value.to_owned();
        let last = tampered.pop().expect("non-empty");
        tampered.push(if last == '0' { '1' } else { '0' });
        assert!(decrypt_node(&tampered, &key).is_err());
        let other = parse_legacy_key(&b"11".repeat(32)).expect("key");
        assert!(decrypt_node(value, &other).is_err());
    }
}
