-- pg_credcrypt walkthrough (run by scripts/demo.sh on a throwaway cluster).
\set ECHO queries
\pset null '(null)'
\set VERBOSITY default

\echo
\echo '=== 1. Install the extension; an application role gets the encryptor and decryptor roles'
CREATE EXTENSION pg_credcrypt;
CREATE ROLE demo_app LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT credcrypt_encryptor, credcrypt_decryptor TO demo_app;
CREATE TABLE api_keys (id int PRIMARY KEY, owner text NOT NULL, secret text NOT NULL);
GRANT SELECT, INSERT, UPDATE ON api_keys TO demo_app;
SET ROLE demo_app;

\echo
\echo '=== 2. Encrypt: the table only ever holds ciphertext, bound to its owner as context'
INSERT INTO api_keys VALUES
  (1, 'alice', credcrypt.encrypt_credential('sk-live-51HxAbCdEf0123456789a1b2', context => 'owner:alice')),
  (2, 'bob',   credcrypt.encrypt_credential('ghp_R2d2C3po0123456789abcdefXyZ9', context => 'owner:bob'));
SELECT id, owner, left(secret, 60) || '…' AS stored_value FROM api_keys ORDER BY id;
SELECT i.* FROM api_keys, credcrypt.ciphertext_info(secret) i WHERE id = 1;

\echo
\echo '=== 3. Decrypt with the same context'
SELECT id, owner, credcrypt.decrypt_credential(secret, 'owner:' || owner) AS plaintext FROM api_keys ORDER BY id;

\echo
\echo '=== 4. Verify a presented secret without returning it (constant-time)'
SELECT credcrypt.verify_credential(secret, 'sk-live-51HxAbCdEf0123456789a1b2', 'owner:alice') AS right_secret,
       credcrypt.verify_credential(secret, 'sk-live-guess', 'owner:alice')                    AS wrong_secret
  FROM api_keys WHERE id = 1;

\echo
\echo '=== 5. Mask for display: reporting tools see sk-…a1b2'
SELECT id, credcrypt.mask(credcrypt.decrypt_credential(secret, 'owner:' || owner), 3, 4) AS masked FROM api_keys ORDER BY id;

\echo
\echo '=== 6. Tampering is refused (each statement below must fail)'
\set ON_ERROR_STOP 0
\set VERBOSITY verbose
\echo '--- 6a. bob copies alice''s ciphertext into his row: the context no longer matches'
UPDATE api_keys SET secret = (SELECT secret FROM api_keys WHERE id = 1) WHERE id = 2;
SELECT credcrypt.decrypt_credential(secret, 'owner:' || owner) FROM api_keys WHERE id = 2;
\echo '--- 6b. one character of the stored ciphertext is changed'
SELECT credcrypt.decrypt_credential(
         overlay(secret placing CASE WHEN substr(secret, 60, 1) = 'A' THEN 'B' ELSE 'A' END from 60 for 1),
         'owner:alice')
  FROM api_keys WHERE id = 1;
\echo '--- 6c. a role without credcrypt_decryptor cannot decrypt at all'
RESET ROLE;
CREATE ROLE demo_reporter NOLOGIN;
GRANT SELECT ON api_keys TO demo_reporter;
SET ROLE demo_reporter;
SELECT credcrypt.decrypt_credential(secret, 'owner:alice') FROM api_keys WHERE id = 1;
SELECT id, credcrypt.is_encrypted(secret) AS is_encrypted FROM api_keys ORDER BY id;
\set ON_ERROR_STOP 1
RESET ROLE;
\echo
\echo '=== done'
