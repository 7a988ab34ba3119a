//! Regression tests for the fail-open findings of the ordinary-role attack (issue 14): stale
//! designations, hostile `search_path` objects, owner code run during maintenance, audit
//! suppression and forgery, unbounded jsonb memory, and the owner-level bypasses of the
//! protection trigger. Each test failed on the code before the fix.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use credcrypt_blackbox::{Cluster, Session};

static SERIAL: Mutex<()> = Mutex::new(());

/// Roles (all NOSUPERUSER NOBYPASSRLS):
/// - `at_admin`: credcrypt_admin, owns the test tables (and is a member of `at_owner`);
/// - `at_app`: credcrypt_encryptor only;
/// - `at_reader`: credcrypt_decryptor;
/// - `at_owner`: owns some tables, no credcrypt role;
/// - `at_evil`: nothing but CREATE on its schema `evil`, which others have USAGE on.
fn setup() -> (MutexGuard<'static, ()>, Cluster) {
    let roles = [
        ("at_admin", "credcrypt_admin"),
        ("at_app", "credcrypt_encryptor"),
        ("at_reader", "credcrypt_decryptor"),
        ("at_owner", ""),
        ("at_evil", ""),
    ];
    let (guard, c) = credcrypt_blackbox::serial_with_roles(&SERIAL, &roles, &["at_admin", "at_owner"]);
    c.sql(
        "GRANT at_owner TO at_admin;
         ALTER ROLE at_admin RESET search_path; ALTER ROLE at_app RESET search_path; ALTER ROLE at_reader RESET search_path;",
    );
    (guard, c)
}

fn fresh_table(c: &Cluster, owner: &str, name: &str, columns: &str) {
    c.sql(&format!("DROP TABLE IF EXISTS {name} CASCADE"));
    c.psql(
        owner,
        &format!("CREATE TABLE {name} ({columns}); GRANT SELECT, INSERT, UPDATE ON {name} TO at_app, at_reader"),
    )
    .expect_ok();
}

/// The stored values of column `col` of `table` (by id) that are not pg_credcrypt ciphertexts.
fn plaintext_ids(c: &Cluster, table: &str, col: &str, filter: &str) -> String {
    c.sql(&format!(
        "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM {table}
          WHERE {col} IS NOT NULL AND NOT starts_with({col}, 'cc1:') AND ({filter})"
    ))
}

// ---------------------------------------------------------------------------------------
// HIGH 1: a backend that had looked the table up must never keep writing plaintext.

#[test]
fn pooled_sessions_encrypt_after_protect_in_every_isolation_level_and_with_prepared_statements() {
    let (_g, c) = setup();
    for (n, (level, prepared)) in
        [("REPEATABLE READ", false), ("SERIALIZABLE", false), ("REPEATABLE READ", true), ("READ COMMITTED", false)]
            .into_iter()
            .enumerate()
    {
        let t = format!("at_h1_{n}");
        fresh_table(&c, "at_admin", &t, "id int PRIMARY KEY, a text, b text");
        let mut app = Session::open(&c, "at_app");
        if prepared {
            app.run(&format!("PREPARE ins(int, text, text) AS INSERT INTO {t} VALUES ($1, $2, $3)")).expect_ok();
        }
        let ins = |id: i32, a: &str, b: &str| {
            if prepared {
                format!("EXECUTE ins({id}, '{a}', '{b}')")
            } else {
                format!("INSERT INTO {t} VALUES ({id}, '{a}', '{b}')")
            }
        };
        // The pooled backend writes before the table is protected (it has looked it up).
        app.run(&ins(0, "before", "before")).expect_ok();
        // A transaction (and, in RR/SERIALIZABLE, its snapshot) opened before protect_column.
        app.run(&format!("BEGIN ISOLATION LEVEL {level}; SELECT 1")).expect_ok();
        c.psql(
            "at_admin",
            &format!("SELECT credcrypt.protect_column('{t}', 'a', bind_columns => ARRAY['id'], existing_values => 'migrate')"),
        )
        .expect_ok();
        app.run(&ins(1, "PLAIN-IN-TXN-SECRETMARKER", "x")).expect_ok();
        app.run("COMMIT").expect_ok();
        app.run(&ins(2, "PLAIN-LATER-SECRETMARKER", "x")).expect_ok();
        assert_eq!(plaintext_ids(&c, &t, "a", "id > 0"), "", "{level} prepared={prepared}: plaintext stored in a");

        // A second column, protected while this backend holds the first designation cached.
        app.run(&format!("BEGIN ISOLATION LEVEL {level}; SELECT 1")).expect_ok();
        c.psql(
            "at_admin",
            &format!("SELECT credcrypt.protect_column('{t}', 'b', bind_columns => ARRAY['id'], existing_values => 'migrate')"),
        )
        .expect_ok();
        app.run(&ins(3, "x", "B-IN-TXN-SECRETMARKER")).expect_ok();
        app.run("COMMIT").expect_ok();
        app.run(&ins(4, "x", "B-LATER-SECRETMARKER")).expect_ok();
        assert_eq!(plaintext_ids(&c, &t, "b", "id > 2"), "", "{level} prepared={prepared}: plaintext stored in b");

        // Unprotect, then protect again: the backend follows both changes.
        c.psql("at_admin", &format!("SELECT credcrypt.unprotect_column('{t}', 'b', decrypt_existing => true)"))
            .expect_ok();
        app.run(&ins(5, "x", "b-unprotected")).expect_ok();
        c.psql(
            "at_admin",
            &format!("SELECT credcrypt.protect_column('{t}', 'b', bind_columns => ARRAY['id'], existing_values => 'migrate')"),
        )
        .expect_ok();
        app.run(&ins(6, "x", "B-REPROTECTED-SECRETMARKER")).expect_ok();
        assert_eq!(plaintext_ids(&c, &t, "b", "id = 6"), "", "{level} prepared={prepared}: plaintext after re-protect");
        assert_eq!(plaintext_ids(&c, &t, "b", "id = 5"), "5", "unprotected meanwhile: stored as written");
        assert_eq!(plaintext_ids(&c, &t, "a", "id > 0"), "");
    }
}

#[test]
fn protect_column_waits_for_open_writers_of_the_table() {
    let (_g, c) = setup();
    fresh_table(&c, "at_admin", "at_lock", "id int PRIMARY KEY, a text, b text");
    c.psql("at_admin", "SELECT credcrypt.protect_column('at_lock', 'a', bind_columns => ARRAY['id'])").expect_ok();
    let mut app = Session::open(&c, "at_app");
    app.run("BEGIN; INSERT INTO at_lock VALUES (1, 'A-SECRETMARKER', 'before')").expect_ok();
    let mut admin = Session::open(&c, "at_admin");
    admin.send(
        "SELECT credcrypt.protect_column('at_lock', 'b', bind_columns => ARRAY['id'], existing_values => 'migrate')",
    );
    // The administrator waits for the writer's transaction (SHARE ROW EXCLUSIVE vs ROW EXCLUSIVE).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting = c.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'at_admin' AND wait_event_type = 'Lock' AND query LIKE '%protect_column%'",
        );
        if waiting == "1" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "protect_column did not wait for the open writer");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Still in the same transaction: b is not protected yet, and the writer is not blocked.
    app.run("INSERT INTO at_lock VALUES (2, 'A2-SECRETMARKER', 'b-before-protect')").expect_ok();
    app.run("COMMIT").expect_ok();
    admin.wait().expect_ok();
    app.run("INSERT INTO at_lock VALUES (3, 'A3-SECRETMARKER', 'B3-SECRETMARKER')").expect_ok();
    assert_eq!(plaintext_ids(&c, "at_lock", "a", "true"), "");
    assert_eq!(plaintext_ids(&c, "at_lock", "b", "id = 3"), "");
}

#[test]
fn a_protection_trigger_without_designation_refuses_to_write() {
    let (_g, c) = setup();
    fresh_table(&c, "at_admin", "at_orphan", "id int PRIMARY KEY, a text");
    // Someone attaches the trigger function by hand to a table with no designation.
    c.psql(
        "at_admin",
        "CREATE TRIGGER zz_credcrypt_protect BEFORE INSERT OR UPDATE ON at_orphan FOR EACH ROW EXECUTE FUNCTION credcrypt.protect_trigger()",
    )
    .expect_ok();
    c.psql("at_app", "INSERT INTO at_orphan VALUES (1, 'SECRETMARKER')").expect_error("55000");
    assert_eq!(c.sql("SELECT count(*) FROM at_orphan"), "0");
}

