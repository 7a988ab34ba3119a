//! Black-box tests of the OpenBao Transit provider against a real OpenBao dev server and the
//! preloaded test cluster (worker, shared-memory queue, batching, auth, failover, outages).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use credcrypt_blackbox::bao::{write_secret_file, Bao, BaoEnv};
use credcrypt_blackbox::Cluster;

static SERIAL: Mutex<()> = Mutex::new(());

/// Starts OpenBao, writes a policy-limited token file, points the cluster's worker at it and
/// waits until the worker reports the address.
fn setup() -> BaoEnv {
    BaoEnv::start(&SERIAL, "tr", false)
}

fn point_at(c: &Cluster, addrs: &str, auth: &str) {
    credcrypt_blackbox::bao::point_at(c, addrs, auth);
}

#[test]
fn round_trip_formats_and_bulk() {
    let e = setup();
    let c = &e.c;
    let ct =
        c.value("tr_app", "SELECT credcrypt.encrypt_credential('sk-transit-SECRETMARKER', 'transit:app', 'owner:1')");
    assert!(ct.starts_with("cc1:transit:app:1:c:vault:v1:"), "{ct}");
    c.assert_bound("tr_app", &ct, "owner:1", "owner:2", "sk-transit-SECRETMARKER", "SECRETMARKER");
    c.psql("tr_app", &format!("SELECT credcrypt.decrypt_credential('{ct}')")).expect_error("39000");
    assert_eq!(
        c.psql("tr_app", &format!("SELECT credcrypt.verify_credential('{ct}', 'sk-transit-SECRETMARKER', 'owner:1')"))
            .expect_ok(),
        "t"
    );
    assert_eq!(
        c.sql(&format!(
            "SELECT provider || '/' || key_name || '/' || key_version FROM credcrypt.ciphertext_info('{ct}')"
        )),
        "transit/app/1"
    );

    // A bare vault: value (as an application calling Transit directly stores it).
    let bare =
        e.bao.must(&["write", "-field=ciphertext", "transit/encrypt/app", "plaintext=YXBwLXZhbHVl"]).trim().to_owned();
    assert_eq!(
        c.psql("tr_app", &format!("SELECT credcrypt.decrypt_credential('{bare}', key_name => 'transit:app')"))
            .expect_ok(),
        "app-value"
    );
    let imported = c.sql(&format!("SELECT credcrypt.import_transit_ciphertext('{bare}', 'transit:app')"));
    assert_eq!(imported, format!("cc1:transit:app:1:n:{bare}"));
    assert_eq!(
        c.psql("tr_app", &format!("SELECT credcrypt.decrypt_credential('{imported}')")).expect_ok(),
        "app-value"
    );

    // Bulk: 2,000 values with per-value contexts in one call, then back, mixed with local values.
    let out = c.psql(
        "tr_app",
        "WITH v AS MATERIALIZED (SELECT array_agg('tok-' || g ORDER BY g) p, array_agg('ctx-' || g ORDER BY g) x FROM generate_series(1, 2000) g),
              e AS MATERIALIZED (SELECT credcrypt.encrypt_credentials(p, 'transit:app', x) c, p, x FROM v),
              d AS MATERIALIZED (SELECT credcrypt.decrypt_credentials(c, x) d, p FROM e)
         SELECT count(*) FILTER (WHERE u.dv = u.pv), count(*) FROM d, unnest(d.d, d.p) AS u(dv, pv)",
    );
    assert_eq!(out.expect_ok(), "2000|2000");
    let mixed = c.psql(
        "tr_app",
        "SELECT array_to_string(credcrypt.decrypt_credentials(ARRAY[
            credcrypt.encrypt_credential('L1', 'local'), NULL, credcrypt.encrypt_credential('T1', 'transit:other')]), ',', 'null')",
    );
    assert_eq!(mixed.expect_ok(), "L1,null,T1");
    // 64 KiB values go through the queue; larger ones are refused with a clear error.
    assert_eq!(
        c.psql("tr_app", "SELECT length(credcrypt.decrypt_credential(credcrypt.encrypt_credential(repeat('x', 65536), 'transit:app')))").expect_ok(),
        "65536"
    );
    c.psql("tr_app", "SELECT credcrypt.encrypt_credential(repeat('x', 65537), 'transit:app')").expect_error("54000");
}

