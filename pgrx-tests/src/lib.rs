//! Black-box test helpers: drive a running pg_credcrypt cluster through `psql`, edit its
//! configuration and reload it, read its server log.
//!
//! The cluster comes from `scripts/test.sh` (see `scripts/lib/cluster.sh`), which exports
//! `CC_PGHOST`, `CC_PGPORT`, `CC_PGDATA`, `CC_KEYDIR` and `CC_LOG`.

pub mod bao;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a `psql` invocation returned.
#[derive(Debug)]
pub struct Outcome {
    /// Whether psql exited 0.
    pub ok: bool,
    /// Standard output, trimmed.
    pub out: String,
    /// Standard error (errors in verbose form: `ERROR:  <SQLSTATE>: message`, DETAIL, HINT).
    pub err: String,
}

impl Outcome {
    /// The SQLSTATE of the first error, if any.
    pub fn sqlstate(&self) -> Option<&str> {
        let i = self.err.find("ERROR:  ")?;
        self.err.get(i + 8..i + 13)
    }

    /// Panics unless the statement failed with `sqlstate` and a HINT line.
    #[track_caller]
    pub fn expect_error(&self, sqlstate: &str) -> &Self {
        assert!(!self.ok, "expected {sqlstate}, got success: {}", self.out);
        assert_eq!(self.sqlstate(), Some(sqlstate), "stderr: {}", self.err);
        assert!(self.err.contains("HINT:  "), "no hint: {}", self.err);
        self
    }

    /// Panics unless the statement failed with `sqlstate`: PostgreSQL's own errors (a unique
    /// violation, a missing grant), which carry no pg_credcrypt hint.
    #[track_caller]
    pub fn expect_pg_error(&self, sqlstate: &str) -> &Self {
        assert!(!self.ok, "expected {sqlstate}, got success: {}", self.out);
        assert_eq!(self.sqlstate(), Some(sqlstate), "stderr: {}", self.err);
        self
    }

    /// Panics if stdout or stderr contains `secret`.
    #[track_caller]
    pub fn expect_clean(&self, secret: &str) -> &Self {
        assert!(!self.out.contains(secret) && !self.err.contains(secret), "leaked {secret:?}: {self:?}");
        self
    }

    /// Panics unless the statement succeeded; returns stdout.
    #[track_caller]
    pub fn expect_ok(&self) -> &str {
        assert!(self.ok, "statement failed: {}", self.err);
        &self.out
    }
}

/// The cluster under test.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Socket directory.
    pub host: String,
    /// Port.
    pub port: String,
    /// Data directory.
    pub data: PathBuf,
    /// Directory holding key files.
    pub keys: PathBuf,
    /// Server log file.
    pub log: PathBuf,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the black-box tests through scripts/test.sh"))
}

impl Cluster {
    /// The cluster named by the `CC_*` environment variables.
    pub fn from_env() -> Self {
        Self {
            host: env("CC_PGHOST"),
            port: env("CC_PGPORT"),
            data: env("CC_PGDATA").into(),
            keys: env("CC_KEYDIR").into(),
            log: env("CC_LOG").into(),
        }
    }

    /// Runs `sql` (a psql script: SQL and meta-commands) as `user` in database `postgres`, in
    /// one session that stops at the first error.
    pub fn psql(&self, user: &str, sql: &str) -> Outcome {
        self.psql_in("postgres", user, sql)
    }

