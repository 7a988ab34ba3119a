//! Black-box tests of re-encryption migrations (`CALL credcrypt.reencrypt_column`) and
//! `credcrypt.key_usage`, against a real OpenBao dev server, as a non-superuser
//! credcrypt_admin who owns the tables (no BYPASSRLS).

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use credcrypt_blackbox::bao::{point_at, BaoEnv};
use credcrypt_blackbox::Cluster;

static SERIAL: Mutex<()> = Mutex::new(());

/// The legacy application key (hex) the Node fixtures are encrypted with.
const LEGACY_KEY: &str = "00112233445566778899aabbccddeefffedcba9876543210fedcba9876543210";

fn setup() -> BaoEnv {
    BaoEnv::start(&SERIAL, "mg", true)
}

/// Adds `credcrypt.legacy_key_file` (written with `key_hex`) to the worker configuration.
fn with_legacy_key(c: &Cluster, bao_addr: &str, key_hex: &str) {
    let legacy = c.write_key("legacy.key", key_hex, 0o600);
    let token = c.keys.join("bao.token");
    point_at(
        c,
        bao_addr,
        &format!("credcrypt.bao_token_file = '{}'\ncredcrypt.legacy_key_file = '{legacy}'\n", token.display()),
    );
}

fn bao_addr(c: &Cluster) -> String {
    c.sql("SELECT active_address FROM credcrypt.status()")
}

/// Node.js `crypto` ciphertexts of `plaintexts`, made by the fixture script with `key_hex`.
fn node_values(key_hex: &str, plaintexts: &[String]) -> Vec<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../crates/core/tests/fixtures/node_legacy.js");
    let out = Command::new("node").arg(script).arg(key_hex).args(plaintexts).output().expect("node runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    v.as_array().expect("array").iter().map(|e| e["value"].as_str().expect("value").to_owned()).collect()
}

/// A table `name` (owned by mg_owner, under enable_owner_rls) whose `secret` column holds, for
/// row id, the plaintext `sk-<id>` in mixed forms: plaintext, local-key ciphertexts bound to the
/// row, bare `vault:` values, and Node legacy values. Protected with existing_values => 'migrate'.
fn mixed_table(c: &Cluster, name: &str, rows: i64) {
    c.sql(&format!("DROP TABLE IF EXISTS {name} CASCADE"));
    c.psql(
        "mg_owner",
        &format!(
            "CREATE TABLE {name} (id bigint PRIMARY KEY, owner text NOT NULL, secret text);
             INSERT INTO {name} SELECT g, 'tenant-' || (g % 7), 'sk-' || g FROM generate_series(1, {rows}) g;
             SELECT credcrypt.protect_column('{name}', 'secret', key_name => 'local', bind_columns => ARRAY['id'],
                                             mask_column => 'secret_mask', existing_values => 'migrate');
             SELECT credcrypt.enable_owner_rls('{name}', 'owner');
             SELECT credcrypt.create_decrypted_view('{name}', '{name}_plain');
             GRANT SELECT, INSERT, UPDATE ON {name} TO mg_app;"
        ),
    )
    .expect_ok();
    // A third of the rows: local-key ciphertexts written through the trigger.
    let third = rows / 3;
    c.psql("mg_owner", &format!("CALL credcrypt.reencrypt_column('{name}', 'secret', batch_size => 5000)")).expect_ok();
    // The other two thirds back to plaintext (as the superuser: the table is under owner RLS).
    // (Past the trigger, as a superuser can with session_replication_role = replica.)
    c.sql(&format!(
        "SET session_replication_role = replica;
         UPDATE {name} SET secret = 'sk-' || id WHERE id > {third};"
    ));
    // 200 bare vault: values and 100 Node values, as applications wrote them.
    c.sql(&format!(
        "SET session_replication_role = replica;
         UPDATE {name} SET secret = substr(credcrypt.encrypt_credential('sk-' || id, 'transit:app'), 21)
          WHERE id BETWEEN {third} + 1 AND {third} + 200;"
    ));
    let ids: Vec<i64> = ((third + 201)..=(third + 300)).collect();
    let plains: Vec<String> = ids.iter().map(|i| format!("sk-{i}")).collect();
    let values = node_values(LEGACY_KEY, &plains);
    let updates: String =
        ids.iter().zip(&values).map(|(i, v)| format!("UPDATE {name} SET secret = '{v}' WHERE id = {i};\n")).collect();
    c.sql(&format!("SET session_replication_role = replica;\n{updates}"));
}

fn usage(c: &Cluster, name: &str) -> String {
    c.psql(
        "mg_owner",
        &format!(
            "SELECT string_agg(source || ':' || coalesce(key_name, '-') || ':' || coalesce(key_version, '-') || ':' || \"values\", ' ' ORDER BY source, key_version)
               FROM credcrypt.key_usage('{name}')"
        ),
    )
    .expect_ok()
    .to_owned()
}

/// Rows whose decrypted value is `sk-<id>` (through the decrypted view, maintenance-free: as
/// the superuser, who is not subject to RLS).
fn correct(c: &Cluster, name: &str) -> String {
    c.sql(&format!("SELECT count(*) FROM {name}_plain WHERE secret = 'sk-' || id"))
}

