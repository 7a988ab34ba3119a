//! Upgrades in place.
//!
//! - `the_upgrade_scripts_reach_exactly_a_fresh_install` (always): for every released version,
//!   in a database of its own, the extension as released (its frozen
//!   `sql/pg_credcrypt--<version>.sql`, served by the current library — which proves that
//!   every C symbol the old SQL names still exists), then `ALTER EXTENSION … UPDATE`; in
//!   another, a fresh install of the current version. A normalized listing of both catalogs
//!   must be equal: this is the schema-drift check — a change to the SQL surface without an
//!   upgrade script fails here, printing what differs.
//! - `upgrade_from_a_release_with_live_data` (`--ignored`; scripts/test.sh runs it once per
//!   release in sql/releases, each on a cluster of its own): the release's *library* and SQL,
//!   populated with every kind of state, then the current library, a restart and
//!   `ALTER EXTENSION … UPDATE`; every value reads back and everything keeps working as before.

use std::path::{Path, PathBuf};

use credcrypt_blackbox::Cluster;

/// The released versions, oldest first, and the current one.
const RELEASED: &[&str] = &["0.1.0", "0.2.0"];
const CURRENT: &str = env!("CARGO_PKG_VERSION");

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

fn sharedir() -> PathBuf {
    let bin = std::env::var("CC_PGBIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    let out = std::process::Command::new(format!("{bin}/pg_config")).arg("--sharedir").output().expect("pg_config");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Puts the frozen install scripts of released versions beside the current one (cargo pgrx
/// install only copies upgrade scripts).
pub fn install_frozen_scripts() {
    for v in RELEASED {
        let name = format!("pg_credcrypt--{v}.sql");
        let dest = sharedir().join("extension").join(&name);
        std::fs::copy(repo(&format!("sql/{name}")), &dest)
            .unwrap_or_else(|e| panic!("copy {name} to {}: {e}", dest.display()));
    }
}

/// A normalized listing of everything the extension owns or defines: members, routines
/// (signature, kind, volatility, strictness, security, parallel safety, result, settings, ACL,
/// C symbol or body, comment), tables (columns in order, types, defaults, constraints,
/// indexes, triggers, ACLs), views, event triggers, role memberships, dump registrations.
pub const CATALOG_LISTING: &str = r#"
WITH ext AS (SELECT oid, extconfig FROM pg_extension WHERE extname = 'pg_credcrypt'),
acl(obj, a) AS (
    SELECT p.oid::regprocedure::text, p.proacl FROM pg_proc p WHERE p.pronamespace = 'credcrypt'::regnamespace
    UNION ALL SELECT c.oid::regclass::text, c.relacl FROM pg_class c WHERE c.relnamespace = 'credcrypt'::regnamespace),
lines(l) AS (
    SELECT 'member ' || pg_describe_object(d.classid, d.objid, d.objsubid)
      FROM pg_depend d, ext WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
    UNION ALL
    SELECT 'routine ' || p.oid::regprocedure || ' kind=' || p.prokind::text || ' volatile=' || p.provolatile::text
           || ' strict=' || p.proisstrict || ' secdef=' || p.prosecdef || ' parallel=' || p.proparallel::text
           || ' leakproof=' || p.proleakproof || ' returns=' || coalesce(pg_get_function_result(p.oid), '')
           || ' args=' || pg_get_function_arguments(p.oid) || ' config=' || coalesce(p.proconfig::text, '')
           || ' language=' || l.lanname
           || ' body=' || CASE WHEN l.lanname = 'c' THEN p.prosrc ELSE pg_get_functiondef(p.oid) END
           || ' comment=' || coalesce(obj_description(p.oid, 'pg_proc'), '')
      FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang WHERE p.pronamespace = 'credcrypt'::regnamespace
    UNION ALL
    SELECT 'acl ' || a.obj || ' ' || coalesce((SELECT string_agg(coalesce(r.rolname, 'PUBLIC') || ':' || x.privilege_type || CASE WHEN x.is_grantable THEN '*' ELSE '' END, ',' ORDER BY 1)
                                                  FROM aclexplode(a.a) x LEFT JOIN pg_roles r ON r.oid = x.grantee), 'default')
      FROM acl a
    UNION ALL
    SELECT 'relation ' || c.relname || ' kind=' || c.relkind::text || ' rls=' || c.relrowsecurity || ' comment=' || coalesce(obj_description(c.oid, 'pg_class'), '')
      FROM pg_class c WHERE c.relnamespace = 'credcrypt'::regnamespace AND c.relkind IN ('r', 'v', 'S')
    UNION ALL
    SELECT 'column ' || c.relname || ' #' || row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) || ' ' || a.attname
           || ' ' || format_type(a.atttypid, a.atttypmod) || ' notnull=' || a.attnotnull
           || ' default=' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '') || ' identity=' || a.attidentity::text
           || ' comment=' || coalesce(col_description(c.oid, a.attnum), '')
      FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
     WHERE c.relnamespace = 'credcrypt'::regnamespace AND c.relkind IN ('r', 'v')
    UNION ALL
    SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
      FROM pg_constraint WHERE connamespace = 'credcrypt'::regnamespace
    UNION ALL
    SELECT 'index ' || pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
     WHERE c.relnamespace = 'credcrypt'::regnamespace
    UNION ALL
    SELECT 'view ' || c.relname || ' ' || pg_get_viewdef(c.oid) FROM pg_class c
     WHERE c.relnamespace = 'credcrypt'::regnamespace AND c.relkind = 'v'
    UNION ALL
    SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' enabled=' || t.tgenabled::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
     WHERE c.relnamespace = 'credcrypt'::regnamespace AND NOT t.tgisinternal
    UNION ALL
    SELECT 'event trigger ' || evtname || ' on ' || evtevent || ' ' || evtfoid::regproc || ' tags=' || coalesce(evttags::text, '') || ' enabled=' || evtenabled::text
      FROM pg_event_trigger WHERE evtfoid IN (SELECT oid FROM pg_proc WHERE pronamespace = 'credcrypt'::regnamespace)
    UNION ALL
    SELECT 'role ' || r.rolname || ' login=' || r.rolcanlogin || ' inherit=' || r.rolinherit || ' comment=' || coalesce(shobj_description(r.oid, 'pg_authid'), '')
      FROM pg_roles r WHERE r.rolname LIKE 'credcrypt\_%'
    UNION ALL
    SELECT 'membership ' || m.rolname || ' > ' || r.rolname FROM pg_auth_members am
      JOIN pg_roles r ON r.oid = am.member JOIN pg_roles m ON m.oid = am.roleid
     WHERE m.rolname LIKE 'credcrypt\_%' AND r.rolname LIKE 'credcrypt\_%'
    UNION ALL
    SELECT 'dump ' || x::regclass FROM ext, unnest(ext.extconfig) x
    UNION ALL
    SELECT 'schema ' || n.nspname || ' ' || coalesce(obj_description(n.oid, 'pg_namespace'), '') || ' ' || coalesce(n.nspacl::text, '')
      FROM pg_namespace n WHERE n.nspname = 'credcrypt')