#[test]
fn sixteen_sessions_insert_while_an_administrator_protects_and_unprotects() {
    let (_g, c) = setup();
    fresh_table(&c, "at_admin", "at_st", "id bigserial PRIMARY KEY, s int, a text, c text, d text, obs int");
    c.sql("GRANT USAGE ON SEQUENCE at_st_id_seq TO at_app");
    c.psql("at_admin", "SELECT credcrypt.protect_column('at_st', 'a', bind_columns => ARRAY['id'])").expect_ok();
    const SESSIONS: usize = 16;
    const ROUNDS: usize = 60;
    let levels = ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"];
    let apps: Vec<_> = (0..SESSIONS)
        .map(|s| {
            let c = c.clone();
            let mut script = String::from(
                "PREPARE ins(int, int) AS INSERT INTO at_st (s, a, c, d, obs) VALUES ($1, 'A-SECRETMARKER', 'C-SECRETMARKER', 'D-SECRETMARKER', $2);\n",
            );
            for r in 0..ROUNDS {
                if r == ROUNDS / 2 {
                    // Half way, wait (at most a minute) until the administrator has protected
                    // c: the second half then certainly writes after seeing it protected,
                    // however fast this machine runs the first half.
                    script.push_str(
                        "DO $$ DECLARE t timestamptz := clock_timestamp(); BEGIN
                           WHILE NOT EXISTS (SELECT FROM credcrypt.protected_columns WHERE relid = 'at_st'::regclass AND column_name = 'c')
                                 AND clock_timestamp() < t + interval '60 s' LOOP
                             PERFORM pg_sleep(0.02);
                           END LOOP;
                         END $$;\n",
                    );
                }
                // Whether this backend has seen c protected, in a statement of its own.
                script.push_str(
                    "SELECT (EXISTS (SELECT FROM credcrypt.protected_columns WHERE relid = 'at_st'::regclass AND column_name = 'c'))::int AS obs \\gset\n",
                );
                let level = levels[(s + r) % levels.len()];
                let insert = if r % 2 == 0 {
                    format!("EXECUTE ins({s}, :obs)")
                } else {
                    format!("INSERT INTO at_st (s, a, c, d, obs) VALUES ({s}, 'A-SECRETMARKER', 'C-SECRETMARKER', 'D-SECRETMARKER', :obs)")
                };
                script.push_str(&format!("BEGIN ISOLATION LEVEL {level}; {insert}; COMMIT;\n"));
            }
            std::thread::spawn(move || {
                let mut child = std::process::Command::new("psql")
                    .args(["-X", "-q", "-v", "ON_ERROR_STOP=0", "-v", "VERBOSITY=verbose", "-h", &c.host, "-p", &c.port, "-U", "at_app", "-d", "postgres", "-f", "-"])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("psql");
                use std::io::Write as _;
                child.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("script");
                let out = child.wait_with_output().expect("psql ends");
                String::from_utf8_lossy(&out.stderr).into_owned()
            })
        })
        .collect();
    // The administrator toggles d and protects c once, half way.
    let mut admin = Session::open(&c, "at_admin");
    for i in 0..12 {
        admin
            .run("SELECT credcrypt.protect_column('at_st', 'd', bind_columns => ARRAY['id'], existing_values => 'migrate')")
            .expect_ok();
        std::thread::sleep(Duration::from_millis(40));
        admin.run("SELECT credcrypt.unprotect_column('at_st', 'd', decrypt_existing => true)").expect_ok();
        if i == 5 {
            admin
                .run("SELECT credcrypt.protect_column('at_st', 'c', bind_columns => ARRAY['id'], existing_values => 'migrate')")
                .expect_ok();
        }
    }
    // SERIALIZABLE transactions may be cancelled by the server (40001); nothing else may fail.
    let mut lost = 0;
    for a in apps {
        let err = a.join().expect("app thread");
        for line in err.lines().filter(|l| l.contains("ERROR:")) {
            assert!(line.contains("40001"), "an application statement failed: {line}\n{err}");
            lost += 1;
        }
    }
    assert_eq!(c.sql("SELECT count(*) FROM at_st"), (SESSIONS * ROUNDS - lost).to_string());
    assert_eq!(c.sql("SELECT count(*) FROM at_st WHERE NOT starts_with(a, 'cc1:')"), "0", "plaintext in a");
    assert_eq!(
        c.sql("SELECT count(*) FROM at_st WHERE obs = 1 AND NOT starts_with(c, 'cc1:')"),
        "0",
        "plaintext in c written after the writer had seen c protected"
    );
    assert!(
        c.sql("SELECT count(*) FROM at_st WHERE obs = 1").parse::<i64>().unwrap_or(0) > 0,
        "c was protected during the run"
    );
}

// ---------------------------------------------------------------------------------------
// HIGH 2: objects on an administrator's (or any caller's) search_path never run with the
// extension's statements and never end up in what the extension generates.

/// Creates schema `evil` (owned by at_evil, usable by everyone) with a copy of many of
/// PostgreSQL's functions and operators — same names, same argument types — each of which
/// records that it ran (in evil.loot) and then does what the original does. With
/// `search_path = evil, pg_catalog, …` every unqualified use of those names resolves to them.
fn plant_hostile_schema(c: &Cluster) {
    c.sql("DROP SCHEMA IF EXISTS evil CASCADE; CREATE SCHEMA evil AUTHORIZATION at_evil; GRANT USAGE ON SCHEMA evil TO PUBLIC;");
    c.psql(
        "at_evil",
        r#"
        CREATE TABLE evil.loot (what text, who name DEFAULT current_user, query text DEFAULT pg_catalog.current_query());
        GRANT INSERT, SELECT ON evil.loot TO PUBLIC;
        CREATE FUNCTION evil.gotcha(what text) RETURNS boolean LANGUAGE sql AS $$ INSERT INTO evil.loot (what) VALUES (what) RETURNING true $$;
        CREATE FUNCTION evil.to_jsonb(a text) RETURNS jsonb LANGUAGE plpgsql AS $f$BEGIN PERFORM evil.gotcha('to_jsonb(text)'); RETURN pg_catalog.to_jsonb(a); END$f$;
        CREATE FUNCTION evil.cardinality(a text[]) RETURNS int LANGUAGE plpgsql AS $f$BEGIN PERFORM evil.gotcha('cardinality(text[])'); RETURN pg_catalog.cardinality(a); END$f$;
        DO $plant$
        DECLARE
            p record;
            args text;
            callargs text;
            n int := 0;
        BEGIN
            FOR p IN
                SELECT f.proname, pg_catalog.pg_get_function_identity_arguments(f.oid) AS ident, f.proargtypes::oid[] AS types,
                       pg_catalog.format_type(f.prorettype, NULL) AS ret
                  FROM pg_catalog.pg_proc f
                 WHERE f.pronamespace = 'pg_catalog'::regnamespace AND f.prokind = 'f' AND NOT f.proretset AND f.provariadic = 0
                   AND f.proname IN ('quote_ident', 'quote_literal', 'format_type', 'jsonb_typeof', 'jsonb_set', 'starts_with',
                                     'current_setting', 'set_config', 'pg_has_role', 'has_table_privilege', 'pg_relation_size',
                                     'now', 'clock_timestamp', 'substring', 'pg_partition_root', 'make_interval', 'date_part',
                                     'round', 'pg_sleep', 'lower', 'upper', 'length', 'left', 'split_part', 'textcat',
                                     'pg_get_userbyid', 'pg_backend_pid', 'txid_current', 'regexp_replace', 'array_to_string',
                                     'nameeq', 'texteq', 'to_regclass', 'pg_get_viewdef', 'pg_table_is_visible', 'translate')
                   AND NOT EXISTS (SELECT FROM unnest(f.proargtypes::oid[]) t
                                    WHERE pg_catalog.format_type(t, NULL) LIKE 'any%' OR pg_catalog.format_type(t, NULL) IN ('internal', 'cstring', '"any"'))
                   AND pg_catalog.format_type(f.prorettype, NULL) NOT LIKE 'any%'
                   AND f.prorettype <> 'void'::regtype
            LOOP
                SELECT string_agg(pg_catalog.format('a%s %s', i, pg_catalog.format_type(t, NULL)), ', ' ORDER BY i),
                       string_agg(pg_catalog.format('a%s', i), ', ' ORDER BY i)
                  INTO args, callargs FROM unnest(p.types) WITH ORDINALITY AS x(t, i);
                EXECUTE pg_catalog.format(
                    'CREATE FUNCTION evil.%I(%s) RETURNS %s LANGUAGE plpgsql AS $f$BEGIN PERFORM evil.gotcha(%L); RETURN pg_catalog.%I(%s); END$f$',
                    p.proname, coalesce(args, ''), p.ret, p.proname || '(' || p.ident || ')', p.proname, coalesce(callargs, ''));
            END LOOP;
            FOR p IN
                SELECT o.oprname, pg_catalog.format_type(o.oprleft, NULL) AS l, pg_catalog.format_type(o.oprright, NULL) AS r,
                       pg_catalog.format_type(o.oprresult, NULL) AS ret
                  FROM pg_catalog.pg_operator o
                 WHERE o.oprnamespace = 'pg_catalog'::regnamespace AND o.oprleft <> 0 AND o.oprright <> 0
                   AND o.oprname IN ('=', '<>', '<', '>', '<=', '>=', '#>', '#>>', '#-', '||', '~~', '+', '-', '/', '*', '~', '&')
                   AND pg_catalog.format_type(o.oprleft, NULL) NOT LIKE 'any%' AND pg_catalog.format_type(o.oprright, NULL) NOT LIKE 'any%'
                   AND pg_catalog.format_type(o.oprresult, NULL) NOT LIKE 'any%'
                   AND pg_catalog.format_type(o.oprleft, NULL) NOT IN ('internal', '"any"')
            LOOP
                n := n + 1;
                EXECUTE pg_catalog.format(
                    'CREATE FUNCTION evil.op_%s(a %s, b %s) RETURNS %s LANGUAGE plpgsql AS $f$BEGIN PERFORM evil.gotcha(%L); RETURN a OPERATOR(pg_catalog.%s) b; END$f$',
                    n, p.l, p.r, p.ret, 'operator ' || p.oprname || '(' || p.l || ', ' || p.r || ')', p.oprname);
                EXECUTE pg_catalog.format('CREATE OPERATOR evil.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = evil.op_%s)', p.oprname, p.l, p.r, n);
            END LOOP;
        END
        $plant$;
        "#,
    )
    .expect_ok();
}

/// What a session with the hostile path and temporary objects starts with.
const HOSTILE: &str = "SET search_path = evil, pg_catalog, public;
    CREATE DOMAIN pg_temp.text AS pg_catalog.text CHECK (evil.gotcha('temporary domain text'));
    CREATE TEMP TABLE protected_columns (relid oid, column_name name);
    CREATE TEMP TABLE data_keys (id text, wrapped text);";

