//! A dump taken on one PostgreSQL major restores into another with every value readable:
//! the designations, owner RLS and masked view come back, values decrypt with the key they
//! were written with, the trigger keeps encrypting, and no value was encrypted twice.
//!
//! Two halves, both ignored in a plain `cargo test` (they need two servers): scripts/test-matrix
//! runs `write_a_dump_for_another_major` against a PostgreSQL 15 cluster on the host and
//! `restore_a_dump_from_another_major` in each newer major's chroot, with `CC_DUMP_DIR` naming
//! the directory between them (dump, key, digest), and `CC_DUMP_BAO_ADDR` and
//! `CC_DUMP_BAO_TOKEN` an OpenBao server that runs through both halves (its Transit key `app`
//! holds the Transit values and wraps the envelope data keys).

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use credcrypt_blackbox::Cluster;

static SERIAL: Mutex<()> = Mutex::new(());

/// Digest of every stored value (ciphertexts, masks, jsonb): equal before and after restore
/// means nothing was re-encrypted or lost.
const DIGEST: &str = "SELECT md5((SELECT string_agg(api_key || access_token || config::text || api_key_mask || owner_id, ',' ORDER BY id) FROM xm_creds)
     || (SELECT string_agg(t, ',' ORDER BY id) FROM xm_transit) || (SELECT string_agg(e, ',' ORDER BY id) FROM xm_env)
     || (SELECT string_agg(id || wrapped, ',' ORDER BY id) FROM credcrypt.data_keys))";

/// Points the worker at the OpenBao of both halves (and adds `extra` settings).
fn use_bao(c: &Cluster, extra: &str) {
    let addr = std::env::var("CC_DUMP_BAO_ADDR").expect("CC_DUMP_BAO_ADDR: the OpenBao of both halves");
    let token = std::fs::read_to_string(std::env::var("CC_DUMP_BAO_TOKEN").expect("CC_DUMP_BAO_TOKEN: its token file"))
        .expect("token file");
    let file = c.write_key("xm_bao.token", token.trim(), 0o600);
    credcrypt_blackbox::bao::point_at(c, &addr, &format!("credcrypt.bao_token_file = '{file}'\n{extra}"));
}

fn setup() -> (MutexGuard<'static, ()>, Cluster) {
    let roles =
        [("xm_owner", "credcrypt_admin"), ("xm_app", "credcrypt_encryptor, credcrypt_decryptor"), ("xm_report", "")];
    credcrypt_blackbox::serial_with_roles(&SERIAL, &roles, &["xm_owner"])
}

fn dump_dir() -> PathBuf {
    let d = PathBuf::from(std::env::var("CC_DUMP_DIR").expect("CC_DUMP_DIR names the dump directory"));
    std::fs::create_dir_all(&d).expect("dump directory");
    d
}

fn major(c: &Cluster) -> String {
    c.sql("SELECT current_setting('server_version_num')::int / 10000")
}

#[test]
#[ignore = "run by scripts/test-matrix on the host's PostgreSQL 15"]
fn write_a_dump_for_another_major() {
    let (_g, c) = setup();
    let dir = dump_dir();
    use_bao(&c, "");
    c.fresh_db("xm_src");
    let src = |user: &str, sql: &str| c.psql_in("xm_src", user, sql).expect_ok().to_owned();
    src("postgres", "CREATE EXTENSION pg_credcrypt; GRANT CREATE ON SCHEMA public TO xm_owner");
    src(
        "xm_owner",
        "CREATE TABLE xm_creds (id int PRIMARY KEY, owner_id text NOT NULL, api_key text, access_token text, config jsonb);
         GRANT SELECT, INSERT, UPDATE ON xm_creds TO xm_app;
         SELECT credcrypt.protect_column('xm_creds', 'api_key', bind_columns => ARRAY['id'], mask_column => 'api_key_mask');
         SELECT credcrypt.protect_column('xm_creds', 'access_token');
         SELECT credcrypt.protect_column('xm_creds', 'config', bind_columns => ARRAY['id'], json_path => ARRAY['apiKey']);
         SELECT credcrypt.enable_owner_rls('xm_creds', 'owner_id');
         SELECT credcrypt.create_masked_view('xm_creds', 'xm_creds_masked');
         GRANT SELECT ON xm_creds_masked TO xm_report;
         CREATE TABLE xm_transit (id int PRIMARY KEY, t text);
         SELECT credcrypt.protect_column('xm_transit', 't', key_name => 'transit:app', bind_columns => ARRAY['id']);
         CREATE TABLE xm_env (id int PRIMARY KEY, e text);
         SELECT credcrypt.protect_column('xm_env', 'e', key_name => 'envelope:app', bind_columns => ARRAY['id']);
         GRANT SELECT, INSERT ON xm_transit, xm_env TO xm_app;
         INSERT INTO xm_transit SELECT g, 'tr-' || g FROM generate_series(1, 10) g;
         INSERT INTO xm_env SELECT g, 'env-' || g FROM generate_series(1, 10) g;",
    );
    src(
        "xm_app",
        "BEGIN;
         SELECT credcrypt.set_owner('tenant-a');
         INSERT INTO xm_creds (id, owner_id, api_key, access_token, config)
         SELECT g, 'tenant-a', 'sk-xm-' || g, 'tok-' || g, jsonb_build_object('apiKey', 'json-' || g, 'n', g) FROM generate_series(1, 20) g;
         COMMIT;",
    );
    let digest = src("postgres", DIGEST);
    let file = dir.join("xm_src.pgdump").to_string_lossy().into_owned();
    let (ok, out) = c.client("pg_dump", &["-d", "xm_src", "-Fc", "-f", &file]);
    assert!(ok, "{out}");
    let key = std::fs::read_to_string(c.keys.join("current.key")).expect("the cluster's key");
    std::fs::write(dir.join("key"), key).expect("key");
    std::fs::write(dir.join("digest"), digest).expect("digest");
    std::fs::write(dir.join("major"), major(&c)).expect("major");
    c.client("dropdb", &["xm_src"]);
}

