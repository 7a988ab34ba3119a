//! Faults and hostile input: injection-shaped names in every administrative function, the
//! Transit worker killed under load, and the postmaster killed (kill -9) during protected inserts
//! and a re-encryption run. Each test prints what it measured (`cargo test -- --nocapture`).

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use credcrypt_blackbox::bao::start_for;
use credcrypt_blackbox::Cluster;

static SERIAL: Mutex<()> = Mutex::new(());

fn setup() -> (MutexGuard<'static, ()>, Cluster) {
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let c = Cluster::from_env();
    c.ensure_login_role("rb_owner", "credcrypt_admin");
    c.ensure_login_role("rb_app", "credcrypt_encryptor, credcrypt_decryptor");
    c.sql("GRANT CREATE ON SCHEMA public TO rb_owner");
    (guard, c)
}

#[allow(clippy::print_stdout)] // the figures are the suite's output
fn report(line: &str) {
    println!("[reliability] {line}");
}

/// SQLSTATEs an administrative function may answer hostile input with (docs/errors.md,
/// docs/protected-columns.md); anything else (XX000 above all) is a bug.
const DOCUMENTED: &[&str] = &[
    "22023", "22P02", "42501", "42P01", "42703", "42704", "42710", "42804", "42809", "42P07", "55000", "2BP01",
    "39000", "42601", "42602", "42622", "0A000", "22021", "54000",
];

#[test]
fn injection_shaped_names_in_every_admin_function_are_refused_cleanly() {
    let (_g, c) = setup();
    let start = c.sql("SELECT pg_postmaster_start_time()");
    // Only this test's part of the server log (other suites kill backends on purpose).
    let log_from = c.log_text().len();
    c.sql("DROP TABLE IF EXISTS rb_canary, rb_t CASCADE");
    c.psql(
        "rb_owner",
        "CREATE TABLE rb_canary (id int); INSERT INTO rb_canary VALUES (1);
         CREATE TABLE rb_t (id int PRIMARY KEY, secret text, doc jsonb);",
    )
    .expect_ok();
    let hostile = [
        "x\"; DROP TABLE rb_canary; --",
        "x'); DROP TABLE rb_canary; --",
        "secret\" text, \"y",
        "",
        " ",
        "a\u{0}b",
        "ünïcødé",
        "$$; DROP TABLE rb_canary; $$",
        "x\\'",
        &"n".repeat(200),
        "app.x'; DROP TABLE rb_canary; --",
        "credcrypt.local_key",
        "transit:app\"; --",
    ];
    let lit = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let mut tried = 0;
    for h in hostile {
        if h.contains('\u{0}') {
            continue; // text cannot hold NUL: PostgreSQL refuses it before any function runs
        }
        let q = lit(h);
        let statements = [
            format!("SELECT credcrypt.protect_column('rb_t', {q})"),
            format!("SELECT credcrypt.protect_column('rb_t', 'secret', key_name => {q})"),
            format!("SELECT credcrypt.protect_column('rb_t', 'secret', bind_columns => ARRAY[{q}]::name[])"),
            format!("SELECT credcrypt.protect_column('rb_t', 'secret', mask_column => {q})"),
            format!("SELECT credcrypt.protect_column('rb_t', 'doc', json_path => ARRAY[{q}])"),
            format!("SELECT credcrypt.protect_column({q}, 'secret')"),
            format!("SELECT credcrypt.unprotect_column('rb_t', {q})"),
            format!("SELECT credcrypt.create_decrypted_view('rb_t', {q})"),
            format!("SELECT credcrypt.create_masked_view('rb_t', {q})"),
            format!("SELECT credcrypt.enable_owner_rls('rb_t', {q})"),
            format!("SELECT credcrypt.enable_owner_rls('rb_t', 'id', {q})"),
            format!("SELECT credcrypt.set_owner({q}, {q})"),
            format!("CALL credcrypt.reencrypt_column('rb_t', {q})"),
            format!("CALL credcrypt.reencrypt_column('rb_t', 'secret', {q})"),
            format!("SELECT * FROM credcrypt.key_usage({q})"),
            format!("SELECT credcrypt.column_context({q}, ARRAY[{q}])"),
            format!(
                "SELECT credcrypt.import_transit_ciphertext('vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', {q})"
            ),
            format!("SELECT credcrypt.encrypt_credential('x', {q})"),
            format!("SELECT credcrypt.rotate_key({q})"),
        ];
        for s in statements {
            let o = c.psql("rb_owner", &s);
            tried += 1;
            if o.ok {
                continue; // e.g. a quoted identifier that is legal: then it really was a name
            }
            let state = o.sqlstate().unwrap_or("none");
            assert!(DOCUMENTED.contains(&state), "{s}: undocumented SQLSTATE {state}: {}", o.err);
        }
        // Undo whatever legal names created.
        c.sql("DROP TABLE IF EXISTS rb_t CASCADE");
        c.psql("rb_owner", "CREATE TABLE rb_t (id int PRIMARY KEY, secret text, doc jsonb)").expect_ok();
    }
    assert_eq!(c.sql("SELECT count(*) FROM rb_canary"), "1", "an injection dropped the canary");
    assert_eq!(c.sql("SELECT pg_postmaster_start_time()"), start, "the server restarted");
    assert!(!c.log_text().get(log_from..).unwrap_or_default().contains("terminated by signal"));
    report(&format!("hostile admin inputs tried: {tried}; server restarts: 0; canary intact"));
}

