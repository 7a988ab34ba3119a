//! Black-box tests of the envelope provider (`envelope:<Transit key>`): Transit-wrapped data
//! keys in credcrypt.data_keys, against a real OpenBao dev server.

use std::sync::Mutex;

use credcrypt_blackbox::bao::{point_at, Bao, BaoEnv};
use credcrypt_blackbox::Cluster;

static SERIAL: Mutex<()> = Mutex::new(());

/// OpenBao, and the worker configured with small data-key limits: 100 values per data key, an
/// unwrapped key cached for 2 s.
fn setup() -> BaoEnv {
    let env = BaoEnv::start(&SERIAL, "ev", true);
    configure(&env.c, &env.bao);
    env
}

fn configure(c: &Cluster, bao: &Bao) {
    let token = c.keys.join("bao.token");
    point_at(
        c,
        &bao.addr,
        &format!(
            "credcrypt.bao_token_file = '{}'\ncredcrypt.envelope_max_uses = 100\ncredcrypt.envelope_cache_ttl = 2\n",
            token.display()
        ),
    );
}

fn table(c: &Cluster, name: &str, rows: i32) {
    c.sql(&format!("DROP TABLE IF EXISTS {name} CASCADE; DELETE FROM credcrypt.data_keys"));
    c.psql(
        "ev_owner",
        &format!(
            "CREATE TABLE {name} (id int PRIMARY KEY, secret text);
             SELECT credcrypt.protect_column('{name}', 'secret', key_name => 'envelope:app', bind_columns => ARRAY['id']);
             SELECT credcrypt.create_decrypted_view('{name}', '{name}_plain');
             GRANT SELECT, INSERT, UPDATE ON {name} TO ev_app;
             GRANT SELECT ON {name}_plain TO ev_app;"
        ),
    )
    .expect_ok();
    c.psql("ev_app", &format!("INSERT INTO {name} SELECT g, 'sk-env-' || g FROM generate_series(1, {rows}) g"))
        .expect_ok();
}

fn correct(c: &Cluster, db: &str, name: &str) -> String {
    c.psql_in(db, "postgres", &format!("SELECT count(*) FROM {name}_plain WHERE secret = 'sk-env-' || id"))
        .expect_ok()
        .to_owned()
}