#[test]
#[ignore = "run by scripts/test-matrix in a newer major's chroot, after write_a_dump_for_another_major"]
fn restore_a_dump_from_another_major() {
    let (_g, c) = setup();
    let dir = dump_dir();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f} in CC_DUMP_DIR: {e}"));
    let from = read("major");
    assert_ne!(from.trim(), major(&c), "the dump must come from another major");
    // The key the values were written with, as a previous key of this cluster.
    let current = c.keys.join("current.key").to_string_lossy().into_owned();
    let old = c.write_key("xm_dump.key", &read("key"), 0o600);
    use_bao(&c, &format!("credcrypt.local_previous_key_files = '{old}'\n"));
    assert_eq!(c.sql("SHOW credcrypt.local_key_file"), current);
    c.fresh_db("xm_restored");
    let file = dir.join("xm_src.pgdump").to_string_lossy().into_owned();
    let (ok, out) = c.client("pg_restore", &["-d", "xm_restored", "--exit-on-error", &file]);
    assert!(ok, "pg_restore of the PostgreSQL {from} dump: {out}");
    let r = |user: &str, sql: &str| c.psql_in("xm_restored", user, sql).expect_ok().to_owned();
    assert_eq!(r("postgres", DIGEST), read("digest").trim(), "stored values changed in the restore");
    assert_eq!(
        r("postgres", "SELECT count(*) FROM credcrypt.protected_columns_info WHERE table_name = 'xm_creds'"),
        "3"
    );
    // Every value decrypts with its binding (the old key), through the owner's RLS.
    r("xm_owner", "SELECT credcrypt.create_decrypted_view('xm_creds', 'xm_plain'); GRANT SELECT ON xm_plain TO xm_app");
    assert_eq!(
        r(
            "xm_app",
            "BEGIN; SELECT credcrypt.set_owner('tenant-a') \\g /dev/null
             SELECT count(*) FROM xm_plain WHERE api_key = 'sk-xm-' || id AND access_token = 'tok-' || id AND config->>'apiKey' = 'json-' || id;
             COMMIT;"
        ),
        "20"
    );
    // Transit and envelope values (the data keys came back with the dump) decrypt too.
    r(
        "xm_owner",
        "SELECT credcrypt.create_decrypted_view('xm_transit', 'xm_transit_plain'); SELECT credcrypt.create_decrypted_view('xm_env', 'xm_env_plain');
         GRANT SELECT ON xm_transit_plain, xm_env_plain TO xm_app",
    );
    assert_eq!(r("xm_app", "SELECT count(*) FROM xm_transit_plain WHERE t = 'tr-' || id"), "10");
    assert_eq!(r("xm_app", "SELECT count(*) FROM xm_env_plain WHERE e = 'env-' || id"), "10");
    r("xm_app", "INSERT INTO xm_transit VALUES (11, 'tr-11'); INSERT INTO xm_env VALUES (11, 'env-11')");
    assert_eq!(r("xm_app", "SELECT count(*) FROM xm_transit_plain WHERE t = 'tr-' || id"), "11");
    assert_eq!(r("xm_app", "SELECT count(*) FROM xm_env_plain WHERE e = 'env-' || id"), "11");
    // Another owner sees nothing; the masked view shows masks only.
    assert_eq!(
        r(
            "xm_app",
            "BEGIN; SELECT credcrypt.set_owner('tenant-b') \\g /dev/null\nSELECT count(*) FROM xm_creds; COMMIT;"
        ),
        "0"
    );
    assert_eq!(r("xm_report", "SELECT count(*) FROM xm_creds_masked"), "20");
    let masked = r("xm_report", "SELECT string_agg(api_key_mask || config::text, ',') FROM xm_creds_masked");
    assert!(!masked.contains("sk-xm-") && !masked.contains("json-") && !masked.contains("cc1:"), "{masked}");
    // The trigger keeps protecting the restored table, with this cluster's current key.
    let ct = r(
        "xm_app",
        "BEGIN; SELECT credcrypt.set_owner('tenant-a') \\g /dev/null
         INSERT INTO xm_creds (id, owner_id, api_key) VALUES (99, 'tenant-a', 'sk-after-restore') RETURNING api_key;
         COMMIT;",
    );
    assert!(ct.starts_with("cc1:"), "{ct}");
    assert_eq!(r("postgres", "SELECT count(*) FROM credcrypt.security_report() WHERE severity = 'critical'"), "0");
    c.client("dropdb", &["xm_restored"]);
}
