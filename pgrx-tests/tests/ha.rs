//! OpenBao HA: a 3-node raft cluster on loopback (static seal, self-initialization on the first
//! node, the others joining it). The worker is given all three addresses. The active node is
//! killed during a 16-session insert load into a Transit-protected column: the extension fails
//! over; every committed row decrypts; no row holds plaintext; errors stay within the failover
//! window, which is measured and printed.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use credcrypt_blackbox::bao::{bao_bin, free_port, point_at, write_secret_file};
use credcrypt_blackbox::Cluster;

struct Node {
    child: Option<Child>,
    addr: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn status(addr: &str) -> String {
    let out =
        Command::new(bao_bin()).args(["status", "-format=json"]).env("BAO_ADDR", addr).output().expect("bao status");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn start_node(dir: &std::path::Path, i: usize, ports: &[(u16, u16)], seal: &std::path::Path) -> Node {
    let (port, cport) = ports[i];
    let raft = dir.join(format!("raft{i}"));
    std::fs::create_dir_all(&raft).expect("raft dir");
    let join: String = if i == 0 {
        String::new()
    } else {
        format!("  retry_join {{ leader_api_addr = \"http://127.0.0.1:{}\" }}\n", ports[0].0)
    };
    let init = if i == 0 {
        r#"initialize "credcrypt" {
  request "mount-transit" {
    operation = "update"
    path      = "sys/mounts/transit"
    data      = { type = "transit" }
  }
  request "key-app" {
    operation = "update"
    path      = "transit/keys/app"
    data      = {}
  }
  request "policy" {
    operation = "update"
    path      = "sys/policies/acl/credcrypt"
    data      = { policy = "path \"transit/encrypt/app\" { capabilities = [\"update\"] }\npath \"transit/decrypt/app\" { capabilities = [\"update\"] }\npath \"transit/keys/app\" { capabilities = [\"read\"] }\n" }
  }
  request "approle" {
    operation = "update"
    path      = "sys/auth/approle"
    data      = { type = "approle" }
  }
  request "role" {
    operation = "update"
    path      = "auth/approle/role/credcrypt"
    data      = { token_policies = "credcrypt", token_ttl = "1h" }
  }
  request "role-id" {
    operation = "update"
    path      = "auth/approle/role/credcrypt/role-id"
    data      = { role_id = "ha-role" }
  }
  request "secret-id" {
    operation = "update"
    path      = "auth/approle/role/credcrypt/custom-secret-id"
    data      = { secret_id = "ha-secret-0001" }
  }
}
"#
    } else {
        ""
    };
    let hcl = format!(
        "storage \"raft\" {{\n  path = \"{raft}\"\n  node_id = \"n{i}\"\n{join}}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{cport}\"\n  tls_disable = true\n}}\napi_addr = \"http://127.0.0.1:{port}\"\ncluster_addr = \"http://127.0.0.1:{cport}\"\ndisable_mlock = true\nseal \"static\" {{\n  current_key_id = \"ha-1\"\n  current_key = \"file://{seal}\"\n}}\n{init}",
        raft = raft.display(),
        seal = seal.display()
    );
    let conf = dir.join(format!("node{i}.hcl"));
    std::fs::write(&conf, hcl).expect("config");
    let log = std::fs::File::create(dir.join(format!("node{i}.log"))).expect("log");
    let child = Command::new(bao_bin())
        .arg("server")
        .arg(format!("-config={}", conf.display()))
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("bao server");
    Node { child: Some(child), addr: format!("http://127.0.0.1:{port}") }
}

#[allow(clippy::print_stdout)] // the figures are the suite's output
fn report(line: &str) {
    println!("[ha] {line}");
}

#[test]
fn active_node_killed_under_load_fails_over_and_loses_nothing() {
    let c = Cluster::from_env();
    c.ensure_login_role("ha_app", "credcrypt_encryptor, credcrypt_decryptor");
    let dir = c.keys.join("ha");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("ha dir");
    let seal = dir.join("seal.key");
    std::fs::write(&seal, (0..32u8).map(|i| i.wrapping_mul(7).wrapping_add(3)).collect::<Vec<u8>>()).expect("seal");
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let mut nodes = vec![start_node(&dir, 0, &ports, &seal)];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !status(&nodes[0].addr).contains("\"sealed\": false") {
        assert!(Instant::now() < deadline, "node 0 did not initialize");
        std::thread::sleep(Duration::from_millis(200));
    }
    nodes.push(start_node(&dir, 1, &ports, &seal));
    nodes.push(start_node(&dir, 2, &ports, &seal));
    let deadline = Instant::now() + Duration::from_secs(90);
    while !(1..3).all(|i| status(&nodes[i].addr).contains("\"sealed\": false")) {
        assert!(Instant::now() < deadline, "nodes 1 and 2 did not join and unseal");
        std::thread::sleep(Duration::from_millis(300));
    }
    // The worker: AppRole, all three addresses, active first.
    let secret = c.keys.join("ha_secret_id");
    write_secret_file(&secret, "ha-secret-0001");
    let addrs = nodes.iter().map(|n| n.addr.clone()).collect::<Vec<_>>().join(",");
    point_at(
        &c,
        &addrs,
        &format!("credcrypt.bao_role_id = 'ha-role'\ncredcrypt.bao_secret_id_file = '{}'\n", secret.display()),
    );
    c.sql(
        "DROP TABLE IF EXISTS ha_creds CASCADE;
         CREATE TABLE ha_creds (id bigint PRIMARY KEY, secret text);
         SELECT credcrypt.protect_column('ha_creds', 'secret', key_name => 'transit:app', bind_columns => ARRAY['id']);
         SELECT credcrypt.create_decrypted_view('ha_creds', 'ha_creds_plain');
         GRANT SELECT, INSERT ON ha_creds TO ha_app;",
    );
    // 16 sessions insert; each records its committed ids and the time of every failure.
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(1));
    let committed = Arc::new(Mutex::new(Vec::<u64>::new()));
    let failures = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let latencies = Arc::new(Mutex::new(Vec::<(Instant, Duration)>::new()));
    let t0 = Instant::now();
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (c, stop, next, committed, failures, latencies) =
                (c.clone(), stop.clone(), next.clone(), committed.clone(), failures.clone(), latencies.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let ids: Vec<u64> = (0..10).map(|_| next.fetch_add(1, Ordering::SeqCst)).collect();
                    let values: Vec<String> = ids.iter().map(|i| format!("({i}, 'sk-ha-{i}')")).collect();
                    let started = Instant::now();
                    let o = c.psql("ha_app", &format!("INSERT INTO ha_creds VALUES {}", values.join(",")));
                    latencies.lock().expect("latencies").push((started, started.elapsed()));
                    if o.ok {
                        committed.lock().expect("ids").extend(ids);
                    } else {
                        failures.lock().expect("failures").push(Instant::now());
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let active = (0..3)
        .find(|&i| {
            status(&nodes[i].addr).contains("\"is_self\": true")
                || status(&nodes[i].addr).contains("\"ha_mode\": \"active\"")
        })
        .unwrap_or(0);
    let killed_at = Instant::now();
    drop(nodes.remove(active));
    std::thread::sleep(Duration::from_secs(12));
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().expect("load thread");
    }
    let failures = failures.lock().expect("failures").clone();
    let window = failures.iter().filter(|t| **t >= killed_at).max().map(|t| t.duration_since(killed_at));
    let ids = committed.lock().expect("ids").clone();
    let failovers = c.sql("SELECT failovers FROM credcrypt.status()");
    // The failover as the application sees it: the longest statement in flight at the kill.
    let stall = latencies
        .lock()
        .expect("latencies")
        .iter()
        .filter(|(s, d)| *s <= killed_at && *s + *d >= killed_at)
        .map(|(_, d)| *d)
        .max()
        .unwrap_or_default();
    // Every committed row is there, decrypts, and nothing is plaintext.
    assert_eq!(c.sql("SELECT count(*) FROM ha_creds"), ids.len().to_string());
    assert_eq!(c.sql("SELECT count(*) FROM ha_creds WHERE secret NOT LIKE 'cc1:transit:app:%'"), "0");
    assert_eq!(c.sql("SELECT count(*) FROM ha_creds_plain WHERE secret = 'sk-ha-' || id"), ids.len().to_string());
    report(&format!(
        "3-node raft, active node {active} killed after {:.1} s of 16-session load: {} rows committed, {} failed statements, \
         failover window {} ms (last failure after the kill), longest statement across the kill {} ms, \
         worker failovers {failovers}, lost rows 0",
        killed_at.duration_since(t0).as_secs_f64(),
        ids.len(),
        failures.len(),
        window.map_or(0, |w| w.as_millis()),
        stall.as_millis()
    ));
    assert!(stall < Duration::from_secs(5), "statements stalled {stall:?} across the failover");
    assert!(window.unwrap_or_default() < Duration::from_secs(5), "failover window {window:?}");
}