#[test]
fn values_use_many_data_keys_and_rotation_rewraps_them_without_touching_rows() {
    let e = setup();
    let c = &e.c;
    // Functions: round trip, context binding, info.
    let ct = c.value("ev_app", "SELECT credcrypt.encrypt_credential('sk-ENVMARKER', 'envelope:app', 'ctx:1')");
    assert!(ct.starts_with("cc1:envelope:app:") && ct.contains(":c:"), "{ct}");
    c.assert_bound("ev_app", &ct, "ctx:1", "ctx:2", "sk-ENVMARKER", "ENVMARKER");
    assert_eq!(
        c.sql(&format!("SELECT provider || ' ' || key_name || ' ' || (key_version IS NULL) || ' ' || length(key_id) FROM credcrypt.ciphertext_info('{ct}')")),
        "envelope app true 16"
    );
    // 3,000 rows through the trigger: at most 100 values per data key.
    table(c, "ev_rot", 3000);
    let keys: i64 = c.sql("SELECT count(*) FROM credcrypt.data_keys WHERE transit_key = 'app'").parse().unwrap();
    assert!(keys >= 30, "{keys} data keys for 3000 values");
    assert_eq!(
        c.sql("SELECT max(n) FROM (SELECT count(*) n FROM ev_rot, credcrypt.ciphertext_info(secret) i GROUP BY i.key_id) x"),
        "100"
    );
    assert!(!c.sql("SELECT string_agg(wrapped, '') FROM credcrypt.data_keys").contains("sk-env"));
    // A decryptor cannot unwrap a data key through SQL (bare, or wrapped as a cc1 value).
    let wrapped = c.sql("SELECT wrapped FROM credcrypt.data_keys LIMIT 1");
    c.psql("ev_app", &format!("SELECT credcrypt.decrypt_credential_bytea('{wrapped}', NULL, 'transit:app')"))
        .expect_error("22023");
    c.psql(
        "ev_app",
        &format!("SELECT credcrypt.decrypt_credential_bytea(credcrypt.import_transit_ciphertext('{wrapped}', 'transit:app'))"),
    )
    .expect_error("22023");
    assert_eq!(correct(c, "postgres", "ev_rot"), "3000");
    // Rotation: rewraps the data keys; no table row is written.
    let before = c.sql("SELECT md5(string_agg(secret, ',' ORDER BY id)) FROM ev_rot");
    c.sql("SELECT pg_stat_force_next_flush()");
    let upd_before = c.sql("SELECT n_tup_upd FROM pg_stat_user_tables WHERE relid = 'ev_rot'::regclass");
    assert_eq!(c.sql("SELECT credcrypt.rotate_key('envelope:app')"), "2");
    assert_eq!(c.sql("SELECT count(*) FILTER (WHERE wrapped NOT LIKE 'vault:v2:%') FROM credcrypt.data_keys"), "0");
    c.sql("SELECT pg_stat_force_next_flush()");
    assert_eq!(c.sql("SELECT n_tup_upd FROM pg_stat_user_tables WHERE relid = 'ev_rot'::regclass"), upd_before);
    assert_eq!(c.sql("SELECT md5(string_agg(secret, ',' ORDER BY id)) FROM ev_rot"), before);
    assert_eq!(correct(c, "postgres", "ev_rot"), "3000", "values decrypt through the rewrapped keys");
    assert_eq!(
        c.psql("ev_owner", "SELECT source || ' ' || key_name || ' v' || key_version || ' ' || current || ' ' || \"values\" FROM credcrypt.key_usage('ev_rot')")
            .expect_ok(),
        "envelope envelope:app v2 true 3000"
    );
    // Migrating local values to envelope is an ordinary re-encryption.
    c.sql("DROP TABLE IF EXISTS ev_mig CASCADE");
    c.psql(
        "ev_owner",
        "CREATE TABLE ev_mig (id int PRIMARY KEY, secret text);
         INSERT INTO ev_mig SELECT g, 'sk-env-' || g FROM generate_series(1, 500) g;
         SELECT credcrypt.protect_column('ev_mig', 'secret', key_name => 'local', bind_columns => ARRAY['id'], existing_values => 'migrate');
         SELECT credcrypt.create_decrypted_view('ev_mig', 'ev_mig_plain');",
    )
    .expect_ok();
    c.psql("ev_owner", "CALL credcrypt.reencrypt_column('ev_mig', 'secret', 'envelope:app')").expect_ok();
    assert_eq!(c.sql("SELECT count(*) FROM ev_mig WHERE secret LIKE 'cc1:envelope:app:%'"), "500");
    assert_eq!(correct(c, "postgres", "ev_mig"), "500");
}