#[test]
fn concurrent_sessions_are_coalesced_and_correct() {
    let e = setup();
    let c = &e.c;
    let before: i64 = c.sql("SELECT batches FROM credcrypt.status()").parse().unwrap();
    let handles: Vec<_> = (0..16)
        .map(|s| {
            let c = c.clone();
            std::thread::spawn(move || {
                let sql = format!(
                    "SELECT count(*) FILTER (WHERE credcrypt.decrypt_credential(credcrypt.encrypt_credential('s{s}-' || g, 'transit:app', 'c' || g), 'c' || g) = 's{s}-' || g)
                       FROM generate_series(1, 150) g"
                );
                c.value("tr_app", &sql)
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), "150");
    }
    let (batches, mean): (i64, f64) = {
        let r = c.sql("SELECT batches || '|' || coalesce(mean_batch_size, 0) FROM credcrypt.status()");
        let (b, m) = r.split_once('|').unwrap();
        (b.parse().unwrap(), m.parse().unwrap())
    };
    let used = batches - before;
    assert!(used > 0 && used < 16 * 150 * 2, "no coalescing: {used} batches for {} values", 16 * 150 * 2);
    assert!(mean > 1.0, "mean batch size {mean}");
}

#[test]
fn key_problems_have_clear_errors() {
    let e = setup();
    let c = &e.c;
    c.psql("tr_app", "SELECT credcrypt.encrypt_credential('x', 'transit:signing')").expect_error("42809");
    c.psql("tr_app", "SELECT credcrypt.encrypt_credential('x', 'transit:missing')").expect_error("42704");
    e.bao.must(&["write", "-f", "transit/keys/nopolicy"]);
    c.psql("tr_app", "SELECT credcrypt.encrypt_credential('x', 'transit:nopolicy')").expect_error("28000");
    // Rotation: new values use the new version; old values still decrypt.
    let old = c.sql("SELECT credcrypt.encrypt_credential('rot', 'transit:app')");
    assert_eq!(c.sql("SELECT credcrypt.rotate_key('transit:app')"), "2");
    let new = c.sql("SELECT credcrypt.encrypt_credential('rot', 'transit:app')");
    assert!(new.starts_with("cc1:transit:app:2:n:vault:v2:"), "{new}");
    assert_eq!(c.sql(&format!("SELECT credcrypt.decrypt_credential('{old}')")), "rot");
    // Only credcrypt_admin may rotate or read the status.
    assert_eq!(c.psql("tr_app", "SELECT credcrypt.rotate_key('transit:app')").sqlstate(), Some("42501"));
    assert_eq!(c.psql("tr_app", "SELECT * FROM credcrypt.status()").sqlstate(), Some("42501"));
}

#[test]
fn bad_token_then_approle_with_short_ttl() {
    let e = setup();
    let c = &e.c;
    let bad = c.keys.join("bad.token");
    write_secret_file(&bad, "s.this-token-is-not-valid");
    point_at(c, &e.bao.addr, &format!("credcrypt.bao_token_file = '{}'\n", bad.display()));
    let o = c.psql("tr_app", "SELECT credcrypt.encrypt_credential('x', 'transit:app')");
    o.expect_error("28000").expect_clean("this-token-is-not-valid");

    // AppRole whose tokens live 3 s: the worker renews or logs in again and keeps serving.
    e.bao.must(&[
        "write",
        "auth/approle/role/credcrypt",
        "token_policies=credcrypt",
        "token_ttl=3s",
        "token_max_ttl=6s",
    ]);
    let sid = c.keys.join("secret.id");
    write_secret_file(&sid, "credcrypt-secret-0001");
    point_at(
        c,
        &e.bao.addr,
        &format!("credcrypt.bao_role_id = 'credcrypt-role'\ncredcrypt.bao_secret_id_file = '{}'\n", sid.display()),
    );
    for _ in 0..4 {
        let ct = c.value("tr_app", "SELECT credcrypt.encrypt_credential('approle', 'transit:app')");
        assert_eq!(c.psql("tr_app", &format!("SELECT credcrypt.decrypt_credential('{ct}')")).expect_ok(), "approle");
        std::thread::sleep(Duration::from_secs(2));
    }
    let renewals: i64 = c.sql("SELECT token_renewals FROM credcrypt.status()").parse().unwrap();
    assert!(renewals >= 2, "token renewals/logins: {renewals}");
    assert!(!c.log_text().contains("credcrypt-secret-0001"), "secret id in the server log");
}

#[test]
fn failover_to_the_second_address() {
    let e = setup();
    let c = &e.c;
    let dead = format!("http://127.0.0.1:{}", credcrypt_blackbox::bao::free_port());
    let token = c.keys.join("bao.token");
    point_at(c, &format!("{dead}, {}", e.bao.addr), &format!("credcrypt.bao_token_file = '{}'\n", token.display()));
    let ct = c.value("tr_app", "SELECT credcrypt.encrypt_credential('fo', 'transit:app')");
    assert!(ct.starts_with("cc1:transit:app:"));
    let failovers: i64 = c.sql("SELECT failovers FROM credcrypt.status()").parse().unwrap();
    assert!(failovers >= 1);
}

#[test]
fn outage_fails_closed_then_falls_back_only_when_asked_and_recovers() {
    let mut e = setup();
    let c = &e.c;
    c.sql(
        "DROP TABLE IF EXISTS tr_outage; CREATE TABLE tr_outage(v text); GRANT INSERT, SELECT ON tr_outage TO tr_app;",
    );
    let port: u16 = e.bao.addr.rsplit(':').next().unwrap().parse().unwrap();
    e.bao.kill();
    // Fail closed: the statement errors (not a hang: statement_timeout would say 57014) and no row is written.
    let o = c.psql(
        "tr_app",
        "SET statement_timeout = '30s'; INSERT INTO tr_outage SELECT credcrypt.encrypt_credential('down-SECRETMARKER', 'transit:app')",
    );
    o.expect_error("58030").expect_clean("SECRETMARKER");
    assert_eq!(c.sql("SELECT count(*) FROM tr_outage"), "0");
    // Decrypting a Transit value while OpenBao is down: a clear error, no fallback.
    c.psql(
        "tr_app",
        "SELECT credcrypt.decrypt_credential('cc1:transit:app:1:n:vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA')",
    )
    .expect_error("58030");
    // Explicit fallback: written with the local key, with a WARNING, and counted.
    let o = c.psql(
        "postgres",
        "SET credcrypt.fallback = 'local'; INSERT INTO tr_outage SELECT credcrypt.encrypt_credential('down', 'transit:app'); SELECT v FROM tr_outage",
    );
    assert!(o.expect_ok().starts_with("cc1:local:local:"), "{o:?}");
    assert!(o.err.contains("WARNING") && o.err.contains("local key"), "{}", o.err);
    let fb: i64 = c.sql("SELECT fallback_encryptions FROM credcrypt.status()").parse().unwrap();
    assert!(fb >= 1);
    // Only a superuser may turn the fallback on.
    assert!(!c.psql("tr_app", "SET credcrypt.fallback = 'local'").ok);
    // OpenBao back on the same address: works again without restarting PostgreSQL.
    let bao2 = Bao::start(port, &c.keys.join("bao2"));
    bao2.setup("1h");
    let token = c.keys.join("bao.token");
    write_secret_file(&token, &bao2.token("1h"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = c.psql("tr_app", "SELECT credcrypt.encrypt_credential('back', 'transit:app')");
        if o.ok {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {}", o.err);
        std::thread::sleep(Duration::from_millis(200));
    }
    e.bao = bao2;
}

#[test]
fn cancel_and_statement_timeout_while_waiting_and_worker_restart() {
    let e = setup();
    let c = &e.c;
    // Freeze OpenBao: the worker's HTTP call hangs; the backend's wait must still end.
    let pid = freeze(&e);
    // The deadline is honoured within 100 ms: timed inside the server, around the statement.
    let o =
        c.psql("tr_app", "SET statement_timeout = '700ms'; SELECT credcrypt.encrypt_credential('x', 'transit:app');");
    assert_eq!(o.sqlstate(), Some("57014"), "{o:?}");
    let o2 = c.psql(
        "tr_app",
        "SET statement_timeout = '700ms';
         DO $$ DECLARE t0 timestamptz := clock_timestamp(); BEGIN
           BEGIN PERFORM credcrypt.encrypt_credential('x', 'transit:app');
           EXCEPTION WHEN query_canceled THEN
             RAISE NOTICE 'cancelled after % ms', round(extract(epoch FROM clock_timestamp() - t0) * 1000);
           END;
         END $$;",
    );
    let ms: f64 = o2
        .err
        .split("cancelled after ")
        .nth(1)
        .and_then(|r| r.split(" ms").next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no cancellation timing: {o2:?}"));
    assert!((690.0..800.0).contains(&ms), "statement_timeout of 700 ms honoured after {ms} ms");
    let o = c.psql(
        "tr_app",
        "SET credcrypt.request_timeout_ms = 700; SELECT credcrypt.encrypt_credential('x', 'transit:app')",
    );
    assert_eq!(o.sqlstate(), Some("58030"), "{o:?}");
    signal(pid, "CONT");
    // The slots given up were recycled: the queue keeps serving.
    for _ in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !c.psql("tr_app", "SELECT credcrypt.encrypt_credential('y', 'transit:app')").ok {
            assert!(Instant::now() < deadline, "queue did not recover");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Kill the worker: the postmaster restarts it and it serves again.
    let old: i32 = c.sql("SELECT worker_pid FROM credcrypt.status()").parse().unwrap();
    c.sql(&format!("SELECT pg_terminate_backend({old})"));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let o = c.psql("tr_app", "SELECT credcrypt.encrypt_credential('z', 'transit:app')");
        let now: String = c.sql("SELECT coalesce(worker_pid, 0) FROM credcrypt.status()");
        if o.ok && now != "0" && now != old.to_string() {
            break;
        }
        assert!(Instant::now() < deadline, "worker not restarted: {}", o.err);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sealed_server_is_a_clear_error() {
    let e = setup();
    let c = &e.c;
    e.bao.must(&["operator", "seal"]);
    let o = c.psql("tr_app", "SELECT credcrypt.encrypt_credential('x', 'transit:app')");
    o.expect_error("58030");
    assert!(o.err.to_lowercase().contains("sealed"), "{}", o.err);
}

/// Stops (SIGSTOP) the OpenBao server of `e` and returns its pid.
fn freeze(e: &BaoEnv) -> u32 {
    let pid = e.bao.pid();
    signal(pid, "STOP");
    pid
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap().success();
    assert!(ok);
}

#[test]
fn one_bad_value_fails_only_its_own_statement() {
    let e = setup();
    let c = &e.c;
    let good = c.sql("SELECT credcrypt.encrypt_credential('good-value', 'transit:app', 'k')");
    let mut bad = good.clone().into_bytes();
    let n = bad.len();
    bad[n - 3] = if bad[n - 3] == b'A' { b'B' } else { b'A' };
    let bad = String::from_utf8(bad).unwrap();
    // Eight sessions at once, one of them decrypting a tampered value: the worker may put them
    // in one Transit batch; only the tampered value's statement fails.
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let c = c.clone();
            let v = if i == 3 { bad.clone() } else { good.clone() };
            std::thread::spawn(move || {
                let sql = format!("SELECT count(*) FROM generate_series(1, 40) g WHERE credcrypt.decrypt_credential('{v}', 'k') = 'good-value'");
                c.psql("tr_app", &sql)
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let o = h.join().unwrap();
        if i == 3 {
            assert_eq!(o.sqlstate(), Some("39000"), "{o:?}");
        } else {
            assert_eq!(o.expect_ok(), "40");
        }
    }
}

#[test]
fn persistent_openbao_restart_keeps_values_readable() {
    let e = setup();
    let c = &e.c;
    let dir = c.keys.join("bao-raft");
    let _ = std::fs::remove_dir_all(&dir);
    let mut bao = credcrypt_blackbox::bao::PersistentBao::start(&dir);
    let sid = c.keys.join("raft-secret.id");
    write_secret_file(&sid, "credcrypt-secret-0001");
    point_at(
        c,
        &bao.addr,
        &format!("credcrypt.bao_role_id = 'credcrypt-role'\ncredcrypt.bao_secret_id_file = '{}'\n", sid.display()),
    );
    let ct = c.value("tr_app", "SELECT credcrypt.encrypt_credential('survives', 'transit:app', 'k')");
    bao.kill();
    c.psql("tr_app", &format!("SELECT credcrypt.decrypt_credential('{ct}', 'k')")).expect_error("58030");
    // Same data, auto-unsealed by the static seal: old values decrypt, PostgreSQL untouched.
    bao.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = c.psql("tr_app", &format!("SELECT credcrypt.decrypt_credential('{ct}', 'k')"));
        if o.ok {
            assert_eq!(o.out, "survives");
            break;
        }
        assert!(Instant::now() < deadline, "no recovery after restart: {}", o.err);
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn protected_column_with_a_transit_key_fails_closed_during_an_outage() {
    let mut e = setup();
    let c = &e.c;
    c.sql(
        "DROP TABLE IF EXISTS tr_protected CASCADE;
         CREATE TABLE tr_protected (id int PRIMARY KEY, owner text, token text);
         SELECT credcrypt.protect_column('tr_protected', 'token', key_name => 'transit:app', bind_columns => ARRAY['id'],
                                         mask_column => 'token_mask');
         SELECT credcrypt.create_decrypted_view('tr_protected', 'tr_protected_plain');
         GRANT SELECT, INSERT, UPDATE ON tr_protected TO tr_app;",
    );
    c.psql(
        "tr_app",
        "INSERT INTO tr_protected (id, owner, token) VALUES (1, 'a', 'gho_TRANSITMARKER_0001'), (2, 'b', 'gho_TRANSITMARKER_0002');
         INSERT INTO tr_protected (id, owner, token) VALUES (1, 'a', 'gho_TRANSITMARKER_0003')
             ON CONFLICT (id) DO UPDATE SET token = EXCLUDED.token;",
    )
    .expect_ok();
    let stored = c.sql("SELECT string_agg(token || ' ' || token_mask, ',' ORDER BY id) FROM tr_protected");
    assert!(!stored.contains("TRANSITMARKER"), "{stored}");
    assert!(stored.starts_with("cc1:transit:app:1:c:vault:v1:") && stored.contains(" …0003"), "{stored}");
    assert_eq!(
        c.psql("tr_app", "SELECT string_agg(token, ',' ORDER BY id) FROM tr_protected_plain").expect_ok(),
        "gho_TRANSITMARKER_0003,gho_TRANSITMARKER_0002"
    );
    // Row swap is caught by Transit's own authentication of the associated data.
    c.psql("tr_app", "UPDATE tr_protected SET token = (SELECT token FROM tr_protected WHERE id = 1) WHERE id = 2")
        .expect_error("39000");

    // OpenBao down, no fallback: the INSERT fails and nothing is stored; updates that leave
    // the protected value alone still work (they need no key).
    e.bao.kill();
    c.psql("tr_app", "INSERT INTO tr_protected (id, owner, token) VALUES (3, 'c', 'gho_TRANSITMARKER_0004')")
        .expect_error("58030")
        .expect_clean("TRANSITMARKER");
    assert_eq!(c.sql("SELECT count(*) FROM tr_protected"), "2");
    c.psql("tr_app", "UPDATE tr_protected SET owner = 'z' WHERE id = 2").expect_ok();
    assert!(!c.sql("SELECT string_agg(token, ',') FROM tr_protected").contains("TRANSITMARKER"));
    assert!(!c.log_text().contains("TRANSITMARKER"), "plaintext in the server log");
}

#[test]
fn backends_terminated_while_waiting_do_not_leak_queue_slots() {
    let e = setup();
    let c = &e.c;
    // The worker's own HTTP timeout must not answer (and so end) a waiting session while the
    // 70 sessions are still starting, however slow the machine: give it two minutes here
    // (the next test's setup writes the configuration afresh).
    let conf = c.data.join("credcrypt.conf");
    let mut text = std::fs::read_to_string(&conf).expect("read credcrypt.conf");
    text.push_str("credcrypt.bao_request_timeout_ms = 120000\n");
    std::fs::write(&conf, text).expect("write credcrypt.conf");
    c.sql("SELECT pg_reload_conf()");
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.sql("SHOW credcrypt.bao_request_timeout_ms") != "2min" {
        assert!(Instant::now() < deadline, "the longer OpenBao timeout was not loaded");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = freeze(&e);
    // More waiting sessions than queue slots (64), each stuck behind the frozen OpenBao.
    let children: Vec<std::process::Child> = (0..70)
        .map(|i| {
            std::process::Command::new("psql")
                .args(["-X", "-q", "-h", &c.host, "-p", &c.port, "-U", "tr_app", "-d", "postgres"])
                .args(["-c", &format!("SET credcrypt.request_timeout_ms = 120000; SELECT credcrypt.encrypt_credential('wait-{i}', 'transit:app')")])
                .env("PGAPPNAME", "slot_leak")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("psql")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'slot_leak' AND state = 'active'")
        != "70"
    {
        assert!(Instant::now() < deadline, "the sessions did not all start waiting");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    // Terminate them all (FATAL: no Rust destructor runs), then let OpenBao go on.
    assert_eq!(
        c.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'slot_leak'"),
        "70"
    );
    for mut ch in children {
        let _ = ch.wait();
    }
    signal(pid, "CONT");
    // Every slot came back: more requests than slots go through.
    let o = c.psql(
        "tr_app",
        &(0..80)
            .map(|i| format!("SELECT credcrypt.encrypt_credential('after-{i}', 'transit:app');\n"))
            .collect::<String>(),
    );
    assert!(o.ok, "the queue lost its slots: {}", o.err);
}

#[test]
fn answers_that_are_not_outages_never_fall_back_and_missing_keys_are_not_remembered() {
    let e = setup();
    let c = &e.c;
    // Key names that would name another OpenBao path are refused before anything is sent, and
    // the local fallback does not apply (it once encrypted these locally after HTTP 405).
    for bad in ["transit:.", "transit:..", "envelope:.."] {
        let o = c.psql(
            "postgres",
            &format!(
                "SET credcrypt.fallback = 'local'; SELECT credcrypt.encrypt_credential('x-SECRETMARKER', '{bad}')"
            ),
        );
        o.expect_error("22023").expect_clean("SECRETMARKER");
    }
    // A key probed before it exists is found once it is created (no negative answer is kept).
    c.psql("tr_app", "SELECT credcrypt.encrypt_credential('x', 'transit:later')").expect_error("42704");
    e.bao.must(&["write", "-f", "transit/keys/later"]);
    let ct = c.value("tr_app", "SELECT credcrypt.encrypt_credential('later-value', 'transit:later')");
    assert!(ct.starts_with("cc1:transit:later:1:"), "{ct}");
    // Probing many names does not grow the worker (only positive answers are kept, bounded).
    for i in 0..50 {
        c.psql("tr_app", &format!("SELECT credcrypt.encrypt_credential('x', 'transit:probe-{i}')"))
            .expect_error("28000");
    }
}

#[test]
fn a_protected_column_accepts_ciphertexts_of_its_own_key_only() {
    let e = setup();
    let c = &e.c;
    c.sql(
        "DROP TABLE IF EXISTS tr_keyed CASCADE;
         CREATE TABLE tr_keyed (id int PRIMARY KEY, api_key text);
         GRANT SELECT, INSERT, UPDATE ON tr_keyed TO tr_app;
         SELECT credcrypt.protect_column('tr_keyed', 'api_key', 'transit:app', ARRAY['id']);",
    );
    // A value made with the local key for exactly this row and column: right context, wrong key.
    let forged = c.psql(
        "tr_app",
        "INSERT INTO tr_keyed SELECT 1, credcrypt.encrypt_credential('weak-SECRETMARKER', 'local',
             credcrypt.column_context((SELECT binding_id FROM credcrypt.protected_columns WHERE relid = 'tr_keyed'::regclass), ARRAY['1']))",
    );
    forged.expect_error("22023").expect_clean("SECRETMARKER");
    assert_eq!(c.sql("SELECT count(*) FROM tr_keyed"), "0");
    // The column's own key, bound to the row, is accepted; so is plaintext (encrypted with it).
    c.psql(
        "tr_app",
        "INSERT INTO tr_keyed SELECT 2, credcrypt.encrypt_credential('own-key', 'transit:app',
             credcrypt.column_context((SELECT binding_id FROM credcrypt.protected_columns WHERE relid = 'tr_keyed'::regclass), ARRAY['2']));
         INSERT INTO tr_keyed VALUES (3, 'plain-in');",
    )
    .expect_ok();
    assert_eq!(c.sql("SELECT count(*) FROM tr_keyed WHERE api_key LIKE 'cc1:transit:app:%'"), "2");
    c.sql("DROP TABLE tr_keyed CASCADE");
}

#[test]
fn a_value_below_min_decryption_version_has_its_own_error() {
    let e = setup();
    let c = &e.c;
    let old = c.value("tr_app", "SELECT credcrypt.encrypt_credential('old-SECRETMARKER', 'transit:other')");
    let v: u32 = old.split(':').nth(3).unwrap_or("1").parse().unwrap_or(1);
    e.bao.must(&["write", "-f", "transit/keys/other/rotate"]);
    e.bao.must(&["write", "transit/keys/other/config", &format!("min_decryption_version={}", v + 1)]);
    let o = c.psql("tr_app", &format!("SELECT credcrypt.decrypt_credential('{old}')"));
    o.expect_error("55000").expect_clean("SECRETMARKER");
    assert!(o.err.contains("min_decryption_version") && !o.err.contains("check that OpenBao"), "{}", o.err);
    e.bao.must(&["write", "transit/keys/other/config", "min_decryption_version=1"]);
    assert_eq!(
        c.psql("tr_app", &format!("SELECT credcrypt.decrypt_credential('{old}')")).expect_ok(),
        "old-SECRETMARKER"
    );
}

/// A wait the session cut short itself (`credcrypt.request_timeout_ms`, which anyone may set)
/// is not an outage: even with `credcrypt.fallback = local`, it never sends a value meant for
/// Transit to the local key (reviews/attack-2.md, finding 5).
#[test]
fn a_session_timeout_never_falls_back_to_the_local_key() {
    let e = setup();
    let c = &e.c;
    let pid = freeze(&e);
    let o = c.psql(
        "postgres",
        "SET credcrypt.fallback = 'local'; SET credcrypt.request_timeout_ms = 200;
         SELECT credcrypt.encrypt_credential('timeout-SECRETMARKER', 'transit:app')",
    );
    signal(pid, "CONT");
    o.expect_error("58030").expect_clean("SECRETMARKER");
    assert!(o.err.contains("did not answer in time"), "{}", o.err);
    assert!(!o.out.contains("cc1:local:"), "fell back to the local key: {}", o.out);
}

/// `credcrypt.transit_bulk_threshold` (issue 19): past the threshold, a statement's values for a
/// Transit-protected column are encrypted with envelope data keys of the same Transit key — one
/// Transit call per data key instead of one per row — still bound to their rows. Off by
/// default, superuser only; a data key of a rolled-back load is never left behind; a
/// re-encryption to the column's key turns the values back into per-value Transit values.
#[test]
fn bulk_statements_into_a_transit_column_use_envelope_data_keys_past_the_threshold() {
    let e = setup();
    let c = &e.c;
    c.sql(
        "DROP TABLE IF EXISTS tr_bulk CASCADE;
         CREATE TABLE tr_bulk (id int PRIMARY KEY, api_key text);
         GRANT SELECT, INSERT, UPDATE ON tr_bulk TO tr_app;
         SELECT credcrypt.protect_column('tr_bulk', 'api_key', 'transit:app', ARRAY['id']);
         SELECT credcrypt.create_decrypted_view('tr_bulk', 'tr_bulk_plain');
         GRANT SELECT ON tr_bulk_plain TO tr_app;",
    );
    let count = |filter: &str| c.sql(&format!("SELECT count(*) FROM tr_bulk WHERE {filter}"));
    // Off by default: every value of a bulk statement goes to Transit.
    c.psql("tr_app", "INSERT INTO tr_bulk SELECT g, 'sk-bulk-' || g FROM generate_series(1, 30) g").expect_ok();
    assert_eq!(count("api_key LIKE 'cc1:transit:app:%'"), "30");
    // An ordinary role cannot switch it on for itself.
    let o = c.psql("tr_app", "SET credcrypt.transit_bulk_threshold = 10");
    assert_eq!(o.sqlstate(), Some("42501"), "{}", o.err); // PostgreSQL's own refusal (no hint)

    // Set for the loading role by a superuser: the first 10 values of each statement go to
    // Transit, the rest to one new data key; a single-row statement stays with Transit.
    let keys_before: i64 = c.sql("SELECT count(*) FROM credcrypt.data_keys").parse().expect("count");
    c.sql("ALTER ROLE tr_app SET credcrypt.transit_bulk_threshold = 10");
    let load = c.psql(
        "tr_app",
        "INSERT INTO tr_bulk SELECT g, 'sk-bulk-SECRETMARKER-' || g FROM generate_series(31, 1030) g;
         INSERT INTO tr_bulk VALUES (2000, 'sk-bulk-SECRETMARKER-2000');",
    );
    c.sql("ALTER ROLE tr_app RESET credcrypt.transit_bulk_threshold");
    load.expect_ok();
    assert_eq!(count("id BETWEEN 31 AND 1030 AND api_key LIKE 'cc1:transit:app:%'"), "10");
    assert_eq!(count("id BETWEEN 31 AND 1030 AND api_key LIKE 'cc1:envelope:app:%'"), "990");
    assert_eq!(count("id = 2000 AND api_key LIKE 'cc1:transit:app:%'"), "1");
    let keys_after: i64 = c.sql("SELECT count(*) FROM credcrypt.data_keys").parse().expect("count");
    assert_eq!(keys_after - keys_before, 1, "990 values, one data key");
    assert_eq!(count("api_key LIKE '%SECRETMARKER%'"), "0");
    // Every value decrypts to its own plaintext, and stays bound to its row.
    assert_eq!(
        c.psql(
            "tr_app",
            "SELECT count(*) FROM tr_bulk_plain WHERE api_key IN ('sk-bulk-' || id, 'sk-bulk-SECRETMARKER-' || id)"
        )
        .expect_ok(),
        "1031"
    );
    c.psql("tr_app", "UPDATE tr_bulk SET api_key = (SELECT api_key FROM tr_bulk WHERE id = 1000) WHERE id = 999")
        .expect_error("39000")
        .expect_clean("SECRETMARKER");
    // An envelope value of the column's Transit key, made for the row, is accepted as written;
    // a value of another Transit key is not.
    let made_for = |id: i32, key: &str| {
        format!(
            "INSERT INTO tr_bulk SELECT {id}, credcrypt.encrypt_credential('own-{id}', '{key}',
                 credcrypt.column_context((SELECT binding_id FROM credcrypt.protected_columns WHERE relid = 'tr_bulk'::regclass), ARRAY['{id}']))"
        )
    };
    c.psql("tr_app", &made_for(3000, "envelope:app")).expect_ok();
    c.psql("tr_app", &made_for(3001, "transit:other")).expect_error("22023");

    // A bulk load that rolls back leaves no data key behind.
    let keys_before = c.sql("SELECT count(*) FROM credcrypt.data_keys");
    c.sql(
        "BEGIN; SET LOCAL credcrypt.transit_bulk_threshold = 1;
         INSERT INTO tr_bulk SELECT g, 'sk-rollback-' || g FROM generate_series(5000, 5100) g;
         ROLLBACK;",
    );
    assert_eq!(c.sql("SELECT count(*) FROM credcrypt.data_keys"), keys_before);
    assert_eq!(count("id >= 5000"), "0");

    // Re-encryption to the column's own key makes every value a per-value Transit value again.
    c.sql("SET credcrypt.reencrypt_progress_interval = 0; CALL credcrypt.reencrypt_column('tr_bulk', 'api_key')");
    assert_eq!(count("api_key NOT LIKE 'cc1:transit:app:%'"), "0");
    assert_eq!(
        c.psql("tr_app", "SELECT api_key FROM tr_bulk_plain WHERE id = 500").expect_ok(),
        "sk-bulk-SECRETMARKER-500"
    );
    c.sql("DROP TABLE tr_bulk CASCADE");
}