SELECT l FROM lines ORDER BY l COLLATE "C";
"#;

fn listing(c: &Cluster, db: &str) -> Vec<String> {
    c.psql_in(db, "postgres", CATALOG_LISTING).expect_ok().lines().map(str::to_owned).collect()
}

/// Lines of `a` not in `b` and of `b` not in `a`.
fn diff(a: &[String], b: &[String]) -> String {
    let only_a: Vec<&String> = a.iter().filter(|l| !b.contains(l)).collect();
    let only_b: Vec<&String> = b.iter().filter(|l| !a.contains(l)).collect();
    let mut out = String::new();
    for l in only_a {
        out.push_str(&format!("- upgraded only: {l}\n"));
    }
    for l in only_b {
        out.push_str(&format!("+ fresh only:    {l}\n"));
    }
    out
}

#[test]
fn the_upgrade_scripts_reach_exactly_a_fresh_install() {
    let c = Cluster::from_env();
    install_frozen_scripts();
    c.client("dropdb", &["--if-exists", "cc_up_fresh"]);
    assert!(c.client("createdb", &["cc_up_fresh"]).0);
    c.psql_in("cc_up_fresh", "postgres", "CREATE EXTENSION pg_credcrypt").expect_ok();
    let fresh = listing(&c, "cc_up_fresh");
    assert!(fresh.len() > 150, "the listing is too short to mean anything: {}", fresh.len());
    // From every released version: its frozen install script (served by the current library,
    // which proves every C symbol it names still exists), then the update path to this one.
    for from in RELEASED {
        let db = format!("cc_up_from_{}", from.replace('.', "_"));
        c.client("dropdb", &["--if-exists", &db]);
        assert!(c.client("createdb", &[&db]).0);
        c.psql_in(&db, "postgres", &format!("CREATE EXTENSION pg_credcrypt VERSION '{from}'")).expect_ok();
        let paths = c
            .psql_in(
                &db,
                "postgres",
                &format!(
                    "SELECT path FROM pg_extension_update_paths('pg_credcrypt') WHERE source = '{from}' AND target = '{CURRENT}'"
                ),
            )
            .expect_ok()
            .to_owned();
        assert!(!paths.is_empty(), "no update path from {from} to {CURRENT}");
        c.psql_in(&db, "postgres", "ALTER EXTENSION pg_credcrypt UPDATE").expect_ok();
        assert_eq!(
            c.psql_in(&db, "postgres", "SELECT extversion FROM pg_extension WHERE extname = 'pg_credcrypt'")
                .expect_ok(),
            CURRENT
        );
        let d = diff(&listing(&c, &db), &fresh);
        let last = RELEASED.last().copied().unwrap_or(from);
        assert!(
            d.is_empty(),
            "the extension updated from {from} differs from a fresh install of {CURRENT} — write the change into sql/pg_credcrypt--{last}--{CURRENT}.sql:\n{d}"
        );
        c.client("dropdb", &[&db]);
    }
    c.client("dropdb", &["cc_up_fresh"]);
}

