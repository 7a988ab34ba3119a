-- pg_credcrypt 0.1.0 -> 0.2.0. Hand-written; pgrx-tests/tests/upgrade.rs runs it on a live
-- 0.1.0 installation and checks that the result equals a fresh install of 0.2.0.
\echo Use "ALTER EXTENSION pg_credcrypt UPDATE TO '0.2.0'" to load this file. \quit

-- ---------------------------------------------------------------------------------------
-- Roles: the owner of masked views, and the monitoring role.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'credcrypt_masker') THEN
        CREATE ROLE credcrypt_masker NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'credcrypt_monitor') THEN
        CREATE ROLE credcrypt_monitor NOLOGIN;
    END IF;
END
$roles$;
COMMENT ON ROLE credcrypt_monitor IS 'pg_credcrypt: may read the monitoring views (worker status, key usage snapshot, decrypt totals, migration progress); no secret, no ciphertext';
COMMENT ON ROLE credcrypt_masker IS 'pg_credcrypt: owns the masked views (reads every row of their tables); no login, no members — grant the views, never this role';

-- ---------------------------------------------------------------------------------------
-- C functions: new ones, and those whose definition changed (every administrative one now
-- pins search_path). Every symbol the 0.1.0 script names still exists in the 0.2.0 library.
CREATE OR REPLACE FUNCTION credcrypt."_create_decrypted_view"(
	"tbl" oid, /* pg_sys :: Oid */
	"view_name" TEXT /* & str */
) RETURNS void
STRICT VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'create_decrypted_view_impl_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_create_masked_view"(
	"tbl" oid, /* pg_sys :: Oid */
	"view_name" TEXT /* & str */
) RETURNS void
STRICT VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'create_masked_view_impl_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_decrypted_view"(
	"tbl" oid, /* pg_sys :: Oid */
	"view_name" TEXT /* & str */
) RETURNS oid /* pg_sys :: Oid */
STRICT VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'create_decrypted_view_v2_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_disable_owner_rls"(
	"tbl" oid /* pg_sys :: Oid */
) RETURNS void
STRICT VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'disable_owner_rls_impl_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_drop_masked_view"(
	"view" oid /* pg_sys :: Oid */
) RETURNS void
STRICT VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'drop_masked_view_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_enable_owner_rls"(
	"tbl" oid, /* pg_sys :: Oid */
	"owner_column" TEXT, /* & str */
	"setting" TEXT /* & str */
) RETURNS void
STRICT VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'enable_owner_rls_impl_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_key_usage"(
	"tbl" oid /* Option < pg_sys :: Oid > */
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
AS 'MODULE_PATHNAME', 'key_usage_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_masked_view"(
	"tbl" oid, /* pg_sys :: Oid */
	"view_name" TEXT /* & str */
) RETURNS oid /* pg_sys :: Oid */
STRICT VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'create_masked_view_v2_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_owner_rls_off"(
	"tbl" oid /* pg_sys :: Oid */
) RETURNS TABLE (
	"policies_dropped" INT,  /* i32 */
	"row_security" bool,  /* bool */
	"forced" bool  /* bool */
)
STRICT VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'disable_owner_rls_v2_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_owner_rls_on"(
	"tbl" oid, /* pg_sys :: Oid */
	"owner_column" TEXT, /* & str */
	"setting" TEXT /* & str */
) RETURNS TABLE (
	"policies" TEXT[],  /* Vec < String > */
	"was_enabled" bool,  /* bool */
	"was_forced" bool  /* bool */
)
STRICT VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'enable_owner_rls_v2_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_owner_setting"(
	"setting" TEXT /* & str */
) RETURNS TEXT /* Option < String > */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'owner_setting_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_protect"(
	"tbl" oid, /* pg_sys :: Oid */
	"col" TEXT, /* & str */
	"key_name" TEXT, /* Option < & str > */
	"bind_columns" TEXT[], /* :: std :: option :: Option < Vec < Option < String > > > */
	"mask_column" TEXT, /* Option < & str > */
	"mask_prefix" INT, /* i32 */
	"mask_suffix" INT, /* i32 */
	"json_path" TEXT[], /* :: std :: option :: Option < Vec < Option < String > > > */
	"existing_values" TEXT /* & str */
) RETURNS TABLE (
	"binding_id" TEXT,  /* String */
	"key_name" TEXT,  /* String */
	"trigger_created" bool  /* bool */
)
VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'protect_column_v2_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_protect_column"(
	"tbl" oid, /* pg_sys :: Oid */
	"col" TEXT, /* & str */
	"key_name" TEXT, /* Option < & str > */
	"bind_columns" TEXT[], /* :: std :: option :: Option < Vec < Option < String > > > */
	"mask_column" TEXT, /* Option < & str > */
	"mask_prefix" INT, /* i32 */
	"mask_suffix" INT, /* i32 */
	"json_path" TEXT[], /* :: std :: option :: Option < Vec < Option < String > > > */
	"existing_values" TEXT /* & str */
) RETURNS void
VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'protect_column_impl_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_reencrypt_batch"(
	"run_id" bigint, /* i64 */
	"leaf" oid, /* pg_sys :: Oid */
	"binding_id" TEXT, /* & str */
	"after" TEXT, /* & str */
	"batch_size" INT /* i32 */
) RETURNS TABLE (
	"next_after" TEXT,  /* String */
	"rows_seen" INT,  /* i32 */
	"changed" INT,  /* i32 */
	"failed" INT,  /* i32 */
	"finished" bool  /* bool */
)
STRICT VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'reencrypt_batch_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_reencrypt_close"(
	"run_id" bigint /* i64 */
) RETURNS TABLE (
	"summary" TEXT,  /* String */
	"complete" bool,  /* bool */
	"unreadable" bigint,  /* i64 */
	"remaining" bigint  /* i64 */
)
STRICT VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'reencrypt_close_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_reencrypt_finish"(
	"run_id" bigint /* i64 */
) RETURNS TEXT /* String */
STRICT VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'reencrypt_finish_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_reencrypt_leaves"(
	"tbl" oid /* pg_sys :: Oid */
) RETURNS TABLE (
	"leaf" oid  /* pg_sys :: Oid */
)
STRICT STABLE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'reencrypt_leaves_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_reencrypt_prepare"(
	"tbl" oid, /* pg_sys :: Oid */
	"col" TEXT, /* & str */
	"target_key" TEXT, /* Option < & str > */
	"dry_run" bool /* bool */
) RETURNS TABLE (
	"run_id" bigint,  /* i64 */
	"total" bigint  /* i64 */
)
VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'reencrypt_prepare_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_reencrypt_remaining"(
	"run_id" bigint, /* i64 */
	"leaf" oid, /* pg_sys :: Oid */
	"binding_id" TEXT /* & str */
) RETURNS bigint /* i64 */
STRICT VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'reencrypt_remaining_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_reencrypt_step"(
	"run_id" bigint, /* i64 */
	"leaf" oid, /* pg_sys :: Oid */
	"binding_id" TEXT, /* & str */
	"after" TEXT, /* & str */
	"batch_size" INT /* i32 */
) RETURNS TABLE (
	"next_after" TEXT,  /* String */
	"rows_seen" INT,  /* i32 */
	"changed" INT,  /* i32 */
	"failed" INT,  /* i32 */
	"finished" bool,  /* bool */
	"error_code" TEXT,  /* Option < String > */
	"error_message" TEXT,  /* Option < String > */
	"error_detail" TEXT,  /* Option < String > */
	"error_hint" TEXT  /* Option < String > */
)
STRICT VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'reencrypt_step_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_type_class"(
	"typ" oid, /* pg_sys :: Oid */
	"typmod" INT /* i32 */
) RETURNS TEXT /* String */
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'type_class_sql_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_unprotect"(
	"tbl" oid, /* pg_sys :: Oid */
	"col" TEXT, /* & str */
	"decrypt_existing" bool /* bool */
) RETURNS TABLE (
	"designations_removed" INT,  /* i32 */
	"values_decrypted" bigint,  /* i64 */
	"trigger_dropped" bool  /* bool */
)
STRICT VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'unprotect_column_v2_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_unprotect_column"(
	"tbl" oid, /* pg_sys :: Oid */
	"col" TEXT, /* & str */
	"decrypt_existing" bool /* bool */
) RETURNS void
STRICT VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'unprotect_column_impl_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_value_source"(
	"value" TEXT /* & str */
) RETURNS TEXT /* String */
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'value_source_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_note_rewrite"(
	"tbl" oid /* pg_sys :: Oid */
) RETURNS void
STRICT VOLATILE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'note_rewrite_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_rewritten"(
	"tbl" oid /* pg_sys :: Oid */
) RETURNS bool /* bool */
STRICT VOLATILE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'was_rewritten_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."_xact_is_current"(
	"xmin" xid /* pg_sys :: TransactionId */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'xact_is_current_wrapper';

