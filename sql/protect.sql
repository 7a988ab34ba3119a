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
    bind_types    text[],
    -- the bytea column the trigger writes the value's blind index into (credcrypt.blind_index)
    blind_index_column name,
    blind_index_attnum smallint,
    PRIMARY KEY (relid, column_name, json_path)
);
COMMENT ON TABLE credcrypt.protected_columns IS
    'pg_credcrypt: protected columns (written by protect_column/unprotect_column; carried by pg_dump)';
SELECT pg_catalog.pg_extension_config_dump('credcrypt.protected_columns', '');

-- Attribute numbers from names (new rows, restored rows, renamed designations), and the type
-- classes of the bind columns when they are first recorded (credcrypt._type_class: the text
-- form every stored value's context is built from; a later change is refused).
CREATE FUNCTION credcrypt._protected_columns_resolve() RETURNS trigger
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
CREATE TRIGGER resolve BEFORE INSERT OR UPDATE ON credcrypt.protected_columns
    FOR EACH ROW EXECUTE FUNCTION credcrypt._protected_columns_resolve();

-- Every backend reloads the designations of a table (and of its partitions) that changed. The
-- blind-index keys of a designation that is removed go with it.
CREATE FUNCTION credcrypt._protected_columns_changed() RETURNS trigger
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
CREATE TRIGGER invalidate AFTER INSERT OR UPDATE OR DELETE ON credcrypt.protected_columns
    FOR EACH ROW EXECUTE FUNCTION credcrypt._protected_columns_changed();

-- Whether a table and every partition of it has the protection trigger as protect_column made
-- it: credcrypt.protect_trigger(), BEFORE INSERT OR UPDATE FOR EACH ROW (tgtype 23), no column
-- list, no WHEN condition, enabled (O or A).
CREATE FUNCTION credcrypt._protection_trigger_ok(tbl regclass) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT NOT EXISTS (
        SELECT FROM (SELECT tbl::oid AS rel UNION SELECT relid::oid FROM pg_partition_tree(tbl)) r
         WHERE NOT EXISTS (
             SELECT FROM pg_trigger g
              WHERE g.tgrelid = r.rel AND g.tgname = 'zz_credcrypt_protect'
                AND g.tgfoid = 'credcrypt.protect_trigger()'::regprocedure
                AND g.tgtype = 23 AND g.tgqual IS NULL AND cardinality(g.tgattr::int2[]) = 0
                AND g.tgenabled IN ('O', 'A')))
$$;

-- Everything that would let plaintext past the protection of table tbl (and its partitions):
-- one row per problem, with how to fix it. protect_column refuses a table with a problem, DDL
-- that would create one is refused (credcrypt_on_ddl_end), and security_report() lists them.
-- kind: missing (no protection trigger at all: it is created last by pg_restore, so only the
-- report flags it; DROP TRIGGER is refused on its own), altered (disabled, renamed, replaced,
-- restricted to some columns or a condition), later_trigger, rule, inheritance, bind_type,
-- column_type, partition_owner (a partition owned by another role: maintenance refuses it, DDL
-- does not), foreign_table (a foreign table as partition or child), masked_policy (a policy with a subquery on a table that has a masked view: the
-- subquery would run with credcrypt_masker's rights).
CREATE FUNCTION credcrypt._protection_problems(tbl regclass)
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
       credcrypt._protection_trigger_ok(p.relid) AS trigger_enabled,
       p.created_at,
       p.created_by,
       p.blind_index_column
  FROM credcrypt.protected_columns p
  JOIN pg_catalog.pg_class c ON c.oid = p.relid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace;
COMMENT ON VIEW credcrypt.protected_columns_info IS 'pg_credcrypt: protected columns, by schema and table name';

-- SQL signatures (the work is done in the extension's C functions).
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

CREATE FUNCTION credcrypt.unprotect_column(tbl regclass, col name, decrypt_existing boolean DEFAULT false)
RETURNS TABLE (designations_removed integer, values_decrypted bigint, trigger_dropped boolean)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT * FROM credcrypt._unprotect(tbl::oid, col::text, decrypt_existing);
END;
COMMENT ON FUNCTION credcrypt.unprotect_column(regclass, name, boolean) IS
    'pg_credcrypt: stop protecting a column; decrypt_existing => true writes plaintext back (dangerous)';

CREATE FUNCTION credcrypt.create_decrypted_view(tbl regclass, view_name name)
RETURNS regclass LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT credcrypt._decrypted_view(tbl::oid, view_name::text)::regclass;
END;
CREATE FUNCTION credcrypt.create_masked_view(tbl regclass, view_name name)
RETURNS regclass LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT credcrypt._masked_view(tbl::oid, view_name::text)::regclass;
END;
CREATE FUNCTION credcrypt.drop_masked_view(view regclass)
RETURNS void LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT credcrypt._drop_masked_view(view::oid);
END;
COMMENT ON FUNCTION credcrypt.drop_masked_view(regclass) IS
    'pg_credcrypt: drop a view made by create_masked_view (owned by credcrypt_masker); the caller must own its table';

-- DROP: forget dropped tables and columns; refuse to drop a bind column still in use.
CREATE FUNCTION credcrypt._on_sql_drop() RETURNS event_trigger
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
CREATE EVENT TRIGGER credcrypt_on_alter_table ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION credcrypt._on_alter_table();

-- DDL that would let plaintext past the protection is refused at the end of the command: a
-- BEFORE ROW trigger sorting after zz_credcrypt_protect, the protection trigger disabled,
-- renamed or replaced (on the table or on a partition), a rule, an inheritance child that is
-- not a partition, a bind or protected column changing type, and a partition attached with
-- values that are not encrypted, a table rewritten (ALTER COLUMN … TYPE … USING) into values
-- that are not ciphertexts, and a policy with a subquery on a table that has a masked view.
CREATE FUNCTION credcrypt._on_ddl_end() RETURNS event_trigger
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
CREATE EVENT TRIGGER credcrypt_on_ddl_end ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE', 'CREATE FOREIGN TABLE', 'ALTER FOREIGN TABLE', 'CREATE SCHEMA', 'CREATE TRIGGER', 'ALTER TRIGGER', 'CREATE RULE', 'CREATE POLICY', 'ALTER POLICY')
    EXECUTE FUNCTION credcrypt._on_ddl_end();

-- Tables rewritten by DDL, for the check at the command's end (credcrypt._on_ddl_end).
CREATE FUNCTION credcrypt._on_table_rewrite() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t oid := pg_event_trigger_table_rewrite_oid();
BEGIN
    IF EXISTS (SELECT FROM credcrypt.protected_columns p
                WHERE p.relid::oid = t OR p.relid::oid IN (SELECT a.relid FROM pg_partition_ancestors(t) a)) THEN
        PERFORM credcrypt._note_rewrite(t);
    END IF;
END
$$;
CREATE EVENT TRIGGER credcrypt_on_table_rewrite ON table_rewrite
    EXECUTE FUNCTION credcrypt._on_table_rewrite();