/// Copies a `cargo pgrx package` tree (`<pkg>/usr/…`) over the installed files.
fn install_package(pkg: &Path) {
    let st = std::process::Command::new("cp").arg("-a").arg(pkg.join("usr")).arg("/").status().expect("cp");
    assert!(st.success(), "installing {} failed", pkg.display());
}

fn pg_ctl(c: &Cluster, action: &str) {
    let bin = std::env::var("CC_PGBIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    let st = credcrypt_blackbox::as_postgres(format!("{bin}/pg_ctl"))
        .arg("-D")
        .arg(&c.data)
        .args(["-m", "fast", "-w", "-l"])
        .arg(&c.log)
        .arg(action)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("pg_ctl");
    assert!(st.success(), "pg_ctl {action} failed");
}

/// The values of `table.col` (bound to `id`) with ids up to `max_id`, decrypted as a
/// superuser, in id order.
fn values(c: &Cluster, table: &str, col: &str, max_id: usize) -> String {
    c.sql(&format!(
        "SELECT string_agg(credcrypt.decrypt_credential({col}, credcrypt.column_context(p.binding_id, ARRAY[t.id::text])), ',' ORDER BY t.id)
           FROM {table} t, credcrypt.protected_columns p
          WHERE p.relid = '{table}'::regclass AND p.column_name = '{col}' AND t.id <= {max_id}"
    ))
}

#[test]
#[ignore = "needs a cluster of its own with a released library installed: scripts/test.sh runs it"]
fn upgrade_from_a_release_with_live_data() {
    let c = Cluster::from_env();
    // scripts/test.sh installed the package of release CC_UPGRADE_FROM before starting this
    // cluster.
    let new_pkg = PathBuf::from(std::env::var("CC_UPGRADE_NEW_PKG").expect("CC_UPGRADE_NEW_PKG"));
    let from = std::env::var("CC_UPGRADE_FROM").expect("CC_UPGRADE_FROM");
    assert!(RELEASED.contains(&from.as_str()), "{from} is not a release");
    let from_0_1 = from == "0.1.0";
    assert!(new_pkg.join("usr").exists());
    assert_eq!(c.sql("SELECT default_version FROM pg_available_extensions WHERE name = 'pg_credcrypt'"), from);
    c.sql("CREATE EXTENSION pg_credcrypt");
    let bao = credcrypt_blackbox::bao::start_for(&c);
    credcrypt_blackbox::bao::point_at(
        &c,
        &bao.addr,
        &format!(
            "credcrypt.bao_token_file = '{}'\ncredcrypt.envelope_max_uses = 4\n",
            c.keys.join("bao.token").display()
        ),
    );
    c.ensure_login_role("up_owner", "credcrypt_admin");
    c.ensure_login_role("up_app", "credcrypt_encryptor, credcrypt_decryptor");
    c.ensure_login_role("up_report", "");
    assert_eq!(c.sql("SELECT extversion FROM pg_extension WHERE extname = 'pg_credcrypt'"), from);
    c.sql("GRANT CREATE ON SCHEMA public TO up_owner; ALTER ROLE up_app SET credcrypt.audit_decrypt = 'table'");
    // The release: every kind of state (with the SQL API every release has).
    c.psql(
        "up_owner",
        "CREATE TABLE up_local (id int PRIMARY KEY, user_id text, api_key text, cfg jsonb);
         SELECT credcrypt.protect_column('up_local', 'api_key', 'local', ARRAY['id'], mask_column => 'api_key_mask');
         SELECT credcrypt.protect_column('up_local', 'cfg', 'local', ARRAY['id'], json_path => ARRAY['k']);
         SELECT credcrypt.create_decrypted_view('up_local', 'up_local_plain');
         SELECT credcrypt.create_masked_view('up_local', 'up_local_masked');
         GRANT SELECT, INSERT, UPDATE ON up_local TO up_app; GRANT SELECT ON up_local_plain TO up_app;
         GRANT SELECT ON up_local_masked TO up_report;
         CREATE TABLE up_transit (id int PRIMARY KEY, secret text);
         SELECT credcrypt.protect_column('up_transit', 'secret', 'transit:app', ARRAY['id']);
         GRANT SELECT, INSERT ON up_transit TO up_app;
         CREATE TABLE up_env (id int PRIMARY KEY, secret text);
         SELECT credcrypt.protect_column('up_env', 'secret', 'envelope:app', ARRAY['id']);
         GRANT SELECT, INSERT ON up_env TO up_app;
         CREATE TABLE up_rls (id int PRIMARY KEY, user_id text NOT NULL, api_key text);
         SELECT credcrypt.protect_column('up_rls', 'api_key', 'local', ARRAY['id']);
         SELECT credcrypt.enable_owner_rls('up_rls', 'user_id');
         SELECT credcrypt.create_decrypted_view('up_rls', 'up_rls_plain');
         GRANT SELECT, INSERT ON up_rls TO up_app; GRANT SELECT ON up_rls_plain TO up_app;
         CREATE TABLE up_done (id int PRIMARY KEY, secret text);
         INSERT INTO up_done SELECT g, 'done-' || g FROM generate_series(1, 50) g;
         SELECT credcrypt.protect_column('up_done', 'secret', 'local', ARRAY['id'], existing_values => 'migrate');
         CALL credcrypt.reencrypt_column('up_done', 'secret');
         CREATE TABLE up_mig (id int PRIMARY KEY, secret text);
         INSERT INTO up_mig SELECT g, 'mig-' || g FROM generate_series(1, 20000) g;
         SELECT credcrypt.protect_column('up_mig', 'secret', 'local', ARRAY['id'], existing_values => 'migrate');",
    )
    .expect_ok();
    c.psql(
        "up_app",
        "INSERT INTO up_local SELECT g, 'u' || g, 'sk-local-' || g || '-a1b2', jsonb_build_object('k', 'json-' || g, 'x', g) FROM generate_series(1, 10) g;
         INSERT INTO up_transit SELECT g, 'transit-' || g FROM generate_series(1, 10) g;
         INSERT INTO up_env SELECT g, 'env-' || g FROM generate_series(1, 20) g;
         BEGIN; SELECT credcrypt.set_owner('alice'); INSERT INTO up_rls VALUES (1, 'alice', 'sk-alice'); COMMIT;
         BEGIN; SELECT credcrypt.set_owner('bob'); INSERT INTO up_rls VALUES (2, 'bob', 'sk-bob'); COMMIT;
         SELECT string_agg(api_key, ',') FROM up_local_plain;",
    )
    .expect_ok();
    assert!(c.sql("SELECT count(*) FROM credcrypt.data_keys").parse::<i64>().unwrap_or(0) >= 5, "several data keys");
    assert!(c.sql("SELECT count(*) FROM credcrypt.decrypt_audit").parse::<i64>().unwrap_or(0) >= 1, "audit rows");
    // An interrupted run: the migration's backend is terminated half way.
    let mut call = std::process::Command::new("psql")
        .args(["-X", "-q", "-h", &c.host, "-p", &c.port, "-U", "up_owner", "-d", "postgres"])
        .args(["-c", "CALL credcrypt.reencrypt_column('up_mig', 'secret', batch_size => 100)"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("psql");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while c.sql("SELECT coalesce(max(done), 0) FROM credcrypt.reencrypt_runs WHERE relid = 'up_mig'::regclass") == "0" {
        assert!(std::time::Instant::now() < deadline, "the migration did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    c.sql("SELECT pg_terminate_backend(backend_pid) FROM credcrypt.reencrypt_runs WHERE relid = 'up_mig'::regclass AND state = 'running'");
    let _ = call.wait();
    let expected = [
        ("up_local", "api_key", 10, (1..=10).map(|g| format!("sk-local-{g}-a1b2")).collect::<Vec<_>>().join(",")),
        ("up_transit", "secret", 10, (1..=10).map(|g| format!("transit-{g}")).collect::<Vec<_>>().join(",")),
        ("up_env", "secret", 20, (1..=20).map(|g| format!("env-{g}")).collect::<Vec<_>>().join(",")),
        ("up_done", "secret", 50, (1..=50).map(|g| format!("done-{g}")).collect::<Vec<_>>().join(",")),
    ];
    for (t, col, n, v) in &expected {
        assert_eq!(&values(&c, t, col, *n), v, "{from}: {t}");
    }
    let keys = "SELECT md5(string_agg(id || wrapped, ',' ORDER BY id)) FROM credcrypt.data_keys";

    // The current library, a restart, and the release's SQL still served by it.
    pg_ctl(&c, "stop");
    install_package(&new_pkg);
    install_frozen_scripts();
    pg_ctl(&c, "start");
    assert_eq!(c.sql("SELECT extversion FROM pg_extension WHERE extname = 'pg_credcrypt'"), from);
    for (t, col, n, v) in &expected {
        assert_eq!(&values(&c, t, col, *n), v, "{from} SQL on the new library: {t}");
    }
    c.psql("up_app", "INSERT INTO up_local (id, user_id, api_key) VALUES (11, 'u11', 'sk-between')").expect_ok();
    assert!(c.sql("SELECT api_key FROM up_local WHERE id = 11").starts_with("cc1:local:"));
    // Administrative functions that need the new SQL say so until the update.
    let o = c.psql("up_owner", "SELECT credcrypt.protect_column('up_local', 'user_id')");
    o.expect_error("55000");
    assert!(o.err.contains("ALTER EXTENSION pg_credcrypt UPDATE"), "{}", o.err);
    // Envelope keys made and rewrapped while the release's SQL is served (for 0.1.0, without
    // a `bound` column: wrapped as 0.1.0 wrapped them, so they unwrap after the update marks
    // them unbound).
    c.psql("up_app", "INSERT INTO up_env VALUES (22, 'env-between')").expect_ok();
    assert!(c.sql("SELECT secret FROM up_env WHERE id = 22").starts_with("cc1:envelope:app:"));
    c.sql("SELECT credcrypt.rotate_key('envelope:app')");
    assert_eq!(c.sql("SELECT credcrypt.decrypt_credential(secret, credcrypt.column_context(p.binding_id, ARRAY[t.id::text])) FROM up_env t, credcrypt.protected_columns p WHERE p.relid = 'up_env'::regclass AND t.id = 22"), "env-between");
    let keys_before = c.sql(keys);

    // The update.
    c.sql("ALTER EXTENSION pg_credcrypt UPDATE");
    assert_eq!(c.sql("SELECT extversion FROM pg_extension WHERE extname = 'pg_credcrypt'"), CURRENT);
    for (t, col, n, v) in &expected {
        assert_eq!(&values(&c, t, col, *n), v, "after the update: {t}");
    }
    assert_eq!(c.sql(keys), keys_before, "the data keys are the same rows");
    // As the same roles, through the same views.
    let plain = c
        .psql(
            "up_app",
            "SELECT string_agg(api_key || '/' || (cfg->>'k'), ',' ORDER BY id) FROM up_local_plain WHERE id <= 2",
        )
        .expect_ok()
        .to_owned();
    assert_eq!(plain, "sk-local-1-a1b2/json-1,sk-local-2-a1b2/json-2");
    let masks =
        c.value("up_report", "SELECT string_agg(api_key_mask, ',' ORDER BY id) FROM up_local_masked WHERE id <= 2");
    assert_eq!(masks, "…a1b2,…a1b2");
    let alice = c
        .psql(
            "up_app",
            "BEGIN; SELECT credcrypt.set_owner('alice'); SELECT string_agg(api_key, ',') FROM up_rls_plain; COMMIT;",
        )
        .expect_ok()
        .to_owned();
    assert!(alice.contains("sk-alice") && !alice.contains("sk-bob"), "{alice}");
    // New writes are encrypted, with every provider.
    c.psql(
        "up_app",
        "INSERT INTO up_local (id, user_id, api_key) VALUES (12, 'u12', 'sk-after');
         INSERT INTO up_transit VALUES (11, 'transit-after'); INSERT INTO up_env VALUES (21, 'env-after');
         BEGIN; SELECT credcrypt.set_owner('bob'); INSERT INTO up_rls VALUES (3, 'bob', 'sk-bob-2'); COMMIT;",
    )
    .expect_ok();
    assert_eq!(
        c.sql("SELECT count(*) FROM up_local WHERE id >= 11 AND NOT starts_with(api_key, 'cc1:local:')")
            .parse::<i64>()
            .unwrap_or(-1),
        0
    );
    assert!(c.sql("SELECT secret FROM up_transit WHERE id = 11").starts_with("cc1:transit:app:"));
    assert!(c.sql("SELECT secret FROM up_env WHERE id = 21").starts_with("cc1:envelope:app:"));
    // Every envelope value, old, in between and new, decrypts; a rotation binds every data key.
    let env_all = (1..=20)
        .map(|g| format!("env-{g}"))
        .chain(["env-after".into(), "env-between".into()])
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(values(&c, "up_env", "secret", 22), env_all);
    let unbound =
        c.sql("SELECT count(*) FILTER (WHERE NOT bound) FROM credcrypt.data_keys").parse::<i64>().unwrap_or(-1);
    assert!(
        if from_0_1 { unbound >= 1 } else { unbound == 0 },
        "{unbound} unbound data keys after an update from {from}"
    );
    c.sql("SELECT credcrypt.rotate_key('envelope:app')");
    assert_eq!(c.sql("SELECT count(*) FILTER (WHERE NOT bound) FROM credcrypt.data_keys"), "0");
    assert_eq!(values(&c, "up_env", "secret", 22), env_all);
    // The interrupted run is seen as such, and a new CALL finishes the column.
    assert!(c
        .sql("SELECT string_agg(state, ',') FROM credcrypt.reencrypt_progress WHERE table_name = 'up_mig'::regclass")
        .contains("interrupted"));
    let o =
        c.psql("up_owner", "CALL credcrypt.reencrypt_column('up_mig', 'secret', batch_size => 5000, strict => true)");
    o.expect_ok();
    assert!(o.err.contains("complete — every value is on local"), "{}", o.err);
    assert_eq!(values(&c, "up_mig", "secret", 20000).split(',').count(), 20000);
    // And the result equals a fresh install of the current version.
    c.client("dropdb", &["--if-exists", "cc_up_fresh_live"]);
    assert!(c.client("createdb", &["cc_up_fresh_live"]).0);
    c.psql_in("cc_up_fresh_live", "postgres", "CREATE EXTENSION pg_credcrypt").expect_ok();
    let d = diff(&listing(&c, "postgres"), &listing(&c, "cc_up_fresh_live"));
    assert!(d.is_empty(), "after a live update from {from}:\n{d}");
    c.client("dropdb", &["cc_up_fresh_live"]);
    // What the update brought works on the tables made before it: a blind index, filled by a
    // migration, found through a btree index.
    c.psql(
        "up_owner",
        "SELECT credcrypt.add_blind_index('up_local', 'api_key', 'api_key_bidx');
         CALL credcrypt.reencrypt_column('up_local', 'api_key');
         CREATE UNIQUE INDEX ON up_local (api_key_bidx);",
    )
    .expect_ok();
    assert_eq!(
        c.value("up_app", "SELECT id FROM up_local WHERE api_key_bidx = credcrypt.blind_index('up_local', 'api_key', 'sk-local-7-a1b2')"),
        "7"
    );
}
