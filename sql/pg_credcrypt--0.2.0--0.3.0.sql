-- pg_credcrypt 0.2.0 -> 0.3.0. Hand-written; pgrx-tests/tests/upgrade.rs runs it on a live
-- installation of every earlier release and checks that the result equals a fresh install.
\echo Use "ALTER EXTENSION pg_credcrypt UPDATE TO '0.3.0'" to load this file. \quit

-- ---------------------------------------------------------------------------------------
-- Blind indexes (sql/blind.sql, sql/protect.sql): the designation's index column, the index
-- keys, protect_column(…, blind_index_column), the lookups and their administration. Every
-- symbol the 0.2.0 script names still exists in the 0.3.0 library.
ALTER TABLE credcrypt.protected_columns ADD COLUMN blind_index_column name, ADD COLUMN blind_index_attnum smallint;

CREATE FUNCTION credcrypt."_protect_designation"(
	"tbl" oid, /* pg_sys :: Oid */
	"col" TEXT, /* & str */
	"key_name" TEXT, /* Option < & str > */
	"bind_columns" TEXT[], /* :: std :: option :: Option < Vec < Option < String > > > */
	"mask_column" TEXT, /* Option < & str > */
	"mask_prefix" INT, /* i32 */
	"mask_suffix" INT, /* i32 */
	"json_path" TEXT[], /* :: std :: option :: Option < Vec < Option < String > > > */
	"existing_values" TEXT, /* & str */
	"blind_index_column" TEXT /* Option < & str > */
) RETURNS TABLE (
	"binding_id" TEXT,  /* String */
	"key_name" TEXT,  /* String */
	"trigger_created" bool  /* bool */
)
VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'protect_column_v3_wrapper';

CREATE FUNCTION credcrypt."_blind_index"(
	"tbl" oid, /* pg_sys :: Oid */
	"col" TEXT, /* & str */
	"json_path_arg" TEXT[], /* :: std :: option :: Option < Vec < Option < String > > > */
	"value" TEXT /* Option < & str > */
) RETURNS bytea /* :: std :: option :: Option < Vec < u8 > > */
STABLE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'blind_index_wrapper';

CREATE FUNCTION credcrypt."_blind_indexes"(
	"tbl" oid, /* pg_sys :: Oid */
	"col" TEXT, /* & str */
	"json_path_arg" TEXT[], /* :: std :: option :: Option < Vec < Option < String > > > */
	"plaintexts" TEXT[] /* :: std :: option :: Option < Vec < Option < String > > > */
) RETURNS bytea[] /* :: std :: option :: Option < Vec < Vec < u8 > > > */
STABLE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'blind_indexes_wrapper';

CREATE FUNCTION credcrypt."_add_blind_index"(
	"tbl" oid, /* pg_sys :: Oid */
	"col" TEXT, /* & str */
	"json_path_arg" TEXT[], /* :: std :: option :: Option < Vec < Option < String > > > */
	"blind_index_column" TEXT /* & str */
) RETURNS TABLE (
	"binding_id" TEXT,  /* String */
	"version" INT,  /* i32 */
	"rows_to_index" bigint  /* i64 */
)
VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'add_blind_index_wrapper';

CREATE FUNCTION credcrypt."_rotate_blind_index"(
	"tbl" oid, /* pg_sys :: Oid */
	"col" TEXT, /* & str */
	"json_path_arg" TEXT[] /* :: std :: option :: Option < Vec < Option < String > > > */
) RETURNS TABLE (
	"binding_id" TEXT,  /* String */
	"version" INT,  /* i32 */
	"rows_to_index" bigint  /* i64 */
)
VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rotate_blind_index_wrapper';

