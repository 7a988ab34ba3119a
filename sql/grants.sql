-- pg_credcrypt: privileges (run last by CREATE EXTENSION).
-- Everyone may see the schema and use the key-free helpers (is_encrypted, ciphertext_info,
-- mask, import_transit_ciphertext); encryption and decryption are granted through roles only.
GRANT USAGE ON SCHEMA credcrypt TO PUBLIC;

REVOKE ALL ON FUNCTION credcrypt.encrypt_credential(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt.encrypt_credential(bytea, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt.encrypt_credentials(text[], text, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt.decrypt_credential(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt.decrypt_credential_bytea(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt.decrypt_credentials(text[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt.verify_credential(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt.rotate_key(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt.status() FROM PUBLIC;

GRANT EXECUTE ON FUNCTION credcrypt.encrypt_credential(text, text, text) TO credcrypt_encryptor;
GRANT EXECUTE ON FUNCTION credcrypt.encrypt_credential(bytea, text, text) TO credcrypt_encryptor;
GRANT EXECUTE ON FUNCTION credcrypt.encrypt_credentials(text[], text, text[]) TO credcrypt_encryptor;
GRANT EXECUTE ON FUNCTION credcrypt.decrypt_credential(text, text, text) TO credcrypt_decryptor;
GRANT EXECUTE ON FUNCTION credcrypt.decrypt_credential_bytea(text, text, text) TO credcrypt_decryptor;
GRANT EXECUTE ON FUNCTION credcrypt.decrypt_credentials(text[], text[]) TO credcrypt_decryptor;
GRANT EXECUTE ON FUNCTION credcrypt.verify_credential(text, text, text) TO credcrypt_decryptor;
GRANT EXECUTE ON FUNCTION credcrypt.rotate_key(text) TO credcrypt_admin;
GRANT EXECUTE ON FUNCTION credcrypt.status() TO credcrypt_admin;

-- The worker's state, for monitoring (credcrypt_admin).
CREATE VIEW credcrypt.transit_status AS SELECT * FROM credcrypt.status();
REVOKE ALL ON credcrypt.transit_status FROM PUBLIC;
GRANT SELECT ON credcrypt.transit_status TO credcrypt_admin;

COMMENT ON SCHEMA credcrypt IS 'pg_credcrypt: encrypted credentials (see docs/sql-reference.md)';
