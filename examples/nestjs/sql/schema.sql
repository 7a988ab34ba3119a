-- The example's database schema, applied as plain SQL by the superuser (once per database;
-- idempotent). Prisma's migrate commands need a native engine that is not on npm, so an app
-- ships its migrations as SQL files like this one and applies them with psql or pg.
--
-- Roles: nest_owner owns the tables and designates their columns (credcrypt_admin);
-- nest_app is what the NestJS service logs in as (encryptor + decryptor, no BYPASSRLS).
CREATE EXTENSION IF NOT EXISTS pg_credcrypt;
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'nest_owner') THEN
        CREATE ROLE nest_owner NOLOGIN NOSUPERUSER NOBYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'nest_app') THEN
        CREATE ROLE nest_app LOGIN NOSUPERUSER NOBYPASSRLS;
    END IF;
END
$$;
GRANT credcrypt_admin TO nest_owner;
GRANT credcrypt_encryptor, credcrypt_decryptor TO nest_app;
GRANT CREATE ON SCHEMA public TO nest_owner;

SET ROLE nest_owner;
-- API keys, one per user and provider (the natural key Prisma's upsert targets).
CREATE TABLE IF NOT EXISTS public.credentials (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      text NOT NULL,
    provider     text NOT NULL,
    api_key      text NOT NULL,
    api_key_mask text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, provider)
);
SELECT credcrypt.protect_column('public.credentials', 'api_key', key_name => 'local', bind_columns => ARRAY['id'],
                                mask_column => 'api_key_mask', mask_prefix => 3, mask_suffix => 4)
 WHERE NOT EXISTS (SELECT FROM credcrypt.protected_columns_info WHERE table_name = 'credentials' AND column_name = 'api_key');
SELECT credcrypt.enable_owner_rls('public.credentials', 'user_id');
SELECT credcrypt.create_decrypted_view('public.credentials', 'credentials_decrypted')
 WHERE to_regclass('public.credentials_decrypted') IS NULL;

-- Git host tokens, protected with the OpenBao Transit key `app`.
CREATE TABLE IF NOT EXISTS public.git_tokens (
    id      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id text NOT NULL,
    host    text NOT NULL,
    token   text NOT NULL,
    UNIQUE (user_id, host)
);
SELECT credcrypt.protect_column('public.git_tokens', 'token', key_name => 'transit:app', bind_columns => ARRAY['id'])
 WHERE NOT EXISTS (SELECT FROM credcrypt.protected_columns_info WHERE table_name = 'git_tokens' AND column_name = 'token');
SELECT credcrypt.enable_owner_rls('public.git_tokens', 'user_id');
SELECT credcrypt.create_decrypted_view('public.git_tokens', 'git_tokens_decrypted')
 WHERE to_regclass('public.git_tokens_decrypted') IS NULL;

GRANT SELECT, INSERT, UPDATE, DELETE ON public.credentials, public.git_tokens TO nest_app;
GRANT SELECT ON public.credentials_decrypted, public.git_tokens_decrypted TO nest_app;
RESET ROLE;