#[test]
fn restart_dump_restore_and_tampered_wrapped_keys() {
    let e = setup();
    let c = &e.c;
    table(c, "ev_dur", 1000);
    // Restart PostgreSQL: every value still decrypts (keys unwrapped again).
    c.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !c.psql("postgres", "SELECT credcrypt.encrypt_credential('warm-up', 'transit:app')").ok {
        assert!(std::time::Instant::now() < deadline, "the worker did not come back after the restart");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(correct(c, "postgres", "ev_dur"), "1000");
    // Dump and restore into another database (credcrypt.data_keys travels with pg_dump).
    c.client("dropdb", &["--if-exists", "ev_restored"]);
    let file = c.keys.join("ev_dur.pgdump").to_string_lossy().into_owned();
    let (ok, out) = c.client("pg_dump", &["-d", "postgres", "-Fc", "-f", &file]);
    assert!(ok, "{out}");
    let (ok, out) = c.client("createdb", &["ev_restored"]);
    assert!(ok, "{out}");
    let (_, out) = c.client("pg_restore", &["-d", "ev_restored", &file]);
    assert!(!out.contains("data_keys"), "data keys did not restore: {out}");
    assert_eq!(correct(c, "ev_restored", "ev_dur"), "1000");
    c.client("dropdb", &["ev_restored"]);
    // A wrapped key replaced by another data key's: it does not unwrap (each is bound to its own
    // id by its associated data), so the value is refused, never decrypted with the wrong key.
    c.sql(
        "WITH k AS (SELECT id, wrapped, lead(wrapped) OVER (ORDER BY id) AS other FROM credcrypt.data_keys WHERE transit_key = 'app')
         UPDATE credcrypt.data_keys d SET wrapped = k.other FROM k WHERE d.id = k.id AND k.other IS NOT NULL
           AND d.id = (SELECT min(id) FROM credcrypt.data_keys)",
    );
    let swapped = c.sql("SELECT id FROM ev_dur, credcrypt.ciphertext_info(secret) i WHERE i.key_id = (SELECT min(id) FROM credcrypt.data_keys) LIMIT 1");
    assert!(!swapped.is_empty());
    c.psql("ev_app", &format!("SELECT secret FROM ev_dur_plain WHERE id = {swapped}")).expect_error("42704");
    // A wrapped key that does not unwrap at all: a clear error.
    c.sql("UPDATE credcrypt.data_keys SET wrapped = 'vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' WHERE id = (SELECT max(id) FROM credcrypt.data_keys)");
    let broken = c.sql("SELECT id FROM ev_dur, credcrypt.ciphertext_info(secret) i WHERE i.key_id = (SELECT max(id) FROM credcrypt.data_keys) LIMIT 1");
    c.psql("ev_app", &format!("SELECT secret FROM ev_dur_plain WHERE id = {broken}")).expect_error("42704");
}

#[test]
fn cached_keys_outlive_an_outage_only_for_the_cache_ttl() {
    let mut e = setup();
    table(&e.c, "ev_ttl", 10);
    let listen = e.bao.addr.trim_start_matches("http://").to_owned();
    // One session: decrypt (keys unwrapped and cached), OpenBao stopped, decrypt again from the
    // cache, wait past credcrypt.envelope_cache_ttl (2 s), decrypt: now OpenBao is needed.
    let o = e.c.psql(
        "ev_app",
        &format!(
            "SELECT count(secret) FROM ev_ttl_plain;
             \\! pkill -9 -f 'dev-listen-address={listen}'
             SELECT 'cached:' || count(secret) FROM ev_ttl_plain;
             SELECT pg_sleep(2.5);
             SELECT count(secret) FROM ev_ttl_plain;"
        ),
    );
    assert!(o.out.contains("cached:10"), "{o:?}");
    assert_eq!(o.sqlstate(), Some("58030"), "{o:?}");
    e.bao.kill();
}

/// A natural-key upsert whose INSERT half makes the backend's first envelope value (so the
/// trigger creates a data key, an SPI INSERT that advances the command counter mid-statement)
/// is still recognised as this statement's own value and re-bound to the existing row.
#[test]
fn an_upsert_that_creates_a_data_key_is_rebound_to_the_existing_row() {
    let e = setup();
    let c = &e.c;
    c.sql("DROP TABLE IF EXISTS ev_upsert CASCADE; DELETE FROM credcrypt.data_keys");
    c.psql(
        "ev_owner",
        "CREATE TABLE ev_upsert (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, user_id text, provider text,
                                 secret text, UNIQUE (user_id, provider));
         SELECT credcrypt.protect_column('ev_upsert', 'secret', key_name => 'envelope:app', bind_columns => ARRAY['id']);
         SELECT credcrypt.create_decrypted_view('ev_upsert', 'ev_upsert_plain');
         GRANT SELECT, INSERT, UPDATE ON ev_upsert TO ev_app;
         GRANT USAGE ON SEQUENCE ev_upsert_id_seq TO ev_app;
         GRANT SELECT ON ev_upsert_plain TO ev_app;",
    )
    .expect_ok();
    c.psql("ev_app", "INSERT INTO ev_upsert (user_id, provider, secret) VALUES ('u1', 'openai', 'sk-first')")
        .expect_ok();
    // A new session: its first envelope value creates a data key inside the upsert.
    c.psql(
        "ev_app",
        "INSERT INTO ev_upsert (user_id, provider, secret) VALUES ('u1', 'openai', 'sk-second')
         ON CONFLICT (user_id, provider) DO UPDATE SET secret = EXCLUDED.secret",
    )
    .expect_ok();
    assert_eq!(c.sql("SELECT count(*) FROM credcrypt.data_keys"), "2");
    assert_eq!(c.psql("ev_app", "SELECT secret FROM ev_upsert_plain WHERE user_id = 'u1'").expect_ok(), "sk-second");
    // The next statement of the transaction is another statement: a value the previous one
    // produced (while creating a data key) and copied to another row is refused, not re-bound.
    let o = c.psql(
        "ev_app",
        "BEGIN;
         INSERT INTO ev_upsert (user_id, provider, secret) VALUES ('u2', 'openai', 'sk-u2-SECRETMARKER');
         UPDATE ev_upsert SET secret = (SELECT secret FROM ev_upsert WHERE user_id = 'u2') WHERE user_id = 'u1';
         COMMIT;",
    );
    o.expect_error("39000").expect_clean("SECRETMARKER");
    assert_eq!(c.psql("ev_app", "SELECT secret FROM ev_upsert_plain WHERE user_id = 'u1'").expect_ok(), "sk-second");
    c.sql("DROP TABLE ev_upsert CASCADE");
}