fn loot(c: &Cluster) -> String {
    c.sql("SELECT coalesce(string_agg(who || ': ' || what || ' in: ' || left(query, 300), E'\\n'), '') FROM evil.loot")
}

#[test]
fn hostile_search_path_objects_never_run_and_are_never_baked_in() {
    let (_g, c) = setup();
    plant_hostile_schema(&c);
    // The trap is armed: an unqualified operator in the administrator's own query runs evil code.
    c.psql("at_admin", &format!("{HOSTILE} SELECT 'a'::varchar = 'b'::varchar;")).expect_ok();
    assert!(loot(&c).contains("at_admin: operator =(text, text)"), "{}", loot(&c));
    c.psql("at_evil", "TRUNCATE evil.loot").expect_ok();
    c.sql("ALTER ROLE at_reader SET credcrypt.audit_decrypt = 'table'");

    fresh_table(
        &c,
        "at_admin",
        "at_h2",
        "id int PRIMARY KEY, owner_id varchar NOT NULL, api_key text, cfg jsonb, legacy text",
    );
    c.sql("INSERT INTO at_h2 (id, owner_id, legacy) VALUES (100, 'alice', 'old-plaintext-SECRETMARKER')");
    let admin = |sql: &str| c.psql("at_admin", &format!("{HOSTILE}\n{sql}"));
    admin(
        "SELECT credcrypt.protect_column('at_h2', 'api_key', bind_columns => ARRAY['id', 'owner_id'], mask_column => 'api_key_mask', mask_prefix => 3);
         SELECT credcrypt.protect_column('at_h2', 'cfg', bind_columns => ARRAY['id'], json_path => ARRAY['k', 'secret']);
         SELECT credcrypt.protect_column('at_h2', 'legacy', bind_columns => ARRAY['id'], existing_values => 'migrate');
         SELECT credcrypt.create_decrypted_view('at_h2', 'at_h2_plain');
         SELECT credcrypt.create_masked_view('at_h2', 'at_h2_masked');
         GRANT SELECT ON at_h2_masked TO at_app;
         SELECT credcrypt.enable_owner_rls('at_h2', 'owner_id');
         CALL credcrypt.reencrypt_column('at_h2', 'legacy');",
    )
    .expect_ok();
    c.psql(
        "at_app",
        &format!(
            "{HOSTILE}
             BEGIN; SELECT credcrypt.set_owner('alice');
             INSERT INTO at_h2 (id, owner_id, api_key, cfg) VALUES (1, 'alice', 'sk-SECRETMARKER-1-a1b2', '{{\"k\": {{\"secret\": \"JSON-SECRETMARKER\"}}}}');
             COMMIT;
             BEGIN; SELECT credcrypt.set_owner('bob');
             INSERT INTO at_h2 (id, owner_id, api_key) VALUES (2, 'bob', 'sk-SECRETMARKER-2-c3d4');
             COMMIT;"
        ),
    )
    .expect_ok();
    let plain = c
        .psql(
            "at_reader",
            &format!("{HOSTILE}\nBEGIN; SELECT credcrypt.set_owner('alice'); TABLE at_h2_plain; COMMIT;"),
        )
        .expect_ok()
        .to_owned();
    assert!(
        plain.contains("sk-SECRETMARKER-1-a1b2")
            && plain.contains("JSON-SECRETMARKER")
            && !plain.contains("SECRETMARKER-2"),
        "{plain}"
    );
    admin(
        "SELECT * FROM credcrypt.key_usage('at_h2');
         SELECT * FROM credcrypt.security_report();
         SELECT credcrypt.unprotect_column('at_h2', 'legacy', decrypt_existing => true);",
    )
    .expect_ok();
    assert_eq!(loot(&c), "", "hostile objects ran");

    // The generated views and policies depend on no object of schema evil, and read the same
    // with only pg_catalog on the path.
    let deps = c.sql(
        "SELECT count(*) FROM pg_depend d
           LEFT JOIN pg_proc p ON d.refclassid = 'pg_proc'::regclass AND p.oid = d.refobjid
           LEFT JOIN pg_operator o ON d.refclassid = 'pg_operator'::regclass AND o.oid = d.refobjid
           LEFT JOIN pg_type t ON d.refclassid = 'pg_type'::regclass AND t.oid = d.refobjid
          WHERE (d.classid = 'pg_rewrite'::regclass AND d.objid IN (SELECT oid FROM pg_rewrite WHERE ev_class IN ('at_h2_plain'::regclass, 'at_h2_masked'::regclass))
                 OR d.classid = 'pg_policy'::regclass AND d.objid IN (SELECT oid FROM pg_policy WHERE polrelid = 'at_h2'::regclass))
            AND coalesce(p.pronamespace, o.oprnamespace, t.typnamespace) = 'evil'::regnamespace",
    );
    assert_eq!(deps, "0", "a generated definition uses schema evil");
    let defs = c.sql(
        "SET search_path = pg_catalog;
         SELECT pg_get_viewdef('public.at_h2_plain'::regclass) || pg_get_viewdef('public.at_h2_masked'::regclass)
                || (SELECT string_agg(pg_get_expr(polqual, polrelid) || coalesce(pg_get_expr(polwithcheck, polrelid), ''), ' ')
                      FROM pg_policy WHERE polrelid = 'public.at_h2'::regclass)",
    );
    assert!(!defs.contains("evil"), "{defs}");
    // The decryption was audited under its real column name.
    let audit = c.sql("SELECT string_agg(object, ',') FROM credcrypt.decrypt_audit WHERE role_name = 'at_reader'");
    assert!(audit.contains("public.at_h2.api_key"), "{audit}");
    assert!(!c
        .sql("SELECT count(*) FROM credcrypt.security_report() WHERE finding LIKE '%outside pg_catalog%'")
        .starts_with('1'));
    c.sql("ALTER ROLE at_reader RESET credcrypt.audit_decrypt; DROP TABLE at_h2 CASCADE");
}

// ---------------------------------------------------------------------------------------
// MEDIUM 3: maintenance runs the table's own code with the table owner's rights only.

#[test]
fn maintenance_runs_the_table_owners_triggers_as_the_owner_not_as_the_administrator() {
    let (_g, c) = setup();
    c.sql("DROP TABLE IF EXISTS at_m3_loot");
    fresh_table(&c, "at_owner", "at_m3", "id int PRIMARY KEY, user_id text NOT NULL, api_key text");
    c.sql("INSERT INTO at_m3 SELECT g, 'user' || g, 'sk-MAINTENANCE-SECRETMARKER-' || g FROM generate_series(1, 20) g");
    // The administrator (a member of at_owner) protects and migrates the owner's table.
    c.psql(
        "at_admin",
        "SELECT credcrypt.protect_column('at_m3', 'api_key', bind_columns => ARRAY['id'], existing_values => 'migrate');
         SELECT credcrypt.enable_owner_rls('at_m3', 'user_id');",
    )
    .expect_ok();
    // The owner plants a trigger that tries to decrypt every row the migration touches, and
    // records who it ran as; it swallows its own errors so that the migration goes on.
    c.psql(
        "at_owner",
        "CREATE TABLE at_m3_loot (who name, what text);
         CREATE OR REPLACE FUNCTION at_m3_steal() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO public.at_m3_loot VALUES (current_user, 'ran');
             BEGIN
                 INSERT INTO public.at_m3_loot SELECT current_user, credcrypt.decrypt_credential(NEW.api_key, credcrypt.column_context(b.binding_id, ARRAY[NEW.id::text]))
                   FROM credcrypt.protected_columns b WHERE b.relid = 'public.at_m3'::regclass;
             EXCEPTION WHEN OTHERS THEN
                 INSERT INTO public.at_m3_loot VALUES (current_user, 'refused: ' || SQLSTATE);
             END;
             RETURN NEW;
         END $$;
         CREATE TRIGGER aa_steal BEFORE UPDATE ON at_m3 FOR EACH ROW EXECUTE FUNCTION at_m3_steal();",
    )
    .expect_ok();
    c.psql("at_admin", "CALL credcrypt.reencrypt_column('at_m3', 'api_key', batch_size => 7)").expect_ok();
    let loot = c.sql("SELECT string_agg(DISTINCT who || ' ' || what, ',') FROM at_m3_loot");
    assert!(!loot.contains("SECRETMARKER"), "the owner's trigger decrypted values during maintenance: {loot}");
    assert!(!loot.contains("at_admin"), "the owner's trigger ran with the administrator's rights: {loot}");
    assert!(loot.contains("at_owner ran") && loot.contains("refused: 42501"), "{loot}");
    assert_eq!(c.sql("SELECT count(*) FROM at_m3 WHERE starts_with(api_key, 'cc1:')"), "20", "the migration still ran");
    c.sql("DROP TABLE at_m3 CASCADE; DROP TABLE at_m3_loot; DROP FUNCTION at_m3_steal()");
}

