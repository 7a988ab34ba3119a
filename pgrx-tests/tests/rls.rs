//! Black-box tests of the row-level-security helper, the maintenance path, the security
//! report and decrypt auditing — with real roles that have neither SUPERUSER nor BYPASSRLS.

use std::sync::{Mutex, MutexGuard};

use credcrypt_blackbox::{Cluster, Outcome};

static SERIAL: Mutex<()> = Mutex::new(());

/// Roles: `rl_owner` owns the tables and is credcrypt_admin; `rl_app` is the application
/// (encryptor + decryptor); both NOSUPERUSER NOBYPASSRLS.
fn setup() -> (MutexGuard<'static, ()>, Cluster) {
    let roles = [("rl_owner", "credcrypt_admin"), ("rl_app", "credcrypt_encryptor, credcrypt_decryptor")];
    credcrypt_blackbox::serial_with_roles(&SERIAL, &roles, &["rl_owner"])
}

/// A table of two tenants' credentials under enable_owner_rls, api_key protected.
fn tenants(c: &Cluster, name: &str) {
    c.sql(&format!("DROP TABLE IF EXISTS {name} CASCADE"));
    c.psql(
        "rl_owner",
        &format!(
            "CREATE TABLE {name} (id int PRIMARY KEY, user_id text NOT NULL, api_key text, note text);
             SELECT credcrypt.protect_column('{name}', 'api_key', bind_columns => ARRAY['id']);
             SELECT credcrypt.enable_owner_rls('{name}', 'user_id');
             SELECT credcrypt.create_decrypted_view('{name}', '{name}_plain');
             GRANT SELECT, INSERT, UPDATE, DELETE ON {name} TO rl_app;"
        ),
    )
    .expect_ok();
    for (id, user) in [(1, "alice"), (2, "alice"), (3, "bob")] {
        c.psql(
            "rl_app",
            &format!(
                "BEGIN; SELECT credcrypt.set_owner('{user}');
                 INSERT INTO {name} (id, user_id, api_key, note) VALUES ({id}, '{user}', 'sk-{user}-SECRETMARKER-{id}', 'note {id}');
                 COMMIT;"
            ),
        )
        .expect_ok();
    }
}

fn count(o: &Outcome) -> String {
    o.expect_ok().lines().last().unwrap_or_default().to_owned()
}

#[test]
fn tenants_see_and_change_only_their_own_rows() {
    let (_g, c) = setup();
    tenants(&c, "rl_t");
    // As alice, in a transaction (the NestJS interceptor / Prisma $transaction pattern).
    let alice = c.value("rl_app", "BEGIN; SELECT credcrypt.set_owner('alice'); SELECT string_agg(api_key, ',' ORDER BY id) FROM rl_t_plain; COMMIT;");
    assert!(alice.ends_with("sk-alice-SECRETMARKER-1,sk-alice-SECRETMARKER-2"), "{alice}");
    // Alice cannot update or delete bob's row, nor write a row for bob.
    let o = c.psql(
        "rl_app",
        "BEGIN; SELECT credcrypt.set_owner('alice'); UPDATE rl_t SET note = 'pwned' WHERE id = 3; DELETE FROM rl_t WHERE id = 3; COMMIT;",
    );
    o.expect_ok();
    assert_eq!(c.sql("SELECT note FROM rl_t WHERE id = 3"), "note 3");
    let o =
        c.psql("rl_app", "BEGIN; SELECT credcrypt.set_owner('alice'); UPDATE rl_t SET user_id = 'bob' WHERE id = 1;");
    assert_eq!(o.sqlstate(), Some("42501"), "{o:?}");
    let o = c.psql(
        "rl_app",
        "BEGIN; SELECT credcrypt.set_owner('alice'); INSERT INTO rl_t (id, user_id, api_key) VALUES (9, 'bob', 'x');",
    );
    assert_eq!(o.sqlstate(), Some("42501"), "{o:?}");
    // No setting, or an empty one: nothing visible, nothing writable (fail closed).
    assert_eq!(count(&c.psql("rl_app", "SELECT count(*) FROM rl_t")), "0");
    assert_eq!(count(&c.psql("rl_app", "SET app.current_user_id = ''; SELECT count(*) FROM rl_t")), "0");
    let o = c.psql("rl_app", "INSERT INTO rl_t (id, user_id, api_key) VALUES (10, 'alice', 'x')");
    assert_eq!(o.sqlstate(), Some("42501"), "{o:?}");
    // The owner without BYPASSRLS is filtered too (FORCE ROW LEVEL SECURITY).
    assert_eq!(count(&c.psql("rl_owner", "SELECT count(*) FROM rl_t")), "0");
    assert_eq!(c.sql("SELECT relrowsecurity AND relforcerowsecurity FROM pg_class WHERE oid = 'rl_t'::regclass"), "t");
}

