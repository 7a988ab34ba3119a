//! Prometheus metrics: the real exporter (Debian's `prometheus-postgres-exporter`, installed by
//! scripts/setup.sh) runs with `docker/prometheus/queries.yaml` against the test cluster as a
//! role that has only `credcrypt_monitor`; its HTTP endpoint on 127.0.0.1 is scraped before and
//! after some work, and the metrics must be there and move. The monitoring role itself can read
//! no secret, ciphertext or key.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use credcrypt_blackbox::bao::BaoEnv;
use credcrypt_blackbox::Cluster;

static SERIAL: Mutex<()> = Mutex::new(());

const EXPORTER: &str = "/usr/bin/prometheus-postgres-exporter";

/// The exporter process, killed when dropped.
struct Exporter {
    child: Child,
    port: u16,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Exporter {
    /// Starts the exporter for `c` as `role` with the project's queries file only (no default
    /// metrics), and waits until it answers.
    fn start(c: &Cluster, role: &str) -> Exporter {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let queries = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/prometheus/queries.yaml");
        // The log sits with the key files, where the log-leak check looks.
        let log = std::fs::File::create(c.keys.join("exporter.log")).expect("exporter log");
        let child = Command::new(EXPORTER)
            .env(
                "DATA_SOURCE_NAME",
                format!("host={} port={} user={role} dbname=postgres sslmode=disable", c.host, c.port),
            )
            .args([
                "--disable-default-metrics",
                "--disable-settings-metrics",
                &format!("--web.listen-address=127.0.0.1:{port}"),
                &format!("--extend.query-path={}", queries.display()),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start prometheus-postgres-exporter (scripts/setup.sh installs it)");
        let e = Exporter { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while e.try_scrape().is_none() {
            assert!(Instant::now() < deadline, "the exporter did not answer on 127.0.0.1:{port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        e
    }

    fn try_scrape(&self) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.0 200").then(|| body.to_owned())
    }

    /// One scrape's body.
    fn scrape(&self) -> String {
        self.try_scrape().expect("scrape")
    }
}

/// The value of metric `name` on the line whose labels include every `labels` pair.
fn metric(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').map_or((series, ""), |(n, r)| (n, r));
        (n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))).then(|| value.parse().ok())?
    })
}

fn must(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(body, name, labels).unwrap_or_else(|| {
        let ours: Vec<&str> = body.lines().filter(|l| l.starts_with("pg_credcrypt")).collect();
        panic!("no {name} {labels:?} in the scrape; pg_credcrypt lines:\n{}", ours.join("\n"))
    })
}

#[test]
fn the_exporter_serves_the_metrics_and_they_move() {
    let e = BaoEnv::start(&SERIAL, "mx", true);
    let c = &e.c;
    c.ensure_login_role("mx_monitor", "credcrypt_monitor");
    // The monitoring role reads no secret, ciphertext or key, and administers nothing.
    for sql in [
        "SELECT count(*) FROM credcrypt.data_keys",
        "SELECT count(*) FROM credcrypt.decrypt_audit",
        "SELECT credcrypt.decrypt_credential('cc1:local:local:0000000000000000:n:AAAA')",
        "SELECT count(*) FROM credcrypt.key_usage()",
        "SELECT credcrypt.rotate_key('transit:app')",
    ] {
        // PostgreSQL's own privilege check (it has no hint).
        assert_eq!(c.psql("mx_monitor", sql).sqlstate(), Some("42501"), "{sql}");
    }

    let x = Exporter::start(c, "mx_monitor");
    let before = x.scrape();
    assert_eq!(must(&before, "pg_credcrypt_worker_running", &[]), 1.0);
    assert_eq!(must(&before, "pg_credcrypt_worker_preloaded", &[]), 1.0);
    assert_eq!(must(&before, "pg_credcrypt_worker_connected", &[]), 1.0);
    must(&before, "pg_credcrypt_worker_token_ttl_seconds", &[]);
    assert_eq!(must(&before, "pg_credcrypt_worker_queue_depth", &[]), 0.0);
    let requests = must(&before, "pg_credcrypt_worker_requests", &[]);
    let served = must(&before, "pg_credcrypt_worker_values_served", &[]);
    must(&before, "pg_credcrypt_reencrypt_stalled_runs", &[]);

    // Transit work, a failure of a known kind, a measured column, audited decryptions.
    c.psql(
        "mx_app",
        "SELECT count(credcrypt.encrypt_credential('sk-metrics-MARKER-' || i, 'transit:app')) FROM generate_series(1, 20) i",
    )
    .expect_ok();
    c.psql("mx_app", "SELECT credcrypt.encrypt_credential('sk-metrics-MARKER-x', 'transit:missing')")
        .expect_error("42704");
    c.psql(
        "mx_owner",
        "DROP TABLE IF EXISTS mx_tokens;
         CREATE TABLE mx_tokens (id int PRIMARY KEY, token text);
         SELECT credcrypt.protect_column('mx_tokens', 'token', key_name => 'transit:app', bind_columns => ARRAY['id']);
         INSERT INTO mx_tokens SELECT i, 'ghp_metrics_MARKER_' || i FROM generate_series(1, 3) i;
         GRANT SELECT ON mx_tokens TO mx_app;
         SELECT count(*) FROM credcrypt.key_usage('mx_tokens');",
    )
    .expect_ok();
    c.sql("ALTER ROLE mx_app SET credcrypt.audit_decrypt = 'table'");
    let ctx = c.value(
        "mx_app",
        "SELECT credcrypt.column_context(binding_id, ARRAY['1']) FROM credcrypt.protected_columns_info WHERE table_name = 'mx_tokens'",
    );
    c.psql("mx_app", &format!("SELECT credcrypt.decrypt_credential(token, '{ctx}') FROM mx_tokens WHERE id = 1"))
        .expect_ok();
    c.sql("ALTER ROLE mx_app RESET credcrypt.audit_decrypt");

    let after = x.scrape();
    assert!(must(&after, "pg_credcrypt_worker_requests", &[]) > requests);
    assert!(must(&after, "pg_credcrypt_worker_values_served", &[]) >= served + 20.0);
    assert!(must(&after, "pg_credcrypt_worker_batches", &[]) >= 1.0);
    assert!(
        must(&after, "pg_credcrypt_worker_token_ttl_seconds", &[]) > 0.0,
        "the token's TTL is known once it was used"
    );
    assert!(must(&after, "pg_credcrypt_worker_failures_total", &[("kind", "key_not_found")]) >= 1.0);
    assert!(must(&after, "pg_credcrypt_worker_failures_last_seconds", &[("kind", "key_not_found")]) > 1.7e9);
    assert_eq!(
        must(
            &after,
            "pg_credcrypt_key_usage_values",
            &[
                ("table_name", "public.mx_tokens"),
                ("column_name", "token"),
                ("source", "transit"),
                ("key_version", "1"),
                ("current", "true")
            ]
        ),
        3.0
    );
    assert!(must(&after, "pg_credcrypt_key_usage_age_seconds", &[("table_name", "public.mx_tokens")]) < 600.0);
    assert!(must(&after, "pg_credcrypt_decrypts_values_decrypted", &[("role_name", "mx_app")]) >= 1.0);
    assert!(!after.contains("MARKER"), "a plaintext in the metrics");
    assert!(!after.contains("vault:v"), "a ciphertext in the metrics");

    c.psql(
        "mx_owner",
        "SELECT credcrypt.unprotect_column('mx_tokens', 'token', decrypt_existing => true); DROP TABLE mx_tokens",
    )
    .expect_ok();
}