CREATE OR REPLACE FUNCTION credcrypt._protected_columns_resolve() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.bind_types IS NULL THEN
        NEW.bind_types := ARRAY(SELECT credcrypt._type_class(a.atttypid, a.atttypmod)
                                  FROM unnest(NEW.bind_columns) WITH ORDINALITY AS b(name, i)
                                  JOIN pg_attribute a ON a.attrelid = NEW.relid AND a.attname = b.name AND NOT a.attisdropped
                                 ORDER BY b.i);
    END IF;
    NEW.column_attnum := (SELECT attnum FROM pg_attribute
                           WHERE attrelid = NEW.relid AND attname = NEW.column_name AND NOT attisdropped);
    NEW.bind_attnums := ARRAY(SELECT a.attnum FROM unnest(NEW.bind_columns) WITH ORDINALITY AS b(name, i)
                                JOIN pg_attribute a ON a.attrelid = NEW.relid AND a.attname = b.name AND NOT a.attisdropped
                               ORDER BY b.i);
    NEW.mask_attnum := (SELECT attnum FROM pg_attribute
                         WHERE attrelid = NEW.relid AND attname = NEW.mask_column AND NOT attisdropped);
    NEW.blind_index_attnum := (SELECT attnum FROM pg_attribute
                                WHERE attrelid = NEW.relid AND attname = NEW.blind_index_column AND NOT attisdropped);
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION credcrypt._protected_columns_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r regclass;
BEGIN
    IF TG_OP = 'DELETE' AND to_regclass('credcrypt.index_keys') IS NOT NULL THEN
        DELETE FROM credcrypt.index_keys WHERE binding_id = OLD.binding_id;
    END IF;
    FOREACH r IN ARRAY ARRAY[CASE WHEN TG_OP <> 'INSERT' THEN OLD.relid END,
                             CASE WHEN TG_OP <> 'DELETE' THEN NEW.relid END] LOOP
        IF r IS NOT NULL AND EXISTS (SELECT FROM pg_class WHERE oid = r) THEN
            PERFORM credcrypt._invalidate_table(r::oid);
            PERFORM credcrypt._invalidate_table(t.relid) FROM pg_partition_tree(r) AS t;
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION credcrypt._protection_problems(tbl regclass)
RETURNS TABLE (kind text, object text, finding text, fix text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH tree AS (SELECT tbl::oid AS rel UNION SELECT relid::oid FROM pg_partition_tree(tbl))
    SELECT CASE WHEN EXISTS (SELECT FROM pg_trigger g WHERE g.tgrelid = r.rel
                               AND (g.tgname = 'zz_credcrypt_protect' OR g.tgfoid = 'credcrypt.protect_trigger()'::regprocedure))
                THEN 'altered' ELSE 'missing' END,
           format('table %s', r.rel::regclass),
           'the protection trigger zz_credcrypt_protect is missing, disabled or altered: plaintext can be stored',
           format('Protect the columns again (credcrypt.unprotect_column, then credcrypt.protect_column), or ALTER TABLE %s ENABLE TRIGGER zz_credcrypt_protect.', r.rel::regclass)
      FROM tree r
     WHERE NOT EXISTS (
             SELECT FROM pg_trigger g
              WHERE g.tgrelid = r.rel AND g.tgname = 'zz_credcrypt_protect'
                AND g.tgfoid = 'credcrypt.protect_trigger()'::regprocedure
                AND g.tgtype = 23 AND g.tgqual IS NULL AND cardinality(g.tgattr::int2[]) = 0
                AND g.tgenabled IN ('O', 'A'))
    UNION ALL
    SELECT 'later_trigger', format('trigger %I on %s', g.tgname, r.rel::regclass),
           'a BEFORE ROW trigger fires after zz_credcrypt_protect (triggers fire in name order): it could store plaintext',
           format('ALTER TRIGGER %I ON %s RENAME TO <a name that sorts before zz_credcrypt_protect>;', g.tgname, r.rel::regclass)
      FROM tree r JOIN pg_trigger g ON g.tgrelid = r.rel
     WHERE g.tgname > 'zz_credcrypt_protect' AND NOT g.tgisinternal AND g.tgenabled <> 'D'
       AND (g.tgtype & 3) = 3 AND (g.tgtype & 20) <> 0
    UNION ALL
    SELECT 'rule', format('rule %I on %s', w.rulename, r.rel::regclass),
           'a rule on a table with protected columns can copy the plaintext of new rows elsewhere',
           format('DROP RULE %I ON %s;', w.rulename, r.rel::regclass)
      FROM tree r JOIN pg_rewrite w ON w.ev_class = r.rel
     WHERE w.ev_type <> '1'
    UNION ALL
    SELECT 'inheritance', format('table %s', c.oid::regclass),
           format('inherits from %s without being a partition: its rows are not encrypted, and show through %s', r.rel::regclass, r.rel::regclass),
           format('ALTER TABLE %s NO INHERIT %s;  -- or make it a partition', c.oid::regclass, r.rel::regclass)
      FROM tree r JOIN pg_inherits i ON i.inhparent = r.rel JOIN pg_class c ON c.oid = i.inhrelid
     WHERE NOT c.relispartition
    UNION ALL
    SELECT 'foreign_table', format('foreign table %s', c.oid::regclass),
           format('is a partition or child of %s: rows written through it are stored by another server, without the protection trigger', r.rel::regclass),
           format('ALTER TABLE %s DETACH PARTITION %s;  -- or NO INHERIT; keep protected rows in local tables', r.rel::regclass, c.oid::regclass)
      FROM tree r JOIN pg_inherits i ON i.inhparent = r.rel JOIN pg_class c ON c.oid = i.inhrelid
     WHERE c.relkind = 'f'
    UNION ALL
    SELECT 'bind_type', format('column %I of %s', b.name, tbl),
           format('bind column of protected column %I changed type (from %s to %s): every stored value is bound to its old text form',
                  p.column_name, b.recorded, coalesce(credcrypt._type_class(a.atttypid, a.atttypmod), 'nothing')),
           format('ALTER TABLE %s ALTER COLUMN %I TYPE <its previous type>;', tbl, b.name)
      FROM credcrypt.protected_columns p
     CROSS JOIN LATERAL unnest(p.bind_columns, p.bind_types) AS b(name, recorded)
      LEFT JOIN pg_attribute a ON a.attrelid = p.relid AND a.attname = b.name AND NOT a.attisdropped
     WHERE p.relid = tbl AND credcrypt._type_class(a.atttypid, a.atttypmod) IS DISTINCT FROM b.recorded
    UNION ALL
    SELECT 'column_type', format('column %I of %s', p.column_name, tbl),
           format('protected column changed type to %s: the protection trigger refuses to write it', format_type(a.atttypid, a.atttypmod)),
           format('ALTER TABLE %s ALTER COLUMN %I TYPE %s;', tbl, p.column_name, CASE WHEN p.json_path = '{}' THEN 'text' ELSE 'jsonb' END)
      FROM credcrypt.protected_columns p
      JOIN pg_attribute a ON a.attrelid = p.relid AND a.attname = p.column_name AND NOT a.attisdropped
      JOIN pg_type ty ON ty.oid = a.atttypid
     WHERE p.relid = tbl
       AND CASE WHEN p.json_path = '{}'
                THEN (CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END) NOT IN ('text'::regtype, 'varchar'::regtype)
                ELSE (CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END) <> 'jsonb'::regtype END
    UNION ALL
    SELECT 'column_type', format('column %I of %s', p.blind_index_column, tbl),
           format('blind index column changed type to %s: the protection trigger refuses to write it', format_type(a.atttypid, a.atttypmod)),
           format('ALTER TABLE %s ALTER COLUMN %I TYPE bytea;', tbl, p.blind_index_column)
      FROM credcrypt.protected_columns p
      JOIN pg_attribute a ON a.attrelid = p.relid AND a.attname = p.blind_index_column AND NOT a.attisdropped
      JOIN pg_type ty ON ty.oid = a.atttypid
     WHERE p.relid = tbl
       AND (CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END) <> 'bytea'::regtype
    UNION ALL
    SELECT 'partition_owner', format('table %s', r.rel::regclass),
           format('is owned by %s, not by %s (the owner of %s): maintenance would run its triggers and policies with the owner''s rights',
                  c.relowner::regrole, o.relowner::regrole, tbl),
           format('ALTER TABLE %s OWNER TO %s;', r.rel::regclass, o.relowner::regrole)
      FROM tree r JOIN pg_class c ON c.oid = r.rel JOIN pg_class o ON o.oid = tbl
     WHERE c.relowner <> o.relowner
    UNION ALL
    SELECT 'masked_policy', format('policy %I on %s', p.polname, tbl),
           'reads other relations in a subquery, which PostgreSQL runs with the rights of credcrypt_masker (the owner of every masked view) whenever a masked view of this table is read',
           format('DROP POLICY %I ON %s;  -- or drop the masked view (credcrypt.drop_masked_view) before adding such a policy', p.polname, tbl)
      FROM pg_policy p
     WHERE p.polrelid = tbl
       AND p.polcmd IN ('r', '*')
       AND (0::oid = ANY (p.polroles) OR 'credcrypt_masker'::regrole::oid = ANY (p.polroles))
       AND p.polqual::text LIKE '%{SUBLINK %'
       AND EXISTS (SELECT FROM pg_depend d JOIN pg_rewrite w ON w.oid = d.objid JOIN pg_class v ON v.oid = w.ev_class
                    WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = tbl
                      AND v.relkind = 'v' AND v.relowner = 'credcrypt_masker'::regrole)
$$;

CREATE OR REPLACE VIEW credcrypt.protected_columns_info AS
SELECT n.nspname   AS table_schema,
       c.relname   AS table_name,
       p.column_name,
       p.json_path,
       p.key_name,
       p.bind_columns,
       p.mask_column,
       p.mask_prefix,
       p.mask_suffix,
       p.binding_id,
       credcrypt._protection_trigger_ok(p.relid) AS trigger_enabled,
       p.created_at,
       p.created_by,
       p.blind_index_column
  FROM credcrypt.protected_columns p
  JOIN pg_catalog.pg_class c ON c.oid = p.relid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace;

DROP FUNCTION credcrypt.protect_column(regclass, name, text, name[], name, integer, integer, text[], text);
CREATE FUNCTION credcrypt.protect_column(
    tbl regclass, col name, key_name text DEFAULT NULL, bind_columns name[] DEFAULT NULL,
    mask_column name DEFAULT NULL, mask_prefix integer DEFAULT 0, mask_suffix integer DEFAULT 4,
    json_path text[] DEFAULT NULL, existing_values text DEFAULT 'refuse', blind_index_column name DEFAULT NULL)
RETURNS TABLE (binding_id text, key_name text, trigger_created boolean)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT * FROM credcrypt._protect_designation(tbl::oid, col::text, key_name, bind_columns::text[], mask_column::text,
                                                 mask_prefix, mask_suffix, json_path, existing_values,
                                                 blind_index_column::text);
END;
COMMENT ON FUNCTION credcrypt.protect_column(regclass, name, text, name[], name, integer, integer, text[], text, name) IS
    'pg_credcrypt: encrypt a column (or a jsonb key) transparently from now on';

CREATE OR REPLACE FUNCTION credcrypt._on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o record;
    p record;
    r regclass;
BEGIN
    FOR o IN SELECT * FROM pg_event_trigger_dropped_objects() WHERE object_type IN ('table', 'table column') LOOP
        -- The OpenBao KV secrets of a kv: designation go with it, once the transaction commits.
        PERFORM credcrypt._kv_forget_binding(kv.binding_id, kv.key_name)
           FROM credcrypt.protected_columns kv
          WHERE kv.relid::oid = o.objid AND starts_with(kv.key_name, 'kv:')
            AND (o.object_type = 'table' OR kv.column_attnum = o.objsubid);
        IF o.object_type = 'table' THEN
            DELETE FROM credcrypt.protected_columns WHERE relid::oid = o.objid;
            DELETE FROM credcrypt.owner_rls WHERE relid::oid = o.objid;
        ELSE
            DELETE FROM credcrypt.protected_columns WHERE relid::oid = o.objid AND column_attnum = o.objsubid;
            UPDATE credcrypt.protected_columns SET mask_column = NULL
             WHERE relid::oid = o.objid AND mask_attnum = o.objsubid;
            UPDATE credcrypt.protected_columns SET blind_index_column = NULL
             WHERE relid::oid = o.objid AND blind_index_attnum = o.objsubid;
            -- The last protected column is gone: so goes the trigger (it would refuse every write).
            IF NOT EXISTS (SELECT FROM credcrypt.protected_columns WHERE relid::oid = o.objid)
               AND EXISTS (SELECT FROM pg_trigger WHERE tgrelid = o.objid AND tgname = 'zz_credcrypt_protect') THEN
                EXECUTE format('DROP TRIGGER zz_credcrypt_protect ON %s', o.objid::regclass);
            END IF;
        END IF;
    END LOOP;
    -- The protection trigger of a table that still has protected columns cannot be dropped.
    FOR o IN SELECT * FROM pg_event_trigger_dropped_objects()
              WHERE object_type = 'trigger' AND address_names[3] = 'zz_credcrypt_protect' LOOP
        r := to_regclass(format('%I.%I', o.address_names[1], o.address_names[2]));
        IF r IS NOT NULL AND EXISTS (SELECT FROM credcrypt.protected_columns
                                      WHERE relid = r OR relid = pg_partition_root(r)) THEN
            RAISE EXCEPTION 'the protection trigger of % cannot be dropped while it has protected columns', r
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'without it, new values would be stored in plaintext',
                      HINT = 'Use credcrypt.unprotect_column() for each protected column; it drops the trigger with the last one.';
        END IF;
    END LOOP;
    FOR o IN SELECT * FROM pg_event_trigger_dropped_objects() WHERE object_type = 'table column' LOOP
        SELECT * INTO p FROM credcrypt.protected_columns
         WHERE relid::oid = o.objid AND o.objsubid = ANY (bind_attnums) LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'column % is a bind column of protected column %', o.object_identity, p.column_name
                USING ERRCODE = 'dependent_objects_still_exist',
                      DETAIL = 'the protected values are bound to this column''s values and could not be decrypted without it',
                      HINT = 'Unprotect the protected column first (credcrypt.unprotect_column), or drop both columns in one statement.';
        END IF;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION credcrypt._on_alter_table() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT DISTINCT objid FROM pg_event_trigger_ddl_commands()
              WHERE classid = 'pg_catalog.pg_class'::regclass
                AND objid IN (SELECT relid::oid FROM credcrypt.protected_columns) LOOP
        UPDATE credcrypt.protected_columns p
           SET column_name = coalesce(x.col, p.column_name),
               bind_columns = coalesce(x.binds, p.bind_columns),
               mask_column = CASE WHEN p.mask_column IS NULL THEN NULL ELSE coalesce(x.mask, p.mask_column) END,
               blind_index_column = CASE WHEN p.blind_index_column IS NULL THEN NULL ELSE coalesce(x.bidx, p.blind_index_column) END
          FROM (SELECT q.relid, q.column_name AS old_name, q.json_path AS old_path,
                       (SELECT attname FROM pg_attribute WHERE attrelid = q.relid AND attnum = q.column_attnum AND NOT attisdropped) AS col,
                       ARRAY(SELECT a.attname FROM unnest(q.bind_attnums) WITH ORDINALITY AS b(n, i)
                               JOIN pg_attribute a ON a.attrelid = q.relid AND a.attnum = b.n ORDER BY b.i) AS binds,
                       (SELECT attname FROM pg_attribute WHERE attrelid = q.relid AND attnum = q.mask_attnum AND NOT attisdropped) AS mask,
                       (SELECT attname FROM pg_attribute WHERE attrelid = q.relid AND attnum = q.blind_index_attnum AND NOT attisdropped) AS bidx
                  FROM credcrypt.protected_columns q WHERE q.relid::oid = c.objid) x
         WHERE p.relid = x.relid AND p.column_name = x.old_name AND p.json_path = x.old_path
           AND (p.column_name IS DISTINCT FROM coalesce(x.col, p.column_name)
                OR p.bind_columns IS DISTINCT FROM coalesce(x.binds, p.bind_columns)
                OR p.mask_column IS DISTINCT FROM CASE WHEN p.mask_column IS NULL THEN NULL ELSE coalesce(x.mask, p.mask_column) END
                OR p.blind_index_column IS DISTINCT FROM CASE WHEN p.blind_index_column IS NULL THEN NULL ELSE coalesce(x.bidx, p.blind_index_column) END);
    END LOOP;
END
$$;

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

-- ---------------------------------------------------------------------------------------
-- Per-row keys and crypto-shredding (sql/shred.sql).
CREATE FUNCTION credcrypt."_shred_key"(
	"key_name" TEXT /* & str */
) RETURNS TABLE (
	"key_name" TEXT,  /* String */
	"values_unreadable" bigint,  /* i64 */
	"data_keys_removed" INT,  /* i32 */
	"erased_at" TEXT  /* String */
)
STRICT VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'shred_key_wrapper';

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

-- ---------------------------------------------------------------------------------------
-- Migrations of columns an application encrypts itself (sql/migrate.sql): context_format, and
-- key_usage(tbl, col).
ALTER TABLE credcrypt.reencrypt_runs ADD COLUMN context_format text, ADD COLUMN app_managed boolean NOT NULL DEFAULT false;

CREATE FUNCTION credcrypt."_reencrypt_start"(
	"tbl" oid, /* pg_sys :: Oid */
	"col" TEXT, /* & str */
	"target_key" TEXT, /* Option < & str > */
	"dry_run" bool, /* bool */
	"context_format" TEXT /* Option < & str > */
) RETURNS TABLE (
	"run_id" bigint,  /* i64 */
	"total" bigint  /* i64 */
)
VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'reencrypt_start_wrapper';

CREATE FUNCTION credcrypt."_reencrypt_bindings"(
	"run_id" bigint /* i64 */
) RETURNS TABLE (
	"binding_id" TEXT  /* String */
)
STRICT STABLE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'reencrypt_bindings_wrapper';

CREATE FUNCTION credcrypt."_key_usage_of"(
	"tbl" oid, /* Option < pg_sys :: Oid > */
	"col" TEXT /* Option < & str > */
) RETURNS TABLE (
	"table_name" TEXT,  /* String */
	"column_name" TEXT,  /* String */
	"json_path" TEXT[],  /* Vec < String > */
	"source" TEXT,  /* String */
	"key_name" TEXT,  /* Option < String > */
	"key_version" TEXT,  /* Option < String > */
	"current" bool,  /* Option < bool > */
	"values" bigint  /* i64 */
)
VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'key_usage_of_wrapper';

DROP PROCEDURE credcrypt.reencrypt_column(regclass, name, text, integer, boolean, boolean);
CREATE PROCEDURE credcrypt.reencrypt_column(
    tbl regclass, col name, target_key text DEFAULT NULL, batch_size integer DEFAULT 500, dry_run boolean DEFAULT false,
    strict boolean DEFAULT false, context_format text DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    run pg_catalog.int8;
    total pg_catalog.int8;
    d record;
    leaf pg_catalog.oid;
    cursor pg_catalog.text;
    r record;
    c record;
    pass pg_catalog.int4;
    changed_in_pass pg_catalog.int8;
    seen pg_catalog.int8 := 0;
    t0 pg_catalog.timestamptz := pg_catalog.clock_timestamp();
    last_notice pg_catalog.timestamptz := pg_catalog.clock_timestamp();
    every pg_catalog.interval;
    elapsed pg_catalog.float8;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF batch_size IS NULL OR batch_size OPERATOR(pg_catalog.<) 1 OR batch_size OPERATOR(pg_catalog.>) 10000 THEN
        RAISE EXCEPTION 'batch_size must be between 1 and 10000' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'The default, 500, keeps row locks short; up to a few thousand is faster for Transit.';
    END IF;
    every := pg_catalog.current_setting('credcrypt.reencrypt_progress_interval')::pg_catalog.interval;
    SELECT p.run_id, p.total INTO run, total
      FROM credcrypt._reencrypt_start(tbl::pg_catalog.oid, col::pg_catalog.text, target_key, coalesce(dry_run, false),
                                      context_format) p;
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    FOR d IN SELECT b.binding_id FROM credcrypt._reencrypt_bindings(run) b LOOP
        FOR leaf IN SELECT l.leaf FROM credcrypt._reencrypt_leaves(tbl::pg_catalog.oid) l LOOP
            pass := 0;
            LOOP
                pass := pass OPERATOR(pg_catalog.+) 1;
                cursor := '(0,0)';
                changed_in_pass := 0;
                LOOP
                    SELECT * INTO r FROM credcrypt._reencrypt_step(run, leaf, d.binding_id, cursor, batch_size);
                    COMMIT;
                    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
                    IF r.error_code IS NOT NULL THEN
                        -- The run is marked failed (committed above); the batch's work was rolled back.
                        r.error_hint := pg_catalog.concat_ws(' ', r.error_hint,
                            'The run is marked failed in credcrypt.reencrypt_progress; CALL credcrypt.reencrypt_column again to continue it.');
                        IF r.error_detail IS NULL THEN
                            RAISE EXCEPTION USING ERRCODE = r.error_code, MESSAGE = r.error_message, HINT = r.error_hint;
                        ELSE
                            RAISE EXCEPTION USING ERRCODE = r.error_code, MESSAGE = r.error_message, HINT = r.error_hint,
                                DETAIL = r.error_detail;
                        END IF;
                    END IF;
                    changed_in_pass := changed_in_pass OPERATOR(pg_catalog.+) r.changed;
                    seen := seen OPERATOR(pg_catalog.+) r.rows_seen;
                    IF r.rows_seen OPERATOR(pg_catalog.>) 0 AND every OPERATOR(pg_catalog.>=) '0'::pg_catalog.interval
                       AND pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) last_notice OPERATOR(pg_catalog.>=) every THEN
                        last_notice := pg_catalog.clock_timestamp();
                        elapsed := GREATEST(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) t0), 0.001);
                        RAISE NOTICE 'pg_credcrypt: %/% values, % rows/s (SELECT * FROM credcrypt.reencrypt_progress WHERE run_id = %)',
                            LEAST(seen, total), total, pg_catalog.round((seen::pg_catalog.float8 OPERATOR(pg_catalog./) elapsed)::pg_catalog.numeric), run;
                    END IF;
                    EXIT WHEN r.finished;
                    cursor := r.next_after;
                END LOOP;
                -- Rows locked by the application were skipped (SKIP LOCKED): another pass.
                EXIT WHEN dry_run OR changed_in_pass OPERATOR(pg_catalog.=) 0 OR pass OPERATOR(pg_catalog.>=) 10
                       OR credcrypt._reencrypt_remaining(run, leaf, d.binding_id) OPERATOR(pg_catalog.=) 0;
                PERFORM pg_catalog.pg_sleep(0.05);
            END LOOP;
        END LOOP;
    END LOOP;
    SELECT * INTO c FROM credcrypt._reencrypt_close(run);
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF c.complete THEN
        RAISE NOTICE '%', c.summary;
    ELSIF strict THEN
        RAISE EXCEPTION '%', c.summary USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'SELECT * FROM credcrypt.reencrypt_failures WHERE run_id = ' OPERATOR(pg_catalog.||) run OPERATOR(pg_catalog.||) ' lists the values that could not be read; CALL again for values written during the run.';
    ELSE
        RAISE WARNING '%', c.summary;
    END IF;
