#!/usr/bin/env python3
"""Independent cross-check of the published format-v1 test vectors (docs/format.md).

Recomputes every vector with Python's `cryptography` AESGCM and SHA-256 and compares it with
the vectors the Rust tests assert (crates/core/tests/vectors.rs). Exit 0 when all match.
"""
import base64
import hashlib
import hmac
import pathlib
import re
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY = bytes(range(32))
NONCE = bytes(range(0xA0, 0xAC))
CASES = [(b"", None), (b"sk-live-4f9a0c2e7b1d", None), (b"sk-live-4f9a0c2e7b1d", b"user:42")]

kid = hashlib.sha256(b"pg_credcrypt/local-key-id/v1\0" + KEY).hexdigest()[:16]
expected = []
for pt, ctx in CASES:
    hdr = f"cc1:local:local:{kid}:{'c' if ctx else 'n'}:"
    ct = AESGCM(KEY).encrypt(NONCE, pt, hdr.encode() + (ctx or b""))
    expected.append(hdr + base64.urlsafe_b64encode(NONCE + ct).decode().rstrip("="))

root = pathlib.Path(__file__).resolve().parent.parent
rust = (root / "crates/core/tests/vectors.rs").read_text()
docs = (root / "docs/format.md").read_text()
published = re.findall(r'"(cc1:local:[^"]+)"', rust)
ok = published == expected and all(v in docs for v in expected) and f'"{kid}"' in rust

# Blind index (crates/core/src/blind.rs): root 0x42 x 32, binding id, version 3.
binding = "00112233445566778899aabbccddeeff"
index_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"pg_credcrypt/blind-index-root/v1",
                 info=f"pg_credcrypt/blind-index/v1:{binding}:3".encode()).derive(b"\x42" * 32)
blind = (3).to_bytes(2, "big").hex() + hmac.new(index_key, b"sk-live-51HxAbCdEf0123456789a1b2", hashlib.sha256).digest()[:16].hex()
blind_rust = (root / "crates/core/src/blind.rs").read_text()
ok_blind = f'"{blind}"' in blind_rust and blind in docs
print(f"key id {kid}; {len(expected)} vectors; rust/docs match python: {ok}; blind index vector: {ok_blind}")
ok = ok and ok_blind
sys.exit(0 if ok else 1)
