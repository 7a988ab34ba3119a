-- pg_credcrypt: the row-level-security helper, decrypt auditing and the security report.
-- See docs/security-model.md.

-- Tables under enable_owner_rls, with the RLS flags they had before (disable_owner_rls
-- restores them).
CREATE TABLE credcrypt.owner_rls (
    relid        regclass PRIMARY KEY,
    owner_column name    NOT NULL,
    setting      text    NOT NULL,
    had_rls      boolean NOT NULL,
    had_force    boolean NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE credcrypt.owner_rls IS 'pg_credcrypt: tables under enable_owner_rls (written by enable/disable_owner_rls)';
SELECT pg_catalog.pg_extension_config_dump('credcrypt.owner_rls', '');

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

-- Decrypt audit (credcrypt.audit_decrypt = 'table'): written by the extension, never a value.
CREATE TABLE credcrypt.decrypt_audit (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at               timestamptz NOT NULL DEFAULT clock_timestamp(),
    role_name        name        NOT NULL,
    session_role     name        NOT NULL DEFAULT session_user,
    object           text,
    values_decrypted bigint      NOT NULL,
    backend_pid      integer     NOT NULL DEFAULT pg_backend_pid(),
    application_name text        DEFAULT current_setting('application_name')
);
COMMENT ON TABLE credcrypt.decrypt_audit IS
    'pg_credcrypt: who decrypted how many values of which protected column (object NULL: values outside protected columns)';
-- Decryptions per role and column since the audit table was last emptied, for monitoring.
CREATE VIEW credcrypt.decrypt_audit_totals AS
SELECT role_name, coalesce(object, '(values outside protected columns)') AS object,
       sum(values_decrypted)::bigint AS values_decrypted, count(*) AS records, max(at) AS last_at
  FROM credcrypt.decrypt_audit
 GROUP BY 1, 2;
CREATE VIEW credcrypt.decrypt_audit_log AS
SELECT id, at, role_name, session_role, coalesce(object, '(values outside protected columns)') AS object,
       values_decrypted, backend_pid, application_name
  FROM credcrypt.decrypt_audit;

-- The security report: catalog checks here, file and server-state checks in the extension.
CREATE FUNCTION credcrypt.security_report()
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
COMMENT ON FUNCTION credcrypt.security_report() IS 'pg_credcrypt: configuration problems, with how to fix each (nothing on a clean setup)';