#[test]
fn the_maintenance_path_opens_only_for_the_role_running_maintenance() {
    let (_g, c) = setup();
    // at_evil may create triggers on the owner's table (TRIGGER privilege), with a SECURITY
    // DEFINER function of its own that reads the table during maintenance.
    c.sql("DROP TABLE IF EXISTS at_m3b_loot CASCADE; DROP FUNCTION IF EXISTS at_m3b_peek() CASCADE");
    fresh_table(&c, "at_owner", "at_m3b", "id int PRIMARY KEY, user_id text NOT NULL, api_key text");
    c.sql("INSERT INTO at_m3b SELECT g, 'user' || g, 'plain-' || g FROM generate_series(1, 5) g");
    c.psql(
        "at_admin",
        "SELECT credcrypt.protect_column('at_m3b', 'api_key', bind_columns => ARRAY['id'], existing_values => 'migrate');
         SELECT credcrypt.enable_owner_rls('at_m3b', 'user_id');",
    )
    .expect_ok();
    c.sql("GRANT TRIGGER, SELECT ON at_m3b TO at_evil; GRANT CREATE ON SCHEMA public TO at_evil");
    c.psql(
        "at_evil",
        "CREATE TABLE at_m3b_loot (n bigint); GRANT INSERT ON at_m3b_loot TO PUBLIC;
         CREATE FUNCTION at_m3b_peek() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
         BEGIN INSERT INTO public.at_m3b_loot SELECT count(*) FROM public.at_m3b; RETURN NEW; END $$;
         CREATE TRIGGER ab_peek BEFORE UPDATE ON at_m3b FOR EACH ROW EXECUTE FUNCTION at_m3b_peek();",
    )
    .expect_ok();
    c.psql("at_admin", "CALL credcrypt.reencrypt_column('at_m3b', 'api_key')").expect_ok();
    assert_eq!(
        c.sql("SELECT coalesce(max(n), -1) FROM at_m3b_loot"),
        "0",
        "another role saw rows through the maintenance path"
    );
    c.sql("DROP TABLE at_m3b CASCADE; DROP TABLE at_m3b_loot; DROP FUNCTION at_m3b_peek(); REVOKE CREATE ON SCHEMA public FROM at_evil");
}

// ---------------------------------------------------------------------------------------
// MEDIUM 4: the decrypt audit can be neither suppressed nor forged by a decryptor.

#[test]
fn a_decryptor_can_neither_suppress_nor_forge_the_decrypt_audit() {
    let (_g, c) = setup();
    fresh_table(&c, "at_admin", "at_m4", "id int PRIMARY KEY, api_key text");
    c.psql(
        "at_admin",
        "SELECT credcrypt.protect_column('at_m4', 'api_key', bind_columns => ARRAY['id']);
         SELECT credcrypt.create_decrypted_view('at_m4', 'at_m4_plain');",
    )
    .expect_ok();
    c.psql("at_app", "INSERT INTO at_m4 VALUES (1, 'sk-AUDIT-SECRETMARKER-1'), (2, 'sk-AUDIT-SECRETMARKER-2')")
        .expect_ok();
    c.sql("ALTER ROLE at_reader SET credcrypt.audit_decrypt = 'table'; TRUNCATE credcrypt.decrypt_audit");
    plant_hostile_schema(&c);
    let before = c.log_text().len();
    // A temporary domain that makes text casts fail, and hostile overloads on the path.
    let o = c.psql(
        "at_reader",
        "CREATE DOMAIN pg_temp.text AS pg_catalog.text CHECK (false);
         SET search_path = evil, pg_catalog, public;
         COPY (SELECT api_key FROM at_m4_plain) TO STDOUT;",
    );
    let rows = c.sql("SELECT string_agg(object || ':' || values_decrypted, ',') FROM credcrypt.decrypt_audit WHERE role_name = 'at_reader'");
    let log = c.log_text()[before..].to_owned();
    assert!(
        rows == "public.at_m4.api_key:2" || log.contains("role \"at_reader\" decrypted 2 value(s)"),
        "no audit record of the decryption: rows {rows:?}, copy {o:?}"
    );
    assert_eq!(rows, "public.at_m4.api_key:2", "the audit row is missing or names another object; copy {o:?}");
    assert_eq!(loot(&c), "");
    c.sql("ALTER ROLE at_reader RESET credcrypt.audit_decrypt");
}

// ---------------------------------------------------------------------------------------
// MEDIUM 5: a large jsonb document is edited in PostgreSQL's memory, not copied many times.

/// Peak resident memory (VmHWM, KiB) of a backend.
fn peak_kib(pid: i32) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("backend status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn a_large_jsonb_document_costs_about_what_an_unprotected_insert_costs() {
    let (_g, c) = setup();
    fresh_table(&c, "at_admin", "at_m5", "id int PRIMARY KEY, doc jsonb");
    fresh_table(&c, "at_admin", "at_m5_plain", "id int PRIMARY KEY, doc jsonb");
    c.psql(
        "at_admin",
        "SELECT credcrypt.protect_column('at_m5', 'doc', bind_columns => ARRAY['id'], json_path => ARRAY['apiKey'])",
    )
    .expect_ok();
    // ~15 MB: many keys around the credential.
    let build = "(SELECT jsonb_object_agg('k' || g, repeat('v', 100)) || jsonb_build_object('apiKey', 'sk-BIG-SECRETMARKER') FROM generate_series(1, 140000) g)";
    let growth = |table: &str| {
        let mut s = Session::open(&c, "at_app");
        let pid = s.pid();
        let base = peak_kib(pid);
        s.run(&format!("INSERT INTO {table} VALUES (1, {build})")).expect_ok();
        peak_kib(pid) - base
    };
    let plain = growth("at_m5_plain");
    let protected = growth("at_m5");
    assert!(c.sql("SELECT doc->>'apiKey' FROM at_m5").starts_with("cc1:"));
    assert_eq!(c.sql("SELECT length(doc::text) > 14000000 FROM at_m5"), "t");
    // The document itself is ~15 MB; the trigger may copy it a few times in PostgreSQL memory.
    assert!(
        protected <= plain + 96 * 1024,
        "protected insert grew the backend by {protected} KiB, unprotected by {plain} KiB"
    );
}

// ---------------------------------------------------------------------------------------
// MEDIUM/LOW 6: what the table owner could do to get plaintext past the trigger is refused,
// and what cannot be refused is reported as critical.

#[test]
fn ddl_that_would_let_plaintext_past_the_trigger_is_refused() {
    let (_g, c) = setup();
    c.sql("DROP TABLE IF EXISTS at_m6_child, at_m6_copy, at_m6_new, at_m6_part_plain, at_m6_loose CASCADE");
    fresh_table(&c, "at_admin", "at_m6", "id int PRIMARY KEY, api_key text, n numeric");
    c.psql("at_admin", "SELECT credcrypt.protect_column('at_m6', 'api_key', bind_columns => ARRAY['id'])").expect_ok();
    let refused = |sql: &str| {
        let o = c.psql("at_admin", sql);
        o.expect_error("55000");
        o.err.clone()
    };
    c.psql(
        "at_admin",
        "CREATE OR REPLACE FUNCTION at_m6_restore() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.api_key := 'PLAIN-SECRETMARKER'; RETURN NEW; END $$;
         CREATE TABLE IF NOT EXISTS at_m6_copy (v text);",
    )
    .expect_ok();
    // A BEFORE ROW trigger that sorts after zz_credcrypt_protect.
    refused("CREATE TRIGGER zzz_restore BEFORE INSERT ON at_m6 FOR EACH ROW EXECUTE FUNCTION at_m6_restore()");
    // ... or one renamed to sort after it.
    c.psql(
        "at_admin",
        "CREATE TRIGGER aa_restore BEFORE UPDATE ON at_m6 FOR EACH ROW EXECUTE FUNCTION at_m6_restore()",
    )
    .expect_ok();
    refused("ALTER TRIGGER aa_restore ON at_m6 RENAME TO zzzz_restore");
    c.psql("at_admin", "DROP TRIGGER aa_restore ON at_m6").expect_ok();
    // The protection trigger disabled, or dropped.
    refused("ALTER TABLE at_m6 DISABLE TRIGGER zz_credcrypt_protect");
    refused("ALTER TABLE at_m6 DISABLE TRIGGER ALL");
    refused("ALTER TABLE at_m6 ENABLE REPLICA TRIGGER zz_credcrypt_protect");
    refused("DROP TRIGGER zz_credcrypt_protect ON at_m6");
    refused("ALTER TRIGGER zz_credcrypt_protect ON at_m6 RENAME TO aa_credcrypt_protect");
    // A rule copying new rows elsewhere.
    refused("CREATE RULE at_m6_tap AS ON INSERT TO at_m6 DO ALSO INSERT INTO at_m6_copy VALUES (NEW.api_key)");
    // An inheritance child, created or attached.
    refused("CREATE TABLE at_m6_child () INHERITS (at_m6)");
    c.psql("at_admin", "CREATE TABLE at_m6_loose (id int NOT NULL, api_key text, n numeric)").expect_ok();
    refused("ALTER TABLE at_m6_loose INHERIT at_m6");
    // A bind column whose text form would change.
    refused("ALTER TABLE at_m6 ALTER COLUMN id TYPE numeric(10,2)");
    // ... but a change within the same text form is fine (int -> bigint).
    c.psql("at_admin", "ALTER TABLE at_m6 ALTER COLUMN id TYPE bigint").expect_ok();
    c.psql("at_app", "INSERT INTO at_m6 (id, api_key) VALUES (1, 'sk-M6-SECRETMARKER')").expect_ok();
    assert_eq!(plaintext_ids(&c, "at_m6", "api_key", "true"), "");
    assert_eq!(c.sql("SELECT count(*) FROM at_m6_copy"), "0");
    // Everything still reads back, and nothing is reported.
    let report =
        c.sql("SELECT count(*) FROM credcrypt.security_report() WHERE object LIKE '%at_m6%' AND severity = 'critical'");
    assert_eq!(report, "0");
    c.sql("DROP TABLE at_m6, at_m6_copy, at_m6_loose CASCADE; DROP FUNCTION at_m6_restore()");
}