END
$$;
COMMENT ON PROCEDURE credcrypt.reencrypt_column(regclass, name, text, integer, boolean, boolean, text) IS
    'pg_credcrypt: re-encrypt a protected column — or one the application encrypts itself, with context_format — in committed batches (plaintext, local, old versions, other keys, vault:, legacy Node values)';

DROP FUNCTION credcrypt.key_usage(regclass);
CREATE FUNCTION credcrypt.key_usage(tbl regclass DEFAULT NULL, col name DEFAULT NULL)
RETURNS TABLE (table_name text, column_name text, json_path text[], source text, key_name text, key_version text,
               current boolean, "values" bigint)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT * FROM credcrypt._key_usage_of(tbl::oid, col::text);
END;
COMMENT ON FUNCTION credcrypt.key_usage(regclass, name) IS
    'pg_credcrypt: values per provider, key and version (plaintext and unreadable counted) for each protected column (or one column, also one the application encrypts itself)';

-- ---------------------------------------------------------------------------------------
-- DDL checks (sql/protect.sql): a blind index or mask column cannot change type (ALTER COLUMN
-- … TYPE … USING would write it without the trigger), and a partition is attached only with its
-- blind index column empty — both read from the command's subcommands.
CREATE FUNCTION credcrypt._ddl_subcommands(cmd pg_catalog.pg_ddl_command) RETURNS TABLE (action pg_catalog.text, relid pg_catalog.oid, attnum pg_catalog.int2, schema_name pg_catalog.text, rel_name pg_catalog.text) STRICT VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'ddl_subcommands_wrapper';

