//! The docker/ files, tested without a Docker engine: the same files, run with the real
//! `bao` binary and the test cluster.
//! - docker/gen-secrets.sh makes every secret docker-compose.yml declares, with safe modes;
//! - the rendered OpenBao configuration starts (raft + static seal + initialize), unseals
//!   itself, and yields the Transit key and an AppRole whose policy allows exactly the key `app`;
//! - docker/postgres/initdb/10-credcrypt.sql runs on a fresh database (twice: it is idempotent);
//! - the worker, configured with the settings of docker/postgres/credcrypt.conf, logs in with
//!   that AppRole and the application table encrypts through Transit;
//! - docker/check_compose.py accepts docker-compose.yml.

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::time::{Duration, Instant};

use credcrypt_blackbox::bao::{bao_bin, free_port, point_at, write_secret_file};
use credcrypt_blackbox::Cluster;

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bao(addr: &str, token: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(bao_bin());
    cmd.args(args).env("BAO_ADDR", addr);
    if let Some(t) = token {
        cmd.env("BAO_TOKEN", t);
    }
    let out = cmd.output().expect("bao runs");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn compose_pieces_work_with_the_real_binaries() {
    let c = Cluster::from_env();
    let dir = c.keys.join("docker");
    let _ = std::fs::remove_dir_all(&dir);
    let secrets = dir.join("secrets");
    // 1. Secrets.
    let st = Command::new("bash").arg(repo("docker/gen-secrets.sh")).arg(&secrets).status().expect("gen-secrets");
    assert!(st.success());
    let compose = std::fs::read_to_string(repo("docker/docker-compose.yml")).expect("compose file");
    for line in compose.lines().filter_map(|l| l.trim().strip_prefix("file: ./secrets/")) {
        let meta =
            std::fs::metadata(secrets.join(line)).unwrap_or_else(|_| panic!("gen-secrets.sh did not make {line}"));
        assert!(meta.len() > 0, "{line} is empty");
        assert_eq!(meta.permissions().mode() & 0o777, 0o640, "{line}");
    }
    // Idempotent: a second run keeps the existing secrets.
    let id_before = std::fs::read_to_string(secrets.join("bao_secret_id")).expect("secret id");
    assert!(Command::new("bash").arg(repo("docker/gen-secrets.sh")).arg(&secrets).status().expect("rerun").success());
    assert_eq!(std::fs::read_to_string(secrets.join("bao_secret_id")).expect("secret id"), id_before);

    // 2. OpenBao from the rendered configuration, with only host paths and ports replaced.
    let (port, cport) = (free_port(), free_port());
    std::fs::create_dir_all(dir.join("data")).expect("raft dir");
    let hcl = std::fs::read_to_string(secrets.join("openbao.hcl"))
        .expect("openbao.hcl")
        .replace("/openbao/data", &dir.join("data").to_string_lossy())
        .replace("0.0.0.0:8200", &format!("127.0.0.1:{port}"))
        .replace("0.0.0.0:8201", &format!("127.0.0.1:{cport}"))
        .replace("http://openbao:8200", &format!("http://127.0.0.1:{port}"))
        .replace("http://openbao:8201", &format!("http://127.0.0.1:{cport}"))
        .replace("file:///run/secrets/bao_seal_key", &format!("file://{}", secrets.join("bao_seal_key").display()));
    std::fs::write(dir.join("openbao.hcl"), hcl).expect("config");
    let log = std::fs::File::create(dir.join("bao.log")).expect("log");
    let _server = Server(
        Command::new(bao_bin())
            .arg("server")
            .arg(format!("-config={}", dir.join("openbao.hcl").display()))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("bao server"),
    );
    let addr = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !bao(&addr, None, &["status"]).0 {
        assert!(
            Instant::now() < deadline,
            "OpenBao did not initialize and unseal: {}",
            std::fs::read_to_string(dir.join("bao.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The AppRole works and its policy is exactly the key `app`.
    let secret_id = id_before.trim().to_owned();
    let (ok, token) = bao(
        &addr,
        None,
        &["write", "-field=token", "auth/approle/login", "role_id=credcrypt-role", &format!("secret_id={secret_id}")],
    );
    assert!(ok, "AppRole login: {token}");
    let token = token.trim().to_owned();
    assert!(bao(&addr, Some(&token), &["write", "transit/encrypt/app", "plaintext=aGk="]).0);
    assert!(bao(&addr, Some(&token), &["read", "transit/keys/app"]).0);
    assert!(!bao(&addr, Some(&token), &["write", "-f", "transit/keys/other"]).0, "may create keys");
    assert!(!bao(&addr, Some(&token), &["read", "sys/policies/acl/credcrypt"]).0, "may read policies");
    assert!(!bao(&addr, Some(&token), &["write", "transit/export/encryption-key/app"]).0, "may export");

    // 3. The init SQL, on a fresh database, twice.
    c.client("dropdb", &["--if-exists", "dk_app"]);
    let (ok, out) = c.client("createdb", &["dk_app"]);
    assert!(ok, "{out}");
    let init = repo("docker/postgres/initdb/10-credcrypt.sql").to_string_lossy().into_owned();
    for _ in 0..2 {
        let (ok, out) = c.client("psql", &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "dk_app", "-f", &init]);
        assert!(ok, "init SQL: {out}");
    }

    // 4. The worker with docker/postgres/credcrypt.conf's settings (addresses and paths mapped).
    // In the container the secret is root:999 0640 and postgres is uid/gid 999; here the
    // server's user differs, so the same content is given to it as its own 0600 file.
    let worker_secret = c.keys.join("docker_bao_secret_id");
    write_secret_file(&worker_secret, &secret_id);
    let conf = std::fs::read_to_string(repo("docker/postgres/credcrypt.conf")).expect("credcrypt.conf");
    let mut lines = String::new();
    for l in conf.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if l.starts_with("shared_preload_libraries") || l.starts_with("credcrypt.bao_addr") {
            continue; // the test cluster preloads already; the address is set by point_at
        }
        lines.push_str(&l.replace("/run/secrets/bao_secret_id", &worker_secret.to_string_lossy()));
        lines.push('\n');
    }
    point_at(&c, &addr, &lines);
    let sql = |sql: &str| c.psql_in("dk_app", "postgres", sql).expect_ok().to_owned();
    let stored = sql("SET ROLE app; BEGIN; SELECT credcrypt.set_owner('user-1');
         INSERT INTO app.integration_credentials (user_id, provider, api_key, config)
         VALUES ('user-1', 'openai', 'sk-DOCKERMARKER-0001', '{\"apiKey\": \"sk-DOCKERJSON-2\"}') RETURNING api_key;
         COMMIT;");
    assert!(stored.contains("cc1:transit:app:1:c:vault:v1:") && !stored.contains("DOCKERMARKER"), "{stored}");
    assert_eq!(
        sql("SET ROLE app; BEGIN; SELECT credcrypt.set_owner('user-1');
             SELECT api_key || ' ' || (config->>'apiKey') FROM app.integration_credentials_decrypted; COMMIT;")
        .lines()
        .find(|l| l.starts_with("sk-"))
        .unwrap_or_default(),
        "sk-DOCKERMARKER-0001 sk-DOCKERJSON-2"
    );
    // Reporting reads the masks of every owner (the masked view's owner has a policy of its
    // own), and nothing more.
    let masked = sql("SET ROLE reporting; SELECT api_key_mask FROM app.integration_credentials_masked");
    assert_eq!(masked, "sk-…0001");
    assert!(!c.psql_in("dk_app", "postgres", "SET ROLE reporting; SELECT api_key FROM app.integration_credentials").ok);
    // The exporter's role reads the monitoring views (the queries file's sources), not the table.
    assert_eq!(sql("SET ROLE monitor; SELECT worker_pid IS NOT NULL FROM credcrypt.transit_status"), "t");
    assert!(!c.psql_in("dk_app", "postgres", "SET ROLE monitor; SELECT api_key FROM app.integration_credentials").ok);
    // 5. The compose file check.
    // The venv's Python (scripts/setup.sh); CC_PYTHON elsewhere (the version matrix's chroots).
    let py = std::env::var("CC_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo("target/tools/venv/bin/python"));
    let out = Command::new(py).arg(repo("docker/check_compose.py")).output().expect("python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    c.client("dropdb", &["dk_app"]);
}
