//! Black-box tests of the OpenBao KV v2 provider (`kv:<mount>`, issue 17) against a real
//! OpenBao dev server (KV v2 at `secret/`), through the worker with a policy-limited token:
//! round trips whose reference holds no secret, binding to the context, mount checks, no local
//! fallback, versions of aborted (sub)transactions destroyed within the bound, kill -9 of a
//! backend and of the whole server during writes with no committed value lost and no orphan
//! left readable, and 16 concurrent sessions.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use credcrypt_blackbox::bao::BaoEnv;
use credcrypt_blackbox::Session;
use credcrypt_openbao as openbao;

static SERIAL: Mutex<()> = Mutex::new(());

/// How long after its transaction ended a secret of an aborted transaction may stay readable
/// (docs/openbao.md states about a second; the test allows for a loaded machine).
const BOUND: Duration = Duration::from_secs(10);

#[allow(clippy::print_stdout)] // the figures are the suite's output
fn report(line: &str) {
    println!("[kv] {line}");
}

fn setup() -> BaoEnv {
    let e = BaoEnv::start(&SERIAL, "kv", true);
    e.c.sql("CREATE TABLE IF NOT EXISTS kv_refs (id bigint PRIMARY KEY, ref text); GRANT ALL ON kv_refs TO kv_app; TRUNCATE kv_refs");
    e
}

/// A client of the test's OpenBao with root rights (to look at KV behind the worker): a child
/// of the root token, never the root token itself, which the dev server prints in its log (the
/// log-leak check would find it there).
fn root_client(e: &BaoEnv) -> openbao::Client {
    let token = e.bao.dir.join("root.token");
    let child = e.bao.must(&["token", "create", "-ttl=1h", "-field=token"]);
    credcrypt_blackbox::bao::write_secret_file(&token, child.trim());
    openbao::Client::new(openbao::Config {
        addrs: vec![e.bao.addr.clone()],
        mount: "transit".into(),
        namespace: None,
        ca_file: None,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(30),
        auth: openbao::Auth::TokenFile(token),
    })
    .expect("client")
}

/// (path, version) of a `cc1:kv:secret:<version>:<c|n>:<path>` reference.
fn parts(reference: &str) -> (String, u64) {
    let f: Vec<&str> = reference.splitn(6, ':').collect();
    assert_eq!(&f[..3], &["cc1", "kv", "secret"], "{reference}");
    (f[5].to_owned(), f[3].parse().expect("version"))
}

/// Whether `version` of `path` can be read from KV (not destroyed, not deleted, present).
fn readable(client: &mut openbao::Client, path: &str, version: u64) -> bool {
    matches!(client.kv_read("secret", path, version).expect("kv read"), openbao::KvValue::Data(_))
}

/// Every readable (path, version) under this database's prefix.
fn readable_versions(client: &mut openbao::Client) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for path in client.kv_list_recursive("secret", "pg_credcrypt/postgres").expect("list") {
        if let Some(m) = client.kv_metadata("secret", &path).expect("metadata") {
            for v in m.versions {
                if !v.destroyed && !v.deleted {
                    out.push((path.clone(), v.version));
                }
            }
        }
    }
    out.sort();
    out
}

/// Waits until `cond` holds, at most `BOUND`; the time it took.
fn within_bound(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < BOUND, "{what}: not within {BOUND:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

#[test]
fn round_trip_keeps_only_a_reference_bound_to_its_context() {
    let e = setup();
    let c = &e.c;
    let mut root = root_client(&e);
    let r = c.value("kv_app", "SELECT credcrypt.encrypt_credential('sk-KV-SECRETMARKER-1', 'kv:secret', 'client:1')");
    assert!(r.starts_with("cc1:kv:secret:1:c:pg_credcrypt/postgres/values/"), "{r}");
    assert!(!r.contains("SECRETMARKER"));
    assert_eq!(
        c.value("kv_app", &format!("SELECT credcrypt.decrypt_credential('{r}', 'client:1')")),
        "sk-KV-SECRETMARKER-1"
    );
    assert_eq!(
        c.value("kv_app", &format!("SELECT credcrypt.verify_credential('{r}', 'sk-KV-SECRETMARKER-1', 'client:1')")),
        "t"
    );
    assert_eq!(
        c.value("kv_app", &format!("SELECT credcrypt.verify_credential('{r}', 'sk-KV-SECRETMARKER-2', 'client:1')")),
        "f"
    );
    // Another context, or none, fails authentication without the secret in the error.
    c.psql("kv_app", &format!("SELECT credcrypt.decrypt_credential('{r}', 'client:2')"))
        .expect_error("39000")
        .expect_clean("SECRETMARKER");
    c.psql("kv_app", &format!("SELECT credcrypt.decrypt_credential('{r}')")).expect_error("39000");
    // The secret is in KV, with its binding and writer, and nothing of it in PostgreSQL's log.
    let (path, version) = parts(&r);
    match root.kv_read("secret", &path, version).expect("read") {
        openbao::KvValue::Data(d) => {
            assert_eq!(d.get("value"), Some("sk-KV-SECRETMARKER-1"));
            assert_eq!(d.get("pg_credcrypt_binding").map(str::len), Some(64));
            assert!(d.get("pg_credcrypt_xid").is_some());
        }
        other => panic!("{other:?}"),
    }
    // Binary secrets and no context.
    let b = c.value("kv_app", "SELECT credcrypt.encrypt_credential('\\x00ff10'::bytea, 'kv:secret')");
    assert!(b.starts_with("cc1:kv:secret:1:n:"), "{b}");
    assert_eq!(c.value("kv_app", &format!("SELECT credcrypt.decrypt_credential_bytea('{b}')")), "\\x00ff10");
    // A reference edited to another path of this database fails; one outside it is refused.
    let other = r.replace("/values/", "/values/0");
    c.psql("kv_app", &format!("SELECT credcrypt.decrypt_credential('{}', 'client:1')", &other[..other.len() - 1]))
        .expect_error("38000");
    let outside = r.replace("pg_credcrypt/postgres/", "pg_credcrypt/otherdb/");
    c.psql("kv_app", &format!("SELECT credcrypt.decrypt_credential('{outside}', 'client:1')")).expect_error("22023");
    // 500 values in one statement: mixed with local values, all back in order.
    c.psql(
        "kv_app",
        "INSERT INTO kv_refs SELECT g, credcrypt.encrypt_credential('sk-' || g, CASE WHEN g % 2 = 0 THEN 'kv:secret' ELSE 'local' END, 'c:' || g)
           FROM generate_series(1, 500) g",
    )
    .expect_ok();
    assert_eq!(
        c.value(
            "kv_app",
            "SELECT count(*) FROM kv_refs r, unnest(credcrypt.decrypt_credentials(
                    (SELECT array_agg(ref ORDER BY id) FROM kv_refs), (SELECT array_agg('c:' || id ORDER BY id) FROM kv_refs)))
                    WITH ORDINALITY AS d(v, n) WHERE r.id = d.n AND d.v = 'sk-' || r.id"
        ),
        "500"
    );
    assert!(!c.log_text().contains("SECRETMARKER"));
}