#[test]
fn set_owner_is_transaction_local_and_does_not_leak_to_the_next_transaction() {
    let (_g, c) = setup();
    tenants(&c, "rl_pool");
    // One session (a pooled connection): alice's transaction, then an unauthenticated query.
    let out = c
        .psql(
            "rl_app",
            "BEGIN; SELECT credcrypt.set_owner('alice'); SELECT count(*) FROM rl_pool; COMMIT;
             SELECT 'after:' || count(*) FROM rl_pool;
             BEGIN; SELECT credcrypt.set_owner('bob'); SELECT 'bob:' || count(*) FROM rl_pool; ROLLBACK;
             SELECT 'after rollback:' || count(*) FROM rl_pool;",
        )
        .expect_ok()
        .to_owned();
    assert!(out.contains("after:0") && out.contains("bob:1") && out.contains("after rollback:0"), "{out}");
    // Outside a transaction block it would last one statement: a WARNING says so.
    let o = c.psql("rl_app", "SELECT credcrypt.set_owner('alice'); SELECT count(*) FROM rl_pool");
    assert!(o.err.contains("WARNING") && o.err.contains("transaction block"), "{o:?}");
    assert_eq!(count(&o), "0");
    // A setting name that is not a custom setting is refused.
    c.psql("rl_app", "SELECT credcrypt.set_owner('x', 'credcrypt.local_key')").expect_error("22023");
    c.psql("rl_app", "SELECT credcrypt.set_owner('x', 'search_path')").expect_error("22023");
}

#[test]
fn maintenance_path_reaches_every_row_without_bypassrls_and_cannot_be_forged() {
    let (_g, c) = setup();
    tenants(&c, "rl_maint");
    // protect_column's emptiness check sees all rows although rl_owner sees none itself.
    c.psql("rl_owner", "SELECT credcrypt.protect_column('rl_maint', 'note')").expect_error("55000");
    // unprotect_column … decrypt_existing rewrites every row, also those no setting shows.
    c.psql("rl_owner", "SELECT credcrypt.unprotect_column('rl_maint', 'api_key', decrypt_existing => true)")
        .expect_ok();
    assert_eq!(c.sql("SELECT count(*) FROM rl_maint WHERE api_key LIKE 'sk-%-SECRETMARKER-%'"), "3");
    assert_eq!(
        c.sql("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = 'rl_owner'"),
        "f",
        "the maintenance ran without privileges that skip RLS"
    );
    // Nothing a user can set opens the path.
    for attempt in [
        "SET credcrypt.maintenance = on",
        "SELECT set_config('credcrypt._maintenance_active', 'true', false)",
        "SET app.current_user_id = '*'",
        "SET app.current_user_id = '%'",
        "SET app.current_user_id = 'alice'' OR true --'",
        "SET row_security = off",
        "SET ROLE credcrypt_admin",
    ] {
        let o = c.psql("rl_app", &format!("{attempt}; SELECT count(*) FROM rl_maint"));
        if o.ok {
            assert_eq!(count(&o), "0", "{attempt} opened the table: {o:?}");
        }
        let o = c.psql("rl_app", &format!("{attempt}; SELECT credcrypt._maintenance_active('rl_maint'::regclass)"));
        if o.ok {
            assert_eq!(count(&o), "f", "{attempt}");
        }
    }
    // SET row_security = off makes PostgreSQL refuse the query rather than skip policies.
    let o = c.psql("rl_app", "SET row_security = off; SELECT count(*) FROM rl_maint");
    assert_eq!(o.sqlstate(), Some("42501"), "{o:?}");
}