#[test]
fn worker_killed_under_load_comes_back_and_no_backend_hangs() {
    let (_g, c) = setup();
    let _bao = start_for(&c);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, hung) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut threads = Vec::new();
    for t in 0..8 {
        let (c, stop, ok, failed, hung) = (c.clone(), stop.clone(), ok.clone(), failed.clone(), hung.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                // 20 statements per session; a statement that waited past 10 s would be a hang.
                let script: String = (0..20)
                    .map(|k| format!("SELECT credcrypt.encrypt_credential('load-{t}-{i}-{k}', 'transit:app');\n"))
                    .collect();
                let o = c.psql("rb_app", &format!("SET statement_timeout = '10s';\n{script}"));
                if o.ok {
                    ok.fetch_add(20, Ordering::SeqCst);
                } else if o.sqlstate() == Some("57014") {
                    hung.fetch_add(1, Ordering::SeqCst);
                } else {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(2));
    let old: String = c.sql("SELECT worker_pid FROM credcrypt.status()");
    let killed = Instant::now();
    c.sql(&format!("SELECT pg_terminate_backend({old})"));
    // Service is back when an encryption succeeds through a new worker.
    let back = loop {
        let o = c.psql("rb_app", "SELECT credcrypt.encrypt_credential('probe', 'transit:app')");
        let now = c.sql("SELECT coalesce(worker_pid, 0) FROM credcrypt.status()");
        if o.ok && now != "0" && now != old {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < Duration::from_secs(20), "the worker did not come back: {}", o.err);
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("load thread");
    }
    report(&format!(
        "worker killed under 8-session load: service back after {} ms; {} values encrypted, {} sessions failed over the kill, {} hung",
        back.as_millis(),
        ok.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
        hung.load(Ordering::SeqCst)
    ));
    assert_eq!(hung.load(Ordering::SeqCst), 0, "a backend waited past statement_timeout");
    assert!(back < Duration::from_secs(5), "service back after {back:?}");
    assert!(ok.load(Ordering::SeqCst) > 0);
}

#[test]
fn postmaster_killed_during_inserts_and_a_migration_loses_nothing() {
    let (_g, c) = setup();
    c.sql("DROP TABLE IF EXISTS rb_crash, rb_mig CASCADE");
    c.psql(
        "rb_owner",
        "CREATE TABLE rb_crash (id int PRIMARY KEY, secret text);
         SELECT credcrypt.protect_column('rb_crash', 'secret', key_name => 'local', bind_columns => ARRAY['id']);
         SELECT credcrypt.create_decrypted_view('rb_crash', 'rb_crash_plain');
         GRANT SELECT, INSERT ON rb_crash TO rb_app;
         CREATE TABLE rb_mig (id int PRIMARY KEY, secret text);
         INSERT INTO rb_mig SELECT g, 'sk-' || g FROM generate_series(1, 100000) g;
         SELECT credcrypt.protect_column('rb_mig', 'secret', key_name => 'local', bind_columns => ARRAY['id'], existing_values => 'migrate');
         SELECT credcrypt.create_decrypted_view('rb_mig', 'rb_mig_plain');",
    )
    .expect_ok();
    // Inserts, one committed row per statement; the ids whose COMMIT returned are recorded.
    let committed = Arc::new(Mutex::new(Vec::<i32>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (c, committed, stop) = (c.clone(), committed.clone(), stop.clone());
        std::thread::spawn(move || {
            for id in 1.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if c.psql("rb_app", &format!("INSERT INTO rb_crash VALUES ({id}, 'sk-crash-{id}')")).ok {
                    committed.lock().expect("ids").push(id);
                }
            }
        })
    };
    let migration = {
        let c = c.clone();
        std::thread::spawn(move || {
            let _ = c.psql("rb_owner", "CALL credcrypt.reencrypt_column('rb_mig', 'secret', batch_size => 500)");
        })
    };
    // Kill -9 the postmaster once the migration has committed some batches.
    let deadline = Instant::now() + Duration::from_secs(60);
    while c
        .psql(
            "postgres",
            "SELECT coalesce(max(done), 0) >= 5000 FROM credcrypt.reencrypt_runs WHERE relid = 'rb_mig'::regclass",
        )
        .out
        != "t"
    {
        assert!(Instant::now() < deadline, "the migration made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.kill_server();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer");
    migration.join().expect("migration");
    // Start again (crash recovery); old backends exit when they notice the postmaster is gone.
    c.start_after_crash();
    let ids = committed.lock().expect("ids").clone();
    assert!(!ids.is_empty());
    // Every committed insert is there and decrypts; nothing is stored in plaintext.
    let list = ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    assert_eq!(
        c.sql(&format!("SELECT count(*) FROM rb_crash_plain WHERE id IN ({list}) AND secret = 'sk-crash-' || id")),
        ids.len().to_string()
    );
    assert_eq!(c.sql("SELECT count(*) FROM rb_crash WHERE secret NOT LIKE 'cc1:local:%'"), "0");
    // The migration: values it committed decrypt; a re-run finishes the rest.
    let migrated_before = c.sql("SELECT count(*) FROM rb_mig WHERE secret LIKE 'cc1:%'");
    assert_ne!(migrated_before, "100000", "the crash came after the migration had finished");
    c.psql("rb_owner", "CALL credcrypt.reencrypt_column('rb_mig', 'secret', batch_size => 5000)").expect_ok();
    assert_eq!(c.sql("SELECT count(*) FROM rb_mig_plain WHERE secret = 'sk-' || id"), "100000");
    assert_eq!(c.sql("SELECT count(*) FROM rb_mig WHERE secret NOT LIKE 'cc1:local:%'"), "0");
    report(&format!(
        "postmaster killed: {} committed inserts all present and decrypting; migration had {migrated_before} values done, re-run completed 100000; lost rows: 0",
        ids.len()
    ));
}

/// A loopback proxy in front of OpenBao that serves one request per connection
/// (`Connection: close`): every request of the worker opens a new connection, for which the
/// HTTP client resolves the address on a helper thread.
fn closing_proxy(upstream: &str) -> String {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy listens");
    let addr = format!("http://{}", listener.local_addr().expect("proxy address"));
    let upstream = upstream.trim_start_matches("http://").to_owned();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut client) = stream else { continue };
            let upstream = upstream.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                // The request head, then as much body as Content-Length says.
                let head_end = loop {
                    let Ok(n) = client.read(&mut chunk) else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let len = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let Ok(n) = client.read(&mut chunk) else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head: String = head
                    .trim_end()
                    .lines()
                    .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                    .map(|l| format!("{l}\r\n"))
                    .collect();
                let Ok(mut up) = std::net::TcpStream::connect(&upstream) else { return };
                let _ = up.write_all(format!("{head}Connection: close\r\n\r\n").as_bytes());
                let _ = up.write_all(&buf[head_end..]);
                let mut answer = Vec::new();
                let _ = up.read_to_end(&mut answer);
                let _ = client.write_all(&answer);
            });
        }
    });
    addr
}