#[test]
fn mounts_are_checked_and_there_is_no_local_fallback() {
    let e = setup();
    let c = &e.c;
    e.bao.must(&["secrets", "enable", "-path=kv1", "-version=1", "kv"]);
    // A token that may use kv1 too (without a capability under a mount, OpenBao does not say
    // what it is).
    let policy = e.bao.dir.join("kv1.hcl");
    std::fs::write(&policy, "path \"kv1/*\" { capabilities = [\"read\", \"create\", \"update\"] }\n").expect("policy");
    e.bao.must(&["policy", "write", "kv1", policy.to_str().expect("path")]);
    let token = e.bao.must(&["token", "create", "-policy=credcrypt", "-policy=kv1", "-ttl=1h", "-field=token"]);
    let token_file = c.keys.join("bao-kv1.token");
    credcrypt_blackbox::bao::write_secret_file(&token_file, token.trim());
    credcrypt_blackbox::bao::point_at(
        c,
        &e.bao.addr,
        &format!("credcrypt.bao_token_file = '{}'\n", token_file.display()),
    );
    c.psql("kv_app", "SELECT credcrypt.encrypt_credential('x', 'kv:transit')").expect_error("55000");
    c.psql("kv_app", "SELECT credcrypt.encrypt_credential('x', 'kv:nosuch')").expect_error("55000");
    let o = c.psql("kv_app", "SELECT credcrypt.encrypt_credential('x', 'kv:kv1')");
    o.expect_error("55000");
    assert!(o.err.contains("KV version 1"), "{}", o.err);
    // OpenBao unreachable with credcrypt.fallback = local: a kv write fails, nothing local.
    c.sql("ALTER SYSTEM SET credcrypt.fallback = 'local'; SELECT pg_reload_conf()");
    let addr = e.bao.addr.clone();
    credcrypt_blackbox::bao::point_at(
        c,
        "http://127.0.0.1:9",
        &format!("credcrypt.bao_token_file = '{}'\n", c.keys.join("bao.token").display()),
    );
    let o = c.psql("kv_app", "SELECT credcrypt.encrypt_credential('sk-FALLBACK-SECRETMARKER', 'kv:secret')");
    o.expect_error("58030");
    assert!(!o.out.contains("cc1:"));
    c.sql("ALTER SYSTEM RESET credcrypt.fallback; SELECT pg_reload_conf()");
    credcrypt_blackbox::bao::point_at(
        c,
        &addr,
        &format!("credcrypt.bao_token_file = '{}'\n", c.keys.join("bao.token").display()),
    );
}

