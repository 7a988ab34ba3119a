//! A real OpenBao server for tests: `bao server -dev` on a free loopback port, configured
//! through the `bao` CLI (transit engine, keys, a least-privilege policy, AppRole), and a
//! persistent raft-backed one for restart tests. Used by the OpenBao client's tests
//! (crates/openbao) and by the black-box suites (pgrx-tests); no PostgreSQL here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The policy the extension's worker gets: encrypt/decrypt/rewrap and key reads on named keys.
pub const POLICY: &str = r#"
path "transit/encrypt/app"    { capabilities = ["update"] }
path "transit/decrypt/app"    { capabilities = ["update"] }
path "transit/rewrap/app"     { capabilities = ["update"] }
path "transit/keys/app"       { capabilities = ["read"] }
path "transit/keys/app/rotate" { capabilities = ["update"] }
path "transit/datakey/plaintext/app" { capabilities = ["update"] }
path "transit/encrypt/other"  { capabilities = ["update"] }
path "transit/decrypt/other"  { capabilities = ["update"] }
path "transit/keys/other"     { capabilities = ["read"] }
path "transit/encrypt/signing" { capabilities = ["update"] }
path "transit/keys/signing"   { capabilities = ["read"] }
path "transit/encrypt/missing" { capabilities = ["update"] }
path "transit/keys/missing"   { capabilities = ["read"] }
path "transit/encrypt/later"  { capabilities = ["update"] }
path "transit/decrypt/later"  { capabilities = ["update"] }
path "transit/keys/later"     { capabilities = ["read"] }
path "secret/data/pg_credcrypt/*"     { capabilities = ["create", "update", "read"] }
path "secret/metadata/pg_credcrypt/*" { capabilities = ["read", "list", "delete"] }
path "secret/destroy/pg_credcrypt/*"  { capabilities = ["update"] }
"#;

/// The policy for per-row (tenant) keys `tenant-*`, as docs/openbao.md gives it: use, create
/// on first use (`credcrypt.auto_create_keys`) and destroy (`credcrypt.shred_key`).
pub const TENANT_POLICY: &str = r#"
path "transit/encrypt/tenant-*"           { capabilities = ["update"] }
path "transit/decrypt/tenant-*"           { capabilities = ["update"] }
path "transit/datakey/plaintext/tenant-*" { capabilities = ["update"] }
path "transit/keys/tenant-*"              { capabilities = ["read", "create", "update", "delete"] }
path "transit/keys/tenant-*/config"       { capabilities = ["update"] }
"#;

/// A running dev server (killed on drop).
pub struct Bao {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub addr: String,
    /// Root token (tests only; the extension gets a policy-limited token).
    pub root_token: String,
    /// Directory for token files.
    pub dir: PathBuf,
    /// CA certificate of a TLS dev server (`-dev-tls`), if any.
    pub ca_file: Option<PathBuf>,
}

/// Path of the `bao` binary (`BAO_BIN`, else the venv made by scripts/setup.sh).
pub fn bao_bin() -> PathBuf {
    std::env::var_os("BAO_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/venv/bin/bao"))
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

impl Bao {
    /// Starts a dev server on `port` (0: a free one) and waits until it is active.
    pub fn start(port: u16, dir: &Path) -> Bao {
        Self::start_with(port, dir, false)
    }

    /// Starts a dev server with TLS (`-dev-tls`, a generated CA in `dir/tls/vault-ca.pem`).
    pub fn start_tls(dir: &Path) -> Bao {
        Self::start_with(0, dir, true)
    }