#[test]
fn partitions_cannot_bypass_protection() {
    let (_g, c) = setup();
    c.sql("DROP TABLE IF EXISTS at_p, at_p_plain, at_p_enc CASCADE");
    c.psql(
        "at_admin",
        "CREATE TABLE at_p (id int, api_key text) PARTITION BY RANGE (id);
         CREATE TABLE at_p_1 PARTITION OF at_p FOR VALUES FROM (0) TO (100);
         GRANT SELECT, INSERT ON at_p TO at_app;
         SELECT credcrypt.protect_column('at_p', 'api_key', bind_columns => ARRAY['id']);",
    )
    .expect_ok();
    let refused = |sql: &str| c.psql("at_admin", sql).expect_error("55000").err.clone();
    refused("ALTER TABLE at_p_1 DISABLE TRIGGER zz_credcrypt_protect");
    // A table that holds plaintext cannot be attached; an empty one can; values move in
    // through the trigger.
    c.psql("at_admin", "CREATE TABLE at_p_plain (id int, api_key text); INSERT INTO at_p_plain VALUES (150, 'PLAIN-PART-SECRETMARKER')")
        .expect_ok();
    let e = refused("ALTER TABLE at_p ATTACH PARTITION at_p_plain FOR VALUES FROM (100) TO (200)");
    assert!(e.contains("not encrypted"), "{e}");
    c.psql("at_admin", "CREATE TABLE at_p_2 (id int, api_key text); ALTER TABLE at_p ATTACH PARTITION at_p_2 FOR VALUES FROM (100) TO (200)")
        .expect_ok();
    c.psql("at_app", "INSERT INTO at_p VALUES (1, 'sk-P1-SECRETMARKER'), (150, 'sk-P2-SECRETMARKER')").expect_ok();
    // Detaching and attaching a partition of encrypted values is fine.
    c.psql("at_admin", "ALTER TABLE at_p DETACH PARTITION at_p_2; ALTER TABLE at_p ATTACH PARTITION at_p_2 FOR VALUES FROM (100) TO (200)")
        .expect_ok();
    c.psql("at_admin", "CREATE TABLE at_p_3 PARTITION OF at_p FOR VALUES FROM (200) TO (300)").expect_ok();
    c.psql("at_app", "INSERT INTO at_p VALUES (250, 'sk-P3-SECRETMARKER')").expect_ok();
    assert_eq!(plaintext_ids(&c, "at_p", "api_key", "true"), "");
    assert_eq!(c.sql("SELECT count(*) FROM at_p"), "3");
    c.sql("DROP TABLE at_p, at_p_plain CASCADE");
}

/// Residual risk of the fifth attack: a foreign table as a partition (or inheritance child) of
/// a protected table stores the rows routed to it on another server, without the protection
/// trigger. Creating, attaching or inheriting one is refused; protect_column refuses a table
/// that already has one.
#[test]
fn foreign_tables_cannot_join_a_protected_table() {
    let (_g, c) = setup();
    c.sql(
        "DROP TABLE IF EXISTS at_fp, at_fp_pre, at_fp_flat CASCADE;
         DROP FOREIGN TABLE IF EXISTS at_fp_loose;
         DROP SERVER IF EXISTS at_fp_srv CASCADE; DROP FOREIGN DATA WRAPPER IF EXISTS at_fp_fdw CASCADE;
         CREATE FOREIGN DATA WRAPPER at_fp_fdw; CREATE SERVER at_fp_srv FOREIGN DATA WRAPPER at_fp_fdw;
         GRANT USAGE ON FOREIGN SERVER at_fp_srv TO at_admin;",
    );
    c.psql(
        "at_admin",
        "CREATE TABLE at_fp (id int, api_key text) PARTITION BY RANGE (id);
         CREATE TABLE at_fp_1 PARTITION OF at_fp FOR VALUES FROM (0) TO (100);
         SELECT credcrypt.protect_column('at_fp', 'api_key', bind_columns => ARRAY['id']);",
    )
    .expect_ok();
    let refused = |sql: &str| c.psql("at_admin", sql).expect_error("55000").err.clone();
    let e = refused("CREATE FOREIGN TABLE at_fp_f PARTITION OF at_fp FOR VALUES FROM (100) TO (200) SERVER at_fp_srv");
    assert!(e.contains("foreign table"), "{e}");
    c.psql("at_admin", "CREATE FOREIGN TABLE at_fp_loose (id int, api_key text) SERVER at_fp_srv").expect_ok();
    let e = refused("ALTER TABLE at_fp ATTACH PARTITION at_fp_loose FOR VALUES FROM (100) TO (200)");
    assert!(e.contains("foreign table"), "{e}");
    // Nor inherit from a protected table (PostgreSQL itself refuses inheriting from a partition).
    c.psql("at_admin", "CREATE TABLE at_fp_flat (id int, api_key text); SELECT credcrypt.protect_column('at_fp_flat', 'api_key', bind_columns => ARRAY['id'])")
        .expect_ok();
    refused("ALTER FOREIGN TABLE at_fp_loose INHERIT at_fp_flat");
    refused("CREATE FOREIGN TABLE at_fp_child () INHERITS (at_fp_flat) SERVER at_fp_srv");
    // Sixth attack, F8: a CREATE TABLE … INHERITS embedded in CREATE SCHEMA is checked too.
    c.sql("DROP SCHEMA IF EXISTS at_fp_s CASCADE; GRANT CREATE ON DATABASE postgres TO at_admin");
    refused("CREATE SCHEMA at_fp_s CREATE TABLE child () INHERITS (public.at_fp_flat)");
    c.sql("REVOKE CREATE ON DATABASE postgres FROM at_admin");
    assert_eq!(
        c.sql("SELECT count(*) FROM pg_inherits i JOIN pg_class k ON k.oid = i.inhrelid WHERE k.relkind = 'f' AND k.relname LIKE 'at_fp%'"),
        "0"
    );
    // One a superuser attaches with the DDL checks off is reported, and maintenance refuses the table.
    c.sql(
        "ALTER EVENT TRIGGER credcrypt_on_ddl_end DISABLE;
         ALTER TABLE at_fp ATTACH PARTITION at_fp_loose FOR VALUES FROM (100) TO (200);
         ALTER EVENT TRIGGER credcrypt_on_ddl_end ENABLE;",
    );
    assert_eq!(
        c.sql("SELECT severity || ' ' || object FROM credcrypt.security_report() WHERE object LIKE '%at_fp_loose%'"),
        "critical foreign table public.at_fp_loose"
    );
    let e = refused("CALL credcrypt.reencrypt_column('at_fp', 'api_key')");
    assert!(e.contains("foreign table"), "{e}");
    c.sql("ALTER TABLE at_fp DETACH PARTITION at_fp_loose");
    // A table that already has a foreign partition cannot be protected.
    c.psql(
        "at_admin",
        "CREATE TABLE at_fp_pre (id int, api_key text) PARTITION BY RANGE (id);
         CREATE FOREIGN TABLE at_fp_pre_f PARTITION OF at_fp_pre FOR VALUES FROM (0) TO (100) SERVER at_fp_srv;",
    )
    .expect_ok();
    let e = refused("SELECT credcrypt.protect_column('at_fp_pre', 'api_key', bind_columns => ARRAY['id'])");
    assert!(e.contains("foreign table"), "{e}");
    c.sql(
        "DROP TABLE at_fp, at_fp_pre, at_fp_flat CASCADE; DROP FOREIGN TABLE at_fp_loose;
         DROP SERVER at_fp_srv CASCADE; DROP FOREIGN DATA WRAPPER at_fp_fdw CASCADE;",
    );
}

#[test]
fn what_cannot_be_refused_is_reported_and_the_trigger_fails_closed() {
    let (_g, c) = setup();
    fresh_table(&c, "at_admin", "at_m6r", "id int PRIMARY KEY, api_key text");
    c.psql(
        "at_admin",
        "SELECT credcrypt.protect_column('at_m6r', 'api_key', bind_columns => ARRAY['id']);
         CREATE OR REPLACE FUNCTION at_m6r_restore() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.api_key := 'PLAIN-SECRETMARKER'; RETURN NEW; END $$;",
    )
    .expect_ok();
    // A superuser switches the DDL checks off and adds a trigger that fires after the protection.
    c.sql(
        "ALTER EVENT TRIGGER credcrypt_on_ddl_end DISABLE;
         CREATE TRIGGER zzz_restore BEFORE INSERT ON at_m6r FOR EACH ROW EXECUTE FUNCTION at_m6r_restore();
         ALTER EVENT TRIGGER credcrypt_on_ddl_end ENABLE;",
    );
    let report =
        c.sql("SELECT severity || ' ' || object FROM credcrypt.security_report() WHERE object LIKE '%zzz_restore%'");
    assert_eq!(report, "critical trigger zzz_restore on public.at_m6r");
    // The protection trigger itself refuses to write while it is not the last to fire.
    c.psql("at_app", "INSERT INTO at_m6r VALUES (1, 'sk-SECRETMARKER')").expect_error("55000");
    assert_eq!(c.sql("SELECT count(*) FROM at_m6r"), "0");
    assert_eq!(c.sql("SELECT trigger_enabled FROM credcrypt.protected_columns_info WHERE table_name = 'at_m6r'"), "t");
    c.sql("DROP TABLE at_m6r CASCADE; DROP FUNCTION at_m6r_restore()");
}

#[test]
fn protect_column_refuses_tables_that_are_already_bypassed() {
    let (_g, c) = setup();
    c.sql("DROP TABLE IF EXISTS at_pre, at_pre_child CASCADE");
    fresh_table(&c, "at_admin", "at_pre", "id int PRIMARY KEY, api_key text");
    c.psql("at_admin", "CREATE TABLE at_pre_child () INHERITS (at_pre)").expect_ok();
    c.psql("at_admin", "SELECT credcrypt.protect_column('at_pre', 'api_key', bind_columns => ARRAY['id'])")
        .expect_error("55000");
    assert_eq!(c.sql("SELECT count(*) FROM credcrypt.protected_columns WHERE relid = 'at_pre'::regclass"), "0");
    c.sql("DROP TABLE at_pre CASCADE");
}

