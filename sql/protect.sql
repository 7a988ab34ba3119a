-- pg_credcrypt: protected columns — the catalog, its upkeep, the SQL signatures of the
-- administrative functions, and the event triggers that follow DROP and RENAME.
-- See docs/protected-columns.md.

-- One row per designation: a protected text column, or one protected key of a jsonb column.
-- binding_id is what every ciphertext of the designation is bound to (with the bind columns'
-- values); it is random, not an OID or a name, so the binding survives RENAME and
-- dump/restore. The *_attnum columns follow renames; they are recomputed from the names when
-- a row is inserted (as pg_restore does), because attribute numbers change across a dump.
CREATE TABLE credcrypt.protected_columns (
    relid         regclass NOT NULL,
    column_name   name     NOT NULL,
    json_path     text[]   NOT NULL DEFAULT '{}',
    key_name      text     NOT NULL,
    bind_columns  name[]   NOT NULL DEFAULT '{}',
    mask_column   name,
    mask_prefix   integer  NOT NULL DEFAULT 0 CHECK (mask_prefix >= 0),
    mask_suffix   integer  NOT NULL DEFAULT 4 CHECK (mask_suffix >= 0),
    binding_id    text     NOT NULL UNIQUE CHECK (binding_id ~ '^[0-9a-f]{32}$'),
    column_attnum smallint,
    bind_attnums  smallint[],
    mask_attnum   smallint,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    name     NOT NULL DEFAULT current_user,
    PRIMARY KEY (relid, column_name, json_path)
);
COMMENT ON TABLE credcrypt.protected_columns IS
    'pg_credcrypt: protected columns (written by protect_column/unprotect_column; carried by pg_dump)';
SELECT pg_catalog.pg_extension_config_dump('credcrypt.protected_columns', '');

-- Attribute numbers from names (new rows, restored rows, renamed designations).
CREATE FUNCTION credcrypt._protected_columns_resolve() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    NEW.column_attnum := (SELECT attnum FROM pg_attribute
                           WHERE attrelid = NEW.relid AND attname = NEW.column_name AND NOT attisdropped);
    NEW.bind_attnums := ARRAY(SELECT a.attnum FROM unnest(NEW.bind_columns) WITH ORDINALITY AS b(name, i)
                                JOIN pg_attribute a ON a.attrelid = NEW.relid AND a.attname = b.name AND NOT a.attisdropped
                               ORDER BY b.i);
    NEW.mask_attnum := (SELECT attnum FROM pg_attribute
                         WHERE attrelid = NEW.relid AND attname = NEW.mask_column AND NOT attisdropped);
    RETURN NEW;
END
$$;
CREATE TRIGGER resolve BEFORE INSERT OR UPDATE ON credcrypt.protected_columns
    FOR EACH ROW EXECUTE FUNCTION credcrypt._protected_columns_resolve();

-- Every backend reloads the designations of a table (and of its partitions) that changed.
CREATE FUNCTION credcrypt._protected_columns_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r regclass;
BEGIN
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
CREATE TRIGGER invalidate AFTER INSERT OR UPDATE OR DELETE ON credcrypt.protected_columns
    FOR EACH ROW EXECUTE FUNCTION credcrypt._protected_columns_changed();

-- A readable view of the designations.
CREATE VIEW credcrypt.protected_columns_info AS
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
       EXISTS (SELECT FROM pg_catalog.pg_trigger g
                WHERE g.tgrelid = p.relid AND g.tgname = 'zz_credcrypt_protect' AND g.tgenabled IN ('O', 'A'))
                   AS trigger_enabled,
       p.created_at,
       p.created_by
  FROM credcrypt.protected_columns p
  JOIN pg_catalog.pg_class c ON c.oid = p.relid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace;
COMMENT ON VIEW credcrypt.protected_columns_info IS 'pg_credcrypt: protected columns, by schema and table name';