    fn start_with(port: u16, dir: &Path, tls: bool) -> Bao {
        let port = if port == 0 { free_port() } else { port };
        let root_token = format!("root-{port}-{}", std::process::id());
        std::fs::create_dir_all(dir).expect("bao dir");
        let log = std::fs::File::create(dir.join(format!("bao-{port}.log"))).expect("bao log");
        let tls_dir = dir.join(format!("tls-{port}"));
        let mut cmd = Command::new(bao_bin());
        cmd.args(["server", "-dev", "-dev-no-store-token"]);
        if tls {
            std::fs::create_dir_all(&tls_dir).expect("tls dir");
            cmd.arg("-dev-tls").arg(format!("-dev-tls-cert-dir={}", tls_dir.display()));
        }
        let child = cmd
            .arg(format!("-dev-root-token-id={root_token}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start bao");
        let scheme = if tls { "https" } else { "http" };
        let ca_file = tls.then(|| tls_dir.join("vault-ca.pem"));
        let bao = Bao { child, addr: format!("{scheme}://127.0.0.1:{port}"), root_token, dir: dir.to_owned(), ca_file };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !bao.cli(&["status"]).0 {
            assert!(Instant::now() < deadline, "OpenBao did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        bao
    }

    /// Runs the `bao` CLI with the root token: (success, stdout+stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let mut cmd = Command::new(bao_bin());
        if let Some(ca) = &self.ca_file {
            cmd.env("BAO_CACERT", ca);
        }
        let out = cmd
            .args(args)
            .env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", &self.root_token)
            .env_remove("VAULT_ADDR")
            .stdin(Stdio::null())
            .output()
            .expect("bao cli");
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    /// Runs the CLI and panics on failure; returns its output.
    #[track_caller]
    pub fn must(&self, args: &[&str]) -> String {
        let (ok, out) = self.cli(args);
        assert!(ok, "bao {args:?} failed: {out}");
        out
    }

    /// Transit engine, keys `app` and `other` (aes256-gcm96), `signing` (ed25519), the
    /// policy `credcrypt`, and AppRole `credcrypt` with fixed ids and a `ttl`-second token.
    pub fn setup(&self, ttl: &str) {
        self.must(&["secrets", "enable", "transit"]);
        self.must(&["write", "-f", "transit/keys/app"]);
        self.must(&["write", "-f", "transit/keys/other"]);
        self.must(&["write", "transit/keys/signing", "type=ed25519"]);
        self.must(&["write", "transit/config/keys", "disable_upsert=true"]);
        let policy = self.dir.join("policy.hcl");
        std::fs::write(&policy, POLICY).expect("policy");
        self.must(&["policy", "write", "credcrypt", policy.to_str().expect("path")]);
        self.must(&["auth", "enable", "approle"]);
        self.must(&[
            "write",
            "auth/approle/role/credcrypt",
            "token_policies=credcrypt",
            &format!("token_ttl={ttl}"),
            "token_max_ttl=1h",
            "token_type=service",
        ]);
        self.must(&["write", "auth/approle/role/credcrypt/role-id", "role_id=credcrypt-role"]);
        self.must(&["write", "auth/approle/role/credcrypt/custom-secret-id", "secret_id=credcrypt-secret-0001"]);
    }

    /// Creates a policy-limited service token and returns it.
    pub fn token(&self, ttl: &str) -> String {
        let out = self.must(&["token", "create", "-policy=credcrypt", &format!("-ttl={ttl}"), "-field=token"]);
        out.trim().to_owned()
    }

    /// A policy-limited service token that may also use, create and destroy the per-row keys
    /// `tenant-*` ([`TENANT_POLICY`]).
    pub fn tenant_token(&self, ttl: &str) -> String {
        let policy = self.dir.join("tenant-policy.hcl");
        std::fs::write(&policy, TENANT_POLICY).expect("policy");
        self.must(&["policy", "write", "credcrypt-tenants", policy.to_str().expect("path")]);
        let out = self.must(&[
            "token",
            "create",
            "-policy=credcrypt",
            "-policy=credcrypt-tenants",
            &format!("-ttl={ttl}"),
            "-field=token",
        ]);
        out.trim().to_owned()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes `content` to `path`, owned by postgres with mode 0600 (the worker reads it).
pub fn write_secret_file(path: &Path, content: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, content).expect("write secret file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let ok = Command::new("chown").arg("postgres:postgres").arg(path).status().expect("chown").success();
    assert!(ok, "chown failed");
}

/// A non-dev OpenBao that survives restarts: raft storage, a static seal key (auto-unseal on
/// every start) and `initialize` blocks that mount transit and KV version 2 at `secret/`, create key `app`, the `credcrypt`
/// policy and an AppRole with fixed ids (`credcrypt-role` / `credcrypt-secret-0001`).
pub struct PersistentBao {
    child: Option<Child>,
    /// `http://127.0.0.1:<port>`.
    pub addr: String,
    /// Server directory (config, raft data, seal key, log).
    pub dir: PathBuf,
}

impl PersistentBao {
    /// Writes the configuration (first call) and starts the server; waits until unsealed.
    pub fn start(dir: &Path) -> PersistentBao {
        std::fs::create_dir_all(dir.join("raft")).expect("raft dir");
        let port = free_port();
        let cluster_port = free_port();
        let seal = dir.join("seal.key");
        if !seal.exists() {
            let key: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(97).wrapping_add(13)).collect();
            std::fs::write(&seal, key).expect("seal key");
        }
        let policy = POLICY.replace('"', "\\\"").replace('\n', "\\n");
        let hcl = format!(
            r#"storage "raft" {{
  path = "{raft}"
  node_id = "n1"
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{cluster_port}"
disable_mlock = true
seal "static" {{
  current_key_id = "test-1"
  current_key = "file://{seal}"
}}
initialize "credcrypt" {{
  request "mount-transit" {{
    operation = "update"
    path = "sys/mounts/transit"
    data = {{ type = "transit" }}
  }}
  request "mount-kv" {{
    operation = "update"
    path = "sys/mounts/secret"
    data = {{ type = "kv", options = {{ version = "2" }} }}
  }}
  request "key-app" {{
    operation = "update"
    path = "transit/keys/app"
    data = {{}}
  }}
  request "policy" {{
    operation = "update"
    path = "sys/policies/acl/credcrypt"
    data = {{ policy = "{policy}" }}
  }}
  request "approle" {{
    operation = "update"
    path = "sys/auth/approle"
    data = {{ type = "approle" }}
  }}
  request "role" {{
    operation = "update"
    path = "auth/approle/role/credcrypt"
    data = {{ token_policies = "credcrypt", token_ttl = "1h", token_max_ttl = "4h" }}
  }}
  request "role-id" {{
    operation = "update"
    path = "auth/approle/role/credcrypt/role-id"
    data = {{ role_id = "credcrypt-role" }}
  }}
  request "secret-id" {{
    operation = "update"
    path = "auth/approle/role/credcrypt/custom-secret-id"
    data = {{ secret_id = "credcrypt-secret-0001" }}
  }}
}}
"#,
            raft = dir.join("raft").display(),
            seal = seal.display(),
        );
        std::fs::write(dir.join("bao.hcl"), hcl).expect("config");
        let mut b = PersistentBao { child: None, addr: format!("http://127.0.0.1:{port}"), dir: dir.to_owned() };
        b.restart();
        b
    }

    /// (Re)starts the server with the same configuration and data; waits until unsealed.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("bao.log")).expect("log");
        let child = Command::new(bao_bin())
            .arg("server")
            .arg(format!("-config={}", self.dir.join("bao.hcl").display()))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start bao");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new(bao_bin())
                .args(["status", "-format=json"])
                .env("BAO_ADDR", &self.addr)
                .output()
                .expect("bao status");
            let text = String::from_utf8_lossy(&out.stdout);
            if text.contains("\"sealed\": false") && text.contains("\"initialized\": true") {
                return;
            }
            assert!(Instant::now() < deadline, "persistent OpenBao did not come up: {text}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the server (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PersistentBao {
    fn drop(&mut self) {
        self.kill();
    }
}