#[test]
fn mixed_sources_migrate_to_transit_verified_and_resumable() {
    let e = setup();
    let c = &e.c;
    with_legacy_key(c, &bao_addr(c), LEGACY_KEY);
    mixed_table(c, "mg_mixed", 100_000);
    let before = usage(c, "mg_mixed");
    assert!(
        before.contains("legacy:-:-:100") && before.contains("vault:-:1:200") && before.contains("plaintext:-:-:66367"),
        "{before}"
    );
    // Dry run: reports per source, writes nothing.
    let digest = "SELECT md5(string_agg(secret, ',' ORDER BY id)) FROM mg_mixed";
    let d0 = c.sql(digest);
    let o = c.psql("mg_owner", "CALL credcrypt.reencrypt_column('mg_mixed', 'secret', 'transit:app', dry_run => true)");
    assert!(o.expect_ok().is_empty() && o.err.contains("dry run of"), "{o:?}");
    assert_eq!(c.sql(digest), d0, "dry run wrote");
    assert_eq!(
        c.sql("SELECT (by_source->>'plaintext') || '/' || (by_source->>'legacy') FROM credcrypt.reencrypt_runs ORDER BY run_id DESC LIMIT 1"),
        "66367/100"
    );
    // The migration, as the table owner without BYPASSRLS, with the table under owner RLS.
    let o = c.psql(
        "mg_owner",
        "SET credcrypt.reencrypt_progress_interval = 0; CALL credcrypt.reencrypt_column('mg_mixed', 'secret', 'transit:app', batch_size => 2000)",
    );
    o.expect_ok();
    assert!(o.err.contains("rows/s") && o.err.contains("complete — every value is on transit:app v1"), "{}", o.err);
    assert_eq!(usage(c, "mg_mixed"), "transit:transit:app:1:100000");
    assert_eq!(correct(c, "mg_mixed"), "100000");
    assert_eq!(
        c.sql("SELECT count(*) FROM mg_mixed WHERE secret_mask IS DISTINCT FROM credcrypt.mask('sk-' || id, 0, 4)"),
        "0"
    );
    // New writes now use the target key.
    c.psql("mg_app", "BEGIN; SELECT credcrypt.set_owner('tenant-1'); INSERT INTO mg_mixed VALUES (100001, 'tenant-1', 'sk-100001'); COMMIT;")
        .expect_ok();
    assert!(c.sql("SELECT secret FROM mg_mixed WHERE id = 100001").starts_with("cc1:transit:app:1:c:"));
    // Re-run: nothing to do, nothing rewritten.
    let d1 = c.sql(digest);
    c.psql("mg_owner", "CALL credcrypt.reencrypt_column('mg_mixed', 'secret')").expect_ok();
    assert_eq!(c.sql(digest), d1);
    // Rotation end to end: rotate, re-encrypt, no value left on v1.
    assert_eq!(c.sql("SELECT credcrypt.rotate_key('transit:app')"), "2");
    c.psql("mg_owner", "CALL credcrypt.reencrypt_column('mg_mixed', 'secret', batch_size => 5000)").expect_ok();
    assert_eq!(usage(c, "mg_mixed"), "transit:transit:app:2:100001");
    assert_eq!(c.psql("mg_owner", "SELECT bool_and(current) FROM credcrypt.key_usage('mg_mixed')").expect_ok(), "t");
    assert_eq!(correct(c, "mg_mixed"), "100001");
}

#[test]
fn killed_run_resumes_and_concurrent_writes_end_up_encrypted() {
    let e = setup();
    let c = &e.c;
    c.sql("DROP TABLE IF EXISTS mg_kill CASCADE");
    c.psql(
        "mg_owner",
        "CREATE TABLE mg_kill (id bigint PRIMARY KEY, owner text NOT NULL DEFAULT 'o', secret text);
         INSERT INTO mg_kill (id, secret) SELECT g, 'sk-' || g FROM generate_series(1, 60000) g;
         SELECT credcrypt.protect_column('mg_kill', 'secret', key_name => 'local', bind_columns => ARRAY['id'], existing_values => 'migrate');
         SELECT credcrypt.create_decrypted_view('mg_kill', 'mg_kill_plain');
         GRANT SELECT, INSERT, UPDATE ON mg_kill TO mg_app;",
    )
    .expect_ok();
    // The migration in the background (small batches, so it runs a while) …
    let log_path = c.keys.join("mg_kill_run.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut call = Command::new("psql")
        .args(["-X", "-q", "-h", &c.host, "-p", &c.port, "-U", "mg_owner", "-d", "postgres"])
        // One statement per -c: psql sends a multi-statement string as one transaction, in
        // which the procedure could not COMMIT.
        .args(["-c", "CALL credcrypt.reencrypt_column('mg_kill', 'secret', 'transit:app', batch_size => 200)"])
        .env("PGAPPNAME", "mg_kill_run")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("psql");
    // … while the application inserts and updates (plaintext, through the trigger).
    let writer = {
        let c = c.clone();
        std::thread::spawn(move || {
            for i in 0..200 {
                let id = 60001 + i;
                c.psql("mg_app", &format!("INSERT INTO mg_kill (id, secret) VALUES ({id}, 'sk-{id}')")).expect_ok();
                let upd = 1 + (i * 297) % 60000;
                c.psql("mg_app", &format!("UPDATE mg_kill SET secret = 'sk-{upd}' WHERE id = {upd}")).expect_ok();
            }
        })
    };
    // Kill the migrating backend once it has done some batches.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done: i64 = c
            .sql("SELECT coalesce(max(done), 0) FROM credcrypt.reencrypt_runs WHERE relid = 'mg_kill'::regclass AND state = 'running'")
            .parse()
            .unwrap_or(0);
        if done >= 5000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the migration made no progress: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        c.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'mg_kill_run'"),
        "1"
    );
    let _ = call.wait();
    writer.join().expect("writer");
    let mid = usage(c, "mg_kill");
    assert!(mid.contains("transit:transit:app:1:") && mid.contains("plaintext"), "killed mid-run: {mid}");
    // Re-run: completes; nothing lost, nothing encrypted twice (every value decrypts in one step).
    let o =
        c.psql("mg_owner", "CALL credcrypt.reencrypt_column('mg_kill', 'secret', 'transit:app', batch_size => 2000)");
    o.expect_ok();
    assert_eq!(usage(c, "mg_kill"), "transit:transit:app:1:60200");
    assert_eq!(correct(c, "mg_kill"), "60200");
    assert_eq!(
        c.sql(
            "SELECT count(*) FROM credcrypt.reencrypt_runs WHERE relid = 'mg_kill'::regclass AND state = 'interrupted'"
        ),
        "1"
    );
}

