#!/usr/bin/env python3
"""Independent cross-check of the published format-v1 test vectors (docs/format.md).

Recomputes every vector with Python's `cryptography` AESGCM and SHA-256 and compares it with
the vectors the Rust tests assert (crates/core/tests/vectors.rs). Exit 0 when all match.
"""
import base64
import hashlib
import pathlib
import re
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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
print(f"key id {kid}; {len(expected)} vectors; rust/docs match python: {ok}")
sys.exit(0 if ok else 1)
