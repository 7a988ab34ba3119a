//! Black-box tests against a running cluster with pg_credcrypt installed (scripts/test.sh).
//!
//! What `#[pg_test]` cannot cover: configuration files and reloads (key rotation, missing or
//! broken keys), ALTER SYSTEM, real login roles, parallel workers, the server log, and whether
//! the server survives hostile input.

use std::sync::{Mutex, MutexGuard};

use credcrypt_blackbox::{test_key, Cluster};

static SERIAL: Mutex<()> = Mutex::new(());

/// Serializes the tests (they share one cluster and its configuration) and resets the
/// configuration to the baseline: the cluster's own `current.key`.
fn setup() -> (MutexGuard<'static, ()>, Cluster) {
    let (guard, c) = credcrypt_blackbox::serial_baseline(&SERIAL);
    c.ensure_login_role("bb_app", "credcrypt_encryptor, credcrypt_decryptor");
    c.ensure_login_role("bb_reporter", "");
    (guard, c)
}

fn kid(c: &Cluster, ct: &str) -> String {
    c.sql(&format!("SELECT key_id FROM credcrypt.ciphertext_info('{ct}')"))
}

#[test]
fn secret_settings_cannot_be_set_by_alter_system_or_seen() {
    let (_g, c) = setup();
    let key = test_key(1);
    // The cluster preloads the library (shared_preload_libraries), so the settings are always
    // defined with their flags; ALTER SYSTEM is refused and nothing reaches postgresql.auto.conf.
    let o = c.psql("postgres", &format!("ALTER SYSTEM SET credcrypt.local_key = '{key}'"));
    assert_eq!(o.sqlstate(), Some("55P02"), "{o:?}");
    o.expect_clean(&key);
    for name in ["local_key_file", "local_previous_key_files"] {
        let o = c.psql("postgres", &format!("ALTER SYSTEM SET credcrypt.{name} = '/tmp/k'"));
        assert_eq!(o.sqlstate(), Some("55P02"), "{o:?}");
    }
    let auto = std::fs::read_to_string(c.data.join("postgresql.auto.conf")).unwrap_or_default();
    assert!(!auto.contains("credcrypt"), "{auto}");
    let all = c.sql("SHOW ALL");
    assert!(all.contains("credcrypt.default_key"));
    assert!(!all.contains("credcrypt.local"), "SHOW ALL lists a secret setting");
    // A non-superuser can neither read nor set them.
    let o = c.psql("bb_app", "SHOW credcrypt.local_key_file");
    assert_eq!(o.sqlstate(), Some("42501"), "{o:?}");
    assert!(!o.err.contains(&c.keys.to_string_lossy().to_string()));
    assert!(!c.psql("bb_app", "SET credcrypt.local_key_file = '/tmp/k'").ok);
    assert!(!c.psql("bb_app", &format!("SELECT set_config('credcrypt.local_key', '{key}', false)")).ok);
}

#[test]
fn app_role_round_trip_and_reporter_is_refused() {
    let (_g, c) = setup();
    let ct =
        c.value("bb_app", "SELECT credcrypt.encrypt_credential('ghp_SECRETMARKER_0123456789', context => 'user:1')");
    assert!(ct.starts_with("cc1:local:local:"), "{ct}");
    let back = c.value("bb_app", &format!("SELECT credcrypt.decrypt_credential('{ct}', 'user:1')"));
    assert_eq!(back, "ghp_SECRETMARKER_0123456789");
    let o = c.psql("bb_reporter", &format!("SELECT credcrypt.decrypt_credential('{ct}', 'user:1')"));
    assert_eq!(o.sqlstate(), Some("42501"));
    o.expect_clean("SECRETMARKER");
    let m = c.value("bb_reporter", "SELECT credcrypt.mask('ghp_SECRETMARKER_0123456789', 4, 4)");
    assert_eq!(m, "ghp_…6789");
}

