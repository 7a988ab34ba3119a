-- pg_credcrypt: blind indexes of protected columns (docs/protected-columns.md, "Blind indexes").
-- A designation with a blind index column gets, in that bytea column of every row, the keyed
-- HMAC of its plaintext (version ‖ HMAC-SHA-256(index key, value)[..16], docs/format.md), which
-- an ordinary btree index searches: WHERE col_bidx = credcrypt.blind_index('t', 'col', $1).

-- Index keys: one row per designation and version. The key of a local designation is derived
-- from the local key named by root ('local:<key id>'); that of a transit: or envelope:
-- designation from 32 random bytes generated and wrapped by OpenBao Transit ('transit:<key>',
-- wrapped with the associated data pg_credcrypt/data-key/v1:index:<binding id>:<version>, which
-- no SQL caller may pass). Written by the extension only; carried by pg_dump.
CREATE TABLE credcrypt.index_keys (
    binding_id text    NOT NULL CHECK (binding_id ~ '^[0-9a-f]{32}$'),
    version    integer NOT NULL CHECK (version BETWEEN 1 AND 65535),
    root       text    NOT NULL CHECK (root ~ '^(local:[0-9a-f]{16}|transit:.+)$'),
    wrapped    text    CHECK (wrapped ~ '^vault:v[1-9][0-9]*:'),
    state      text    NOT NULL DEFAULT 'current' CHECK (state IN ('current', 'previous')),
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by name    NOT NULL DEFAULT current_user,
    CHECK ((root LIKE 'local:%') = (wrapped IS NULL)),
    PRIMARY KEY (binding_id, version)
);
CREATE UNIQUE INDEX index_keys_one_current ON credcrypt.index_keys (binding_id) WHERE state = 'current';
COMMENT ON TABLE credcrypt.index_keys IS
    'pg_credcrypt: blind-index keys per designation and version (derived from the local key, or wrapped by OpenBao Transit)';
SELECT pg_catalog.pg_extension_config_dump('credcrypt.index_keys', '');

-- Every backend reloads the designations of a table whose index keys changed.
CREATE FUNCTION credcrypt._index_keys_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r regclass;
BEGIN
    FOR r IN SELECT p.relid FROM credcrypt.protected_columns p
              WHERE p.binding_id IN (CASE WHEN TG_OP <> 'INSERT' THEN OLD.binding_id END,
                                     CASE WHEN TG_OP <> 'DELETE' THEN NEW.binding_id END) LOOP
        PERFORM credcrypt._invalidate_table(r::oid);
        PERFORM credcrypt._invalidate_table(t.relid) FROM pg_partition_tree(r) AS t;
    END LOOP;
    RETURN NULL;
END
$$;
CREATE TRIGGER invalidate AFTER INSERT OR UPDATE OR DELETE ON credcrypt.index_keys
    FOR EACH ROW EXECUTE FUNCTION credcrypt._index_keys_changed();

-- Lookups (credcrypt_encryptor; the caller must also be able to read the index column).
CREATE FUNCTION credcrypt.blind_index(tbl regclass, col name, value text, json_path text[] DEFAULT NULL)
RETURNS bytea LANGUAGE sql STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT credcrypt._blind_index(tbl::oid, col::text, json_path, value);
END;
COMMENT ON FUNCTION credcrypt.blind_index(regclass, name, text, text[]) IS
    'pg_credcrypt: the blind index of a value under the current index key of a protected column (WHERE col_bidx = …)';

CREATE FUNCTION credcrypt.blind_indexes(tbl regclass, col name, plaintexts text[], json_path text[] DEFAULT NULL)
RETURNS bytea[] LANGUAGE sql STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT credcrypt._blind_indexes(tbl::oid, col::text, json_path, plaintexts);
END;
COMMENT ON FUNCTION credcrypt.blind_indexes(regclass, name, text[], text[]) IS
    'pg_credcrypt: the blind indexes of values under every index key in use (WHERE col_bidx = ANY (…)); works during a rotation';

-- Administration (credcrypt_admin and owner of the table).
CREATE FUNCTION credcrypt.add_blind_index(tbl regclass, col name, blind_index_column name, json_path text[] DEFAULT NULL)
RETURNS TABLE (binding_id text, version integer, rows_to_index bigint)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT * FROM credcrypt._add_blind_index(tbl::oid, col::text, json_path, blind_index_column::text);
END;
COMMENT ON FUNCTION credcrypt.add_blind_index(regclass, name, name, text[]) IS
    'pg_credcrypt: give a protected column a blind index column; CALL credcrypt.reencrypt_column fills it for existing rows';

CREATE FUNCTION credcrypt.rotate_blind_index(tbl regclass, col name, json_path text[] DEFAULT NULL)
RETURNS TABLE (binding_id text, version integer, rows_to_index bigint)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT * FROM credcrypt._rotate_blind_index(tbl::oid, col::text, json_path);
END;
COMMENT ON FUNCTION credcrypt.rotate_blind_index(regclass, name, text[]) IS
    'pg_credcrypt: new index key for a blind index; lookups with blind_indexes() find rows under both until CALL credcrypt.reencrypt_column has recomputed every row';