#[test]
fn enable_is_idempotent_and_disable_restores_exactly() {
    let (_g, c) = setup();
    c.sql("DROP TABLE IF EXISTS rl_flags");
    c.psql(
        "rl_owner",
        "CREATE TABLE rl_flags (id int, owner_id int);
         ALTER TABLE rl_flags ENABLE ROW LEVEL SECURITY;
         SELECT credcrypt.enable_owner_rls('rl_flags', 'owner_id', 'myapp.tenant');
         SELECT credcrypt.enable_owner_rls('rl_flags', 'owner_id', 'myapp.tenant');",
    )
    .expect_ok();
    // Four owner policies, and the masked views' read policy.
    assert_eq!(c.sql("SELECT count(*) FROM pg_policy WHERE polrelid = 'rl_flags'::regclass"), "5");
    c.sql("GRANT ALL ON rl_flags TO rl_app; INSERT INTO rl_flags VALUES (1, 7), (2, 8)");
    // An integer owner column: the setting is cast; garbage never matches silently.
    assert_eq!(
        count(
            &c.psql("rl_app", "BEGIN; SELECT credcrypt.set_owner('7', 'myapp.tenant'); SELECT count(*) FROM rl_flags;")
        ),
        "1"
    );
    c.psql("rl_owner", "SELECT credcrypt.disable_owner_rls('rl_flags')").expect_ok();
    assert_eq!(c.sql("SELECT count(*) FROM pg_policy WHERE polrelid = 'rl_flags'::regclass"), "0");
    assert_eq!(
        c.sql(
            "SELECT relrowsecurity::text || relforcerowsecurity::text FROM pg_class WHERE oid = 'rl_flags'::regclass"
        ),
        "truefalse",
        "RLS was enabled (not forced) before: that is what remains"
    );
    c.psql("rl_owner", "SELECT credcrypt.disable_owner_rls('rl_flags')").expect_error("42704");
    c.psql("rl_owner", "SELECT credcrypt.enable_owner_rls('rl_flags', 'owner_id', 'no_dot')").expect_error("22023");
    c.psql("rl_owner", "SELECT credcrypt.enable_owner_rls('rl_flags', 'nope')").expect_error("42703");
    c.sql("DROP TABLE rl_flags");
    assert_eq!(
        c.sql("SELECT count(*) FROM credcrypt.owner_rls WHERE relid::oid NOT IN (SELECT oid FROM pg_class)"),
        "0"
    );
}