#[test]
fn wrong_legacy_key_leaves_rows_untouched_and_reported() {
    let e = setup();
    let c = &e.c;
    with_legacy_key(c, &bao_addr(c), &"ab".repeat(32));
    c.sql("DROP TABLE IF EXISTS mg_legacy CASCADE");
    let plains: Vec<String> = (1..=20).map(|i| format!("sk-{i}")).collect();
    let values = node_values(LEGACY_KEY, &plains);
    let inserts: String = values.iter().enumerate().map(|(i, v)| format!("({}, '{v}'),", i + 1)).collect();
    c.psql(
        "mg_owner",
        &format!(
            "CREATE TABLE mg_legacy (id int PRIMARY KEY, secret text);
             INSERT INTO mg_legacy VALUES {} (21, 'sk-21');
             SELECT credcrypt.protect_column('mg_legacy', 'secret', key_name => 'local', bind_columns => ARRAY['id'], existing_values => 'migrate');",
            inserts
        ),
    )
    .expect_ok();
    let before = c.sql("SELECT md5(string_agg(secret, ',' ORDER BY id)) FROM mg_legacy WHERE id <= 20");
    let o = c.psql("mg_owner", "CALL credcrypt.reencrypt_column('mg_legacy', 'secret')");
    assert!(o.expect_ok().is_empty() && o.err.contains("20 could not be read"), "{}", o.err);
    assert_eq!(
        c.sql("SELECT md5(string_agg(secret, ',' ORDER BY id)) FROM mg_legacy WHERE id <= 20"),
        before,
        "untouched"
    );
    assert_eq!(
        c.sql("SELECT count(*) || ' ' || min(source) || ' ' || bool_and(reason LIKE '%legacy_key_file%') FROM credcrypt.reencrypt_failures f JOIN credcrypt.reencrypt_runs r USING (run_id) WHERE r.relid = 'mg_legacy'::regclass"),
        "20 legacy true"
    );
    assert!(!c.sql("SELECT string_agg(reason, ' ') FROM credcrypt.reencrypt_failures").contains("sk-"));
    // With the right key: imported, verified, readable.
    with_legacy_key(c, &bao_addr(c), LEGACY_KEY);
    c.psql("mg_owner", "CALL credcrypt.reencrypt_column('mg_legacy', 'secret')").expect_ok();
    c.psql("mg_owner", "SELECT credcrypt.create_decrypted_view('mg_legacy', 'mg_legacy_plain')").expect_ok();
    assert_eq!(c.sql("SELECT count(*) FROM mg_legacy_plain WHERE secret = 'sk-' || id"), "21");
    // Errors: not protected, bad batch size, not the owner.
    c.psql("mg_owner", "CALL credcrypt.reencrypt_column('mg_legacy', 'id')").expect_error("42704");
    c.psql("mg_owner", "CALL credcrypt.reencrypt_column('mg_legacy', 'id', 'local')").expect_error("42804");
    c.psql("mg_owner", "CALL credcrypt.reencrypt_column('mg_legacy', 'secret', batch_size => 0)").expect_error("22023");
    let o = c.psql("mg_app", "CALL credcrypt.reencrypt_column('mg_legacy', 'secret')");
    assert_eq!(o.sqlstate(), Some("42501"), "{o:?}");
}

/// Envelope values are read like every other source: a column moves off an envelope key, text
/// and jsonb path alike (reviews/attack-2.md, finding 6: the documented undo of a move to
/// `envelope:` failed).
#[test]
fn a_column_moves_off_an_envelope_key() {
    let e = setup();
    let c = &e.c;
    c.sql("DROP TABLE IF EXISTS mg_env CASCADE");
    c.psql(
        "mg_owner",
        "CREATE TABLE mg_env (id bigint PRIMARY KEY, s text, j jsonb);
         SELECT credcrypt.protect_column('mg_env', 's', key_name => 'envelope:app', bind_columns => ARRAY['id']);
         SELECT credcrypt.protect_column('mg_env', 'j', key_name => 'envelope:app', bind_columns => ARRAY['id'], json_path => ARRAY['k']);
         INSERT INTO mg_env SELECT g, 'S-' || g, jsonb_build_object('k', 'J-' || g) FROM generate_series(1, 50) g;",
    )
    .expect_ok();
    assert_eq!(c.sql("SELECT count(*) FROM mg_env WHERE starts_with(s, 'cc1:envelope:app:')"), "50");
    for (col, target) in [("s", "local"), ("j", "transit:app")] {
        let o = c.psql(
            "mg_owner",
            &format!("CALL credcrypt.reencrypt_column('mg_env', '{col}', '{target}', strict => true)"),
        );
        o.expect_ok();
        assert!(o.err.contains("complete — every value is on"), "{}", o.err);
    }
    assert_eq!(c.sql("SELECT count(*) FROM mg_env WHERE starts_with(s, 'cc1:local:')"), "50");
    assert_eq!(c.sql("SELECT count(*) FROM mg_env WHERE starts_with(j->>'k', 'cc1:transit:app:')"), "50");
    c.psql(
        "mg_owner",
        "SELECT credcrypt.create_decrypted_view('mg_env', 'mg_env_plain'); GRANT SELECT ON mg_env, mg_env_plain TO mg_app",
    )
    .expect_ok();
    assert_eq!(
        c.value("mg_app", "SELECT count(*) FROM mg_env_plain WHERE s = 'S-' || id AND j->>'k' = 'J-' || id"),
        "50"
    );
    c.sql("DROP TABLE mg_env CASCADE");
}

