-- pg_credcrypt: roles (run first by CREATE EXTENSION).
-- Roles are cluster-wide objects: they are created if absent and are not dropped by
-- DROP EXTENSION (other databases may use them). See docs/security.md.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'credcrypt_encryptor') THEN
        CREATE ROLE credcrypt_encryptor NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'credcrypt_decryptor') THEN
        CREATE ROLE credcrypt_decryptor NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'credcrypt_admin') THEN
        CREATE ROLE credcrypt_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'credcrypt_masker') THEN
        CREATE ROLE credcrypt_masker NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'credcrypt_monitor') THEN
        CREATE ROLE credcrypt_monitor NOLOGIN;
    END IF;
END
$roles$;

COMMENT ON ROLE credcrypt_encryptor IS 'pg_credcrypt: may call credcrypt.encrypt_credential';
COMMENT ON ROLE credcrypt_decryptor IS 'pg_credcrypt: may call credcrypt.decrypt_credential, decrypt_credential_bytea and verify_credential';
COMMENT ON ROLE credcrypt_masker IS 'pg_credcrypt: owns the masked views (reads every row of their tables); no login, no members — grant the views, never this role';
COMMENT ON ROLE credcrypt_monitor IS 'pg_credcrypt: may read the monitoring views (worker status, key usage snapshot, decrypt totals, migration progress); no secret, no ciphertext';
COMMENT ON ROLE credcrypt_admin IS 'pg_credcrypt: administers protected columns and migrations; member of credcrypt_encryptor and credcrypt_decryptor';

GRANT credcrypt_encryptor, credcrypt_decryptor TO credcrypt_admin;