/// Runs the security report in database `db` as rl_owner; returns "severity|object" lines.
fn report(c: &Cluster, db: &str) -> Vec<String> {
    c.psql_in(db, "rl_owner", "SELECT severity || '|' || object FROM credcrypt.security_report()")
        .expect_ok()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn security_report_finds_each_planted_problem_and_nothing_on_a_clean_setup() {
    let (_g, c) = setup();
    c.client("dropdb", &["--if-exists", "rl_report"]);
    let (ok, out) = c.client("createdb", &["-O", "rl_owner", "rl_report"]);
    assert!(ok, "{out}");
    let db = |user: &str, sql: &str| c.psql_in("rl_report", user, sql).expect_ok().to_owned();
    db("postgres", "CREATE EXTENSION pg_credcrypt");
    db(
        "rl_owner",
        "CREATE TABLE creds (id int PRIMARY KEY, user_id text, secret text);
         SELECT credcrypt.protect_column('creds', 'secret', bind_columns => ARRAY['id']);
         SELECT credcrypt.enable_owner_rls('creds', 'user_id');",
    );
    assert_eq!(report(&c, "rl_report"), Vec::<String>::new(), "clean setup");

    // Each planted problem appears, and disappears when fixed.
    let planted: Vec<(&str, &str, &str)> = vec![
        (
            "ALTER TABLE creds NO FORCE ROW LEVEL SECURITY",
            "warning|public.creds",
            "ALTER TABLE creds FORCE ROW LEVEL SECURITY",
        ),
        (
            "ALTER TABLE creds DISABLE ROW LEVEL SECURITY",
            "warning|public.creds",
            "ALTER TABLE creds ENABLE ROW LEVEL SECURITY",
        ),
        (
            // (Refused by the DDL check even for a superuser, unless the check is switched off.)
            "ALTER EVENT TRIGGER credcrypt_on_ddl_end DISABLE; ALTER TABLE creds DISABLE TRIGGER zz_credcrypt_protect; ALTER EVENT TRIGGER credcrypt_on_ddl_end ENABLE",
            "critical|table public.creds",
            "ALTER TABLE creds ENABLE TRIGGER zz_credcrypt_protect",
        ),
        (
            "CREATE ROLE rl_bypass BYPASSRLS; GRANT SELECT ON creds TO rl_bypass",
            "warning|role rl_bypass",
            "REVOKE SELECT ON creds FROM rl_bypass; DROP ROLE rl_bypass",
        ),
        ("CREATE ROLE rl_super SUPERUSER", "warning|role rl_super", "DROP ROLE rl_super"),
        (
            "GRANT EXECUTE ON FUNCTION credcrypt.decrypt_credential(text, text, text) TO PUBLIC",
            "critical|credcrypt.decrypt_credential(text,text,text)",
            "REVOKE EXECUTE ON FUNCTION credcrypt.decrypt_credential(text, text, text) FROM PUBLIC",
        ),
        (
            "GRANT EXECUTE ON FUNCTION credcrypt.decrypt_credentials(text[], text[]) TO rl_app",
            "warning|credcrypt.decrypt_credentials(text[],text[])",
            "REVOKE EXECUTE ON FUNCTION credcrypt.decrypt_credentials(text[], text[]) FROM rl_app",
        ),
    ];
    for (plant, expect, fix) in planted {
        let as_user = if plant.contains("ROLE") || plant.contains("FUNCTION") || plant.contains("EVENT") {
            "postgres"
        } else {
            "rl_owner"
        };
        db(as_user, plant);
        let r = report(&c, "rl_report");
        assert!(r.iter().any(|l| l == expect), "{plant}: expected {expect} in {r:?}");
        db(as_user, fix);
        assert_eq!(report(&c, "rl_report"), Vec::<String>::new(), "after fixing {plant}");
    }

    // Settings and files (cluster-wide): each found, then restored.
    let key = c.keys.join("current.key").to_string_lossy().into_owned();
    let wide = c.write_key("rl_wide.key", &credcrypt_blackbox::test_key(51), 0o644);
    let settings: Vec<(String, &str)> = vec![
        ("credcrypt.fallback = 'local'".into(), "warning|credcrypt.fallback"),
        ("log_statement = 'mod'".into(), "critical|log_statement"),
        ("log_min_duration_statement = 0".into(), "warning|log_min_duration_statement"),
        ("log_parameter_max_length_on_error = -1".into(), "warning|log_parameter_max_length_on_error"),
        ("log_min_error_statement = error".into(), "warning|log_min_error_statement"),
        (format!("credcrypt.local_previous_key_files = '{wide}'"), "critical|credcrypt.local_previous_key_files"),
    ];
    for (line, expect) in settings {
        c.configure(&format!("credcrypt.local_key_file = '{key}'\n{line}\n"), &key);
        let r = report(&c, "rl_report");
        assert!(r.iter().any(|l| l.starts_with(expect)), "{line}: expected {expect} in {r:?}");
    }
    c.configure(&format!("credcrypt.local_key_file = '{key}'\n"), &key);
    // A key written into postgresql.auto.conf (as ALTER SYSTEM does when the library is not
    // preloaded). The report reads the file; the server is not reloaded with it.
    let auto = c.data.join("postgresql.auto.conf");
    let before = std::fs::read_to_string(&auto).unwrap_or_default();
    std::fs::write(&auto, format!("{before}credcrypt.local_key = 'planted'\n")).expect("auto.conf");
    let r = report(&c, "rl_report");
    std::fs::write(&auto, &before).expect("restore auto.conf");
    assert!(r.iter().any(|l| l.starts_with("critical|postgresql.auto.conf")), "{r:?}");
    assert!(!r.iter().any(|l| l.contains("planted")));
    assert_eq!(report(&c, "rl_report"), Vec::<String>::new(), "clean again");
    // Only credcrypt_admin may run it.
    assert_eq!(c.psql_in("rl_report", "rl_app", "SELECT * FROM credcrypt.security_report()").sqlstate(), Some("42501"));
    c.client("dropdb", &["rl_report"]);
}

#[test]
fn decrypt_audit_records_who_and_how_many_never_the_value() {
    let (_g, c) = setup();
    tenants(&c, "rl_audit");
    // Only a superuser can change it; a session cannot switch its own auditing off.
    assert!(!c.psql("rl_app", "SET credcrypt.audit_decrypt = off").ok);
    c.sql("TRUNCATE credcrypt.decrypt_audit");
    c.sql("ALTER ROLE rl_app SET credcrypt.audit_decrypt = 'table'");
    c.psql("rl_app", "BEGIN; SELECT credcrypt.set_owner('alice'); SELECT api_key FROM rl_audit_plain; COMMIT;")
        .expect_ok();
    // Rolled back: the row is lost with the transaction, so the log gets the record instead.
    c.psql("rl_app", "BEGIN; SELECT credcrypt.set_owner('bob'); SELECT api_key FROM rl_audit_plain; ROLLBACK;")
        .expect_ok();
    let rows = c.sql(
        "SELECT role_name || '|' || object || '|' || values_decrypted FROM credcrypt.decrypt_audit_log ORDER BY id",
    );
    assert_eq!(rows, "rl_app|public.rl_audit.api_key|2");
    assert!(c
        .log_text()
        .contains("role \"rl_app\" decrypted 1 value(s) of public.rl_audit.api_key (audit row rolled back"));
    // Nor by catching an error in a subtransaction after decrypting (the value survives in v).
    c.psql(
        "rl_app",
        "BEGIN; SELECT credcrypt.set_owner('alice');
         DO $$ DECLARE v text; BEGIN
           BEGIN
             SELECT api_key INTO v FROM rl_audit_plain WHERE id = 1;
             RAISE EXCEPTION 'hide it';
           EXCEPTION WHEN OTHERS THEN NULL;
           END;
         END $$;
         COMMIT;",
    )
    .expect_ok();
    assert!(
        c.log_text().contains(
            "decrypted 1 value(s) of public.rl_audit.api_key (audit row rolled back with its subtransaction)"
        ),
        "a decryption hidden by a caught error was not recorded"
    );
    // Log mode.
    c.sql("ALTER ROLE rl_app SET credcrypt.audit_decrypt = 'log'");
    c.psql("rl_app", "SELECT credcrypt.decrypt_credential(credcrypt.encrypt_credential('sk-AUDITMARKER'))").expect_ok();
    c.sql("ALTER ROLE rl_app RESET credcrypt.audit_decrypt");
    let log = c.log_text();
    assert!(
        log.contains("role \"rl_app\" decrypted 1 value(s) of values outside protected columns"),
        "audit line missing"
    );
    let table = c.sql("SELECT string_agg(t::text, ',') FROM credcrypt.decrypt_audit t");
    for text in [&log, &table] {
        assert!(!text.contains("SECRETMARKER") && !text.contains("AUDITMARKER"), "a value was audited");
    }
    // Reading the audit: credcrypt_admin only.
    assert_eq!(c.psql("rl_app", "SELECT count(*) FROM credcrypt.decrypt_audit_log").sqlstate(), Some("42501"));
}