/// Applications that encrypt a column themselves (`encrypt_credential(…, context => …)`, no
/// trigger) rotate it with `reencrypt_credential(s)`: same context, new key, verified by reading
/// back; a role that may decrypt but not encrypt (or the reverse) cannot use it, and a wrong
/// context is still refused.
#[test]
fn applications_reencrypt_their_own_values_with_reencrypt_credential() {
    let e = setup();
    let c = &e.c;
    c.ensure_login_role("mg_reader", "credcrypt_decryptor");
    c.ensure_login_role("mg_writer", "credcrypt_encryptor");
    c.psql(
        "mg_owner",
        "DROP TABLE IF EXISTS mg_app_keys;
         CREATE TABLE mg_app_keys (owner text PRIMARY KEY, secret text);
         GRANT SELECT, INSERT, UPDATE ON mg_app_keys TO mg_app, mg_reader, mg_writer;",
    )
    .expect_ok();
    c.psql(
        "mg_app",
        "INSERT INTO mg_app_keys SELECT 'u' || i, credcrypt.encrypt_credential('sk-app-MARKER-' || i, 'local', 'owner:u' || i)
           FROM generate_series(1, 50) i",
    )
    .expect_ok();
    // One value, then the rest in one array call (one Transit batch each way).
    c.psql(
        "mg_app",
        "UPDATE mg_app_keys SET secret = credcrypt.reencrypt_credential(secret, 'owner:' || owner, 'transit:app') WHERE owner = 'u1';
         WITH b AS (SELECT array_agg(owner ORDER BY owner) o, array_agg(secret ORDER BY owner) s,
                           array_agg('owner:' || owner ORDER BY owner) ctx FROM mg_app_keys WHERE owner <> 'u1'),
              r AS (SELECT unnest(o) owner, unnest(credcrypt.reencrypt_credentials(s, ctx, 'transit:app')) secret FROM b)
         UPDATE mg_app_keys t SET secret = r.secret FROM r WHERE t.owner = r.owner;",
    )
    .expect_ok();
    assert_eq!(
        c.value("mg_app", "SELECT count(*) FROM mg_app_keys WHERE secret LIKE 'cc1:transit:app:1:c:vault:v1:%'"),
        "50"
    );
    assert_eq!(
        c.value(
            "mg_app",
            "SELECT count(*) FROM mg_app_keys
              WHERE credcrypt.decrypt_credential(secret, 'owner:' || owner) = 'sk-app-MARKER-' || substr(owner, 2)"
        ),
        "50"
    );
    // The context stays bound: another owner's context does not open the value.
    c.psql(
        "mg_app",
        "SELECT credcrypt.reencrypt_credential(secret, 'owner:u2', 'local') FROM mg_app_keys WHERE owner = 'u1'",
    )
    .expect_error("39000");
    // Both roles are needed: decrypting only, or encrypting only, is not enough.
    for role in ["mg_reader", "mg_writer"] {
        let o = c.psql(
            role,
            "SELECT credcrypt.reencrypt_credential(secret, 'owner:u1', 'local') FROM mg_app_keys WHERE owner = 'u1'",
        );
        assert_eq!(o.sqlstate(), Some("42501"), "{role}: {}", o.err);
    }
    c.psql("mg_owner", "DROP TABLE mg_app_keys").expect_ok();
}

