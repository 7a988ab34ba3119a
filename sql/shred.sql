-- pg_credcrypt: per-row keys and crypto-shredding (docs/protected-columns.md, "Per-row keys").
-- credcrypt.shred_key(key) destroys a tenant's Transit key in OpenBao, removes the envelope data
-- keys it wrapped, and records the erasure here. Carried by pg_dump: a restored database knows
-- which keys were destroyed, and its values under them fail with "key destroyed" (38000).
CREATE TABLE credcrypt.erasures (
    key_name          text        NOT NULL,
    erased_at         timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    erased_by         name        NOT NULL DEFAULT current_user,
    values_unreadable bigint      NOT NULL CHECK (values_unreadable >= 0),
    data_keys_removed integer     NOT NULL CHECK (data_keys_removed >= 0),
    PRIMARY KEY (key_name, erased_at)
);
COMMENT ON TABLE credcrypt.erasures IS
    'pg_credcrypt: Transit keys destroyed by shred_key (crypto-shredding): which, when, by whom, how many values became unreadable';
SELECT pg_catalog.pg_extension_config_dump('credcrypt.erasures', '');

CREATE FUNCTION credcrypt.shred_key(key_name text)
RETURNS TABLE (key_name text, values_unreadable bigint, data_keys_removed integer, erased_at timestamptz)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT s.key_name, s.values_unreadable, s.data_keys_removed, s.erased_at::pg_catalog.timestamptz
      FROM credcrypt._shred_key(key_name) s;
END;
COMMENT ON FUNCTION credcrypt.shred_key(text) IS
    'pg_credcrypt: crypto-shredding: destroy a per-row (tenant) Transit key in OpenBao, remove its data keys, record the erasure; every value under it becomes unreadable';