#[test]
fn versions_of_transactions_that_did_not_commit_are_destroyed() {
    let e = setup();
    let c = &e.c;
    let mut root = root_client(&e);
    let mut s = Session::open(c, "kv_app");
    // Rolled back: readable while the transaction runs, destroyed after the rollback.
    s.run("BEGIN").expect_ok();
    let rolled =
        s.run("SELECT credcrypt.encrypt_credential('sk-ROLLBACK-SECRETMARKER', 'kv:secret')").expect_ok().to_owned();
    let (p1, v1) = parts(&rolled);
    assert!(readable(&mut root, &p1, v1));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(readable(&mut root, &p1, v1), "destroyed while its transaction was still running");
    s.run("ROLLBACK").expect_ok();
    let took = within_bound("rolled-back write destroyed", || !readable(&mut root, &p1, v1));
    report(&format!("rolled-back KV version destroyed {} ms after ROLLBACK", took.as_millis()));
    // A savepoint rolled back: its write is destroyed, the transaction's other write is kept.
    s.run("BEGIN").expect_ok();
    s.run("SAVEPOINT a").expect_ok();
    let sub =
        s.run("SELECT credcrypt.encrypt_credential('sk-SAVEPOINT-SECRETMARKER', 'kv:secret')").expect_ok().to_owned();
    s.run("ROLLBACK TO SAVEPOINT a").expect_ok();
    s.run("INSERT INTO kv_refs VALUES (1, credcrypt.encrypt_credential('sk-kept', 'kv:secret'))").expect_ok();
    s.run("COMMIT").expect_ok();
    let (p2, v2) = parts(&sub);
    within_bound("rolled-back savepoint's write destroyed", || !readable(&mut root, &p2, v2));
    let kept = c.sql("SELECT ref FROM kv_refs WHERE id = 1");
    let (p3, v3) = parts(&kept);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(readable(&mut root, &p3, v3), "a committed write was destroyed");
    assert_eq!(c.value("kv_app", &format!("SELECT credcrypt.decrypt_credential('{kept}')")), "sk-kept");
    // A statement that fails after its write: the write goes with the transaction.
    let o = c.psql(
        "kv_app",
        "INSERT INTO kv_refs VALUES (1, credcrypt.encrypt_credential('sk-DUPLICATE-SECRETMARKER', 'kv:secret'))",
    );
    o.expect_pg_error("23505");
    // A backend killed (kill -9) inside its transaction: the server restarts every backend; the
    // write is destroyed after recovery. (No marker in its statement: PostgreSQL logs the query
    // a killed backend was running, and the log-leak checks read the whole server log.)
    let mut k = Session::open(c, "kv_app");
    let pid = k.pid();
    k.run("BEGIN").expect_ok();
    let crashed = k
        .run("SELECT credcrypt.encrypt_credential('sk-killed-in-its-transaction', 'kv:secret')")
        .expect_ok()
        .to_owned();
    let (p4, v4) = parts(&crashed);
    assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill").success());
    drop(k);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c.psql("postgres", "SELECT 1").ok {
        assert!(Instant::now() < deadline, "the server did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
    within_bound("killed backend's write destroyed", || !readable(&mut root, &p4, v4));
}

/// The whole server killed (kill -9 of the postmaster and every backend) during a storm of kv
/// writes by 8 sessions: after restart every committed row decrypts, and once the bound has
/// passed no version is readable that no committed row references.
#[test]
fn server_killed_during_a_write_storm_loses_nothing_and_leaves_no_orphan() {
    let e = setup();
    let c = &e.c;
    let mut root = root_client(&e);
    // Earlier tests' committed values live in kv_refs, truncated by setup: start from a clean prefix.
    let _ = root.kv_list_recursive("secret", "pg_credcrypt/postgres").map(|paths| {
        for p in paths {
            let _ = root.kv_delete_all("secret", &p);
        }
    });
    let next = Arc::new(std::sync::atomic::AtomicI64::new(1));
    let committed = Arc::new(Mutex::new(Vec::<i64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let (c, next, committed, stop) = (c.clone(), next.clone(), committed.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let id = next.fetch_add(1, Ordering::SeqCst);
                    // Every third transaction rolls back.
                    let end = if id % 3 == 0 { "ROLLBACK" } else { "COMMIT" };
                    let o = c.psql(
                        "kv_app",
                        &format!(
                            "BEGIN; INSERT INTO kv_refs VALUES ({id}, credcrypt.encrypt_credential('sk-storm-{id}', 'kv:secret', 'r:{id}')); {end};"
                        ),
                    );
                    if o.ok && end == "COMMIT" {
                        committed.lock().expect("ids").push(id);
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed.lock().expect("ids").len() < 200 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.kill_server();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().expect("writer");
    }
    c.start_after_crash();
    let ids = committed.lock().expect("ids").clone();
    let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    assert_eq!(
        c.sql(&format!(
            "SELECT count(*) FROM kv_refs WHERE id IN ({list}) AND credcrypt.decrypt_credential(ref, 'r:' || id) = 'sk-storm-' || id"
        )),
        ids.len().to_string()
    );
    let rows: Vec<(String, u64)> =
        c.sql("SELECT string_agg(ref, ' ') FROM kv_refs").split(' ').filter(|r| !r.is_empty()).map(parts).collect();
    let started = Instant::now();
    let orphans = loop {
        let orphans: Vec<_> = readable_versions(&mut root).into_iter().filter(|pv| !rows.contains(pv)).collect();
        if orphans.is_empty() || started.elapsed() > BOUND {
            break orphans;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        orphans.is_empty(),
        "{} readable orphan(s) after {BOUND:?}: {:?}",
        orphans.len(),
        &orphans[..orphans.len().min(5)]
    );
    report(&format!(
        "server killed during a kv write storm: {} committed rows all decrypt, {} rows in the table, 0 orphans readable after {} ms",
        ids.len(),
        rows.len(),
        started.elapsed().as_millis()
    ));
}

#[test]
fn sixteen_sessions_write_and_read() {
    let e = setup();
    let c = &e.c;
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                let mut s = Session::open(&c, "kv_app");
                for i in 0..25 {
                    let id = t * 1000 + i;
                    s.run(&format!(
                        "INSERT INTO kv_refs VALUES ({id}, credcrypt.encrypt_credential('sk-{id}', 'kv:secret', 'r:{id}'))"
                    ))
                    .expect_ok();
                    let back = s.run(&format!("SELECT credcrypt.decrypt_credential(ref, 'r:{id}') FROM kv_refs WHERE id = {id}"));
                    assert_eq!(back.expect_ok(), format!("sk-{id}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("session");
    }
    assert_eq!(
        c.sql("SELECT count(*) FROM kv_refs WHERE credcrypt.decrypt_credential(ref, 'r:' || id) = 'sk-' || id"),
        "400"
    );
}

/// Every readable version under this database's secrets of designation `binding`.
fn readable_of_binding(client: &mut openbao::Client, binding: &str) -> Vec<(String, u64)> {
    readable_versions(client).into_iter().filter(|(p, _)| p.contains(&format!("/{binding}/"))).collect()
}

/// A protected column under `kv:secret` (the identity provider's case): references in the
/// table, secrets in KV at `<prefix>/<db>/<schema>.<table>/<binding>/<id>/<random>`; an UPDATE
/// writes a new version and keeps the old readable; a natural-key upsert, DELETE … COMMIT and
/// DROP TABLE destroy what no row references any more once they commit; DELETE … ROLLBACK and
/// a rolled-back INSERT keep exactly the committed state; TRUNCATE is refused.
#[test]
fn a_protected_column_keeps_its_secrets_in_kv_with_their_history() {
    let e = setup();
    let c = &e.c;
    let mut root = root_client(&e);
    c.sql("DROP TABLE IF EXISTS kv_creds CASCADE");
    c.psql(
        "kv_owner",
        "CREATE TABLE kv_creds (id bigint PRIMARY KEY, client_secret text);
         SELECT credcrypt.protect_column('kv_creds', 'client_secret', key_name => 'kv:secret', bind_columns => ARRAY['id'],
                                         mask_column => 'client_secret_mask');
         SELECT credcrypt.create_decrypted_view('kv_creds', 'kv_creds_plain');
         GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON kv_creds TO kv_app; GRANT SELECT ON kv_creds_plain TO kv_app;",
    )
    .expect_ok();
    let binding = c.sql("SELECT binding_id FROM credcrypt.protected_columns WHERE relid = 'kv_creds'::regclass");
    c.psql("kv_app", "INSERT INTO kv_creds (id, client_secret) VALUES (1, 'cs-1-SECRETMARKER'), (2, 'cs-2')")
        .expect_ok();
    let r1 = c.sql("SELECT client_secret FROM kv_creds WHERE id = 1");
    assert!(r1.starts_with(&format!("cc1:kv:secret:1:c:pg_credcrypt/postgres/public.kv_creds/{binding}/1/")), "{r1}");
    assert_eq!(
        c.sql("SELECT client_secret_mask = credcrypt.mask('cs-1-SECRETMARKER') FROM kv_creds WHERE id = 1"),
        "t"
    );
    assert_eq!(c.value("kv_app", "SELECT client_secret FROM kv_creds_plain WHERE id = 1"), "cs-1-SECRETMARKER");
    // Rotation: a new version at the same path; the old one stays readable (history).
    c.psql("kv_app", "UPDATE kv_creds SET client_secret = 'cs-1-rotated' WHERE id = 1").expect_ok();
    let r1b = c.sql("SELECT client_secret FROM kv_creds WHERE id = 1");
    let ((p1, v1), (p1b, v1b)) = (parts(&r1), parts(&r1b));
    assert_eq!((p1b.as_str(), v1b), (p1.as_str(), 2));
    assert_eq!(c.value("kv_app", "SELECT client_secret FROM kv_creds_plain WHERE id = 1"), "cs-1-rotated");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(readable(&mut root, &p1, v1), "rotation destroyed the previous version");
    // A rolled-back UPDATE: its version goes, the row's stays.
    c.psql("kv_app", "BEGIN; UPDATE kv_creds SET client_secret = 'cs-1-ROLLEDBACK' WHERE id = 1; ROLLBACK;")
        .expect_ok();
    within_bound("rolled-back version 3 destroyed", || !readable(&mut root, &p1, 3));
    // Another UPDATE finds the path past version 3 and writes version 4.
    c.psql("kv_app", "UPDATE kv_creds SET client_secret = 'cs-1-v4' WHERE id = 1").expect_ok();
    assert_eq!(parts(&c.sql("SELECT client_secret FROM kv_creds WHERE id = 1")), (p1.clone(), 4));
    assert_eq!(c.value("kv_app", "SELECT client_secret FROM kv_creds_plain WHERE id = 1"), "cs-1-v4");
    // Prisma's upsert: a new path; the row's old one is destroyed after COMMIT.
    c.psql(
        "kv_app",
        "INSERT INTO kv_creds (id, client_secret) VALUES (2, 'cs-2-upserted')
         ON CONFLICT (id) DO UPDATE SET client_secret = EXCLUDED.client_secret",
    )
    .expect_ok();
    assert_eq!(c.value("kv_app", "SELECT client_secret FROM kv_creds_plain WHERE id = 2"), "cs-2-upserted");
    let (p2, _) = parts(&c.sql("SELECT client_secret FROM kv_creds WHERE id = 2"));
    let live: Vec<String> = readable_of_binding(&mut root, &binding).into_iter().map(|(p, _)| p).collect();
    assert!(live.contains(&p2));
    within_bound("the upserted row's old path destroyed", || {
        readable_of_binding(&mut root, &binding).iter().filter(|(p, _)| p.contains(&format!("/{binding}/2/"))).count()
            == 1
    });
    // DELETE … ROLLBACK keeps every version; DELETE … COMMIT destroys them all.
    c.psql("kv_app", "BEGIN; DELETE FROM kv_creds WHERE id = 1; ROLLBACK;").expect_ok();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(readable(&mut root, &p1, 1) && readable(&mut root, &p1, 4));
    c.psql("kv_app", "DELETE FROM kv_creds WHERE id = 1").expect_ok();
    within_bound("deleted row's versions destroyed", || root.kv_metadata("secret", &p1).expect("metadata").is_none());
    // TRUNCATE would leave the secrets: refused.
    c.psql("kv_app", "TRUNCATE kv_creds").expect_error("55000");
    // A ciphertext of another row cannot be copied in.
    let r2 = c.sql("SELECT client_secret FROM kv_creds WHERE id = 2");
    c.psql("kv_app", &format!("INSERT INTO kv_creds (id, client_secret) VALUES (3, '{r2}')")).expect_error("39000");
    // DROP TABLE destroys the column's secrets after COMMIT.
    c.sql("DROP TABLE kv_creds CASCADE");
    within_bound("dropped table's secrets destroyed", || readable_of_binding(&mut root, &binding).is_empty());
}

/// A column migrated local → kv → envelope, every value intact at each step; the kv secrets
/// are destroyed as the values move out.
#[test]
fn a_column_migrates_local_to_kv_to_envelope() {
    let e = setup();
    let c = &e.c;
    let mut root = root_client(&e);
    c.sql("DROP TABLE IF EXISTS kv_mig CASCADE");
    c.psql(
        "kv_owner",
        "CREATE TABLE kv_mig (id bigint PRIMARY KEY, secret text);
         SELECT credcrypt.protect_column('kv_mig', 'secret', key_name => 'local', bind_columns => ARRAY['id']);
         SELECT credcrypt.create_decrypted_view('kv_mig', 'kv_mig_plain');
         GRANT SELECT, INSERT ON kv_mig TO kv_app;
         INSERT INTO kv_mig SELECT g, 'sk-mig-' || g FROM generate_series(1, 300) g;",
    )
    .expect_ok();
    let binding = c.sql("SELECT binding_id FROM credcrypt.protected_columns WHERE relid = 'kv_mig'::regclass");
    let correct = || c.sql("SELECT count(*) FROM kv_mig_plain WHERE secret = 'sk-mig-' || id");
    c.psql("kv_owner", "CALL credcrypt.reencrypt_column('kv_mig', 'secret', 'kv:secret', batch_size => 100)")
        .expect_ok();
    assert_eq!(
        c.sql(
            "SELECT count(*) FROM kv_mig WHERE secret LIKE 'cc1:kv:secret:1:c:pg_credcrypt/postgres/public.kv_mig/%'"
        ),
        "300"
    );
    assert_eq!(correct(), "300");
    assert_eq!(readable_of_binding(&mut root, &binding).len(), 300);
    // New rows go to KV too.
    c.psql("kv_app", "INSERT INTO kv_mig VALUES (301, 'sk-mig-301')").expect_ok();
    c.psql("kv_owner", "CALL credcrypt.reencrypt_column('kv_mig', 'secret', 'envelope:app', batch_size => 100)")
        .expect_ok();
    assert_eq!(c.sql("SELECT count(*) FROM kv_mig WHERE secret LIKE 'cc1:envelope:app:%'"), "301");
    assert_eq!(correct(), "301");
    within_bound("the moved values' KV secrets destroyed", || readable_of_binding(&mut root, &binding).is_empty());
    c.sql("DROP TABLE kv_mig CASCADE");
}

/// Against the persistent raft server (AppRole, auto-unsealed): values survive an OpenBao
/// restart, and a rollback made while OpenBao is down is destroyed once it is back (the
/// journal keeps the work); a write while it is down fails (no fallback).
#[test]
fn persistent_openbao_outage_keeps_the_journal_and_the_values() {
    let e = setup();
    let c = &e.c;
    let dir = c.keys.join("bao-raft-kv");
    let _ = std::fs::remove_dir_all(&dir);
    let mut bao = credcrypt_blackbox::bao::PersistentBao::start(&dir);
    let sid = c.keys.join("raft-kv-secret.id");
    credcrypt_blackbox::bao::write_secret_file(&sid, "credcrypt-secret-0001");
    credcrypt_blackbox::bao::point_at(
        c,
        &bao.addr,
        &format!("credcrypt.bao_role_id = 'credcrypt-role'\ncredcrypt.bao_secret_id_file = '{}'\n", sid.display()),
    );
    let kept = c.value("kv_app", "SELECT credcrypt.encrypt_credential('sk-raft-kept', 'kv:secret', 'k')");
    let mut s = Session::open(c, "kv_app");
    s.run("BEGIN").expect_ok();
    let doomed = s
        .run("SELECT credcrypt.encrypt_credential('sk-RAFT-ROLLBACK-SECRETMARKER', 'kv:secret')")
        .expect_ok()
        .to_owned();
    bao.kill();
    s.run("ROLLBACK").expect_ok();
    c.psql("kv_app", "SELECT credcrypt.encrypt_credential('x', 'kv:secret')").expect_error("58030");
    std::thread::sleep(Duration::from_secs(2));
    bao.restart();
    // The value written before the outage reads again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = c.psql("kv_app", &format!("SELECT credcrypt.decrypt_credential('{kept}', 'k')"));
        if o.ok {
            assert_eq!(o.out, "sk-raft-kept");
            break;
        }
        assert!(Instant::now() < deadline, "no recovery after restart: {}", o.err);
        std::thread::sleep(Duration::from_millis(200));
    }
    // The rolled-back one is destroyed once OpenBao is back.
    let deadline = Instant::now() + BOUND;
    loop {
        let o = c.psql("kv_app", &format!("SELECT credcrypt.decrypt_credential('{doomed}')"));
        if o.sqlstate() == Some("38000") {
            break;
        }
        assert!(Instant::now() < deadline, "the rolled-back secret is still readable: {:?}", o.sqlstate());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// With bind columns that are not unique, a reference copied from another row passes the
/// binding check; it must not make two rows share a path (a DELETE destroys its row's path):
/// the secret is copied to the new row's own place. A rewrite of a kv table (ALTER COLUMN …
/// TYPE) keeps its references, which count as encrypted.
#[test]
fn rows_never_share_a_kv_path() {
    let e = setup();
    let c = &e.c;
    c.sql("DROP TABLE IF EXISTS kv_dup CASCADE");
    c.psql(
        "kv_owner",
        "CREATE TABLE kv_dup (id int, secret text);
         SELECT credcrypt.protect_column('kv_dup', 'secret', key_name => 'kv:secret', bind_columns => ARRAY['id']);
         SELECT credcrypt.create_decrypted_view('kv_dup', 'kv_dup_plain');
         GRANT SELECT, INSERT, DELETE ON kv_dup TO kv_app;",
    )
    .expect_ok();
    c.psql("kv_app", "INSERT INTO kv_dup VALUES (1, 'sk-dup-first')").expect_ok();
    let first = c.sql("SELECT secret FROM kv_dup");
    c.psql("kv_app", &format!("INSERT INTO kv_dup VALUES (1, '{first}')")).expect_ok();
    let paths = c.sql("SELECT count(DISTINCT split_part(secret, ':', 6)) FROM kv_dup");
    assert_eq!(paths, "2", "two rows share a KV path");
    c.psql("kv_app", &format!("DELETE FROM kv_dup WHERE secret <> '{first}'")).expect_ok();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.sql("SELECT secret FROM kv_dup_plain"), "sk-dup-first");
    c.psql("kv_owner", "DROP VIEW kv_dup_plain; ALTER TABLE kv_dup ALTER COLUMN id TYPE bigint").expect_ok();
    assert_eq!(
        c.sql(
            "SELECT credcrypt.decrypt_credential(t.secret, credcrypt.column_context(p.binding_id, ARRAY[t.id::text]))
               FROM kv_dup t, credcrypt.protected_columns p WHERE p.relid = 'kv_dup'::regclass"
        ),
        "sk-dup-first"
    );
    c.sql("DROP TABLE kv_dup CASCADE");
}

/// `unprotect_column(…, decrypt_existing => true)` of a kv column writes the plaintext back
/// and destroys the KV secrets once it commits (and not when it rolls back).
#[test]
fn unprotecting_a_kv_column_destroys_its_secrets_after_commit() {
    let e = setup();
    let c = &e.c;
    let mut root = root_client(&e);
    c.sql("DROP TABLE IF EXISTS kv_unp CASCADE");
    c.psql(
        "kv_owner",
        "CREATE TABLE kv_unp (id bigint PRIMARY KEY, secret text);
         SELECT credcrypt.protect_column('kv_unp', 'secret', key_name => 'kv:secret', bind_columns => ARRAY['id']);
         INSERT INTO kv_unp SELECT g, 'sk-unp-' || g FROM generate_series(1, 20) g;",
    )
    .expect_ok();
    let binding = c.sql("SELECT binding_id FROM credcrypt.protected_columns WHERE relid = 'kv_unp'::regclass");
    assert_eq!(readable_of_binding(&mut root, &binding).len(), 20);
    c.psql(
        "kv_owner",
        "BEGIN; SELECT credcrypt.unprotect_column('kv_unp', 'secret', decrypt_existing => true); ROLLBACK;",
    )
    .expect_ok();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(readable_of_binding(&mut root, &binding).len(), 20, "a rolled-back unprotect destroyed secrets");
    c.psql("kv_owner", "SELECT credcrypt.unprotect_column('kv_unp', 'secret', decrypt_existing => true)").expect_ok();
    assert_eq!(c.sql("SELECT count(*) FROM kv_unp WHERE secret = 'sk-unp-' || id"), "20");
    within_bound("unprotected column's secrets destroyed", || readable_of_binding(&mut root, &binding).is_empty());
    assert_eq!(c.sql("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'kv_unp'::regclass"), "0");
    c.sql("DROP TABLE kv_unp CASCADE");
}

/// Sixth attack: what a row's DELETE or UPDATE destroys is only its own designation's secret.
/// F1: a table owner plants another table's reference (or a path outside the prefix) as an
/// existing value of a kv column and deletes the row: nothing of the victim's is destroyed.
/// F2: an UPDATE that moves a row to another partition keeps its secret. F3: a row deleted and
/// inserted again with its stored value in one transaction keeps its secret.
#[test]
fn deletes_destroy_only_their_own_rows_secrets() {
    let e = setup();
    let c = &e.c;
    let mut root = root_client(&e);
    c.sql("DROP TABLE IF EXISTS kv_victim, kv_evil, kv_parts, kv_saved CASCADE");
    c.psql(
        "kv_owner",
        "CREATE TABLE kv_victim (id int PRIMARY KEY, secret text);
         SELECT credcrypt.protect_column('kv_victim', 'secret', key_name => 'kv:secret', bind_columns => ARRAY['id']);
         INSERT INTO kv_victim VALUES (1, 'sk-victim-SECRETMARKER');
         SELECT credcrypt.create_decrypted_view('kv_victim', 'kv_victim_plain');",
    )
    .expect_ok();
    let victim = c.sql("SELECT secret FROM kv_victim");
    // A secret outside the prefix, which the worker's token could be allowed to destroy.
    e.bao.must(&["kv", "put", "-mount=secret", "unrelated/app/db-password", "value=outside"]);
    let outside = "cc1:kv:secret:1:n:unrelated/app/db-password";
    c.psql(
        "kv_owner",
        &format!(
            "CREATE TABLE kv_evil (id int PRIMARY KEY, c text);
             INSERT INTO kv_evil VALUES (1, '{victim}'), (2, '{outside}');
             SELECT credcrypt.protect_column('kv_evil', 'c', key_name => 'kv:secret', bind_columns => ARRAY['id'], existing_values => 'migrate');
             DELETE FROM kv_evil;"
        ),
    )
    .expect_ok();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.sql("SELECT secret FROM kv_victim_plain"), "sk-victim-SECRETMARKER");
    assert!(readable(&mut root, "unrelated/app/db-password", 1));
    // F2: a move between partitions.
    c.psql(
        "kv_owner",
        "CREATE TABLE kv_parts (id int, region text, secret text) PARTITION BY LIST (region);
         CREATE TABLE kv_parts_eu PARTITION OF kv_parts FOR VALUES IN ('eu');
         CREATE TABLE kv_parts_us PARTITION OF kv_parts FOR VALUES IN ('us');
         SELECT credcrypt.protect_column('kv_parts', 'secret', key_name => 'kv:secret', bind_columns => ARRAY['id']);
         SELECT credcrypt.create_decrypted_view('kv_parts', 'kv_parts_plain');
         GRANT SELECT, INSERT, UPDATE, DELETE ON kv_parts TO kv_app;",
    )
    .expect_ok();
    c.psql("kv_app", "INSERT INTO kv_parts VALUES (2, 'us', 'sk-moving')").expect_ok();
    c.psql("kv_app", "UPDATE kv_parts SET region = 'eu' WHERE id = 2").expect_ok();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.sql("SELECT region || ':' || secret FROM kv_parts_plain"), "eu:sk-moving");
    // F3: delete and insert again, with the stored value, in one transaction.
    c.psql(
        "kv_app",
        "BEGIN; CREATE TEMP TABLE kv_saved AS SELECT * FROM kv_parts; DELETE FROM kv_parts;
         INSERT INTO kv_parts SELECT * FROM kv_saved; COMMIT;",
    )
    .expect_ok();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.sql("SELECT region || ':' || secret FROM kv_parts_plain"), "eu:sk-moving");
    c.sql("DROP TABLE kv_victim, kv_evil, kv_parts CASCADE");
}

/// Sixth attack, F7: a large rollback leaves thousands of versions to destroy; the worker does
/// that a bounded amount at a time and keeps answering every other request meanwhile.
#[test]
fn a_large_rollback_does_not_stall_the_worker() {
    let e = setup();
    let c = &e.c;
    let mut root = root_client(&e);
    c.psql(
        "kv_app",
        "BEGIN;
         SELECT cardinality(credcrypt.encrypt_credentials((SELECT array_agg('sk-bulk-' || g) FROM generate_series(1, 3000) g), 'kv:secret'));
         ROLLBACK;",
    )
    .expect_ok();
    // While the worker destroys 3,000 versions (two OpenBao calls each), a Transit call and a kv
    // write still get their answer within a 3 s request timeout.
    for _ in 0..3 {
        c.psql(
            "kv_app",
            "SET credcrypt.request_timeout_ms = 3000; SELECT credcrypt.encrypt_credential('probe', 'transit:app'); SELECT credcrypt.encrypt_credential('probe', 'kv:secret');",
        )
        .expect_ok();
        std::thread::sleep(Duration::from_millis(300));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while readable_versions(&mut root).iter().filter(|(p, _)| p.contains("/values/")).count() > 3 {
        assert!(Instant::now() < deadline, "the rolled-back versions were not destroyed");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Eighth attack, F1: a commit with `synchronous_commit = off` (any session may set it) is in
/// the commit log before its WAL is on disk, and a crash can still undo it. A DELETE's secret
/// is destroyed only once the commit is flushed: with the processes that flush WAL in the
/// background stopped, the secret stays; after a crash that loses the DELETE, the row is back
/// and still decrypts. (The worker destroyed it at once, and the row came back without it.)
#[test]
fn a_delete_that_a_crash_undoes_keeps_its_secret() {
    let e = setup();
    let c = &e.c;
    let mut root = root_client(&e);
    c.sql("DROP TABLE IF EXISTS kv_async CASCADE");
    c.psql(
        "kv_owner",
        "CREATE TABLE kv_async (id bigint PRIMARY KEY, secret text);
         SELECT credcrypt.protect_column('kv_async', 'secret', key_name => 'kv:secret', bind_columns => ARRAY['id']);
         INSERT INTO kv_async VALUES (1, 'sk-async-SECRETMARKER');
         SELECT credcrypt.create_decrypted_view('kv_async', 'kv_async_plain');
         GRANT SELECT, DELETE ON kv_async TO kv_app;",
    )
    .expect_ok();
    let (path, version) = parts(&c.sql("SELECT secret FROM kv_async WHERE id = 1"));
    assert!(readable(&mut root, &path, version));
    c.sql("CHECKPOINT");
    // Stop the background WAL flushers, as a power loss before they run would.
    let pm = std::fs::read_to_string(c.data.join("postmaster.pid")).expect("postmaster.pid");
    let pm = pm.lines().next().unwrap_or_default().trim().to_owned();
    let ps = Command::new("ps").args(["--ppid", &pm, "-o", "pid=,args="]).output().expect("ps");
    let flushers: Vec<String> = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| {
            ["walwriter", "background writer", "checkpointer", "autovacuum launcher"].iter().any(|p| l.contains(p))
        })
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    assert!(flushers.len() >= 3, "flushers: {flushers:?}");
    let signal = |sig: &str| {
        for p in &flushers {
            let _ = Command::new("kill").arg(format!("-{sig}")).arg(p).stderr(std::process::Stdio::null()).status();
        }
    };
    signal("STOP");
    c.psql("kv_app", "SET synchronous_commit = off; DELETE FROM kv_async WHERE id = 1").expect_ok();
    // Several worker rounds: the commit is not on disk, so the secret must stay.
    std::thread::sleep(Duration::from_secs(3));
    let kept = readable(&mut root, &path, version);
    c.kill_server();
    signal("CONT");
    c.start_after_crash();
    assert!(kept, "the secret of a DELETE whose commit was not flushed was destroyed");
    // The crash undid the DELETE (its commit never reached the disk): the row and its secret.
    assert_eq!(c.sql("SELECT secret FROM kv_async_plain WHERE id = 1"), "sk-async-SECRETMARKER");
    // A DELETE that commits for good destroys it.
    c.psql("kv_app", "DELETE FROM kv_async WHERE id = 1").expect_ok();
    within_bound("a committed DELETE's secret destroyed", || !readable(&mut root, &path, version));
    c.sql("DROP TABLE kv_async CASCADE");
}

/// Eighth attack, F4: reading many kv values at once whose answers do not all fit one queue
/// slot (300-byte secrets, 500 of them: a migration batch, a bulk decrypt) works: the worker
/// answers what fits and the backend reads the rest alone. (The answer, counted without its
/// "read alone" entries, overflowed the slot: "the answer does not fit a queue slot".)
#[test]
fn many_large_kv_values_read_at_once() {
    let e = setup();
    let c = &e.c;
    c.sql("DROP TABLE IF EXISTS kv_big CASCADE");
    c.psql(
        "kv_owner",
        "CREATE TABLE kv_big (id bigint PRIMARY KEY, secret text);
         SELECT credcrypt.protect_column('kv_big', 'secret', key_name => 'kv:secret', bind_columns => ARRAY['id']);
         INSERT INTO kv_big SELECT g, repeat('k', 300) || g FROM generate_series(1, 500) g;
         SELECT credcrypt.create_decrypted_view('kv_big', 'kv_big_plain');",
    )
    .expect_ok();
    assert_eq!(c.sql("SELECT count(*) FROM kv_big_plain WHERE secret = repeat('k', 300) || id"), "500");
    let o = c.psql("kv_owner", "CALL credcrypt.reencrypt_column('kv_big', 'secret', 'transit:app')");
    o.expect_ok();
    assert_eq!(c.sql("SELECT count(*) FROM kv_big_plain WHERE secret = repeat('k', 300) || id"), "500");
    assert_eq!(c.sql("SELECT count(*) FROM kv_big WHERE secret LIKE 'cc1:transit:app:%'"), "500");
    c.sql("DROP TABLE kv_big CASCADE");
}