CREATE OR REPLACE FUNCTION credcrypt."safe_to_retire"(
	"key_name" TEXT, /* & str */
	"version" INT /* i32 */
) RETURNS bool /* bool */
STRICT VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'safe_to_retire_wrapper';

CREATE FUNCTION credcrypt."_protect_in_progress"(
	"tbl" oid /* pg_sys :: Oid */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'protect_in_progress_wrapper';

-- status(): a wider row (timeouts, last time of each failure kind, queue depth). The 0.1.0 row stays
-- available as _status_0_1() (same symbol as 0.1.0's status()).
DROP VIEW credcrypt.transit_status;
DROP FUNCTION credcrypt.status();
CREATE FUNCTION credcrypt."status"() RETURNS TABLE (
	"preloaded" bool,  /* bool */
	"worker_pid" INT,  /* Option < i32 > */
	"worker_starts" bigint,  /* i64 */
	"active_address" TEXT,  /* Option < String > */
	"token_ttl_seconds" bigint,  /* Option < i64 > */
	"requests" bigint,  /* i64 */
	"values_served" bigint,  /* i64 */
	"batches" bigint,  /* i64 */
	"mean_batch_size" double precision,  /* Option < f64 > */
	"failovers" bigint,  /* i64 */
	"token_renewals" bigint,  /* i64 */
	"fallback_encryptions" bigint,  /* i64 */
	"errors" jsonb,  /* pgrx :: JsonB */
	"last_error" TEXT,  /* Option < String > */
	"worker_timeouts" bigint,  /* i64 */
	"error_details" jsonb,  /* pgrx :: JsonB */
	"queue_depth" bigint  /* i64 */
)
STRICT VOLATILE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'status_v2_wrapper';

CREATE FUNCTION credcrypt."_status_0_1"() RETURNS TABLE (
	"preloaded" bool,  /* bool */
	"worker_pid" INT,  /* Option < i32 > */
	"worker_starts" bigint,  /* i64 */
	"active_address" TEXT,  /* Option < String > */
	"token_ttl_seconds" bigint,  /* Option < i64 > */
	"requests" bigint,  /* i64 */
	"values_served" bigint,  /* i64 */
	"batches" bigint,  /* i64 */
	"mean_batch_size" double precision,  /* Option < f64 > */
	"failovers" bigint,  /* i64 */
	"token_renewals" bigint,  /* i64 */
	"fallback_encryptions" bigint,  /* i64 */
	"errors" jsonb,  /* pgrx :: JsonB */
	"last_error" TEXT  /* Option < String > */
)
STRICT VOLATILE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'status_wrapper';

CREATE VIEW credcrypt.transit_status AS SELECT * FROM credcrypt.status();

-- ---------------------------------------------------------------------------------------
-- Protected columns (sql/protect.sql).
ALTER TABLE credcrypt.protected_columns ADD COLUMN bind_types text[];

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
    RETURN NEW;
END
$$;

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

-- kind: missing (no protection trigger at all: it is created last by pg_restore, so only the
-- report flags it; DROP TRIGGER is refused on its own), altered (disabled, renamed, replaced,
-- restricted to some columns or a condition), later_trigger, rule, inheritance, bind_type,
-- column_type.
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
       p.created_by
  FROM credcrypt.protected_columns p
  JOIN pg_catalog.pg_class c ON c.oid = p.relid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace;

DROP FUNCTION credcrypt.protect_column(regclass, name, text, name[], name, integer, integer, text[], text);
DROP FUNCTION credcrypt.unprotect_column(regclass, name, boolean);
DROP FUNCTION credcrypt.create_decrypted_view(regclass, name);
DROP FUNCTION credcrypt.create_masked_view(regclass, name);
CREATE FUNCTION credcrypt.protect_column(
    tbl regclass, col name, key_name text DEFAULT NULL, bind_columns name[] DEFAULT NULL,
    mask_column name DEFAULT NULL, mask_prefix integer DEFAULT 0, mask_suffix integer DEFAULT 4,
    json_path text[] DEFAULT NULL, existing_values text DEFAULT 'refuse')
RETURNS TABLE (binding_id text, key_name text, trigger_created boolean)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT * FROM credcrypt._protect(tbl::oid, col::text, key_name, bind_columns::text[], mask_column::text,
                                     mask_prefix, mask_suffix, json_path, existing_values);
END;
COMMENT ON FUNCTION credcrypt.protect_column(regclass, name, text, name[], name, integer, integer, text[], text) IS
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

CREATE OR REPLACE FUNCTION credcrypt._on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o record;
    p record;
    r regclass;
BEGIN
    FOR o IN SELECT * FROM pg_event_trigger_dropped_objects() WHERE object_type IN ('table', 'table column') LOOP
        IF o.object_type = 'table' THEN
            DELETE FROM credcrypt.protected_columns WHERE relid::oid = o.objid;
            DELETE FROM credcrypt.owner_rls WHERE relid::oid = o.objid;
        ELSE
            DELETE FROM credcrypt.protected_columns WHERE relid::oid = o.objid AND column_attnum = o.objsubid;
            UPDATE credcrypt.protected_columns SET mask_column = NULL
             WHERE relid::oid = o.objid AND mask_attnum = o.objsubid;
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

-- DDL that would let plaintext past the protection is refused at the end of the command: a
-- BEFORE ROW trigger sorting after zz_credcrypt_protect, the protection trigger disabled,
-- renamed or replaced (on the table or on a partition), a rule, an inheritance child that is
-- not a partition, a bind or protected column changing type, and a partition attached with
-- values that are not encrypted, and a table rewritten (ALTER COLUMN … TYPE … USING) into values
-- that are not ciphertexts.
CREATE FUNCTION credcrypt._on_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t oid;
    prob record;
    part record;
    d record;
    bad boolean;
BEGIN
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
                EXECUTE format('SELECT EXISTS (SELECT FROM ONLY %s x WHERE %s IS NOT NULL AND credcrypt._value_source(%s) !~ ''^(local|transit|envelope):'')',
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
    WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE', 'CREATE TRIGGER', 'ALTER TRIGGER', 'CREATE RULE', 'CREATE POLICY', 'ALTER POLICY')
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

-- ---------------------------------------------------------------------------------------
-- Row-level security helper and security report (sql/rls.sql).
DROP FUNCTION credcrypt.enable_owner_rls(regclass, name, text);
DROP FUNCTION credcrypt.disable_owner_rls(regclass);
CREATE FUNCTION credcrypt.enable_owner_rls(tbl regclass, owner_column name, setting text DEFAULT 'app.current_user_id')
RETURNS TABLE (policies text[], was_enabled boolean, was_forced boolean)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT * FROM credcrypt._owner_rls_on(tbl::oid, owner_column::text, setting);
END;
COMMENT ON FUNCTION credcrypt.enable_owner_rls(regclass, name, text) IS
    'pg_credcrypt: ENABLE + FORCE row level security; rows visible and writable only when owner_column = current_setting(setting)';

CREATE FUNCTION credcrypt.disable_owner_rls(tbl regclass)
RETURNS TABLE (policies_dropped integer, row_security boolean, forced boolean)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT * FROM credcrypt._owner_rls_off(tbl::oid);
END;

CREATE OR REPLACE FUNCTION credcrypt.security_report()
RETURNS TABLE (severity text, object text, finding text, fix text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    decryptor oid := (SELECT oid FROM pg_roles WHERE rolname = 'credcrypt_decryptor');
    admin oid := (SELECT oid FROM pg_roles WHERE rolname = 'credcrypt_admin');
BEGIN
    RETURN QUERY
    WITH sensitive AS (
        SELECT DISTINCT relid::oid AS relid FROM credcrypt.protected_columns
        UNION SELECT relid::oid FROM credcrypt.owner_rls
    ), findings AS (
        -- Tables with protected columns: RLS, FORCE, trigger.
        SELECT 'warning'::text AS severity, c.oid::regclass::text AS object,
               'row-level security is not enabled on a table with protected columns: every role with SELECT sees every row'::text AS finding,
               format('SELECT credcrypt.enable_owner_rls(%L, ''<owner column>'');', c.oid::regclass::text) AS fix
          FROM sensitive s JOIN pg_class c ON c.oid = s.relid WHERE NOT c.relrowsecurity
        UNION ALL
        SELECT 'warning', c.oid::regclass::text,
               'row-level security is enabled but not forced: the table owner bypasses it',
               format('ALTER TABLE %s FORCE ROW LEVEL SECURITY;', c.oid::regclass::text)
          FROM sensitive s JOIN pg_class c ON c.oid = s.relid WHERE c.relrowsecurity AND NOT c.relforcerowsecurity
        UNION ALL
        -- Anything that lets plaintext past the protection: the trigger missing, disabled or
        -- altered (also on a partition), a BEFORE ROW trigger after it, a rule, an inheritance
        -- child, a bind or protected column whose type changed.
        SELECT 'critical', pr.object, pr.finding, pr.fix
          FROM (SELECT DISTINCT relid FROM credcrypt.protected_columns) s
         CROSS JOIN LATERAL credcrypt._protection_problems(s.relid) pr
        UNION ALL
        -- Views and policies over sensitive tables that call functions or operators outside
        -- pg_catalog and credcrypt: what an administrator's search_path could have baked in.
        SELECT CASE WHEN d.classid = 'pg_rewrite'::regclass AND EXISTS (
                        SELECT FROM pg_depend dd JOIN pg_proc dp ON dp.oid = dd.refobjid
                         WHERE dd.classid = 'pg_rewrite'::regclass AND dd.objid = w.oid AND dd.refclassid = 'pg_proc'::regclass
                           AND dp.pronamespace = 'credcrypt'::regnamespace AND dp.proname LIKE 'decrypt_credential%')
                    THEN 'critical' ELSE 'warning' END,
               format('%s on %s', CASE WHEN d.classid = 'pg_rewrite'::regclass THEN 'view ' || w.ev_class::regclass::text
                                                  ELSE 'policy ' || quote_ident(pol.polname) END, s.relid::regclass),
               format('it calls %s %s, which is outside pg_catalog and credcrypt', CASE WHEN d.refclassid = 'pg_proc'::regclass THEN 'function' ELSE 'operator' END,
                      CASE WHEN d.refclassid = 'pg_proc'::regclass THEN d.refobjid::regprocedure::text ELSE d.refobjid::regoperator::text END),
               'Drop it and create it again (credcrypt.create_decrypted_view / create_masked_view / enable_owner_rls now qualify every name).'
          FROM sensitive s
          JOIN pg_depend d ON d.refclassid IN ('pg_proc'::regclass, 'pg_operator'::regclass)
          LEFT JOIN pg_rewrite w ON d.classid = 'pg_rewrite'::regclass AND w.oid = d.objid
          LEFT JOIN pg_policy pol ON d.classid = 'pg_policy'::regclass AND pol.oid = d.objid
          LEFT JOIN pg_proc pp ON d.refclassid = 'pg_proc'::regclass AND pp.oid = d.refobjid
          LEFT JOIN pg_operator po ON d.refclassid = 'pg_operator'::regclass AND po.oid = d.refobjid
         WHERE (pol.polrelid = s.relid
                OR w.oid IN (SELECT dv.objid FROM pg_depend dv WHERE dv.classid = 'pg_rewrite'::regclass
                                AND dv.refclassid = 'pg_class'::regclass AND dv.refobjid = s.relid))
           AND coalesce(pp.pronamespace, po.oprnamespace) NOT IN ('pg_catalog'::regnamespace, 'credcrypt'::regnamespace)
        UNION ALL
        -- Roles that skip row-level security and can read sensitive tables.
        SELECT 'warning', format('role %I', r.rolname),
               format('%s: skips row-level security on %s',
                      CASE WHEN r.rolsuper THEN 'SUPERUSER' ELSE 'BYPASSRLS' END,
                      string_agg(s.relid::regclass::text, ', ' ORDER BY s.relid::regclass::text)),
               format('ALTER ROLE %I %s;  -- maintenance needs neither (credcrypt_admin + the maintenance path)',
                      r.rolname, CASE WHEN r.rolsuper THEN 'NOSUPERUSER' ELSE 'NOBYPASSRLS' END)
          FROM pg_roles r CROSS JOIN sensitive s
         WHERE r.oid <> 10  -- the bootstrap superuser always exists; see docs/security-model.md
           AND (r.rolsuper OR (r.rolbypassrls AND has_table_privilege(r.oid, s.relid, 'SELECT')))
         GROUP BY r.rolname, r.rolsuper
        UNION ALL
        -- Decrypt functions: PUBLIC, or granted to other roles than credcrypt_decryptor.
        SELECT 'critical', p.oid::regprocedure::text, 'PUBLIC may execute a decrypt function',
               format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC;', p.oid::regprocedure::text)
          FROM pg_proc p
         WHERE p.pronamespace = 'credcrypt'::regnamespace
           AND p.proname IN ('decrypt_credential', 'decrypt_credential_bytea', 'decrypt_credentials', 'verify_credential')
           AND has_function_privilege('public', p.oid, 'EXECUTE')
        UNION ALL
        SELECT 'warning', p.oid::regprocedure::text,
               format('role %s is granted EXECUTE on a decrypt function directly', a.grantee::regrole::text),
               format('REVOKE EXECUTE ON FUNCTION %s FROM %s; GRANT credcrypt_decryptor TO %s;',
                      p.oid::regprocedure::text, a.grantee::regrole::text, a.grantee::regrole::text)
          FROM pg_proc p CROSS JOIN LATERAL aclexplode(p.proacl) a
         WHERE p.pronamespace = 'credcrypt'::regnamespace
           AND p.proname IN ('decrypt_credential', 'decrypt_credential_bytea', 'decrypt_credentials', 'verify_credential')
           AND a.privilege_type = 'EXECUTE' AND a.grantee NOT IN (0, p.proowner, decryptor, admin)
        UNION ALL
        -- Settings.
        SELECT 'warning', 'credcrypt.fallback',
               'the local fallback is on: during an OpenBao outage values are encrypted with the local key',
               'ALTER SYSTEM SET credcrypt.fallback = off; SELECT pg_reload_conf();  -- re-encrypt fallback values afterwards'
         WHERE current_setting('credcrypt.fallback') <> 'off'
        UNION ALL
        SELECT 'critical', 'log_statement', format('log_statement = %s writes the text of statements, with the plaintext credentials they carry, to the server log', current_setting('log_statement')),
               'ALTER SYSTEM SET log_statement = ''ddl''; SELECT pg_reload_conf();'
         WHERE current_setting('log_statement') IN ('all', 'mod')
        UNION ALL
        SELECT 'warning', 'log_min_duration_statement', 'slow statements are logged with their text (and parameters)',
               'ALTER SYSTEM SET log_min_duration_statement = -1; SELECT pg_reload_conf();  -- or use pg_stat_statements'
         WHERE current_setting('log_min_duration_statement')::int >= 0
        UNION ALL
        SELECT 'warning', 'log_parameter_max_length_on_error', 'bind parameters (plaintext credentials) of failing statements are logged',
               'ALTER SYSTEM SET log_parameter_max_length_on_error = 0; SELECT pg_reload_conf();'
         WHERE current_setting('log_parameter_max_length_on_error')::int <> 0
        UNION ALL
        SELECT 'warning', 'log_min_error_statement', 'the text of failing statements is logged: a failing INSERT of a credential writes its plaintext to the log',
               'ALTER SYSTEM SET log_min_error_statement = panic; SELECT pg_reload_conf();'
         WHERE current_setting('log_min_error_statement') <> 'panic'
        UNION ALL
        SELECT e.severity, e.object, e.finding, e.fix FROM credcrypt._environment_findings() e
    )
    SELECT f.severity, f.object, f.finding, f.fix FROM findings f
     ORDER BY CASE f.severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END, f.object;
END
$$;

-- ---------------------------------------------------------------------------------------
-- Migrations (sql/migrate.sql).
ALTER TABLE credcrypt.reencrypt_runs
    DROP CONSTRAINT reencrypt_runs_state_check,
    ADD CONSTRAINT reencrypt_runs_state_check CHECK (state IN ('running', 'finished', 'interrupted', 'failed')),
    ADD COLUMN error text,
    ADD COLUMN remaining bigint,
    ADD COLUMN complete boolean;
DROP VIEW credcrypt.reencrypt_progress;
-- state: running (its backend is at work), finished (closed; complete tells whether every
-- value is on the target), failed (a batch failed: error), interrupted (its backend is gone:
-- terminated, crashed). A re-run continues where it stopped.
CREATE VIEW credcrypt.reencrypt_progress AS
SELECT run_id,
       relid::regclass AS table_name,
       column_name,
       CASE WHEN dry_run THEN 'dry run: ' ELSE '' END || source_key || ' -> ' || target_key
           || CASE WHEN target_key = 'local' THEN ' (key id ' || target_version || ')'
                   WHEN target_key LIKE 'envelope:%' THEN '' ELSE ' v' || target_version END AS migration,
       CASE WHEN state = 'running' AND NOT EXISTS (SELECT FROM pg_catalog.pg_stat_activity a WHERE a.pid = r.backend_pid)
            THEN 'interrupted' ELSE state END AS state,
       total, done, changed, failed,
       CASE WHEN total > 0 THEN round(100.0 * least(done, total) / total, 1) END AS percent,
       round((done / greatest(extract(epoch FROM updated_at - started_at), 0.001))::numeric, 0) AS rows_per_second,
       CASE WHEN state = 'running' AND done > 0 AND total > done
            THEN (updated_at - started_at) * ((total - done)::float8 / done) END AS eta,
       remaining, complete, error,
       by_source, backend_pid, run_by, started_at, updated_at
  FROM credcrypt.reencrypt_runs r;

DROP PROCEDURE credcrypt.reencrypt_column(regclass, name, text, integer, boolean);

-- The migration procedure: commits after every batch; a re-run continues where a cancelled or
-- crashed run stopped (values already on the target are skipped). A procedure that commits
-- cannot carry a SET clause, so it pins search_path itself at the start of every transaction,
-- and names only schema-qualified functions, operators and types besides.
CREATE PROCEDURE credcrypt.reencrypt_column(
    tbl regclass, col name, target_key text DEFAULT NULL, batch_size integer DEFAULT 500, dry_run boolean DEFAULT false,
    strict boolean DEFAULT false)
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
      FROM credcrypt._reencrypt_prepare(tbl::pg_catalog.oid, col::pg_catalog.text, target_key, coalesce(dry_run, false)) p;
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    FOR d IN SELECT p.binding_id FROM credcrypt.protected_columns p
              WHERE p.relid OPERATOR(pg_catalog.=) tbl AND p.column_name OPERATOR(pg_catalog.=) col ORDER BY p.json_path LOOP
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
COMMENT ON PROCEDURE credcrypt.reencrypt_column(regclass, name, text, integer, boolean, boolean) IS
    'pg_credcrypt: re-encrypt a protected column in committed batches (plaintext, local, old versions, other keys, vault:, legacy Node values)';

CREATE OR REPLACE FUNCTION credcrypt.key_usage(tbl regclass DEFAULT NULL)
RETURNS TABLE (table_name text, column_name text, json_path text[], source text, key_name text, key_version text,
               current boolean, "values" bigint)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT * FROM credcrypt._key_usage(tbl::oid);
END;

-- Re-encryption for applications that rotate in their own code (security invoker: needs
-- credcrypt_decryptor and credcrypt_encryptor).
CREATE FUNCTION credcrypt.reencrypt_credential(ciphertext text, context text DEFAULT NULL, target_key text DEFAULT NULL)
RETURNS text
LANGUAGE sql VOLATILE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
RETURN credcrypt.encrypt_credential(credcrypt.decrypt_credential(ciphertext, context), target_key, context);
COMMENT ON FUNCTION credcrypt.reencrypt_credential(text, text, text) IS
    'pg_credcrypt: decrypt a value and encrypt it again with target_key (same context); needs credcrypt_decryptor and credcrypt_encryptor';
CREATE FUNCTION credcrypt.reencrypt_credentials(ciphertexts text[], contexts text[] DEFAULT NULL, target_key text DEFAULT NULL)
RETURNS text[]
LANGUAGE sql VOLATILE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
RETURN credcrypt.encrypt_credentials(credcrypt.decrypt_credentials(ciphertexts, contexts), target_key, contexts);
COMMENT ON FUNCTION credcrypt.reencrypt_credentials(text[], text[], text) IS
    'pg_credcrypt: reencrypt_credential for arrays (one Transit batch each way)';

-- ---------------------------------------------------------------------------------------
-- Privileges (the same statements as sql/grants.sql: deny by default, then the lists).
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
        ('protect_trigger', 'PUBLIC'), ('_maintenance_active', 'PUBLIC'), ('_owner_setting', 'PUBLIC'),
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
        ('_reencrypt_leaves', 'credcrypt_admin')
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
REVOKE ALL ON credcrypt.transit_status FROM PUBLIC;
GRANT SELECT ON credcrypt.transit_status TO credcrypt_admin, credcrypt_monitor;

-- Monitoring (docker/prometheus/queries.yaml): the last key_usage() answer per table, and
-- decryptions per role and column.
CREATE TABLE credcrypt.key_usage_snapshot (
    relid       oid         NOT NULL,
    table_name  text        NOT NULL,
    column_name text        NOT NULL,
    json_path   text[]      NOT NULL,
    source      text        NOT NULL,
    key_name    text,
    key_version text,
    current     boolean,
    "values"    bigint      NOT NULL,
    measured_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE credcrypt.key_usage_snapshot IS
    'pg_credcrypt: the last key_usage() answer per table, for monitoring (refresh by calling key_usage())';
CREATE VIEW credcrypt.decrypt_audit_totals AS
SELECT role_name, coalesce(object, '(values outside protected columns)') AS object,
       sum(values_decrypted)::bigint AS values_decrypted, count(*) AS records, max(at) AS last_at
  FROM credcrypt.decrypt_audit
 GROUP BY 1, 2;
REVOKE ALL ON credcrypt.key_usage_snapshot, credcrypt.decrypt_audit_totals FROM PUBLIC;
GRANT SELECT ON credcrypt.key_usage_snapshot, credcrypt.decrypt_audit_totals TO credcrypt_admin, credcrypt_monitor;



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
-- Envelope data keys are wrapped with associated data from now on; those of 0.1.0 are not
-- (until rotate_key('envelope:…') wraps them again).
ALTER TABLE credcrypt.data_keys ADD COLUMN bound boolean NOT NULL DEFAULT false;
ALTER TABLE credcrypt.data_keys ALTER COLUMN bound SET DEFAULT true;
REVOKE ALL ON credcrypt.data_keys FROM PUBLIC;
GRANT SELECT ON credcrypt.data_keys TO credcrypt_admin;

-- ---------------------------------------------------------------------------------------
-- Data: the type class of every recorded bind column (the resolve trigger fills NULLs), and
-- every owner-RLS policy generated again with fully qualified names (0.1.0 resolved nullif,
-- = and current_setting through the administrator's search_path), plus the masked views'
-- read policy. Masked views made by 0.1.0 keep their owner: recreate them to read across
-- owners (docs/operations.md, upgrading).
UPDATE credcrypt.protected_columns SET bind_types = NULL;
SELECT credcrypt._owner_rls_on(relid::oid, owner_column::text, setting) FROM credcrypt.owner_rls;