// ---------------------------------------------------------------------------------------
// Second attack (reviews/attack-2.md).

/// Finding 1: a table owner's code that runs during maintenance changes session settings; the
/// administrator's session must come out of the call with its own settings.
#[test]
fn maintenance_leaves_no_setting_of_the_owners_code_in_the_administrators_session() {
    let (_g, c) = setup();
    fresh_table(&c, "at_owner", "at_g1", "id int PRIMARY KEY, api_key text");
    c.sql("INSERT INTO at_g1 SELECT g, 'sk-G1-SECRETMARKER-' || g FROM generate_series(1, 5) g");
    c.psql(
        "at_admin",
        "SELECT credcrypt.protect_column('at_g1', 'api_key', bind_columns => ARRAY['id'], existing_values => 'migrate');
         SELECT credcrypt.enable_owner_rls('at_g1', 'id');",
    )
    .expect_ok();
    c.psql(
        "at_owner",
        "CREATE OR REPLACE FUNCTION public.at_g1_plant() RETURNS boolean LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM set_config('search_path', 'public, pg_catalog', false);
             PERFORM set_config('app.current_user_id', 'planted', false);
             PERFORM set_config('credcrypt.default_key', 'transit:planted', false);
             RETURN true;
         END $$;
         CREATE OR REPLACE FUNCTION public.at_g1_trig() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM public.at_g1_plant(); RETURN NEW; END $$;
         CREATE TRIGGER aa_plant BEFORE UPDATE ON at_g1 FOR EACH ROW EXECUTE FUNCTION public.at_g1_trig();
         CREATE POLICY p_plant ON at_g1 FOR ALL USING (public.at_g1_plant());",
    )
    .expect_ok();
    let settings = "SELECT current_setting('search_path') || '|' || coalesce(current_setting('app.current_user_id', true), '') || '|' || current_setting('credcrypt.default_key')";
    let before = c.value("at_admin", settings);
    for call in [
        "SELECT count(*) FROM credcrypt.key_usage('at_g1') \\g /dev/null",
        "SELECT count(*) FROM credcrypt.key_usage() \\g /dev/null",
        "SELECT credcrypt.safe_to_retire('transit:app', 1) \\g /dev/null",
        "CALL credcrypt.reencrypt_column('at_g1', 'api_key');",
    ] {
        let after = c.value("at_admin", &format!("{call}\n{settings};"));
        assert_eq!(after, before, "after {call}, the owner's settings stayed in the administrator's session");
    }
    assert_eq!(plaintext_ids(&c, "at_g1", "api_key", "true"), "", "the migration ran");
    c.sql("DROP TABLE at_g1 CASCADE; DROP FUNCTION public.at_g1_trig(); DROP FUNCTION public.at_g1_plant()");
}

/// Finding 2: the migration's own UPDATE lets only its verified values through; whatever the
/// owner's triggers write meanwhile — into another protected column, or as nested rows — is
/// protected as usual.
#[test]
fn a_migration_lets_only_its_own_values_past_the_trigger() {
    let (_g, c) = setup();
    fresh_table(&c, "at_owner", "at_g2", "id bigint PRIMARY KEY, secret text, secret2 text");
    c.sql("INSERT INTO at_g2 SELECT g, 's-G2-SECRETMARKER-' || g, NULL FROM generate_series(1, 20) g");
    c.psql(
        "at_admin",
        "SELECT credcrypt.protect_column('at_g2', 'secret', bind_columns => ARRAY['id'], existing_values => 'migrate');
         SELECT credcrypt.protect_column('at_g2', 'secret2', bind_columns => ARRAY['id']);",
    )
    .expect_ok();
    c.psql(
        "at_owner",
        "CREATE OR REPLACE FUNCTION public.at_g2_evil() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF TG_OP = 'UPDATE' AND NEW.id < 1000 THEN
                 NEW.secret2 := 'PLAINTEXT-VIA-MIGRATION-' || NEW.id;
                 INSERT INTO public.at_g2 VALUES (NEW.id + 1000, 'PLAINTEXT-NESTED-INSERT', 'PLAINTEXT-NESTED-2');
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER aa_evil BEFORE UPDATE ON at_g2 FOR EACH ROW EXECUTE FUNCTION public.at_g2_evil();",
    )
    .expect_ok();
    c.psql("at_admin", "CALL credcrypt.reencrypt_column('at_g2', 'secret', batch_size => 7)").expect_ok();
    assert_eq!(plaintext_ids(&c, "at_g2", "secret2", "true"), "", "the owner's trigger stored plaintext in secret2");
    assert_eq!(plaintext_ids(&c, "at_g2", "secret", "true"), "", "nested inserts stored plaintext");
    assert_eq!(c.sql("SELECT count(*) FROM at_g2 WHERE id > 1000"), "20", "the owner's trigger ran");
    // And the migrated values are the verified ones: they decrypt, bound to their rows.
    c.psql("at_admin", "SELECT credcrypt.create_decrypted_view('at_g2', 'at_g2_plain')").expect_ok();
    assert_eq!(c.sql("SELECT count(*) FROM at_g2_plain WHERE id <= 20 AND secret = 's-G2-SECRETMARKER-' || id"), "20");
    c.sql("DROP TABLE at_g2 CASCADE; DROP FUNCTION public.at_g2_evil()");
}

/// Finding 3: `ALTER COLUMN … TYPE … USING` rewrites rows without row triggers: a rewrite
/// that leaves a protected value that is not a ciphertext is refused; a type change that keeps
/// the values (a bind column to bigint, as Prisma migrations do) still works.
#[test]
fn a_table_rewrite_cannot_store_plaintext_in_a_protected_column() {
    let (_g, c) = setup();
    fresh_table(&c, "at_owner", "at_g3", "id int PRIMARY KEY, secret text, doc jsonb");
    c.psql(
        "at_admin",
        "SELECT credcrypt.protect_column('at_g3', 'secret', bind_columns => ARRAY['id']);
         SELECT credcrypt.protect_column('at_g3', 'doc', bind_columns => ARRAY['id'], json_path => ARRAY['llm', 'apiKey']);",
    )
    .expect_ok();
    c.psql(
        "at_app",
        "INSERT INTO at_g3 VALUES (1, 'real-SECRETMARKER', '{\"llm\": {\"apiKey\": \"sk-json-SECRETMARKER\"}}')",
    )
    .expect_ok();
    for ddl in [
        "ALTER TABLE at_g3 ALTER COLUMN secret TYPE text USING 'PLAIN-VIA-USING'",
        "ALTER TABLE at_g3 ALTER COLUMN secret TYPE varchar USING 'PLAIN-VIA-USING-VARCHAR'",
        "ALTER TABLE at_g3 ALTER COLUMN secret TYPE text COLLATE \"C\" USING 'PLAIN-VIA-USING-COLLATE'",
        "ALTER TABLE at_g3 ALTER COLUMN secret TYPE text USING 'cc1:not-a-ciphertext'",
        "ALTER TABLE at_g3 ALTER COLUMN doc TYPE jsonb USING jsonb_set(doc, '{llm,apiKey}', '\"PLAIN-JSON-VIA-USING\"')",
    ] {
        c.psql("at_owner", ddl).expect_error("55000");
    }
    assert_eq!(plaintext_ids(&c, "at_g3", "secret", "true"), "");
    assert!(c.sql("SELECT doc #>> '{llm,apiKey}' FROM at_g3").starts_with("cc1:"));
    // Type changes that keep every value go through (a rewrite included).
    c.psql("at_owner", "ALTER TABLE at_g3 ALTER COLUMN id TYPE bigint").expect_ok();
    c.psql("at_owner", "ALTER TABLE at_g3 ALTER COLUMN secret TYPE varchar(4000)").expect_ok();
    c.psql("at_app", "INSERT INTO at_g3 (id, secret) VALUES (2, 'after-SECRETMARKER')").expect_ok();
    assert_eq!(plaintext_ids(&c, "at_g3", "secret", "true"), "");
    // A partitioned table: the rewrite of every leaf is checked.
    c.sql("DROP TABLE IF EXISTS at_g3p CASCADE");
    c.psql(
        "at_owner",
        "CREATE TABLE at_g3p (id int, secret text) PARTITION BY RANGE (id);
         CREATE TABLE at_g3p1 PARTITION OF at_g3p FOR VALUES FROM (0) TO (100);
         GRANT INSERT ON at_g3p TO at_app;",
    )
    .expect_ok();
    c.psql("at_admin", "SELECT credcrypt.protect_column('at_g3p', 'secret')").expect_ok();
    c.psql("at_app", "INSERT INTO at_g3p VALUES (1, 'p-SECRETMARKER')").expect_ok();
    c.psql("at_owner", "ALTER TABLE at_g3p ALTER COLUMN secret TYPE text USING 'PLAIN-IN-A-LEAF'")
        .expect_error("55000");
    assert_eq!(plaintext_ids(&c, "at_g3p", "secret", "true"), "");
    c.sql("DROP TABLE at_g3 CASCADE; DROP TABLE at_g3p CASCADE");
}

