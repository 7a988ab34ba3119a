-- pg_credcrypt: privileges (run last by CREATE EXTENSION; the upgrade scripts run the same).
-- Deny by default: no routine of schema credcrypt is executable by PUBLIC unless it is listed
-- here as a key-free helper (or something PostgreSQL itself must call as any user: the
-- protection trigger, the policies' helpers). Encryption, decryption and administration are
-- granted through the three roles only.
GRANT USAGE ON SCHEMA credcrypt TO PUBLIC;
REVOKE EXECUTE ON ALL ROUTINES IN SCHEMA credcrypt FROM PUBLIC;

DO $grants$
DECLARE
    g record;
    f regprocedure;
BEGIN
    FOR g IN SELECT * FROM (VALUES
        -- Key-free helpers (no key, no plaintext): everyone.
        ('is_encrypted', 'PUBLIC'), ('ciphertext_info', 'PUBLIC'), ('mask', 'PUBLIC'),
        ('import_transit_ciphertext', 'PUBLIC'), ('column_context', 'PUBLIC'), ('set_owner', 'PUBLIC'),
        -- Called by PostgreSQL as whichever user writes or reads: the trigger, the policies'
        -- and maintenance helpers, the catalog view's and upkeep helpers.
        ('protect_trigger', 'PUBLIC'), ('kv_trigger', 'PUBLIC'), ('_maintenance_active', 'PUBLIC'), ('_owner_setting', 'PUBLIC'),
        ('_reencrypt_needed', 'PUBLIC'), ('_value_source', 'PUBLIC'), ('_type_class', 'PUBLIC'),
        ('_xact_is_current', 'PUBLIC'), ('_protection_trigger_ok', 'PUBLIC'), ('_protection_problems', 'PUBLIC'),
        ('_protected_columns_resolve', 'PUBLIC'), ('_protected_columns_changed', 'PUBLIC'),
        -- Roles.
        ('encrypt_credential', 'credcrypt_encryptor'), ('encrypt_credentials', 'credcrypt_encryptor'),
        ('decrypt_credential', 'credcrypt_decryptor'), ('decrypt_credential_bytea', 'credcrypt_decryptor'),
        ('decrypt_credentials', 'credcrypt_decryptor'), ('verify_credential', 'credcrypt_decryptor'),
        ('reencrypt_credential', 'credcrypt_decryptor'), ('reencrypt_credentials', 'credcrypt_decryptor'),
        ('rotate_key', 'credcrypt_admin'), ('status', 'credcrypt_admin'), ('status', 'credcrypt_monitor'),
        ('protect_column', 'credcrypt_admin'), ('unprotect_column', 'credcrypt_admin'),
        ('create_decrypted_view', 'credcrypt_admin'), ('create_masked_view', 'credcrypt_admin'),
        ('_protect_column', 'credcrypt_admin'), ('_unprotect_column', 'credcrypt_admin'),
        ('_create_decrypted_view', 'credcrypt_admin'), ('_create_masked_view', 'credcrypt_admin'),
        ('_protect', 'credcrypt_admin'), ('_unprotect', 'credcrypt_admin'), ('_decrypted_view', 'credcrypt_admin'),
        ('_masked_view', 'credcrypt_admin'), ('drop_masked_view', 'credcrypt_admin'), ('_drop_masked_view', 'credcrypt_admin'),
        ('_owner_rls_on', 'credcrypt_admin'), ('_owner_rls_off', 'credcrypt_admin'), ('_status_0_1', 'credcrypt_admin'),
        ('enable_owner_rls', 'credcrypt_admin'), ('disable_owner_rls', 'credcrypt_admin'),
        ('_enable_owner_rls', 'credcrypt_admin'), ('_disable_owner_rls', 'credcrypt_admin'),
        ('security_report', 'credcrypt_admin'),
        ('reencrypt_column', 'credcrypt_admin'), ('key_usage', 'credcrypt_admin'), ('_key_usage', 'credcrypt_admin'),
        ('safe_to_retire', 'credcrypt_admin'),
        ('_reencrypt_prepare', 'credcrypt_admin'), ('_reencrypt_batch', 'credcrypt_admin'),
        ('_reencrypt_step', 'credcrypt_admin'), ('_reencrypt_remaining', 'credcrypt_admin'),
        ('_reencrypt_finish', 'credcrypt_admin'), ('_reencrypt_close', 'credcrypt_admin'),
        ('_reencrypt_leaves', 'credcrypt_admin'),
        ('_protect_designation', 'credcrypt_admin'),
        ('blind_index', 'credcrypt_encryptor'), ('blind_indexes', 'credcrypt_encryptor'),
        ('_blind_index', 'credcrypt_encryptor'), ('_blind_indexes', 'credcrypt_encryptor'),
        ('add_blind_index', 'credcrypt_admin'), ('rotate_blind_index', 'credcrypt_admin'),
        ('_add_blind_index', 'credcrypt_admin'), ('_rotate_blind_index', 'credcrypt_admin'),
        ('_index_keys_changed', 'PUBLIC'),
        ('shred_key', 'credcrypt_admin'), ('_shred_key', 'credcrypt_admin'),
        ('_reencrypt_start', 'credcrypt_admin'), ('_reencrypt_bindings', 'credcrypt_admin'), ('_key_usage_of', 'credcrypt_admin')
    ) AS v(routine, grantee) LOOP
        FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
                  WHERE p.pronamespace OPERATOR(pg_catalog.=) 'credcrypt'::pg_catalog.regnamespace
                    AND p.proname OPERATOR(pg_catalog.=) g.routine LOOP
            EXECUTE pg_catalog.format('GRANT EXECUTE ON ROUTINE %s TO %s', f, g.grantee);
        END LOOP;
    END LOOP;
END
$grants$;

-- The worker's state, for monitoring (credcrypt_admin, credcrypt_monitor).
CREATE VIEW credcrypt.transit_status AS SELECT * FROM credcrypt.status();
REVOKE ALL ON credcrypt.transit_status FROM PUBLIC;
GRANT SELECT ON credcrypt.transit_status TO credcrypt_admin, credcrypt_monitor;

COMMENT ON SCHEMA credcrypt IS 'pg_credcrypt: encrypted credentials (see docs/sql-reference.md)';

-- Tables: the catalog of designations is readable by everyone (it holds no secret: binding ids
-- are associated data, not keys) and written only by the extension's functions, as the
-- catalog's owner; so are the other catalog tables.
GRANT SELECT ON credcrypt.protected_columns, credcrypt.protected_columns_info TO PUBLIC;
GRANT SELECT ON credcrypt.owner_rls TO PUBLIC;
REVOKE ALL ON credcrypt.decrypt_audit, credcrypt.decrypt_audit_log FROM PUBLIC;
GRANT SELECT ON credcrypt.decrypt_audit, credcrypt.decrypt_audit_log TO credcrypt_admin;
REVOKE ALL ON credcrypt.reencrypt_runs, credcrypt.reencrypt_failures FROM PUBLIC;
GRANT SELECT ON credcrypt.reencrypt_runs, credcrypt.reencrypt_failures, credcrypt.reencrypt_progress TO credcrypt_admin;
GRANT SELECT ON credcrypt.reencrypt_progress TO credcrypt_monitor;
-- What monitoring reads (docker/prometheus/queries.yaml): no value, no ciphertext, no key.
REVOKE ALL ON credcrypt.key_usage_snapshot, credcrypt.decrypt_audit_totals FROM PUBLIC;
GRANT SELECT ON credcrypt.key_usage_snapshot, credcrypt.decrypt_audit_totals TO credcrypt_admin, credcrypt_monitor;
REVOKE ALL ON credcrypt.data_keys FROM PUBLIC;
GRANT SELECT ON credcrypt.data_keys TO credcrypt_admin;
REVOKE ALL ON credcrypt.index_keys FROM PUBLIC;
GRANT SELECT ON credcrypt.index_keys TO credcrypt_admin;
REVOKE ALL ON credcrypt.erasures FROM PUBLIC;
GRANT SELECT ON credcrypt.erasures TO credcrypt_admin, credcrypt_monitor;