-- SQL signatures (the work is done in the extension's C functions).
CREATE FUNCTION credcrypt.protect_column(
    tbl regclass, col name, key_name text DEFAULT NULL, bind_columns name[] DEFAULT NULL,
    mask_column name DEFAULT NULL, mask_prefix integer DEFAULT 0, mask_suffix integer DEFAULT 4,
    json_path text[] DEFAULT NULL, existing_values text DEFAULT 'refuse')
RETURNS void LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT credcrypt._protect_column(tbl::oid, col::text, key_name, bind_columns::text[], mask_column::text,
                                     mask_prefix, mask_suffix, json_path, existing_values);
END;
COMMENT ON FUNCTION credcrypt.protect_column(regclass, name, text, name[], name, integer, integer, text[], text) IS
    'pg_credcrypt: encrypt a column (or a jsonb key) transparently from now on';

CREATE FUNCTION credcrypt.unprotect_column(tbl regclass, col name, decrypt_existing boolean DEFAULT false)
RETURNS void LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT credcrypt._unprotect_column(tbl::oid, col::text, decrypt_existing);
END;
COMMENT ON FUNCTION credcrypt.unprotect_column(regclass, name, boolean) IS
    'pg_credcrypt: stop protecting a column; decrypt_existing => true writes plaintext back (dangerous)';

CREATE FUNCTION credcrypt.create_decrypted_view(tbl regclass, view_name name)
RETURNS void LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT credcrypt._create_decrypted_view(tbl::oid, view_name::text);
END;
CREATE FUNCTION credcrypt.create_masked_view(tbl regclass, view_name name)
RETURNS void LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT credcrypt._create_masked_view(tbl::oid, view_name::text);
END;

-- DROP: forget dropped tables and columns; refuse to drop a bind column still in use.
CREATE FUNCTION credcrypt._on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o record;
    p record;
BEGIN
    FOR o IN SELECT * FROM pg_event_trigger_dropped_objects() WHERE object_type IN ('table', 'table column') LOOP
        IF o.object_type = 'table' THEN
            DELETE FROM credcrypt.protected_columns WHERE relid::oid = o.objid;
            DELETE FROM credcrypt.owner_rls WHERE relid::oid = o.objid;
        ELSE
            DELETE FROM credcrypt.protected_columns WHERE relid::oid = o.objid AND column_attnum = o.objsubid;
            UPDATE credcrypt.protected_columns SET mask_column = NULL
             WHERE relid::oid = o.objid AND mask_attnum = o.objsubid;
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
CREATE EVENT TRIGGER credcrypt_on_sql_drop ON sql_drop EXECUTE FUNCTION credcrypt._on_sql_drop();

-- RENAME: follow renamed columns (attribute numbers do not change on rename).
CREATE FUNCTION credcrypt._on_alter_table() RETURNS event_trigger
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
               mask_column = CASE WHEN p.mask_column IS NULL THEN NULL ELSE coalesce(x.mask, p.mask_column) END
          FROM (SELECT q.relid, q.column_name AS old_name, q.json_path AS old_path,
                       (SELECT attname FROM pg_attribute WHERE attrelid = q.relid AND attnum = q.column_attnum AND NOT attisdropped) AS col,
                       ARRAY(SELECT a.attname FROM unnest(q.bind_attnums) WITH ORDINALITY AS b(n, i)
                               JOIN pg_attribute a ON a.attrelid = q.relid AND a.attnum = b.n ORDER BY b.i) AS binds,
                       (SELECT attname FROM pg_attribute WHERE attrelid = q.relid AND attnum = q.mask_attnum AND NOT attisdropped) AS mask
                  FROM credcrypt.protected_columns q WHERE q.relid::oid = c.objid) x
         WHERE p.relid = x.relid AND p.column_name = x.old_name AND p.json_path = x.old_path
           AND (p.column_name IS DISTINCT FROM coalesce(x.col, p.column_name)
                OR p.bind_columns IS DISTINCT FROM coalesce(x.binds, p.bind_columns)
                OR p.mask_column IS DISTINCT FROM CASE WHEN p.mask_column IS NULL THEN NULL ELSE coalesce(x.mask, p.mask_column) END);
    END LOOP;
END
$$;
CREATE EVENT TRIGGER credcrypt_on_alter_table ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION credcrypt._on_alter_table();
