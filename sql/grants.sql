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

-- Protected columns (sql/protect.sql): administered by credcrypt_admin members who own the
-- table; the catalog is readable by everyone (it holds no secret: binding ids are associated
-- data, not keys) and written only by the extension's functions, as the catalog's owner.
REVOKE ALL ON FUNCTION credcrypt.protect_column(regclass, name, text, name[], name, integer, integer, text[], text) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt.unprotect_column(regclass, name, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt.create_decrypted_view(regclass, name) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt.create_masked_view(regclass, name) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt._protect_column(oid, text, text, text[], text, integer, integer, text[], text) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt._unprotect_column(oid, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt._create_decrypted_view(oid, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt._create_masked_view(oid, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt._invalidate_table(oid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credcrypt.protect_column(regclass, name, text, name[], name, integer, integer, text[], text) TO credcrypt_admin;
GRANT EXECUTE ON FUNCTION credcrypt.unprotect_column(regclass, name, boolean) TO credcrypt_admin;
GRANT EXECUTE ON FUNCTION credcrypt.create_decrypted_view(regclass, name) TO credcrypt_admin;
GRANT EXECUTE ON FUNCTION credcrypt.create_masked_view(regclass, name) TO credcrypt_admin;
GRANT EXECUTE ON FUNCTION credcrypt._protect_column(oid, text, text, text[], text, integer, integer, text[], text) TO credcrypt_admin;
GRANT EXECUTE ON FUNCTION credcrypt._unprotect_column(oid, text, boolean) TO credcrypt_admin;
GRANT EXECUTE ON FUNCTION credcrypt._create_decrypted_view(oid, text) TO credcrypt_admin;
GRANT EXECUTE ON FUNCTION credcrypt._create_masked_view(oid, text) TO credcrypt_admin;
GRANT SELECT ON credcrypt.protected_columns, credcrypt.protected_columns_info TO PUBLIC;

-- Row-level security helper, security report, decrypt audit (sql/rls.sql).
REVOKE ALL ON FUNCTION credcrypt.enable_owner_rls(regclass, name, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt.disable_owner_rls(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt._enable_owner_rls(oid, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt._disable_owner_rls(oid) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt.security_report() FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt._environment_findings() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credcrypt.enable_owner_rls(regclass, name, text) TO credcrypt_admin;
GRANT EXECUTE ON FUNCTION credcrypt.disable_owner_rls(regclass) TO credcrypt_admin;
GRANT EXECUTE ON FUNCTION credcrypt._enable_owner_rls(oid, text, text) TO credcrypt_admin;
GRANT EXECUTE ON FUNCTION credcrypt._disable_owner_rls(oid) TO credcrypt_admin;
GRANT EXECUTE ON FUNCTION credcrypt.security_report() TO credcrypt_admin;
GRANT SELECT ON credcrypt.owner_rls TO PUBLIC;
REVOKE ALL ON credcrypt.decrypt_audit, credcrypt.decrypt_audit_log FROM PUBLIC;
GRANT SELECT ON credcrypt.decrypt_audit, credcrypt.decrypt_audit_log TO credcrypt_admin;

-- Re-encryption migrations (sql/migrate.sql): credcrypt_admin.
REVOKE ALL ON PROCEDURE credcrypt.reencrypt_column(regclass, name, text, integer, boolean) FROM PUBLIC;
GRANT EXECUTE ON PROCEDURE credcrypt.reencrypt_column(regclass, name, text, integer, boolean) TO credcrypt_admin;
REVOKE ALL ON FUNCTION credcrypt.key_usage(regclass) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credcrypt.key_usage(regclass) TO credcrypt_admin;
REVOKE ALL ON FUNCTION credcrypt._key_usage(oid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credcrypt._key_usage(oid) TO credcrypt_admin;
REVOKE ALL ON FUNCTION credcrypt._reencrypt_prepare(oid, text, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt._reencrypt_batch(bigint, oid, text, text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt._reencrypt_remaining(bigint, oid, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt._reencrypt_finish(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION credcrypt._reencrypt_leaves(oid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credcrypt._reencrypt_prepare(oid, text, text, boolean) TO credcrypt_admin;
GRANT EXECUTE ON FUNCTION credcrypt._reencrypt_batch(bigint, oid, text, text, integer) TO credcrypt_admin;
GRANT EXECUTE ON FUNCTION credcrypt._reencrypt_remaining(bigint, oid, text) TO credcrypt_admin;
GRANT EXECUTE ON FUNCTION credcrypt._reencrypt_finish(bigint) TO credcrypt_admin;
GRANT EXECUTE ON FUNCTION credcrypt._reencrypt_leaves(oid) TO credcrypt_admin;
REVOKE ALL ON credcrypt.reencrypt_runs, credcrypt.reencrypt_failures FROM PUBLIC;
GRANT SELECT ON credcrypt.reencrypt_runs, credcrypt.reencrypt_failures, credcrypt.reencrypt_progress TO credcrypt_admin;
REVOKE ALL ON credcrypt.data_keys FROM PUBLIC;
GRANT SELECT ON credcrypt.data_keys TO credcrypt_admin;
