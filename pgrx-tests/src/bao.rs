//! OpenBao for the black-box suites: the server harness of `credcrypt-test-support`, pointed
//! at a cluster's worker, and [`BaoEnv`], the setup the OpenBao-backed suites share.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use credcrypt_test_support::*;

/// What an OpenBao-backed suite's tests share: the binary's lock (held: the tests share one
/// cluster and its configuration), the cluster, and OpenBao with the worker pointed at it.
pub struct BaoEnv {
    _guard: MutexGuard<'static, ()>,
    /// The cluster.
    pub c: crate::Cluster,
    /// The OpenBao dev server (keys app/other/signing; token in `<keys>/bao.token`).
    pub bao: Bao,
}

impl BaoEnv {
    /// Takes `lock`, creates the suite's roles — `<prefix>_app` (encryptor and decryptor) and,
    /// with `owner`, `<prefix>_owner` (credcrypt_admin, may create tables in public) — starts
    /// OpenBao and points the worker at it.
    pub fn start(lock: &'static Mutex<()>, prefix: &str, owner: bool) -> BaoEnv {
        let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let c = crate::Cluster::from_env();
        if owner {
            c.ensure_login_role(&format!("{prefix}_owner"), "credcrypt_admin");
            c.sql(&format!("GRANT CREATE ON SCHEMA public TO {prefix}_owner"));
        }
        c.ensure_login_role(&format!("{prefix}_app"), "credcrypt_encryptor, credcrypt_decryptor");
        let bao = start_for(&c);
        BaoEnv { _guard: guard, c, bao }
    }
}

/// Starts an OpenBao dev server for `c` (keys app/other/signing, policy-limited token with a
/// 1 h TTL in `<keys>/bao.token`) and points the cluster's worker at it.
pub fn start_for(c: &crate::Cluster) -> Bao {
    let bao = Bao::start(0, &c.keys.join("bao"));
    bao.setup("1h");
    let token = c.keys.join("bao.token");
    write_secret_file(&token, &bao.token("1h"));
    point_at(c, &bao.addr, &format!("credcrypt.bao_token_file = '{}'\n", token.display()));
    bao
}

/// Writes credcrypt.conf (local key + OpenBao `addrs` + `auth` lines), reloads and waits until
/// the worker reports the first address as active.
pub fn point_at(c: &crate::Cluster, addrs: &str, auth: &str) {
    let key = c.keys.join("current.key");
    let conf = format!(
        "credcrypt.local_key_file = '{}'\ncredcrypt.bao_addr = '{addrs}'\n{auth}credcrypt.bao_request_timeout_ms = 3000\ncredcrypt.bao_connect_timeout_ms = 500\n",
        key.display()
    );
    std::fs::write(c.data.join("credcrypt.conf"), conf).expect("conf");
    c.sql("SELECT pg_reload_conf()");
    let first = addrs.split(',').next().unwrap_or_default().trim().to_owned();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let a = c.sql("SELECT coalesce(active_address, '') FROM credcrypt.status()");
        if a == first {
            return;
        }
        assert!(Instant::now() < deadline, "worker did not pick up {addrs} (reports {a:?})");
        std::thread::sleep(Duration::from_millis(50));
    }
}