/// A column the application encrypts itself (`encrypt_credential(secret, 'local',
/// 'owner:' || owner)`), no trigger: `reencrypt_column(…, context_format => 'owner:{owner}')`
/// moves it to Transit in verified, resumable, committed batches while the application keeps
/// writing; plaintext values are encrypted, values whose context does not match are left alone
/// and reported, `key_usage(tbl, col)` counts it.
#[test]
fn columns_the_application_encrypts_itself_migrate_with_a_context_format() {
    let e = setup();
    let c = &e.c;
    c.sql("DROP TABLE IF EXISTS mg_app_col CASCADE");
    c.psql(
        "mg_owner",
        "CREATE TABLE mg_app_col (owner text PRIMARY KEY, region text, secret text);
         GRANT SELECT, INSERT, UPDATE ON mg_app_col TO mg_app;",
    )
    .expect_ok();
    c.psql(
        "mg_app",
        "INSERT INTO mg_app_col SELECT 'u' || g, 'eu', credcrypt.encrypt_credential('sk-' || g, 'local', 'owner:u' || g)
           FROM generate_series(1, 20000) g;
         -- a plaintext left by an older version of the application, a value with no context
         -- (owner NULL would give none: here region NULL, with a format naming it, below), and one
         -- encrypted for another row (its context does not match: left alone, reported)
         INSERT INTO mg_app_col VALUES ('plain1', 'eu', 'sk-plain1');
         INSERT INTO mg_app_col VALUES ('moved', 'eu', credcrypt.encrypt_credential('sk-moved', 'local', 'owner:someone-else'));",
    )
    .expect_ok();
    // Refusals: no target key, a placeholder naming no column, a context format on a protected
    // column, a per-row key.
    c.psql("mg_owner", "CALL credcrypt.reencrypt_column('mg_app_col', 'secret')").expect_error("42704");
    c.psql(
        "mg_owner",
        "CALL credcrypt.reencrypt_column('mg_app_col', 'secret', 'transit:app', context_format => 'owner:{nope}')",
    )
    .expect_error("22023");
    c.psql("mg_owner", "CALL credcrypt.reencrypt_column('mg_app_col', 'secret', 'envelope:tenant-{owner}', context_format => 'owner:{owner}')")
        .expect_error("22023");
    // A dry run writes nothing.
    let o = c.psql(
        "mg_owner",
        "CALL credcrypt.reencrypt_column('mg_app_col', 'secret', 'transit:app', dry_run => true, context_format => 'owner:{owner}')",
    );
    o.expect_ok();
    assert_eq!(c.sql("SELECT count(*) FROM mg_app_col WHERE secret LIKE 'cc1:transit:%'"), "0");
    // The run, killed after some batches, while the application writes new local values.
    let mut call = Command::new("psql")
        .args(["-X", "-q", "-h", &c.host, "-p", &c.port, "-U", "mg_owner", "-d", "postgres"])
        .args(["-c", "CALL credcrypt.reencrypt_column('mg_app_col', 'secret', 'transit:app', batch_size => 200, context_format => 'owner:{owner}')"])
        .env("PGAPPNAME", "mg_app_run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("psql");
    let writer = {
        let c = c.clone();
        std::thread::spawn(move || {
            for i in 0..100 {
                let o = format!("new{i}");
                c.psql(
                    "mg_app",
                    &format!("INSERT INTO mg_app_col VALUES ('{o}', 'eu', credcrypt.encrypt_credential('sk-{o}', 'local', 'owner:{o}'))"),
                )
                .expect_ok();
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while c
        .sql("SELECT coalesce(max(done), 0) FROM credcrypt.reencrypt_runs WHERE relid = 'mg_app_col'::regclass AND state = 'running' AND NOT dry_run")
        .parse::<i64>()
        .unwrap_or(0)
        < 2000
    {
        assert!(Instant::now() < deadline, "the migration made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        c.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'mg_app_run'"),
        "1"
    );
    let _ = call.wait();
    writer.join().expect("writer");
    // The re-run completes except for the value of another row, which it reports.
    let o = c.psql(
        "mg_owner",
        "CALL credcrypt.reencrypt_column('mg_app_col', 'secret', 'transit:app', batch_size => 2000, context_format => 'owner:{owner}')",
    );
    o.expect_ok();
    assert!(o.err.contains("NOT complete") && o.err.contains("1 could not be read"), "{}", o.err);
    let usage = c.value(
        "mg_owner",
        "SELECT string_agg(source || ':' || coalesce(key_name, '') || ':' || \"values\", ',' ORDER BY source) FROM credcrypt.key_usage('mg_app_col', 'secret')",
    );
    assert_eq!(usage, "local:local:1,transit:transit:app:20101", "{usage}");
    // Every value moved opens with its row's context, to what the application wrote.
    assert_eq!(
        c.value(
            "mg_app",
            "SELECT count(*) FROM mg_app_col WHERE owner <> 'moved' AND secret LIKE 'cc1:transit:app:%' \
               AND credcrypt.decrypt_credential(secret, 'owner:' || owner) = 'sk-' || CASE WHEN owner LIKE 'u%' THEN substr(owner, 2) ELSE owner END"
        ),
        "20101"
    );
    assert!(c
        .sql("SELECT reason FROM credcrypt.reencrypt_failures f JOIN credcrypt.reencrypt_runs r USING (run_id) WHERE r.relid = 'mg_app_col'::regclass")
        .contains("cannot read"));
    assert_eq!(
        c.sql("SELECT string_agg(DISTINCT state, ',') FROM credcrypt.reencrypt_progress WHERE table_name = 'mg_app_col'::regclass AND migration NOT LIKE 'dry run%'"),
        "finished,interrupted"
    );
    // A column without contexts: the format NULL.
    c.psql(
        "mg_owner",
        "CREATE TABLE mg_app_noctx (id int PRIMARY KEY, token text);
         INSERT INTO mg_app_noctx SELECT g, credcrypt.encrypt_credential('tok-' || g, 'local') FROM generate_series(1, 50) g;
         CALL credcrypt.reencrypt_column('mg_app_noctx', 'token', 'envelope:app');",
    )
    .expect_ok();
    assert_eq!(c.sql("SELECT count(*) FROM mg_app_noctx WHERE credcrypt.decrypt_credential(token) = 'tok-' || id AND token LIKE 'cc1:envelope:app:%'"), "50");
    c.sql("DROP TABLE mg_app_col, mg_app_noctx CASCADE");
}

/// Issue 17: bcrypt hashes that an application stored before adopting pg_credcrypt (made by
/// real implementations: the fixtures of crates/core/tests/bcrypt.rs, Python bcrypt 5.0.0 and
/// PHP's manual) keep verifying through `verify_credential`, are counted by `key_usage` as a
/// source of their own, and are left untouched by `reencrypt_column`, which says so; a rotated
/// credential is then encrypted like any other.
#[test]
fn bcrypt_hashes_keep_verifying_until_rotated() {
    let e = setup();
    let c = &e.c;
    const HORSE: &str = "$2b$04$IA6/dZ3VUIVyue5lV2vNfe9TZhEx586dd0H2842SvJFFW2BH86ic6";
    const RASMUS: &str = "$2y$10$.vGA1O9wmRjrwAVXD98HNOgsNpDczlqm3Jq7KnEd1rVAGv3Fykk1a";
    c.sql("DROP TABLE IF EXISTS mg_bc CASCADE");
    c.psql(
        "mg_owner",
        &format!(
            "CREATE TABLE mg_bc (id bigint PRIMARY KEY, note text, secret text);
             INSERT INTO mg_bc VALUES (1, 'a', '{HORSE}'), (2, 'b', '{RASMUS}'), (3, 'c', 'sk-3');
             SELECT credcrypt.protect_column('mg_bc', 'secret', key_name => 'local', bind_columns => ARRAY['id'],
                                             existing_values => 'migrate');
             GRANT SELECT ON mg_bc TO mg_app;"
        ),
    )
    .expect_ok();
    let verify = |id: i64, presented: &str| {
        c.psql(
            "mg_app",
            &format!(
                "SELECT credcrypt.verify_credential(t.secret, '{presented}', credcrypt.column_context(p.binding_id, ARRAY[t.id::text]))
                   FROM mg_bc t, credcrypt.protected_columns p WHERE p.relid = 'mg_bc'::regclass AND t.id = {id}"
            ),
        )
        .expect_ok()
        .to_owned()
    };
    assert_eq!(verify(1, "correct horse battery staple"), "t");
    assert_eq!(verify(1, "correct horse battery stapler"), "f");
    assert_eq!(verify(2, "rasmuslerdorf"), "t");
    assert_eq!(verify(2, "rasmuslerdorF"), "f");
    assert_eq!(usage(c, "mg_bc"), "bcrypt:-:cost 10:1 bcrypt:-:cost 4:1 plaintext:-:-:1");
    // A row with a hash can still be updated in its other columns.
    c.psql("mg_owner", "UPDATE mg_bc SET note = 'a2' WHERE id = 1").expect_ok();
    // The migration encrypts the plaintext and leaves the hashes, saying so.
    let o = c.psql("mg_owner", "CALL credcrypt.reencrypt_column('mg_bc', 'secret')");
    o.expect_ok();
    assert!(o.err.contains("complete") && o.err.contains("2 bcrypt hash(es) left as they are"), "{}", o.err);
    assert_eq!(
        c.sql("SELECT string_agg(secret, ',' ORDER BY id) FROM mg_bc WHERE id < 3"),
        format!("{HORSE},{RASMUS}")
    );
    assert!(c.sql("SELECT secret FROM mg_bc WHERE id = 3").starts_with("cc1:local:"));
    assert_eq!(verify(3, "sk-3"), "t");
    assert_eq!(verify(1, "correct horse battery staple"), "t");
    // The application rotates credential 1: the new secret is encrypted, the hash is gone.
    c.psql("mg_owner", "UPDATE mg_bc SET secret = 'rotated-1' WHERE id = 1").expect_ok();
    assert!(c.sql("SELECT secret FROM mg_bc WHERE id = 1").starts_with("cc1:local:"));
    assert_eq!(verify(1, "rotated-1"), "t");
    assert_eq!(verify(1, "correct horse battery staple"), "f");
    assert_eq!(usage(c, "mg_bc").split(' ').filter(|s| s.starts_with("bcrypt")).count(), 1);
    // A planted hash of cost 31 is refused before any work (54000), not computed for days.
    let slow = format!("$2b$31${}", &HORSE[7..]);
    c.psql("mg_app", &format!("SELECT credcrypt.verify_credential('{slow}', 'x')")).expect_error("54000");
    c.sql("DROP TABLE mg_bc CASCADE");
}

/// What the kv provider does not serve yet fails closed with 0A000 — a key inside a jsonb
/// column, a blind index on a kv column — or 22023 (a per-row kv key); a kv reference written
/// into a local column is not taken as encrypted; the usage report counts kv values under their
/// mount.
#[test]
fn kv_references_fail_closed_where_the_kv_provider_is_not_served() {
    let e = setup();
    let c = &e.c;
    let kv_value = "cc1:kv:secret:3:n:pg_credcrypt/postgres/values/0123456789abcdef0123456789abcdef";
    c.sql("DROP TABLE IF EXISTS mg_kv CASCADE");
    c.psql("mg_owner", "CREATE TABLE mg_kv (id bigint PRIMARY KEY, secret text, doc jsonb, secret_bidx bytea)")
        .expect_ok();
    c.psql(
        "mg_owner",
        "SELECT credcrypt.protect_column('mg_kv', 'doc', key_name => 'kv:secret', json_path => ARRAY['token'], bind_columns => ARRAY['id'])",
    )
    .expect_error("0A000");
    c.psql(
        "mg_owner",
        "SELECT credcrypt.protect_column('mg_kv', 'secret', key_name => 'kv:tenant-{id}', bind_columns => ARRAY['id'])",
    )
    .expect_error("22023");
    c.psql(
        "mg_owner",
        "SELECT credcrypt.protect_column('mg_kv', 'secret', key_name => 'kv:secret', bind_columns => ARRAY['id'], blind_index_column => 'secret_bidx')",
    )
    .expect_error("0A000");
    assert_eq!(c.sql("SELECT count(*) FROM credcrypt.protected_columns WHERE relid = 'mg_kv'::regclass"), "0");
    c.psql(
        "mg_owner",
        "SELECT credcrypt.protect_column('mg_kv', 'secret', key_name => 'local', bind_columns => ARRAY['id']);
         SELECT credcrypt.protect_column('mg_kv', 'doc', key_name => 'local', json_path => ARRAY['token'], bind_columns => ARRAY['id']);
         GRANT SELECT, INSERT ON mg_kv TO mg_app;",
    )
    .expect_ok();
    // Nor can a migration move a jsonb key to kv (its writes would have no row place).
    c.psql("mg_owner", "CALL credcrypt.reencrypt_column('mg_kv', 'doc', 'kv:secret')").expect_error("0A000");
    assert_eq!(
        c.sql(
            "SELECT key_name FROM credcrypt.protected_columns WHERE relid = 'mg_kv'::regclass AND column_name = 'doc'"
        ),
        "local"
    );
    // A kv reference written into a local column is not taken as encrypted.
    c.psql("mg_app", &format!("INSERT INTO mg_kv (id, secret) VALUES (1, '{kv_value}')")).expect_error("22023");
    c.psql("mg_app", "INSERT INTO mg_kv (id, secret) VALUES (2, 'sk-2')").expect_ok();
    assert!(c.sql("SELECT secret FROM mg_kv WHERE id = 2").starts_with("cc1:local:"));
    c.sql(&format!("SET session_replication_role = replica; INSERT INTO mg_kv (id, secret) VALUES (3, '{kv_value}')"));
    assert!(usage(c, "mg_kv").contains("kv:kv:secret:3:1"), "{}", usage(c, "mg_kv"));
    c.sql("DROP TABLE mg_kv CASCADE");
}

/// Sets `credcrypt.queue_slots` (a server-start setting) and restarts; dropping it restores
/// the default (the suite's other tests share the cluster).
struct QueueSlots<'a>(&'a Cluster);

impl<'a> QueueSlots<'a> {
    fn set(c: &'a Cluster, n: u32) -> QueueSlots<'a> {
        c.sql(&format!("ALTER SYSTEM SET credcrypt.queue_slots = {n}"));
        c.restart();
        assert_eq!(c.sql("SHOW credcrypt.queue_slots"), n.to_string());
        QueueSlots(c)
    }
}

impl Drop for QueueSlots<'_> {
    fn drop(&mut self) {
        self.0.sql("ALTER SYSTEM RESET credcrypt.queue_slots");
        self.0.restart();
    }
}

/// A backend hands a large request over in several queue slots at once (never waiting for a
/// second slot while it holds one). With the smallest queue (4 slots) shared by a migration to
/// Transit and three sessions whose calls each need more slots than the queue has, every value
/// arrives in order; a batch that fails in its write-back leaves nothing written; and a table
/// trigger of the owner that calls the worker itself while the batch is written gets a slot
/// (an earlier version held slots across the write-back, and such a trigger waited for itself
/// until it timed out).
#[test]
fn multi_slot_requests_share_a_small_queue_and_failed_batches_write_nothing() {
    let e = setup();
    let c = &e.c;
    let _slots = QueueSlots::set(c, 4);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !c.psql("mg_app", "SELECT credcrypt.encrypt_credential('warm-up', 'transit:app')").ok {
        assert!(Instant::now() < deadline, "the worker did not come back after the restart");
        std::thread::sleep(Duration::from_millis(100));
    }
    c.sql("DROP TABLE IF EXISTS mg_pipe, mg_pipe_audit CASCADE");
    c.psql(
        "mg_owner",
        "CREATE TABLE mg_pipe (id bigint PRIMARY KEY, owner text NOT NULL DEFAULT 'o', secret text);
         SELECT credcrypt.protect_column('mg_pipe', 'secret', key_name => 'local', bind_columns => ARRAY['id']);
         INSERT INTO mg_pipe (id, secret) SELECT g, 'sk-' || g FROM generate_series(1, 6000) g;
         SELECT credcrypt.create_decrypted_view('mg_pipe', 'mg_pipe_plain');",
    )
    .expect_ok();

    // An owner's trigger that fails on one row near the end of the first batch: the rows
    // before it were updated in the batch's transaction, and must not stay.
    c.psql(
        "mg_owner",
        "CREATE OR REPLACE FUNCTION mg_pipe_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.id = 2990 THEN RAISE EXCEPTION 'mg_pipe refuses row 2990' USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER mg_pipe_refuse BEFORE UPDATE ON mg_pipe FOR EACH ROW EXECUTE FUNCTION mg_pipe_refuse();",
    )
    .expect_ok();
    let digest = "SELECT md5(string_agg(secret, ',' ORDER BY id)) FROM mg_pipe";
    let before = c.sql(digest);
    let o =
        c.psql("mg_owner", "CALL credcrypt.reencrypt_column('mg_pipe', 'secret', 'transit:app', batch_size => 3000)");
    o.expect_error("23514");
    assert_eq!(c.sql(digest), before, "a failed batch left rows written");
    assert_eq!(
        c.sql(
            "SELECT state FROM credcrypt.reencrypt_runs WHERE relid = 'mg_pipe'::regclass ORDER BY run_id DESC LIMIT 1"
        ),
        "failed"
    );
    c.psql("mg_owner", "DROP TRIGGER mg_pipe_refuse ON mg_pipe").expect_ok();
    // An owner's audit trigger that calls the worker for some of the rows the batches write.
    c.sql("GRANT credcrypt_encryptor TO mg_owner");
    c.psql(
        "mg_owner",
        "CREATE TABLE IF NOT EXISTS mg_pipe_audit (id bigint, token text);
         CREATE OR REPLACE FUNCTION mg_pipe_audit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.id % 500 = 0 THEN
             INSERT INTO public.mg_pipe_audit VALUES (NEW.id, credcrypt.encrypt_credential('audit-' || NEW.id, 'transit:app'));
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER mg_pipe_audit BEFORE UPDATE ON mg_pipe FOR EACH ROW EXECUTE FUNCTION mg_pipe_audit();",
    )
    .expect_ok();

    // Three sessions, each encrypting and decrypting 2,500 values of 300 bytes (answers of
    // about 8 slots each way) in one call, while the migration runs.
    let sessions: Vec<_> = (0..3)
        .map(|s| {
            let c = c.clone();
            std::thread::spawn(move || {
                c.psql(
                    "mg_app",
                    &format!(
                        "WITH p AS (SELECT array_agg(repeat(chr(65 + (g % 26)), 290) || '-{s}-' || g ORDER BY g) AS v,
                                           array_agg('ctx-{s}-' || g ORDER BY g) AS ctx
                                      FROM generate_series(1, 2500) g),
                              e AS (SELECT v, ctx, credcrypt.encrypt_credentials(v, 'transit:app', ctx) AS ct FROM p)
                         SELECT (credcrypt.decrypt_credentials(ct, ctx) = v)::text || ' ' || pg_catalog.array_length(ct, 1)
                                || ' ' || (SELECT count(DISTINCT x) FROM unnest(ct) x) FROM e"
                    ),
                )
            })
        })
        .collect();
    let o =
        c.psql("mg_owner", "CALL credcrypt.reencrypt_column('mg_pipe', 'secret', 'transit:app', batch_size => 3000)");
    o.expect_ok();
    assert!(o.err.contains("complete — every value is on transit:app v1"), "{}", o.err);
    for s in sessions {
        let o = s.join().expect("session");
        assert_eq!(o.expect_ok(), "true 2500 2500", "{o:?}");
    }
    assert_eq!(usage(c, "mg_pipe"), "transit:transit:app:1:6000");
    assert_eq!(c.sql("SELECT count(*) FROM mg_pipe_audit WHERE token LIKE 'cc1:transit:app:%'"), "12");
    assert_eq!(c.sql("SELECT count(*) FROM mg_pipe_plain WHERE secret = 'sk-' || id"), "6000");
    // Nothing is left in the queue (no slot held, waiting or being served), and calls that
    // each need three times the queue go through one after another.
    assert_eq!(c.sql("SELECT queue_depth FROM credcrypt.status()"), "0");
    for _ in 0..5 {
        let o = c.psql(
            "mg_app",
            "SELECT count(*) FROM unnest(credcrypt.encrypt_credentials(
                 (SELECT array_agg(repeat('x', 900) || g) FROM generate_series(1, 1200) g), 'transit:app'))",
        );
        assert_eq!(o.expect_ok(), "1200");
    }
}

/// OpenBao stopped (SIGSTOP) while a batch to a Transit key is with the worker: the
/// backend's wait ends at `credcrypt.request_timeout_ms` (`58030`), or at once on
/// `pg_cancel_backend` (`57014`); either way the batch in flight leaves nothing written (the
/// rows on the target are exactly those committed batches counted), the run is marked failed, the
/// slots it held come back (the worker frees them when it is done), and the next run
/// completes.
#[test]
fn a_batch_in_flight_ends_exactly_on_timeout_and_cancel() {
    let e = setup();
    let c = &e.c;
    c.sql("DROP TABLE IF EXISTS mg_stall CASCADE");
    c.psql(
        "mg_owner",
        "CREATE TABLE mg_stall (id bigint PRIMARY KEY, owner text NOT NULL DEFAULT 'o', secret text);
         SELECT credcrypt.protect_column('mg_stall', 'secret', key_name => 'local', bind_columns => ARRAY['id']);
         INSERT INTO mg_stall (id, secret) SELECT g, 'sk-' || g FROM generate_series(1, 60000) g;
         SELECT credcrypt.create_decrypted_view('mg_stall', 'mg_stall_plain');",
    )
    .expect_ok();
    let pid = e.bao.pid();
    let signal = |sig: &str| {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().expect("kill").success();
        assert!(ok, "kill -{sig}");
    };
    // OpenBao goes on whatever happens below (the suite's next tests need it).
    struct Thaw(u32);
    impl Drop for Thaw {
        fn drop(&mut self) {
            let _ = Command::new("kill").arg("-CONT").arg(self.0.to_string()).status();
        }
    }
    let _thaw = Thaw(pid);
    let on_target = || -> i64 {
        c.sql("SELECT count(*) FROM mg_stall WHERE secret LIKE 'cc1:transit:%'").parse().expect("a count")
    };
    let run = || {
        c.sql(
            "SELECT state || ' ' || coalesce(split_part(error, ':', 1), '-') || ' ' || changed FROM credcrypt.reencrypt_runs \
              WHERE relid = 'mg_stall'::regclass ORDER BY run_id DESC LIMIT 1",
        )
    };
    // Starts a run in a session (batches of 2,000) with `timeout_ms`, and stops OpenBao once
    // a batch of it has committed: the next batch is in flight.
    let stall = |timeout_ms: u32| -> (credcrypt_blackbox::Session, i32) {
        let before = on_target();
        let mut s = credcrypt_blackbox::Session::open(c, "mg_owner");
        let spid = s.pid();
        s.send(&format!(
            "SET credcrypt.request_timeout_ms = {timeout_ms};
             CALL credcrypt.reencrypt_column('mg_stall', 'secret', 'transit:app', batch_size => 2000)"
        ));
        let deadline = Instant::now() + Duration::from_secs(60);
        while on_target() < before + 2000 {
            assert!(Instant::now() < deadline, "the run made no progress");
            std::thread::sleep(Duration::from_millis(5));
        }
        signal("STOP");
        assert!(on_target() < 60000, "the run finished before OpenBao was stopped");
        (s, spid)
    };

    // The timeout: the backend gives up after 1.5 s (the worker's own OpenBao timeout is 3 s).
    let (mut s, _) = stall(1500);
    let o = s.wait();
    o.expect_error("58030");
    drop(s);
    // Each batch records its progress in its own transaction: the rows on the target are
    // exactly those the committed batches counted.
    let done = on_target();
    assert_eq!(run(), format!("failed 58030 {done}"), "part of a batch was written");

    // The cancel: the backend waits (60 s timeout) until it is cancelled.
    signal("CONT");
    let (mut s, spid) = stall(60000);
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.sql(&format!("SELECT wait_event IS NOT DISTINCT FROM 'Extension' FROM pg_stat_activity WHERE pid = {spid}"))
        != "t"
    {
        assert!(Instant::now() < deadline, "the migration did not wait for the worker");
        std::thread::sleep(Duration::from_millis(20));
    }
    let t0 = Instant::now();
    assert_eq!(c.sql(&format!("SELECT pg_cancel_backend({spid})")), "t");
    let o = s.wait();
    assert!(t0.elapsed() < Duration::from_secs(10), "the cancel took {:?}", t0.elapsed());
    o.expect_error("57014");
    drop(s);
    let done2 = on_target();
    assert!(done2 > done, "the second run made no progress");
    assert_eq!(run(), format!("failed 57014 {}", done2 - done), "part of a batch was written");

    // OpenBao back: the abandoned slots are freed by the worker, and the run completes.
    signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.sql("SELECT queue_depth FROM credcrypt.status()") != "0" {
        assert!(Instant::now() < deadline, "slots stayed busy after OpenBao came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    let o =
        c.psql("mg_owner", "CALL credcrypt.reencrypt_column('mg_stall', 'secret', 'transit:app', batch_size => 2000)");
    o.expect_ok();
    assert_eq!(usage(c, "mg_stall"), "transit:transit:app:1:60000");
    assert_eq!(c.sql("SELECT count(*) FROM mg_stall_plain WHERE secret = 'sk-' || id"), "60000");
}