    /// `psql` reading SQL from stdin as `user` in `db` (unaligned, tuples only, verbose errors),
    /// stopping at the first error when `stop_on_error`.
    fn psql_command(&self, db: &str, user: &str, stop_on_error: bool) -> Command {
        let stop = if stop_on_error { "ON_ERROR_STOP=1" } else { "ON_ERROR_STOP=0" };
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-A", "-t", "-q", "-v", stop, "-v", "VERBOSITY=verbose"])
            .args(["-h", &self.host, "-p", &self.port, "-U", user, "-d", db, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Checks that `ct` is bound to its context: as `user` it decrypts to `plaintext` with
    /// `ctx`, and with `other_ctx` fails with `39000` without showing `marker` (a word of the
    /// plaintext).
    #[track_caller]
    pub fn assert_bound(&self, user: &str, ct: &str, ctx: &str, other_ctx: &str, plaintext: &str, marker: &str) {
        let decrypt = |c: &str| format!("SELECT credcrypt.decrypt_credential('{ct}', '{c}')");
        assert_eq!(self.value(user, &decrypt(ctx)), plaintext);
        self.psql(user, &decrypt(other_ctx)).expect_error("39000").expect_clean(marker);
    }

    /// Creates database `db` afresh (dropped first if it exists).
    #[track_caller]
    pub fn fresh_db(&self, db: &str) {
        self.client("dropdb", &["--if-exists", db]);
        let (ok, out) = self.client("createdb", &[db]);
        assert!(ok, "createdb {db}: {out}");
    }

    /// The output of `sql` run as `user`, which must succeed.
    pub fn value(&self, user: &str, sql: &str) -> String {
        self.psql(user, sql).expect_ok().to_owned()
    }

    /// Like [`Cluster::psql`], in database `db`.
    pub fn psql_in(&self, db: &str, user: &str, sql: &str) -> Outcome {
        use std::io::Write as _;
        let mut child = self.psql_command(db, user, true).spawn().expect("psql runs");
        let mut stdin = child.stdin.take().expect("psql stdin");
        let script = format!("\\set VERBOSITY verbose\n{sql}\n");
        let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
        let out = child.wait_with_output().expect("psql finishes");
        match writer.join().expect("stdin writer") {
            // psql ended before reading its script (it could not connect: a server a test has
            // just killed): its exit status and stderr say so.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            r => r.expect("write psql stdin"),
        }
        Outcome {
            ok: out.status.success(),
            out: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            err: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs `sql` as superuser and returns its output, panicking on error.
    #[track_caller]
    pub fn sql(&self, sql: &str) -> String {
        self.psql("postgres", sql).expect_ok().to_owned()
    }

    /// Runs a PostgreSQL client program of the server's version (`pg_dump`, `pg_restore`, …)
    /// against this cluster as superuser; returns (success, stdout + stderr).
    pub fn client(&self, program: &str, args: &[&str]) -> (bool, String) {
        let bin = std::env::var("CC_PGBIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
        let out = Command::new(format!("{bin}/{program}"))
            .args(["-h", &self.host, "-p", &self.port, "-U", "postgres"])
            .args(args)
            .output()
            .expect("client program runs");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Writes `credcrypt.conf` (included by postgresql.conf), reloads, and waits until the
    /// server reports `credcrypt.local_key_file` = `expect_key_file`.
    pub fn configure(&self, conf: &str, expect_key_file: &str) {
        std::fs::write(self.data.join("credcrypt.conf"), conf).expect("write credcrypt.conf");
        self.sql("SELECT pg_reload_conf()");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.sql("SHOW credcrypt.local_key_file") == expect_key_file {
                return;
            }
            assert!(Instant::now() < deadline, "configuration was not reloaded within 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes a key file (base64 text) owned by postgres with `mode`; returns its path.
    pub fn write_key(&self, name: &str, content: &str, mode: u32) -> String {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.keys.join(name);
        std::fs::write(&path, content).expect("write key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod key");
        let st = Command::new("chown").args(["postgres:postgres"]).arg(&path).status().expect("chown");
        assert!(st.success());
        path.to_string_lossy().into_owned()
    }

    /// Creates the extension (if absent) and a non-superuser login role `name` (if absent)
    /// that is granted `grants` (e.g. `credcrypt_encryptor, credcrypt_decryptor`; may be empty).
    pub fn ensure_login_role(&self, name: &str, grants: &str) {
        let grant = if grants.is_empty() { String::new() } else { format!("GRANT {grants} TO {name};") };
        self.sql(&format!(
            "CREATE EXTENSION IF NOT EXISTS pg_credcrypt;
             DO $$ BEGIN
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN
                 CREATE ROLE {name} LOGIN NOSUPERUSER NOBYPASSRLS;
                 {grant}
               END IF;
             END $$;"
        ));
    }

    /// Restarts the server (fast shutdown) and waits until it accepts connections.
    pub fn restart(&self) {
        let bin = std::env::var("CC_PGBIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
        let st = as_postgres(format!("{bin}/pg_ctl"))
            .args(["-D"])
            .arg(&self.data)
            .args(["-m", "fast", "-w", "-l"])
            .arg(&self.log)
            .arg("restart")
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl runs");
        assert!(st.success(), "pg_ctl restart failed");
    }

    /// Kills the whole server at once (kill -9 of the postmaster and every child), as a machine
    /// crash would: backends would otherwise go on until they notice the postmaster is gone.
    pub fn kill_server(&self) {
        let pid = std::fs::read_to_string(self.data.join("postmaster.pid")).expect("postmaster.pid");
        let pid = pid.lines().next().unwrap_or_default().trim().to_owned();
        let _ = Command::new("pkill").args(["-9", "-P", &pid]).status();
        assert!(Command::new("kill").args(["-9", &pid]).status().expect("kill").success());
    }

    /// Starts the server again after it was killed (crash recovery), retrying while the old
    /// backends are still exiting; at most a minute.
    pub fn start_after_crash(&self) {
        let bin = std::env::var("CC_PGBIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let st = as_postgres(format!("{bin}/pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-w", "-l"])
                .arg(&self.log)
                .arg("start")
                .stdout(Stdio::null())
                .status()
                .expect("pg_ctl");
            if st.success() {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "the cluster did not start again");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The server log so far.
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }
}

/// A command that runs `program` as the `postgres` OS user (the tests run as root): runuser,
/// which needs no sudo and no resolvable host name.
pub fn as_postgres(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).arg(program).env("HOME", "/var/lib/postgresql").current_dir("/");
    cmd
}

/// Takes a test binary's lock (its tests share one cluster and its configuration), and resets
/// the configuration to the baseline: the cluster's own `current.key`, nothing else.
pub fn serial_baseline(lock: &'static std::sync::Mutex<()>) -> (std::sync::MutexGuard<'static, ()>, Cluster) {
    let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
    let c = Cluster::from_env();
    let key = c.keys.join("current.key").to_string_lossy().into_owned();
    c.configure(&format!("credcrypt.local_key_file = '{key}'\n"), &key);
    (guard, c)
}

/// [`serial_baseline`], then the suite's login roles, each with its grants (`""` for none),
/// and CREATE on schema public for the roles in `creators`.
pub fn serial_with_roles(
    lock: &'static std::sync::Mutex<()>,
    roles: &[(&str, &str)],
    creators: &[&str],
) -> (std::sync::MutexGuard<'static, ()>, Cluster) {
    let (guard, c) = serial_baseline(lock);
    for (name, grants) in roles {
        c.ensure_login_role(name, grants);
    }
    for name in creators {
        c.sql(&format!("GRANT CREATE ON SCHEMA public TO {name}"));
    }
    (guard, c)
}

/// A deterministic 32-byte key, in base64, from a seed (test keys only).
pub fn test_key(seed: u8) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(31).wrapping_add(seed)).collect();
    let mut s = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                s.push(A[((n >> shift) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// A long-lived `psql` session (one backend), driven statement by statement: for tests where
/// sessions interleave (a pooled connection that stays open while an administrator changes
/// something), or that need session state (prepared statements, open transactions).
pub struct Session {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    out: std::sync::mpsc::Receiver<String>,
    err: std::sync::mpsc::Receiver<String>,
    n: u64,
}

impl Session {
    /// Opens a session as `user` in database `postgres`.
    pub fn open(c: &Cluster, user: &str) -> Session {
        Self::open_in(c, "postgres", user)
    }

    /// Opens a session as `user` in database `db`.
    pub fn open_in(c: &Cluster, db: &str, user: &str) -> Session {
        use std::io::BufRead as _;
        let mut child = c.psql_command(db, user, false).spawn().expect("psql runs");
        let stdin = child.stdin.take().expect("psql stdin");
        let pipe = |r: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let out = pipe(Box::new(child.stdout.take().expect("psql stdout")));
        let err = pipe(Box::new(child.stderr.take().expect("psql stderr")));
        let mut s = Session { child, stdin, out, err, n: 0 };
        s.run("\\set VERBOSITY verbose").expect_ok();
        s
    }

    /// Runs `sql` (statements or meta-commands) and waits for it to finish; the outcome is
    /// failed if any statement of it failed.
    pub fn run(&mut self, sql: &str) -> Outcome {
        self.send(sql);
        self.wait()
    }

    /// Writes `sql` without waiting (the statement may block, e.g. on a lock); finish with
    /// [`Session::wait`].
    pub fn send(&mut self, sql: &str) {
        use std::io::Write as _;
        self.n += 1;
        let marker = format!("__CC_SESSION_{}__", self.n);
        writeln!(self.stdin, "{sql}\n;\n\\echo {marker}\n\\warn {marker}").expect("write to psql");
        self.stdin.flush().expect("flush psql stdin");
    }

    /// Waits for what the last [`Session::send`] wrote to finish.
    pub fn wait(&mut self) -> Outcome {
        let marker = format!("__CC_SESSION_{}__", self.n);
        let collect = |rx: &std::sync::mpsc::Receiver<String>| {
            let mut lines = Vec::new();
            loop {
                match rx.recv_timeout(Duration::from_secs(120)) {
                    Ok(l) if l == marker => break,
                    Ok(l) => lines.push(l),
                    Err(e) => panic!("psql session gave no answer within 120 s ({e:?}); so far: {lines:?}"),
                }
            }
            lines.join("\n")
        };
        let out = collect(&self.out);
        let err = collect(&self.err);
        Outcome { ok: !err.contains("ERROR:") && !err.contains("FATAL:"), out: out.trim().to_owned(), err }
    }

    /// The backend's process id.
    pub fn pid(&mut self) -> i32 {
        self.run("SELECT pg_backend_pid()").expect_ok().trim().parse().expect("a pid")
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