#[test]
fn rotation_with_previous_key_files() {
    let (_g, c) = setup();
    let k1 = c.write_key("rot1.key", &test_key(11), 0o600);
    let k2 = c.write_key("rot2.key", &test_key(12), 0o600);
    c.configure(&format!("credcrypt.local_key_file = '{k1}'\n"), &k1);
    let old = c.sql("SELECT credcrypt.encrypt_credential('rotate-me', context => 'ctx')");
    let old_kid = kid(&c, &old);

    // Rotate: k2 current, k1 previous. Old values still decrypt; new ones use k2.
    // (The list tolerates spaces and empty items.)
    c.configure(&format!("credcrypt.local_key_file = '{k2}'\ncredcrypt.local_previous_key_files = ' {k1} , '\n"), &k2);
    assert_eq!(c.sql(&format!("SELECT credcrypt.decrypt_credential('{old}', 'ctx')")), "rotate-me");
    let new = c.sql("SELECT credcrypt.encrypt_credential('rotate-me', context => 'ctx')");
    assert_ne!(kid(&c, &new), old_kid);

    // Retire k1: old values now fail with "key id unknown", naming the key id.
    c.configure(&format!("credcrypt.local_key_file = '{k2}'\n"), &k2);
    let o = c.psql("postgres", &format!("SELECT credcrypt.decrypt_credential('{old}', 'ctx')"));
    o.expect_error("42704").expect_clean("rotate-me");
    assert!(o.err.contains(&old_kid), "{}", o.err);
    assert_eq!(c.sql(&format!("SELECT credcrypt.decrypt_credential('{new}', 'ctx')")), "rotate-me");
}

#[test]
fn key_file_replaced_in_place_is_picked_up_by_open_sessions() {
    let (_g, c) = setup();
    let path = c.write_key("inplace.key", &test_key(21), 0o600);
    c.configure(&format!("credcrypt.local_key_file = '{path}'\n"), &path);
    let replacement = c.keys.join("inplace.next");
    std::fs::write(&replacement, test_key(22)).unwrap();
    // One session: encrypt, replace the file from the client side, wait past the 1 s recheck, encrypt.
    let script = format!(
        "SELECT key_id FROM credcrypt.ciphertext_info(credcrypt.encrypt_credential('a'));\n\\! cp {} {path}\nSELECT pg_sleep(1.5);\nSELECT key_id FROM credcrypt.ciphertext_info(credcrypt.encrypt_credential('a'));",
        replacement.display()
    );
    let out = c.psql("postgres", &script);
    let ids: Vec<&str> = out.expect_ok().lines().filter(|l| l.len() == 16).collect();
    assert_eq!(ids.len(), 2, "{out:?}");
    assert_ne!(ids[0], ids[1], "the open session kept the replaced key");
}

#[test]
fn missing_and_broken_key_configuration() {
    let (_g, c) = setup();
    let ct = c.sql("SELECT credcrypt.encrypt_credential('x')");

    c.configure("", "");
    c.psql("postgres", "SELECT credcrypt.encrypt_credential('x')").expect_error("55000");
    c.psql("postgres", &format!("SELECT credcrypt.decrypt_credential('{ct}')")).expect_error("55000");

    let junk = "NOT-BASE64-SECRETMARKER-!!";
    let bad = c.write_key("bad.key", junk, 0o600);
    c.configure(&format!("credcrypt.local_key_file = '{bad}'\n"), &bad);
    let o = c.psql("postgres", "SELECT credcrypt.encrypt_credential('x')");
    o.expect_error("F0000").expect_clean("SECRETMARKER");
    assert!(o.err.contains("credcrypt.local_key_file"), "{}", o.err);

    let short = c.write_key("short.key", "c2hvcnQta2V5LVNFQ1JFVE1BUktFUg==", 0o600);
    c.configure(&format!("credcrypt.local_key_file = '{short}'\n"), &short);
    let o = c.psql("postgres", "SELECT credcrypt.encrypt_credential('x')");
    o.expect_error("F0000").expect_clean("c2hvcnQta2V5");
    assert!(o.err.contains("32"), "{}", o.err);

    let open = c.write_key("open.key", &test_key(31), 0o644);
    c.configure(&format!("credcrypt.local_key_file = '{open}'\n"), &open);
    let o = c.psql("postgres", "SELECT credcrypt.encrypt_credential('x')");
    o.expect_error("F0000").expect_clean(&test_key(31));
    assert!(o.err.contains("0600"), "{}", o.err);

    let good = c.write_key("good.key", &test_key(32), 0o600);
    c.configure(&format!("credcrypt.local_key_file = '{good}'\ncredcrypt.local_key = '{}'\n", test_key(33)), &good);
    c.psql("postgres", "SELECT credcrypt.encrypt_credential('x')").expect_error("F0000").expect_clean(&test_key(33));

    // Inline key alone works (and is discouraged in the docs).
    c.configure(&format!("credcrypt.local_key = '{}'\n", test_key(34)), "");
    assert!(c.sql("SELECT credcrypt.encrypt_credential('x')").starts_with("cc1:"));

    // PostgreSQL logs every changed setting with its new value on reload; the library's log
    // hook replaced that line for the inline key.
    let log = c.log_text();
    assert!(log.contains("new value hidden by pg_credcrypt"), "the reload of credcrypt.local_key was not redacted");
    for secret in [junk, "c2hvcnQta2V5", &test_key(31), &test_key(33), &test_key(34)] {
        assert!(!log.contains(secret), "server log contains key material {secret:?}");
    }
}

