-- pg_credcrypt: privileges (run last by CREATE EXTENSION).
-- Everyone may see the schema and use the key-free helpers (is_encrypted, ciphertext_info,
-- mask); encryption and decryption are granted through roles only.
GRANT USAGE ON SCHEMA credcrypt TO PUBLIC;

REVOKE ALL ON FUNCTION credcrypt.encrypt_credential(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt.encrypt_credential(bytea, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt.decrypt_credential(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt.decrypt_credential_bytea(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt.verify_credential(text, text, text) FROM PUBLIC;

GRANT EXECUTE ON FUNCTION credcrypt.encrypt_credential(text, text, text) TO credcrypt_encryptor;
GRANT EXECUTE ON FUNCTION credcrypt.encrypt_credential(bytea, text, text) TO credcrypt_encryptor;
GRANT EXECUTE ON FUNCTION credcrypt.decrypt_credential(text, text) TO credcrypt_decryptor;
GRANT EXECUTE ON FUNCTION credcrypt.decrypt_credential_bytea(text, text) TO credcrypt_decryptor;
GRANT EXECUTE ON FUNCTION credcrypt.verify_credential(text, text, text) TO credcrypt_decryptor;

COMMENT ON SCHEMA credcrypt IS 'pg_credcrypt: encrypted credentials (see docs/sql-reference.md)';