/// Third attack, F6: a wrapped data key unwraps only with its associated data, which no SQL
/// caller may pass — so neither a copy kept from before a rotation nor one taken to another
/// database (a dump) decrypts through `decrypt_credential_bytea`; values keep decrypting.
#[test]
fn wrapped_data_keys_never_unwrap_through_sql_not_even_old_copies_or_other_databases() {
    let e = setup();
    let c = &e.c;
    table(c, "ev_f6", 0);
    c.psql("ev_app", "INSERT INTO ev_f6 SELECT g, 'sk-F6-SECRETMARKER-' || g FROM generate_series(1, 5) g").expect_ok();
    assert_eq!(c.sql("SELECT bool_and(bound) FROM credcrypt.data_keys"), "t");
    let (id, wrapped) = {
        let row = c.sql("SELECT id || ' ' || wrapped FROM credcrypt.data_keys LIMIT 1");
        let (a, b) = row.split_once(' ').expect("a data key");
        (a.to_owned(), b.to_owned())
    };
    let unwrap = |db: &str, ctx: &str| {
        c.psql_in(
            db,
            "postgres",
            &format!("SELECT credcrypt.decrypt_credential_bytea('{wrapped}', {ctx}, 'transit:app')"),
        )
    };
    // The current key: refused by value; with its associated data as context: refused.
    unwrap("postgres", "NULL").expect_error("22023");
    unwrap("postgres", &format!("'pg_credcrypt/data-key/v1:{id}'")).expect_error("22023");
    // After a rotation the kept copy is no longer in the table: Transit refuses it without its
    // associated data.
    c.psql("ev_owner", "SELECT credcrypt.rotate_key('envelope:app')").expect_ok();
    assert_ne!(c.sql(&format!("SELECT wrapped FROM credcrypt.data_keys WHERE id = '{id}'")), wrapped);
    unwrap("postgres", "NULL").expect_error("39000");
    // Another database (a restored dump elsewhere) does not have the row: the same.
    c.client("dropdb", &["--if-exists", "ev_f6_other"]);
    let (ok, out) = c.client("createdb", &["ev_f6_other"]);
    assert!(ok, "{out}");
    c.psql_in("ev_f6_other", "postgres", "CREATE EXTENSION pg_credcrypt").expect_ok();
    let o = c.psql_in(
        "ev_f6_other",
        "postgres",
        &format!("SELECT credcrypt.decrypt_credential_bytea('{wrapped}', NULL, 'transit:app')"),
    );
    assert_eq!(o.sqlstate(), Some("39000"), "{o:?}");
    c.client("dropdb", &["ev_f6_other"]);
    // Encrypting with the reserved context is refused too (no forged wrapped key).
    c.psql(
        "ev_app",
        &format!("SELECT credcrypt.encrypt_credential('x', 'transit:app', 'pg_credcrypt/data-key/v1:{id}')"),
    )
    .expect_error("22023");
    // The values read back after the rotation, through a fresh unwrap.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(c.value("ev_app", "SELECT count(*) FROM ev_f6_plain WHERE secret LIKE 'sk-F6-SECRETMARKER-%'"), "5");
}