/// SIGHUP (a reload: Patroni sends one at every leader change) while the worker opens
/// connections to OpenBao must not crash it. The HTTP client resolves each new connection's
/// address on a helper thread; a SIGHUP handled on that thread made pgrx panic inside the signal
/// handler ("postgres FFI may not be called from multiple threads"), the worker aborted and the
/// postmaster crash-restarted the whole server. Found by scripts/test-ha.
#[test]
fn reloads_while_the_worker_opens_connections_do_not_crash_the_server() {
    let (_g, c) = setup();
    let bao = start_for(&c);
    let proxy = closing_proxy(&bao.addr);
    let token = c.keys.join("bao.token");
    credcrypt_blackbox::bao::point_at(&c, &proxy, &format!("credcrypt.bao_token_file = '{}'\n", token.display()));
    let start = c.sql("SELECT pg_postmaster_start_time()");
    let log_before = c.log_text().matches("terminated by signal").count();
    let worker = c.sql("SELECT worker_pid FROM credcrypt.status()");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for t in 0..4 {
        let (c, stop, ok) = (c.clone(), stop.clone(), ok.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let script: String = (0..20)
                    .map(|k| format!("SELECT credcrypt.encrypt_credential('hup-{t}-{i}-{k}', 'transit:app');\n"))
                    .collect();
                if c.psql("rb_app", &script).ok {
                    ok.fetch_add(20, Ordering::SeqCst);
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(1));
    // SIGHUP after SIGHUP at the worker for 10 s (the shell's kill builtin: thousands a second).
    let storm = Command::new("bash")
        .args(["-c", "n=0; end=$((SECONDS + 10)); while [ $SECONDS -lt $end ]; do kill -HUP \"$1\" 2>/dev/null || break; n=$((n + 1)); done; echo $n"])
        .args(["storm", &worker])
        .output()
        .expect("bash runs");
    let sent = String::from_utf8_lossy(&storm.stdout).trim().to_owned();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("load thread");
    }
    let crashes = c.log_text().matches("terminated by signal").count() - log_before;
    report(&format!(
        "{sent} SIGHUPs at the worker while it opened a connection per request: {} values encrypted, {crashes} crashes",
        ok.load(Ordering::SeqCst)
    ));
    assert_eq!(crashes, 0, "a server process was terminated by a signal");
    assert_eq!(c.sql("SELECT pg_postmaster_start_time()"), start, "the server restarted");
    assert_eq!(c.sql("SELECT worker_pid FROM credcrypt.status()"), worker, "the worker restarted");
    assert!(ok.load(Ordering::SeqCst) > 0);
    c.sql("SELECT pg_reload_conf()");
}