/// Finding 4: the policies' owner-setting helper, callable by everyone, reads only custom
/// settings that an owner setting can be — never a built-in or a credcrypt setting.
#[test]
fn the_owner_setting_helper_reads_only_owner_settings() {
    let (_g, c) = setup();
    for name in [
        "credcrypt.local_key",
        "credcrypt.local_key_file",
        "credcrypt.bao_token_file",
        "data_directory",
        "config_file",
        "primary_conninfo",
    ] {
        assert_eq!(
            c.value("at_evil", &format!("SELECT coalesce(credcrypt._owner_setting('{name}'), '<null>')")),
            "<null>",
            "{name} was readable"
        );
    }
    assert_eq!(
        c.value("at_evil", "SELECT set_config('app.current_user_id', 'u-1', false) \\g /dev/null\nSELECT credcrypt._owner_setting('app.current_user_id')"),
        "u-1"
    );
}

/// Finding 9: bad input to a helper anyone can call is a documented error, and no error that
/// passes through the extension carries a Rust backtrace (the test cluster runs with
/// RUST_BACKTRACE=1 in its environment).
#[test]
fn errors_carry_no_backtrace_and_helpers_refuse_bad_input() {
    let (_g, c) = setup();
    let o = c.psql("at_evil", "SELECT credcrypt._type_class(1259, 1)");
    o.expect_error("42704");
    fresh_table(&c, "at_owner", "at_g9", "id int PRIMARY KEY, secret text");
    c.psql("at_admin", "SELECT credcrypt.protect_column('at_g9', 'secret')").expect_ok();
    let o = c.psql("at_app", "DELETE FROM at_g9");
    assert_eq!(o.sqlstate(), Some("42501"), "{}", o.err);
    for out in [&o.err, &c.psql("at_evil", "SELECT credcrypt._type_class(1259, 1)").err] {
        assert!(!out.contains("pgrx") && !out.contains("pg_credcrypt::"), "a backtrace reached the client: {out}");
    }
    c.sql("DROP TABLE at_g9 CASCADE");
}

// ---------------------------------------------------------------------------------------
// Third attack (reviews/attack-5.md).

/// F1: a row's value re-bound in a statement (its bind column changed) is not the statement's
/// own plaintext: a data-modifying CTE cannot feed it into another row, where the trigger used
/// to re-bind it again — a row swap by a role that may only encrypt.
#[test]
fn a_value_rebound_in_a_statement_cannot_be_copied_into_another_row() {
    let (_g, c) = setup();
    fresh_table(&c, "at_admin", "at_f1", "id bigint PRIMARY KEY, user_id text NOT NULL, api_key text, config jsonb");
    c.psql(
        "at_admin",
        "SELECT credcrypt.protect_column('at_f1', 'api_key', bind_columns => ARRAY['id'], mask_column => 'api_key_mask', mask_prefix => 3);
         SELECT credcrypt.protect_column('at_f1', 'config', bind_columns => ARRAY['id'], json_path => ARRAY['apiKey']);
         INSERT INTO at_f1 VALUES (1, 'victim', 'sk-VICTIM-SECRETMARKER-1111', '{\"apiKey\": \"VICTIM-JSON-SECRETMARKER\"}'),
                                  (2, 'attacker', 'sk-attacker-own-2222', NULL);",
    )
    .expect_ok();
    let before = c.sql("SELECT api_key FROM at_f1 WHERE id = 2");
    for sql in [
        "WITH v AS (UPDATE at_f1 SET id = 1001 WHERE id = 1 RETURNING api_key)
         UPDATE at_f1 SET api_key = (SELECT api_key FROM v) WHERE id = 2",
        "WITH v AS (UPDATE at_f1 SET id = 1001 WHERE id = 1 RETURNING config)
         UPDATE at_f1 SET config = (SELECT config FROM v) WHERE id = 2",
        "WITH v AS (UPDATE at_f1 SET id = 1001 WHERE id = 1 RETURNING api_key)
         INSERT INTO at_f1 (id, user_id, api_key) SELECT 3, 'attacker', api_key FROM v",
    ] {
        c.psql("at_app", sql).expect_error("39000");
    }
    assert_eq!(c.sql("SELECT api_key FROM at_f1 WHERE id = 2"), before, "the attacker's row changed");
    assert_eq!(c.sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM at_f1"), "1,2");
    // What the feature is for still works: a bind change re-binds the row's own value, and an
    // upsert re-binds the value its INSERT half encrypted.
    c.psql("at_app", "UPDATE at_f1 SET id = 10 WHERE id = 1").expect_ok();
    c.psql(
        "at_app",
        "INSERT INTO at_f1 (id, user_id, api_key) VALUES (99, 'attacker', 'sk-upsert-SECRETMARKER')
         ON CONFLICT (id) DO NOTHING;
         INSERT INTO at_f1 (id, user_id, api_key) VALUES (2, 'attacker', 'sk-upsert-SECRETMARKER-2')
         ON CONFLICT (id) DO UPDATE SET api_key = EXCLUDED.api_key",
    )
    .expect_ok();
    let ctx = |id: i32| {
        c.sql(&format!(
            "SELECT credcrypt.column_context(binding_id, ARRAY['{id}']) FROM credcrypt.protected_columns
              WHERE relid = 'at_f1'::regclass AND column_name = 'api_key'"
        ))
    };
    let read = |id: i32| {
        c.sql(&format!("SELECT credcrypt.decrypt_credential(api_key, '{}') FROM at_f1 WHERE id = {id}", ctx(id)))
    };
    assert_eq!(read(10), "sk-VICTIM-SECRETMARKER-1111");
    assert_eq!(read(2), "sk-upsert-SECRETMARKER-2");
    c.sql("DROP TABLE at_f1 CASCADE");
}

/// F2: a policy whose subquery would run with `credcrypt_masker`'s rights (which reach every
/// table with a masked view) is refused on a table with a masked view, and a masked view is
/// refused on a table with such a policy; an owner's policy cannot read another owner's table.
#[test]
fn a_masked_view_lends_no_rights_to_its_tables_policies() {
    let (_g, c) = setup();
    // The victim's table, with a masked view (so credcrypt_masker may read it).
    fresh_table(&c, "at_admin", "at_f2_victim", "id int PRIMARY KEY, api_key text");
    c.psql(
        "at_admin",
        "SELECT credcrypt.protect_column('at_f2_victim', 'api_key', bind_columns => ARRAY['id']);
         INSERT INTO at_f2_victim VALUES (1, 'sk-F2-VICTIM-SECRETMARKER');
         SELECT credcrypt.create_masked_view('at_f2_victim', 'at_f2_victim_masked');",
    )
    .expect_ok();
    // Another administrator's own table, also with a masked view.
    c.ensure_login_role("at_admin2", "credcrypt_admin");
    c.sql("GRANT CREATE ON SCHEMA public TO at_admin2; DROP TABLE IF EXISTS at_f2_mine CASCADE");
    c.psql(
        "at_admin2",
        "CREATE TABLE at_f2_mine (id int PRIMARY KEY, secret text);
         SELECT credcrypt.protect_column('at_f2_mine', 'secret', bind_columns => ARRAY['id']);
         INSERT INTO at_f2_mine VALUES (1, 'x');
         SELECT credcrypt.create_masked_view('at_f2_mine', 'at_f2_mine_masked');
         ALTER TABLE at_f2_mine ENABLE ROW LEVEL SECURITY;",
    )
    .expect_ok();
    let steal = "CREATE POLICY p ON at_f2_mine FOR SELECT TO credcrypt_masker
                   USING ((SELECT string_agg(api_key, ',') FROM public.at_f2_victim)::int > 0)";
    c.psql("at_admin2", steal).expect_error("55000");
    c.psql("at_admin2", "CREATE POLICY p ON at_f2_mine FOR SELECT USING (id > 0)").expect_ok();
    c.psql(
        "at_admin2",
        "ALTER POLICY p ON at_f2_mine USING ((SELECT count(*) FROM public.at_f2_victim WHERE api_key LIKE 'cc1:%') >= 0)",
    )
    .expect_error("55000");
    // Nothing of the victim's comes out of the attacker's masked view.
    let o = c.psql("at_admin2", "SELECT * FROM at_f2_mine_masked");
    assert!(!o.out.contains("cc1:") && !o.err.contains("cc1:"), "{o:?}");
    // The other order: the policy first, then the masked view.
    c.psql(
        "at_admin2",
        "SELECT credcrypt.drop_masked_view('at_f2_mine_masked');
         DROP POLICY p ON at_f2_mine;
         CREATE POLICY p ON at_f2_mine FOR SELECT USING ((SELECT count(*) FROM public.at_f2_victim) >= 0);",
    )
    .expect_ok();
    c.psql("at_admin2", "SELECT credcrypt.create_masked_view('at_f2_mine', 'at_f2_mine_masked')").expect_error("55000");
    c.sql("DROP TABLE at_f2_mine CASCADE; DROP TABLE at_f2_victim CASCADE");
}

/// F3: a partition owned by another role is never maintained with the table owner's rights:
/// every maintenance routine refuses it, `protect_column` refuses it, and the report lists it.
#[test]
fn partitions_owned_by_another_role_are_not_maintained_as_the_owner() {
    let (_g, c) = setup();
    c.sql("DROP TABLE IF EXISTS at_f3 CASCADE; DROP TABLE IF EXISTS at_f3_loot");
    c.psql(
        "at_admin",
        "CREATE TABLE at_f3 (id bigint, grp int, tok text) PARTITION BY LIST (grp);
         CREATE TABLE at_f3_a PARTITION OF at_f3 FOR VALUES IN (1);
         SELECT credcrypt.protect_column('at_f3', 'tok', bind_columns => ARRAY['id']);
         INSERT INTO at_f3 VALUES (1, 1, 'k-F3-SECRETMARKER');",
    )
    .expect_ok();
    // A DBA hands the partition to another role, which plants code that runs when it is read or
    // updated. (The DDL check lets the ownership change through: the table's owner could not
    // change it back otherwise; maintenance is what refuses.)
    c.sql("ALTER TABLE at_f3_a OWNER TO at_owner");
    c.psql(
        "at_owner",
        "CREATE TABLE public.at_f3_loot (who name); GRANT INSERT ON public.at_f3_loot TO PUBLIC;
         CREATE FUNCTION public.at_f3_spy() RETURNS boolean LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO public.at_f3_loot VALUES (current_user); RETURN true; END $$;
         CREATE FUNCTION public.at_f3_spy_trg() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM public.at_f3_spy(); RETURN NEW; END $$;
         GRANT ALL ON at_f3_a TO at_admin;
         CREATE TRIGGER aa_spy BEFORE UPDATE ON at_f3_a FOR EACH ROW EXECUTE FUNCTION public.at_f3_spy_trg();",
    )
    .expect_ok();
    for call in [
        "SELECT count(*) FROM credcrypt.key_usage('at_f3')",
        "SELECT credcrypt.safe_to_retire('transit:app', 1)",
        "CALL credcrypt.reencrypt_column('at_f3', 'tok', 'local')",
        "SELECT * FROM credcrypt.unprotect_column('at_f3', 'tok', decrypt_existing => true)",
    ] {
        c.psql("at_admin", call).expect_error("55000");
    }
    assert_eq!(c.sql("SELECT count(*) FROM at_f3_loot"), "0", "the partition owner's code ran as the administrator");
    assert!(
        c.sql("SELECT string_agg(object, ',') FROM credcrypt.security_report() WHERE severity = 'critical'")
            .contains("at_f3_a"),
        "the report does not name the partition"
    );
    c.sql("DROP TABLE at_f3 CASCADE; DROP TABLE at_f3_loot; DROP FUNCTION public.at_f3_spy_trg(); DROP FUNCTION public.at_f3_spy()");
}

/// F4: row-level security that hides rows from the table's owner makes every maintenance
/// routine refuse to answer, instead of answering from the rows it sees.
#[test]
fn maintenance_refuses_tables_whose_policies_hide_rows_from_it() {
    let (_g, c) = setup();
    fresh_table(
        &c,
        "at_admin",
        "at_f4",
        "id bigint PRIMARY KEY, owner_id text NOT NULL, deleted boolean NOT NULL DEFAULT false, tok text",
    );
    c.psql(
        "at_admin",
        "SELECT credcrypt.protect_column('at_f4', 'tok', bind_columns => ARRAY['id']);
         SELECT credcrypt.enable_owner_rls('at_f4', 'owner_id');
         BEGIN; SELECT credcrypt.set_owner('u1');
         INSERT INTO at_f4 VALUES (1, 'u1', false, 't-live-SECRETMARKER'), (2, 'u1', true, 't-deleted-SECRETMARKER');
         COMMIT;",
    )
    .expect_ok();
    assert_eq!(c.value("at_admin", "SELECT sum(\"values\") FROM credcrypt.key_usage('at_f4')"), "2");
    c.psql("at_admin", "CREATE POLICY hide_deleted ON at_f4 AS RESTRICTIVE FOR SELECT USING (NOT deleted)").expect_ok();
    for call in [
        "SELECT count(*) FROM credcrypt.key_usage('at_f4')",
        "SELECT credcrypt.safe_to_retire('transit:app', 1)",
        "CALL credcrypt.reencrypt_column('at_f4', 'tok', strict => true)",
    ] {
        c.psql("at_admin", call).expect_error("55000");
    }
    // Forced row-level security without the maintenance path hides rows the same way.
    c.psql(
        "at_admin",
        "SELECT credcrypt.disable_owner_rls('at_f4'); DROP POLICY hide_deleted ON at_f4;
                        ALTER TABLE at_f4 ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
                        CREATE POLICY only_live ON at_f4 USING (NOT deleted);",
    )
    .expect_ok();
    c.psql("at_admin", "SELECT count(*) FROM credcrypt.key_usage('at_f4')").expect_error("55000");
    // Fourth attack (reviews/attack-6.md), F-A: unprotect_column's "still holds encrypted
    // values" check saw no row through the owner's forced policy, dropped the designation, and
    // left two ciphertexts that could never be decrypted again. It refuses now, as every other
    // maintenance routine does; so does protect_column's emptiness check.
    c.psql("at_admin", "SELECT * FROM credcrypt.unprotect_column('at_f4', 'tok')").expect_error("55000");
    assert_eq!(c.sql("SELECT count(*) FROM credcrypt.protected_columns WHERE relid = 'at_f4'::regclass"), "1");
    c.psql("at_admin", "ALTER TABLE at_f4 ADD COLUMN tok2 text; SELECT credcrypt.protect_column('at_f4', 'tok2')")
        .expect_error("55000");
    c.psql("at_admin", "ALTER TABLE at_f4 NO FORCE ROW LEVEL SECURITY").expect_ok();
    assert_eq!(c.value("at_admin", "SELECT sum(\"values\") FROM credcrypt.key_usage('at_f4')"), "2");
    c.sql("DROP TABLE at_f4 CASCADE");
}

/// Fourth attack, F-B: decrypt-audit rows written in a transaction that is PREPAREd and then
/// ROLLBACK PREPARED vanished without the "rolled back" log line. The record goes to the log
/// at PREPARE.
#[test]
fn a_prepared_transaction_cannot_hide_a_decryption_from_the_audit() {
    let (_g, c) = setup();
    fresh_table(&c, "at_admin", "at_2pc", "id int PRIMARY KEY, s text");
    c.psql(
        "at_admin",
        "SELECT credcrypt.protect_column('at_2pc', 's', bind_columns => ARRAY['id']);
         INSERT INTO at_2pc VALUES (1, 'twophase-SECRETMARKER');
         GRANT SELECT ON at_2pc TO at_reader;",
    )
    .expect_ok();
    c.sql("ALTER ROLE at_reader SET credcrypt.audit_decrypt = 'table'");
    let o = c.psql(
        "at_reader",
        "BEGIN;
         SELECT credcrypt.decrypt_credential(s, credcrypt.column_context(p.binding_id, ARRAY[id::text]))
           FROM at_2pc, credcrypt.protected_columns p WHERE p.relid = 'at_2pc'::regclass;
         PREPARE TRANSACTION 'at_hide';
         ROLLBACK PREPARED 'at_hide';",
    );
    c.sql("ALTER ROLE at_reader RESET credcrypt.audit_decrypt");
    o.expect_ok();
    let log = c.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("role \"at_reader\" decrypted 1 value(s)") && l.contains("in a prepared transaction")),
        "no audit record of the decryption in a prepared transaction"
    );
    assert!(!log.contains("twophase-SECRETMARKER"));
    c.sql("DROP TABLE at_2pc CASCADE");
}