/// A query with a parallel plan: decrypting envelope values reads their data keys inside the
/// parallel query (PostgreSQL refuses a new snapshot there: it failed with "cannot update
/// SecondarySnapshot during a parallel operation"), and encrypting, which may write a data key,
/// is never planned in parallel (it failed the same way).
#[test]
fn parallel_queries_decrypt_and_encrypt_envelope_values() {
    let e = setup();
    let c = &e.c;
    table(c, "ev_par", 3000);
    // A new session: no data key cached, so the decryption reads them in the parallel query.
    let parallel = "SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0;
                    SET max_parallel_workers_per_gather = 2;";
    let plan = c.psql(
        "postgres",
        &format!("{parallel} EXPLAIN (COSTS OFF) SELECT count(*) FROM ev_par_plain WHERE secret = 'sk-env-' || id"),
    );
    assert!(plan.expect_ok().contains("Gather"), "not a parallel plan: {}", plan.expect_ok());
    assert_eq!(
        c.psql("postgres", &format!("{parallel} SELECT count(*) FROM ev_par_plain WHERE secret = 'sk-env-' || id"))
            .expect_ok(),
        "3000"
    );
    let enc = format!(
        "{parallel} SELECT count(credcrypt.encrypt_credential('sk-env-' || id, 'envelope:app', 'ctx')) FROM ev_par"
    );
    assert_eq!(c.psql("postgres", &enc).expect_ok(), "3000");
    let again = format!(
        "{parallel} SELECT count(credcrypt.reencrypt_credential(credcrypt.encrypt_credential('sk-' || id, 'local', 'c'), 'c', 'envelope:app')) FROM ev_par"
    );
    assert_eq!(c.psql("postgres", &again).expect_ok(), "3000");
    // Through a function of the caller's marked PARALLEL SAFE, an encryption does run in a
    // parallel query: under a key with catalogs it is refused (its erasure check could read a
    // snapshot from before a shred_key, and remember that), under the local key it works.
    c.sql(
        "CREATE OR REPLACE FUNCTION ev_wrap(x text, k text) RETURNS text LANGUAGE plpgsql PARALLEL SAFE
           AS $f$ BEGIN RETURN credcrypt.encrypt_credential(x, k, 'c'); END $f$",
    );
    let wrapped = |k: &str| format!("{parallel} SELECT count(ev_wrap(secret, '{k}')) FROM ev_par");
    let plan = c.psql(
        "postgres",
        &format!("{parallel} EXPLAIN (COSTS OFF) SELECT count(ev_wrap(secret, 'local')) FROM ev_par"),
    );
    assert!(plan.expect_ok().contains("Gather"), "not a parallel plan: {}", plan.expect_ok());
    c.psql("postgres", &wrapped("envelope:app")).expect_error("0A000");
    c.psql("postgres", &wrapped("transit:app")).expect_error("0A000");
    assert_eq!(c.psql("postgres", &wrapped("local")).expect_ok(), "3000");
    for f in [
        "credcrypt.encrypt_credential(secret, 'local')",
        "credcrypt.encrypt_credentials(ARRAY[secret], 'local')",
        "credcrypt.reencrypt_credential(secret, 'c', 'local')",
        "credcrypt.reencrypt_credentials(ARRAY[secret], ARRAY['c'], 'local')",
    ] {
        let plan = c.psql("postgres", &format!("{parallel} EXPLAIN (COSTS OFF) SELECT {f} FROM ev_par"));
        assert!(!plan.expect_ok().contains("Gather"), "{f} planned in parallel: {}", plan.expect_ok());
    }
}
