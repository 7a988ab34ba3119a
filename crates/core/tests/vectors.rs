//! Published test vectors (docs/format.md): fixed key and nonce → exact ciphertext.
//! Cross-checked with Python's `cryptography` AESGCM (see docs/format.md).

use credcrypt_core::{Keyring, LocalKey};

fn vector_key() -> [u8; 32] {
    std::array::from_fn(|i| i as u8) // 00 01 02 … 1f
}

fn vector_nonce() -> [u8; 12] {
    std::array::from_fn(|i| (0xa0 + i) as u8) // a0 a1 … ab
}

const VECTORS: &[(&str, Option<&str>, &str)] = &[
    ("", None, "cc1:local:local:f17d75248b1bb562:n:oKGio6SlpqeoqaqrkSPqifvdkfIbFxC3uS-bbA"),
    (
        "sk-live-4f9a0c2e7b1d",
        None,
        "cc1:local:local:f17d75248b1bb562:n:oKGio6SlpqeoqaqrlXNRQSy9Z5JWA76yNxnyu0fOaHRmlzHlnFD5uJLwjx7c7w9H",
    ),
    (
        "sk-live-4f9a0c2e7b1d",
        Some("user:42"),
        "cc1:local:local:f17d75248b1bb562:c:oKGio6SlpqeoqaqrlXNRQSy9Z5JWA76yNxnyu0fOaHQDXiIjKFsgBoa0-izbAJz9",
    ),
];

#[test]
fn key_id_vector() {
    assert_eq!(LocalKey::new(&vector_key()).id().to_hex(), "f17d75248b1bb562");
}

#[test]
fn encrypt_vectors() {
    let k = LocalKey::new(&vector_key());
    for (pt, ctx, expected) in VECTORS {
        let got = k.encrypt_with_nonce(pt.as_bytes(), ctx.map(str::as_bytes), vector_nonce()).unwrap();
        assert_eq!(&got, expected);
    }
}

#[test]
fn decrypt_vectors() {
    let ring = Keyring { current: Some(LocalKey::new(&vector_key())), previous: vec![] };
    for (pt, ctx, ct) in VECTORS {
        let got = ring.decrypt(ct, ctx.map(str::as_bytes)).unwrap();
        assert_eq!(got.as_slice(), pt.as_bytes());
    }
}