CREATE OR REPLACE FUNCTION credcrypt._on_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t oid;
    prob record;
    part record;
    d record;
    bad boolean;
BEGIN
    -- The blind index and mask columns are the protection trigger's alone. ALTER COLUMN …
    -- TYPE … USING rewrites them without the trigger; a partition attached with values in its
    -- index column brings indexes the trigger did not compute (a copy of another row's index
    -- would make a row answer to that row's secret). Both read from the command itself.
    SELECT p.relid::regclass AS tbl, a.attname AS col INTO prob
      FROM pg_event_trigger_ddl_commands() c
     CROSS JOIN LATERAL credcrypt._ddl_subcommands(c.command) s
      JOIN pg_attribute a ON a.attrelid = s.relid AND a.attnum = s.attnum
      JOIN credcrypt.protected_columns p
        ON (p.relid::oid = s.relid OR p.relid::oid IN (SELECT an.relid FROM pg_partition_ancestors(s.relid) an))
       AND a.attname IN (p.blind_index_column, p.mask_column)
     WHERE c.command_tag = 'ALTER TABLE' AND s.action = 'retype'
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'the type of column % of % cannot change: the protection trigger alone writes it (a blind index or mask column)', prob.col, prob.tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Blind index and mask columns keep their type. To use another column, unprotect_column and protect_column again naming the new one.';
    END IF;
    FOR d IN
        -- The partition by its name as written (PostgreSQL 15 reports no address for an
        -- ATTACH): every partition of that name under the table, whatever its schema when none
        -- was written.
        SELECT DISTINCT l.relid AS leaf, p.relid::regclass AS tbl, p.column_name, p.blind_index_column
          FROM pg_event_trigger_ddl_commands() c
         CROSS JOIN LATERAL credcrypt._ddl_subcommands(c.command) s
          JOIN pg_inherits i ON i.inhparent = s.relid
          JOIN pg_class k ON k.oid = i.inhrelid AND k.relname = s.rel_name
                         AND (s.schema_name IS NULL OR k.relnamespace = (SELECT n.oid FROM pg_namespace n WHERE n.nspname = s.schema_name))
         CROSS JOIN LATERAL pg_partition_tree(k.oid) l
          JOIN credcrypt.protected_columns p
            ON p.relid::oid IN (SELECT an.relid FROM pg_partition_ancestors(s.relid) an)
         WHERE c.command_tag = 'ALTER TABLE' AND s.action = 'attach' AND l.isleaf
           AND p.blind_index_column IS NOT NULL
    LOOP
        EXECUTE format('SELECT EXISTS (SELECT FROM ONLY %s x WHERE x.%I IS NOT NULL)', d.leaf::regclass, d.blind_index_column)
           INTO bad;
        IF bad THEN
            RAISE EXCEPTION 'partition % holds values in blind index column % of protected column %', d.leaf::regclass, d.blind_index_column, d.column_name
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = format('Attach it with the column empty (UPDATE … SET %I = NULL before ATTACH PARTITION), then CALL credcrypt.reencrypt_column(%L, %L) computes the indexes; or attach an empty partition and copy the rows in with INSERT … SELECT.', d.blind_index_column, d.tbl::text, d.column_name);
        END IF;
    END LOOP;
    FOR t IN
        SELECT DISTINCT p.relid::oid
          FROM (SELECT CASE c.classid
                         WHEN 'pg_class'::regclass THEN c.objid
                         WHEN 'pg_trigger'::regclass THEN (SELECT g.tgrelid FROM pg_trigger g WHERE g.oid = c.objid)
                         WHEN 'pg_rewrite'::regclass THEN (SELECT w.ev_class FROM pg_rewrite w WHERE w.oid = c.objid)
                         WHEN 'pg_policy'::regclass THEN (SELECT y.polrelid FROM pg_policy y WHERE y.oid = c.objid)
                       END AS rel
                  FROM pg_event_trigger_ddl_commands() c) x
          JOIN pg_class rc ON rc.oid = x.rel
          JOIN credcrypt.protected_columns p
            ON p.relid::oid = x.rel
            OR p.relid::oid IN (SELECT a.relid FROM pg_partition_ancestors(x.rel) a)
            OR p.relid::oid IN (SELECT i.inhparent FROM pg_inherits i WHERE i.inhrelid = x.rel)
    LOOP
        SELECT * INTO prob FROM credcrypt._protection_problems(t::regclass)
         WHERE kind NOT IN ('missing', 'partition_owner') LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION '% would weaken the protection of %: %', prob.object, t::regclass, prob.finding
                USING ERRCODE = 'object_not_in_prerequisite_state', HINT = prob.fix;
        END IF;
        -- Leaves this command attached (or created), or rewrote (ALTER COLUMN … TYPE … USING
        -- rewrites every row without row triggers): every protected value must be a ciphertext.
        FOR part IN
            SELECT l.oid AS rel, credcrypt._rewritten(l.oid) AS rewritten
              FROM pg_class l
             WHERE l.relkind = 'r'
               AND (l.oid = t OR l.oid IN (SELECT pt.relid FROM pg_partition_tree(t::regclass) pt WHERE pt.isleaf))
               AND (credcrypt._rewritten(l.oid)
                    OR (l.oid <> t AND NOT credcrypt._protect_in_progress(t) AND EXISTS (SELECT FROM pg_trigger g
                                                WHERE g.tgrelid = l.oid AND g.tgname = 'zz_credcrypt_protect'
                                                  AND credcrypt._xact_is_current(g.xmin))))
        LOOP
            FOR d IN SELECT column_name, json_path FROM credcrypt.protected_columns WHERE relid::oid = t LOOP
                EXECUTE format('SELECT EXISTS (SELECT FROM ONLY %s x WHERE %s IS NOT NULL AND credcrypt._value_source(%s) !~ ''^(local|transit|envelope|kv):'')',
                               part.rel::regclass,
                               CASE WHEN d.json_path = '{}' THEN format('x.%I', d.column_name)
                                    ELSE format('(x.%I #>> %L::text[])', d.column_name, d.json_path) END,
                               CASE WHEN d.json_path = '{}' THEN format('x.%I', d.column_name)
                                    ELSE format('(x.%I #>> %L::text[])', d.column_name, d.json_path) END)
                   INTO bad;
                IF bad AND part.rewritten THEN
                    RAISE EXCEPTION 'rewriting % would leave values of protected column % that are not pg_credcrypt ciphertexts', part.rel::regclass, d.column_name
                        USING ERRCODE = 'object_not_in_prerequisite_state',
                              HINT = 'Change the type without a USING expression that alters protected values (the values keep their text); to change them, UPDATE the rows (the trigger encrypts), or unprotect_column first. If plaintext was already there (existing_values => ''migrate''), finish CALL credcrypt.reencrypt_column first.';
                ELSIF bad THEN
                    RAISE EXCEPTION 'partition % holds values of protected column % that are not encrypted', part.rel::regclass, d.column_name
                        USING ERRCODE = 'object_not_in_prerequisite_state',
                              HINT = 'Attach an empty partition and copy the rows in with INSERT … SELECT (the protection trigger encrypts them).';
                END IF;
            END LOOP;
        END LOOP;
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------
-- A foreign table cannot become a partition or child of a protected table (rows written
-- through it are stored by another server without the protection trigger): the DDL check
-- also runs for CREATE and ALTER FOREIGN TABLE, and _protection_problems reports kind foreign_table.
-- It also runs for CREATE SCHEMA, whose embedded CREATE TABLE … INHERITS went unchecked.
-- An event trigger's tags cannot be altered, so it is made again.

DROP EVENT TRIGGER credcrypt_on_ddl_end;
CREATE EVENT TRIGGER credcrypt_on_ddl_end ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE', 'CREATE FOREIGN TABLE', 'ALTER FOREIGN TABLE', 'CREATE SCHEMA', 'CREATE TRIGGER', 'ALTER TRIGGER', 'CREATE RULE', 'CREATE POLICY', 'ALTER POLICY')
    EXECUTE FUNCTION credcrypt._on_ddl_end();

-- ---------------------------------------------------------------------------------------
-- The OpenBao KV v2 provider for protected columns (kv:<mount>): the trigger function of the
-- triggers protect_column adds beside the protection trigger (zz_credcrypt_kv after UPDATE or
-- DELETE, zz_credcrypt_kv_truncate before TRUNCATE), and the destruction of a dropped
-- designation's secrets (credcrypt_on_sql_drop, above).

CREATE FUNCTION credcrypt."kv_trigger"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', 'kv_trigger_wrapper';

CREATE FUNCTION credcrypt."_kv_forget_binding"(
	"binding_id" TEXT,
	"key_name" TEXT
) RETURNS void
STRICT VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'kv_forget_binding_wrapper';

-- ---------------------------------------------------------------------------------------
-- Privileges (sql/grants.sql): deny by default, then the grants.
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
REVOKE ALL ON credcrypt.index_keys FROM PUBLIC;
GRANT SELECT ON credcrypt.index_keys TO credcrypt_admin;
REVOKE ALL ON credcrypt.erasures FROM PUBLIC;
GRANT SELECT ON credcrypt.erasures TO credcrypt_admin, credcrypt_monitor;

-- Encryption may write (an envelope or per-row data key into credcrypt.data_keys, a kv value's
-- durable transaction id), which PostgreSQL refuses in a query with a parallel plan: the
-- encrypting functions are PARALLEL UNSAFE (a query calling them is never planned in parallel).
ALTER FUNCTION credcrypt.encrypt_credential(text, text, text) PARALLEL UNSAFE;
ALTER FUNCTION credcrypt.encrypt_credential(bytea, text, text) PARALLEL UNSAFE;
ALTER FUNCTION credcrypt.encrypt_credentials(text[], text, text[]) PARALLEL UNSAFE;
ALTER FUNCTION credcrypt.reencrypt_credential(text, text, text) PARALLEL UNSAFE;
ALTER FUNCTION credcrypt.reencrypt_credentials(text[], text[], text) PARALLEL UNSAFE;