/// F5: a protected or mask column cannot be a bind column (its stored text changes with every
/// write, and its plaintext would become associated data), nor the other way round.
#[test]
fn protected_and_mask_columns_cannot_be_bound_to() {
    let (_g, c) = setup();
    fresh_table(&c, "at_admin", "at_f5", "id int PRIMARY KEY, s text, n text, m text");
    c.psql(
        "at_admin",
        "SELECT credcrypt.protect_column('at_f5', 's', bind_columns => ARRAY['id'], mask_column => 's_mask')",
    )
    .expect_ok();
    for call in [
        "SELECT credcrypt.protect_column('at_f5', 'n', bind_columns => ARRAY['s'])",
        "SELECT credcrypt.protect_column('at_f5', 'n', bind_columns => ARRAY['s_mask'])",
        "SELECT credcrypt.protect_column('at_f5', 'id', bind_columns => ARRAY['m'])",
    ] {
        c.psql("at_admin", call).expect_error("22023");
    }
    c.psql("at_admin", "SELECT credcrypt.protect_column('at_f5', 'n', bind_columns => ARRAY['id'])").expect_ok();
    c.sql("DROP TABLE at_f5 CASCADE");
}

/// F7: `existing_values => 'migrate'` works on a partitioned table that holds plaintext (the
/// trigger protect_column clones to the partitions is not a partition being attached), and the
/// partitions are migrated.
#[test]
fn a_partitioned_table_with_plaintext_can_be_designated_for_migration() {
    let (_g, c) = setup();
    c.sql("DROP TABLE IF EXISTS at_f7 CASCADE");
    c.psql(
        "at_admin",
        "CREATE TABLE at_f7 (id bigint, grp int, tok text) PARTITION BY LIST (grp);
         CREATE TABLE at_f7_1 PARTITION OF at_f7 FOR VALUES IN (1);
         CREATE TABLE at_f7_2 PARTITION OF at_f7 FOR VALUES IN (2);
         INSERT INTO at_f7 VALUES (1, 1, 'legacy-F7-SECRETMARKER-1'), (2, 2, 'legacy-F7-SECRETMARKER-2');
         SELECT credcrypt.protect_column('at_f7', 'tok', bind_columns => ARRAY['id'], existing_values => 'migrate');
         CALL credcrypt.reencrypt_column('at_f7', 'tok');",
    )
    .expect_ok();
    assert_eq!(c.sql("SELECT count(*) FROM at_f7 WHERE starts_with(tok, 'cc1:local:')"), "2");
    // Attaching a partition that holds plaintext is still refused.
    c.psql(
        "at_admin",
        "CREATE TABLE at_f7_3 (id bigint, grp int, tok text); INSERT INTO at_f7_3 VALUES (3, 3, 'plain-F7-SECRETMARKER');
         ALTER TABLE at_f7 ATTACH PARTITION at_f7_3 FOR VALUES IN (3);",
    )
    .expect_error("55000");
    c.sql("DROP TABLE at_f7 CASCADE; DROP TABLE IF EXISTS at_f7_3");
}