#[test]
fn parallel_workers_decrypt() {
    let (_g, c) = setup();
    let out = c.sql(
        "DROP TABLE IF EXISTS bb_par;
         CREATE TABLE bb_par AS SELECT g, credcrypt.encrypt_credential('tok-' || g, context => g::text) AS c FROM generate_series(1, 20000) g;
         ANALYZE bb_par;
         SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0;
         SET max_parallel_workers_per_gather = 2;
         -- force_parallel_mode was renamed debug_parallel_query in PostgreSQL 16.
         SELECT set_config(CASE WHEN current_setting('server_version_num')::int >= 160000
                                THEN 'debug_parallel_query' ELSE 'force_parallel_mode' END, 'on', false);
         EXPLAIN (COSTS OFF) SELECT count(*) FROM bb_par WHERE credcrypt.decrypt_credential(c, g::text) = 'tok-' || g;
         SELECT count(*) FROM bb_par WHERE credcrypt.decrypt_credential(c, g::text) = 'tok-' || g;",
    );
    assert!(out.contains("Gather"), "no parallel plan: {out}");
    assert!(out.ends_with("20000"), "{out}");
    assert!(out.contains("\non\n") || out.starts_with("on\n"), "parallel mode not forced: {out}");
    c.sql("DROP TABLE bb_par");
}

/// A tiny deterministic generator (no dependency needed for test data).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn hostile_inputs_never_crash_the_server() {
    let (_g, c) = setup();
    let start = c.sql("SELECT pg_postmaster_start_time()");
    let good = c.sql("SELECT credcrypt.encrypt_credential('SECRETMARKER-hostile', context => 'c')");
    let mut cases: Vec<String> = vec![
        String::new(),
        "cc1".into(),
        "cc1:".into(),
        "cc1::::::".into(),
        "cc1:local:local:::".into(),
        "cc999999999:x".into(),
        "cc1:transit:k:0:n:vault:v0:".into(),
        "cc1:transit:k:99999999999:n:vault:v1:AAAA".into(),
        format!("{}x", good),
        good[..good.len() - 1].to_string(),
        good.replace(":c:", ":n:"),
        good.replacen("local:local", "transit:local", 1),
        format!("cc1:local:local:{}:n:{}", "0".repeat(16), "A".repeat(100_000)),
    ];
    let mut rng = Lcg(42);
    for _ in 0..300 {
        let mut s: Vec<u8> = good.bytes().collect();
        for _ in 0..(rng.next() % 4 + 1) {
            let i = (rng.next() as usize) % s.len();
            s[i] = b"ABCabc019:_-+/=\\'"[(rng.next() % 17) as usize];
        }
        cases.push(String::from_utf8_lossy(&s).into_owned());
    }
    let mut sql = String::from("CREATE TEMP TABLE hostile(v text);\n");
    for case in &cases {
        sql.push_str(&format!("INSERT INTO hostile VALUES ({});\n", quote(case)));
    }
    sql.push_str(
        "DO $$ DECLARE r record; n int := 0; BEGIN
           FOR r IN SELECT v FROM hostile LOOP
             BEGIN PERFORM credcrypt.decrypt_credential(r.v, 'c'); EXCEPTION WHEN OTHERS THEN n := n + 1; END;
             BEGIN PERFORM credcrypt.decrypt_credential_bytea(r.v); EXCEPTION WHEN OTHERS THEN n := n + 1; END;
             BEGIN PERFORM credcrypt.verify_credential(r.v, 'x', 'c'); EXCEPTION WHEN OTHERS THEN n := n + 1; END;
             BEGIN PERFORM * FROM credcrypt.ciphertext_info(r.v); EXCEPTION WHEN OTHERS THEN n := n + 1; END;
             PERFORM credcrypt.is_encrypted(r.v);
           END LOOP;
           RAISE NOTICE 'errors: %', n;
         END $$;
         SELECT count(*) FROM hostile;",
    );
    let o = c.psql("postgres", &sql);
    o.expect_ok();
    assert!(o.err.contains("errors: "), "{}", o.err);
    assert_eq!(c.sql("SELECT pg_postmaster_start_time()"), start, "the server restarted");
    let log = c.log_text();
    assert!(!log.contains("terminated by signal") && !log.contains("PANIC"), "server crashed");
    assert!(!log.contains("SECRETMARKER"), "server log holds a plaintext");
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
