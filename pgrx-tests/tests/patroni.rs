//! PostgreSQL high availability with Patroni (on demand: `bash scripts/test-ha`, which starts
//! the harness of scripts/lib/ha.sh — 3 etcd members, a 3-node OpenBao raft cluster, 3
//! PostgreSQL 15 nodes under Patroni with `synchronous_mode`, pg_credcrypt preloaded, the same
//! key file and OpenBao settings on every node — and exports `HA_*`). Every test is `#[ignore]`d
//! so the normal suite skips it.
//!
//! The load: 16 sessions insert into a local-, a Transit- and an envelope-protected table
//! through persistent connections that reconnect with a multi-host connection string and
//! `target_session_attrs=read-write` (as libpq does), so they follow the leader. Two readers
//! read the decrypted views on replicas (`read-only`) with table-mode decrypt auditing. A probe
//! asks the current leader's worker for a Transit encryption every 50 ms.
//!
//! Checked after every run: every row acknowledged to a client is on the new leader and decrypts
//! to its value, every stored protected value is a ciphertext (`credcrypt.is_encrypted`), the
//! envelope data keys of the rows acknowledged just before the event are there and readable,
//! writes resumed, replica reads worked (and were audited to the replica's log). Figures are
//! printed as `[patroni]` lines; timings are measured, never asserted, except bounds that mean
//! "it recovered".

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::config::TargetSessionAttrs;
use postgres::{Client, Config, NoTls};

const KINDS: [&str; 3] = ["local", "transit", "envelope"];
const SESSIONS: usize = 16;

#[allow(clippy::print_stdout)] // the figures are the suite's output
fn report(line: &str) {
    println!("[patroni] {line}");
}

/// A blank line first: libtest's `-q` progress dot would otherwise start the test's first line.
#[allow(clippy::print_stdout)]
fn begin(ha: &Ha) {
    println!();
    let names: Vec<String> = ha.members().iter().map(|m| format!("{} {}", m.name, m.role)).collect();
    report(&format!("cluster: {}", names.join(", ")));
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run these tests through scripts/test-ha"))
}

fn ports(name: &str) -> Vec<u16> {
    env(name).split(',').map(|p| p.trim().parse().expect("a port")).collect()
}

/// The harness started by scripts/test-ha.
struct Ha {
    dir: PathBuf,
    pg_ports: Vec<u16>,
    api_ports: Vec<u16>,
    bao_addrs: Vec<String>,
    patroni_conf: String,
}

/// A Patroni member as `/cluster` reports it.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    role: String,
    state: String,
    port: u16,
}

impl Member {
    fn index(&self) -> usize {
        self.name.trim_start_matches("pg").parse().expect("members are pg0..pg2")
    }
}

impl Ha {
    fn from_env() -> Ha {
        Ha {
            dir: env("HA_DIR").into(),
            pg_ports: ports("HA_PG_PORTS"),
            api_ports: ports("HA_API_PORTS"),
            bao_addrs: env("HA_BAO_ADDRS").split(',').map(str::to_owned).collect(),
            patroni_conf: env("HA_PATRONI_CONF"),
        }
    }

    /// A multi-host connection configuration, as libpq's
    /// `host=127.0.0.1,… port=p0,p1,p2 target_session_attrs=…`.
    fn config(&self, user: &str, attrs: TargetSessionAttrs) -> Config {
        let mut c = Config::new();
        for p in &self.pg_ports {
            c.host("127.0.0.1");
            c.port(*p);
        }
        c.user(user)
            .dbname("postgres")
            .application_name("ha-load")
            .connect_timeout(Duration::from_secs(2))
            .target_session_attrs(attrs);
        c
    }

    /// A superuser session on the current leader (waits up to 90 s for one).
    fn leader_session(&self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            match self.config("postgres", TargetSessionAttrs::ReadWrite).connect(NoTls) {
                Ok(c) => return c,
                Err(e) => assert!(Instant::now() < deadline, "no read-write node for 90 s: {e}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn members(&self) -> Vec<Member> {
        for p in &self.api_ports {
            let out = Command::new("curl")
                .args(["-fsS", "--max-time", "2", &format!("http://127.0.0.1:{p}/cluster")])
                .output()
                .expect("curl runs");
            if !out.status.success() {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else { continue };
            return v["members"]
                .as_array()
                .map(|ms| {
                    ms.iter()
                        .map(|m| Member {
                            name: m["name"].as_str().unwrap_or_default().to_owned(),
                            role: m["role"].as_str().unwrap_or_default().to_owned(),
                            state: m["state"].as_str().unwrap_or_default().to_owned(),
                            port: m["port"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or_default(),
                        })
                        .collect()
                })
                .unwrap_or_default();
        }
        Vec::new()
    }

    fn leader(&self) -> Option<Member> {
        self.members().into_iter().find(|m| m.role == "leader" && m.state == "running")
    }

    /// Waits until there are a leader, a sync standby and a third replica (the killed node
    /// rejoined as a replica, with pg_rewind when it had diverged).
    fn wait_healthy(&self, timeout: Duration) -> (Member, Member) {
        let deadline = Instant::now() + timeout;
        loop {
            let ms = self.members();
            let running = |m: &&Member| m.state == "running" || m.state == "streaming";
            let leader = ms.iter().filter(running).find(|m| m.role == "leader");
            let sync = ms.iter().filter(running).find(|m| m.role == "sync_standby");
            let replicas = ms.iter().filter(running).filter(|m| m.role == "replica").count();
            if let (Some(l), Some(s), 1) = (leader, sync, replicas) {
                return (l.clone(), s.clone());
            }
            assert!(Instant::now() < deadline, "Patroni cluster not healthy after {timeout:?}: {ms:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn postmaster_pid(&self, node: usize) -> String {
        let pidfile = self.dir.join(format!("pg{node}/data/postmaster.pid"));
        let text = std::fs::read_to_string(&pidfile).expect("postmaster.pid");
        text.lines().next().expect("a pid").trim().to_owned()
    }

    /// Processes of the nodes that died of a signal (a crash restart of that node), so far.
    fn crashes(&self) -> Vec<String> {
        (0..3)
            .flat_map(|i| {
                self.server_log(i)
                    .lines()
                    .filter(|l| l.contains("terminated by signal"))
                    .map(|l| format!("pg{i}: {l}"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Panics when a node's process crashed since `before` (the kills of these tests are of
    /// postmasters, which log nothing: any such line is a crash of a server process).
    #[track_caller]
    fn assert_no_new_crash(&self, before: usize) {
        let now = self.crashes();
        assert!(now.len() <= before, "server processes crashed: {:?}", &now[before.min(now.len())..]);
    }

    fn server_log(&self, node: usize) -> String {
        String::from_utf8_lossy(
            &std::fs::read(self.dir.join(format!("pg{node}/log/postgresql.log"))).unwrap_or_default(),
        )
        .into_owned()
    }

    /// The index of the active OpenBao node (`sys/health` answers 200 there, 429 on standbys).
    fn bao_active(&self) -> Option<usize> {
        self.bao_addrs.iter().position(|a| {
            Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", &format!("{a}/v1/sys/health")])
                .output()
                .is_ok_and(|o| o.stdout == b"200")
        })
    }

    /// Waits until every OpenBao node answers unsealed (200 active or 429 standby).
    fn wait_bao_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let codes: Vec<String> = self
                .bao_addrs
                .iter()
                .map(|a| {
                    Command::new("curl")
                        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2"])
                        .arg(format!("{a}/v1/sys/health"))
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default()
                })
                .collect();
            if codes.iter().filter(|c| *c == "200").count() == 1 && codes.iter().filter(|c| *c == "429").count() == 2 {
                return;
            }
            assert!(Instant::now() < deadline, "OpenBao cluster not healthy after {timeout:?}: {codes:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn kill9(pid: &str) {
    assert!(Command::new("kill").args(["-KILL", pid]).status().expect("kill runs").success(), "kill -9 {pid}");
}

/// Fresh protected tables: one per provider, each with a decrypted view.
fn create_tables(ha: &Ha) {
    let mut c = ha.leader_session();
    for kind in KINDS {
        let key = match kind {
            "local" => "local",
            "transit" => "transit:app",
            _ => "envelope:app",
        };
        c.batch_execute(&format!(
            "DROP TABLE IF EXISTS ha_{kind} CASCADE;
             CREATE TABLE ha_{kind} (id bigint PRIMARY KEY, secret text);
             SELECT credcrypt.protect_column('ha_{kind}', 'secret', key_name => '{key}', bind_columns => ARRAY['id']);
             SELECT credcrypt.create_decrypted_view('ha_{kind}', 'ha_{kind}_plain');
             GRANT SELECT, INSERT ON ha_{kind} TO ha_app;
             GRANT SELECT ON ha_{kind}, ha_{kind}_plain TO ha_app, ha_reader;"
        ))
        .expect("create the protected tables");
    }
}

/// What the load, the readers and the probe saw.
#[derive(Default)]
struct Log {
    /// Acknowledged inserts: completion time, kind, id.
    acks: Vec<(Instant, &'static str, i64)>,
    /// Failed statements: time, SQLSTATE (or `connection` when the client got none), kind.
    failures: Vec<(Instant, String, &'static str)>,
    /// Connection attempts that found no read-write node.
    connect_failures: u64,
    /// Replica reads: (time, ok, SQLSTATE or `wrong result`).
    reads: Vec<(Instant, bool, String)>,
    /// Replica readers' connection attempts that found no read-only node.
    read_connect_failures: u64,
    /// Transit probe on the leader: time, server port, Transit answered.
    probes: Vec<(Instant, u16, bool)>,
}

fn sqlstate(e: &postgres::Error) -> String {
    e.code().map_or_else(|| "connection".to_owned(), |c| c.code().to_owned())
}

/// Whether the session must be dropped and a new one opened (the server went away, or it is
/// no longer the leader).
fn reconnect_after(code: &str, client: &Client) -> bool {
    client.is_closed() || code == "connection" || code.starts_with("08") || code.starts_with("57") || code == "25006"
}

struct Load {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Log>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// 16 writers, 2 replica readers, 1 Transit probe.
    fn start(ha: &Ha, next: &Arc<AtomicU64>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Log::default()));
        let mut threads = Vec::new();
        for t in 0..SESSIONS {
            let (stop, log, next) = (stop.clone(), log.clone(), next.clone());
            let cfg = ha.config("ha_app", TargetSessionAttrs::ReadWrite);
            threads.push(std::thread::spawn(move || {
                let mut client: Option<Client> = None;
                let mut n = t;
                while !stop.load(Ordering::SeqCst) {
                    if client.is_none() {
                        match cfg.connect(NoTls) {
                            Ok(c) => client = Some(c),
                            Err(_) => {
                                log.lock().expect("log").connect_failures += 1;
                                std::thread::sleep(Duration::from_millis(50));
                                continue;
                            }
                        }
                    }
                    let Some(c) = client.as_mut() else { continue };
                    let kind = KINDS[n % KINDS.len()];
                    n += 1;
                    let id = i64::try_from(next.fetch_add(1, Ordering::SeqCst)).expect("id");
                    let secret = format!("sk-{kind}-{id}");
                    match c.execute(&format!("INSERT INTO ha_{kind} (id, secret) VALUES ($1, $2)"), &[&id, &secret]) {
                        Ok(_) => log.lock().expect("log").acks.push((Instant::now(), kind, id)),
                        Err(e) => {
                            let code = sqlstate(&e);
                            let drop_it = reconnect_after(&code, c);
                            log.lock().expect("log").failures.push((Instant::now(), code, kind));
                            if drop_it {
                                client = None;
                            } else {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                    }
                }
            }));
        }
        for _ in 0..2 {
            let (stop, log) = (stop.clone(), log.clone());
            let cfg = ha.config("ha_reader", TargetSessionAttrs::ReadOnly);
            threads.push(std::thread::spawn(move || {
                let mut client: Option<Client> = None;
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(25));
                    if client.is_none() {
                        match cfg.connect(NoTls) {
                            Ok(c) => client = Some(c),
                            Err(_) => {
                                log.lock().expect("log").read_connect_failures += 1;
                                continue;
                            }
                        }
                    }
                    let Some(c) = client.as_mut() else { continue };
                    let kind = KINDS[n % KINDS.len()];
                    n += 1;
                    // The 20 newest rows the replica has, decrypted through the view (a filter on
                    // the id, not a LIMIT over the view: that would decrypt every row).
                    let q = format!(
                        "SELECT count(*), count(*) FILTER (WHERE secret = 'sk-{kind}-' || id) FROM ha_{kind}_plain
                          WHERE id >= (SELECT min(id) FROM (SELECT id FROM ha_{kind} ORDER BY id DESC LIMIT 20) l)"
                    );
                    let outcome = match c.query_one(&q, &[]) {
                        Ok(row) => {
                            let (all, good): (i64, i64) = (row.get(0), row.get(1));
                            if all == good {
                                (true, String::new())
                            } else {
                                (false, "wrong result".to_owned())
                            }
                        }
                        Err(e) => (false, sqlstate(&e)),
                    };
                    let drop_it = !outcome.0 && reconnect_after(&outcome.1, c) || n.is_multiple_of(30);
                    log.lock().expect("log").reads.push((Instant::now(), outcome.0, outcome.1));
                    if drop_it {
                        client = None;
                    }
                }
            }));
        }
        {
            let (stop, log) = (stop.clone(), log.clone());
            let cfg = ha.config("ha_app", TargetSessionAttrs::ReadWrite);
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                    let Ok(mut c) = cfg.connect(NoTls) else { continue };
                    let Ok(row) = c.query_one("SELECT inet_server_port()", &[]) else { continue };
                    let port = u16::try_from(row.get::<_, i32>(0)).unwrap_or_default();
                    let ok = c.query_one("SELECT credcrypt.encrypt_credential('probe', 'transit:app')", &[]).is_ok();
                    log.lock().expect("log").probes.push((Instant::now(), port, ok));
                }
            }));
        }
        Load { stop, log, threads }
    }

    fn acks_since(&self, t: Instant, kind: &str) -> usize {
        self.log.lock().expect("log").acks.iter().filter(|(at, k, _)| *at > t && *k == kind).count()
    }

    fn stop(self) -> Log {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("load thread");
        }
        Arc::try_unwrap(self.log).map_err(|_| ()).expect("log still shared").into_inner().expect("log")
    }
}

/// The longest interval without an acknowledged write of `kind` (any kind: None) between
/// `from` and the last acknowledgement; and the time from `from` to the end of that interval.
fn outage(log: &Log, from: Instant, kind: Option<&str>) -> (Duration, Duration) {
    let mut times: Vec<Instant> =
        log.acks.iter().filter(|(_, k, _)| kind.is_none_or(|want| *k == want)).map(|(t, _, _)| *t).collect();
    times.sort();
    let mut prev = times.iter().rev().find(|t| **t <= from).copied().unwrap_or(from);
    let (mut gap, mut resumed) = (Duration::ZERO, Duration::ZERO);
    for t in times.iter().filter(|t| **t > from) {
        if *t - prev > gap {
            gap = *t - prev;
            resumed = *t - from;
        }
        prev = *t;
    }
    (gap, resumed)
}

/// Failures by SQLSTATE.
fn by_code(log: &Log) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (_, code, _) in &log.failures {
        *m.entry(code.clone()).or_insert(0) += 1;
    }
    m
}

/// Checks the rows of this run (ids >= `first_id`) on the current leader: every acknowledged
/// row is there and decrypts to its value; every stored value is a ciphertext; the data keys
/// of the envelope rows acknowledged in the two seconds before `event` are there and readable.
/// Returns (acknowledged, present but not acknowledged, Transit-table values not on Transit,
/// (data keys of the last 2 s checked, of which made during the run before the event)).
fn verify(ha: &Ha, log: &Log, first_id: i64, event: Instant) -> (usize, usize, i64, (usize, i64)) {
    let mut c = ha.leader_session();
    let mut in_doubt = 0;
    for kind in KINDS {
        let acked: HashSet<i64> = log.acks.iter().filter(|(_, k, _)| *k == kind).map(|(_, _, id)| *id).collect();
        let present: HashSet<i64> = c
            .query(&format!("SELECT id FROM ha_{kind} WHERE id >= $1"), &[&first_id])
            .expect("read ids")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let lost: Vec<&i64> = acked.difference(&present).collect();
        assert!(lost.is_empty(), "{} acknowledged {kind} rows lost after failover: {lost:?}", lost.len());
        in_doubt += present.difference(&acked).count();
        let plain: i64 = c
            .query_one(&format!("SELECT count(*) FROM ha_{kind} WHERE NOT credcrypt.is_encrypted(secret)"), &[])
            .expect("is_encrypted")
            .get(0);
        assert_eq!(plain, 0, "{kind}: values stored without encryption");
        let wrong: i64 = c
            .query_one(
                &format!("SELECT count(*) FROM ha_{kind}_plain WHERE id >= $1 AND secret IS DISTINCT FROM 'sk-{kind}-' || id"),
                &[&first_id],
            )
            .unwrap_or_else(|e| panic!("{kind} rows do not decrypt on the new leader: {e}"))
            .get(0);
        assert_eq!(wrong, 0, "{kind}: rows decrypt to a wrong value");
    }
    let off_transit: i64 = c
        .query_one(
            "SELECT count(*) FROM ha_transit WHERE id >= $1 AND secret NOT LIKE 'cc1:transit:app:%'",
            &[&first_id],
        )
        .expect("transit values")
        .get(0);
    // The envelope data keys in use just before the event: in credcrypt.data_keys, and every
    // value made with them decrypts in a new session (no cached key) on the new leader.
    let recent: Vec<i64> = log
        .acks
        .iter()
        .filter(|(t, k, _)| *k == "envelope" && *t <= event && event.duration_since(*t) < Duration::from_secs(2))
        .map(|(_, _, id)| *id)
        .collect();
    assert!(!recent.is_empty(), "no envelope row acknowledged in the 2 s before the event");
    let keys: Vec<String> = c
        .query(
            "SELECT DISTINCT i.key_id FROM ha_envelope e, credcrypt.ciphertext_info(e.secret) i WHERE e.id = ANY($1)",
            &[&recent],
        )
        .expect("data key ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Made during the run, before the event (each new session makes one; credcrypt.envelope_max_uses
    // is 20 in the harness, so the sessions keep making new ones).
    let before_event = event.elapsed().as_secs_f64();
    let run_secs = before_event + 6.0;
    let row = c
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE created_at > now() - make_interval(secs => $2)
                                                 AND created_at < now() - make_interval(secs => $3))
               FROM credcrypt.data_keys WHERE id = ANY($1)",
            &[&keys, &run_secs, &before_event],
        )
        .expect("data keys");
    let (stored, made_in_run): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(usize::try_from(stored).unwrap_or_default(), keys.len(), "envelope data keys missing: {keys:?}");
    assert!(made_in_run > 0, "no data key made during the run before the event: {keys:?}");
    let mut fresh = ha.config("ha_app", TargetSessionAttrs::ReadWrite).connect(NoTls).expect("new session");
    let readable: i64 = fresh
        .query_one(
            "SELECT count(*) FROM ha_envelope_plain WHERE id = ANY($1) AND secret = 'sk-envelope-' || id",
            &[&recent],
        )
        .expect("recent envelope rows decrypt")
        .get(0);
    assert_eq!(usize::try_from(readable).unwrap_or_default(), recent.len());
    (log.acks.len(), in_doubt, off_transit, (keys.len(), made_in_run))
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn summary(name: &str, v: &mut [Duration]) -> String {
    v.sort();
    let median = v.get(v.len() / 2).copied().unwrap_or_default();
    let max = v.last().copied().unwrap_or_default();
    format!("{name}: median {} ms, max {} ms over {} runs ({:?} ms)", ms(median), ms(max), v.len(), {
        let all: Vec<u128> = v.iter().map(|d| ms(*d)).collect();
        all
    })
}

fn runs() -> usize {
    std::env::var("HA_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(5).max(1)
}

/// Replica reads: they went on after `event`, and failed only by a cut session (57P01 or a
/// closed connection: a read-only session can land on the old leader while it rejoins, which
/// Patroni stops again for pg_rewind about a second after starting it) or with a SQLSTATE in
/// `allowed`. Returns (reads, failed).
#[track_caller]
fn check_reads(log: &Log, event: Instant, allowed: &[&str]) -> (usize, usize) {
    let failed: Vec<&String> = log.reads.iter().filter(|(_, ok, _)| !ok).map(|(_, _, e)| e).collect();
    let unexpected: Vec<&&String> = failed
        .iter()
        .filter(|e| !(e.as_str() == "57P01" || e.as_str() == "connection" || allowed.contains(&e.as_str())))
        .collect();
    assert!(unexpected.is_empty(), "replica reads failed: {unexpected:?}");
    assert!(
        log.reads.iter().any(|(t, ok, _)| *ok && *t > event + Duration::from_secs(1)),
        "no successful replica read after the event"
    );
    (log.reads.len(), failed.len())
}

#[test]
#[ignore = "needs the Patroni harness: bash scripts/test-ha"]
fn leader_killed_under_load() {
    let ha = Ha::from_env();
    ha.wait_healthy(Duration::from_secs(120));
    begin(&ha);
    let crashed_before = ha.crashes().len();
    create_tables(&ha);
    let next = Arc::new(AtomicU64::new(1));
    let (mut outages, mut transit_ready) = (Vec::new(), Vec::new());
    let mut audited = false;
    for run in 1..=runs() {
        let (leader, sync) = ha.wait_healthy(Duration::from_secs(180));
        let first_id = i64::try_from(next.load(Ordering::SeqCst)).expect("id");
        let load = Load::start(&ha, &next);
        std::thread::sleep(Duration::from_secs(4));
        let pid = ha.postmaster_pid(leader.index());
        let killed = Instant::now();
        kill9(&pid);
        // Writes resumed on the new leader (all three providers) and its worker serves Transit.
        let deadline = killed + Duration::from_secs(90);
        while KINDS.iter().any(|k| load.acks_since(killed + Duration::from_millis(500), k) < 20) {
            assert!(Instant::now() < deadline, "writes did not resume within 90 s of the leader kill");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(2));
        let log = load.stop();
        ha.assert_no_new_crash(crashed_before);
        let new_leader = ha.leader().expect("a leader");
        assert_ne!(new_leader.name, leader.name, "the killed leader is leader again");
        assert_eq!(new_leader.name, sync.name, "the promoted node was not the sync standby");
        let (gap, resumed) = outage(&log, killed, None);
        let ready = log
            .probes
            .iter()
            .find(|(t, port, ok)| *t > killed && *port == new_leader.port && *ok)
            .map(|(t, _, _)| *t - killed)
            .expect("the new leader's worker served Transit");
        let first_rw = log
            .probes
            .iter()
            .find(|(t, port, _)| *t > killed && *port == new_leader.port)
            .map(|(t, _, _)| *t - killed)
            .unwrap_or_default();
        let (acked, in_doubt, off_transit, (keys, made)) = verify(&ha, &log, first_id, killed);
        ha.assert_no_new_crash(crashed_before);
        assert_eq!(off_transit, 0, "Transit values written with another key");
        // Only sessions cut by the leader's death: 57P01 or a closed connection, once per session.
        let codes = by_code(&log);
        assert!(
            codes.keys().all(|c| c == "connection" || c == "57P01") && log.failures.len() <= SESSIONS,
            "statements failed for other reasons than the leader's death: {codes:?}"
        );
        let (reads, read_failures) = check_reads(&log, killed, &[]);
        let mut c = ha.leader_session();
        let worker: bool =
            c.query_one("SELECT worker_pid IS NOT NULL FROM credcrypt.status()", &[]).expect("status").get(0);
        assert!(worker, "no worker on the new leader");
        report(&format!(
            "leader kill {run}: {} ({}) killed -9, {} promoted; write outage {} ms (writes resumed {} ms after the kill), \
             new leader writable {} ms, its worker served Transit {} ms after the kill; {acked} rows acknowledged, \
             lost 0, {in_doubt} committed but not acknowledged; failed statements {} {:?}, connection attempts refused {}; \
             {keys} envelope data keys of the last 2 s before the kill ({made} made in the run) readable; replica reads {reads}, failed {read_failures}",
            leader.name,
            leader.port,
            new_leader.name,
            ms(gap),
            ms(resumed),
            ms(first_rw),
            ms(ready),
            log.failures.len(),
            codes,
            log.connect_failures
        ));
        outages.push(gap);
        transit_ready.push(ready);
        // Decrypt auditing on a replica (table mode for ha_reader): a standby cannot write the
        // row, so the record goes to that replica's server log (the readers only ever ran on
        // the nodes that were replicas: not the old leader).
        audited |= (0..3)
            .filter(|i| *i != leader.index())
            .any(|i| ha.server_log(i).contains("pg_credcrypt audit: role \"ha_reader\" decrypted"));
    }
    assert!(audited, "no decrypt audit record in a replica's log");
    report(&summary("leader kill: write outage", &mut outages));
    report(&summary("leader kill: new leader's worker serves Transit after the kill", &mut transit_ready));
}

#[test]
#[ignore = "needs the Patroni harness: bash scripts/test-ha"]
fn switchover_under_load() {
    let ha = Ha::from_env();
    ha.wait_healthy(Duration::from_secs(120));
    begin(&ha);
    let crashed_before = ha.crashes().len();
    create_tables(&ha);
    let next = Arc::new(AtomicU64::new(1));
    let mut outages = Vec::new();
    let mut failed_total = 0;
    for run in 1..=runs() {
        let (leader, sync) = ha.wait_healthy(Duration::from_secs(180));
        let first_id = i64::try_from(next.load(Ordering::SeqCst)).expect("id");
        let load = Load::start(&ha, &next);
        std::thread::sleep(Duration::from_secs(4));
        let started = Instant::now();
        let out = Command::new("patronictl")
            .args([
                "-c",
                &ha.patroni_conf,
                "switchover",
                "--leader",
                &leader.name,
                "--candidate",
                &sync.name,
                "--force",
            ])
            .output()
            .expect("patronictl runs");
        assert!(out.status.success(), "switchover: {}", String::from_utf8_lossy(&out.stderr));
        let deadline = started + Duration::from_secs(90);
        loop {
            let switched = ha.leader().is_some_and(|l| l.name == sync.name);
            if switched && KINDS.iter().all(|k| load.acks_since(started + Duration::from_millis(500), k) >= 20) {
                break;
            }
            assert!(Instant::now() < deadline, "writes did not resume within 90 s of the switchover");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(2));
        let log = load.stop();
        ha.assert_no_new_crash(crashed_before);
        let (gap, resumed) = outage(&log, started, None);
        let (acked, in_doubt, off_transit, _) = verify(&ha, &log, first_id, started);
        ha.assert_no_new_crash(crashed_before);
        assert_eq!(off_transit, 0);
        // Only statements cut by the switchover itself: the old leader's shutdown ends its
        // sessions (57P01 or a closed connection); at most one cut per session and leader change.
        let codes = by_code(&log);
        let unexpected: Vec<&String> = codes
            .keys()
            .filter(|c| !(c.as_str() == "connection" || c.starts_with("57") || c.starts_with("08")))
            .collect();
        assert!(unexpected.is_empty(), "statements failed for other reasons than the switchover: {codes:?}");
        assert!(log.failures.len() <= SESSIONS, "{} statements failed for {SESSIONS} sessions", log.failures.len());
        failed_total += log.failures.len();
        let (reads, read_failures) = check_reads(&log, started, &[]);
        report(&format!(
            "switchover {run}: {} -> {}; write outage {} ms (writes resumed {} ms after patronictl started); \
             {acked} rows acknowledged, lost 0, {in_doubt} committed but not acknowledged; failed statements {} {codes:?}, \
             connection attempts refused {}; replica reads {reads}, failed {read_failures}",
            leader.name,
            sync.name,
            ms(gap),
            ms(resumed),
            log.failures.len(),
            log.connect_failures
        ));
        outages.push(gap);
    }
    report(&summary("switchover: write outage", &mut outages));
    report(&format!("switchover: {failed_total} failed statements over {} runs", runs()));
}

#[test]
#[ignore = "needs the Patroni harness: bash scripts/test-ha"]
fn both_layers_fail() {
    let ha = Ha::from_env();
    ha.wait_healthy(Duration::from_secs(120));
    begin(&ha);
    let crashed_before = ha.crashes().len();
    create_tables(&ha);
    let next = Arc::new(AtomicU64::new(1));
    for fallback in ["off", "local"] {
        let (leader, _) = ha.wait_healthy(Duration::from_secs(180));
        ha.wait_bao_healthy(Duration::from_secs(120));
        ha.leader_session()
            .batch_execute(&format!("ALTER ROLE ha_app SET credcrypt.fallback = '{fallback}'"))
            .expect("set fallback");
        let first_id = i64::try_from(next.load(Ordering::SeqCst)).expect("id");
        let load = Load::start(&ha, &next);
        std::thread::sleep(Duration::from_secs(4));
        let bao = ha.bao_active().expect("an active OpenBao node");
        let bao_pid = std::fs::read_to_string(ha.dir.join(format!("bao/node{bao}.pid"))).expect("bao pid");
        let bao_killed = Instant::now();
        kill9(bao_pid.trim());
        std::thread::sleep(Duration::from_secs(2));
        let pg_pid = ha.postmaster_pid(leader.index());
        let pg_killed = Instant::now();
        kill9(&pg_pid);
        let deadline = pg_killed + Duration::from_secs(120);
        while KINDS.iter().any(|k| load.acks_since(pg_killed + Duration::from_millis(500), k) < 20) {
            assert!(Instant::now() < deadline, "writes did not resume within 120 s of both kills");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(2));
        let log = load.stop();
        ha.assert_no_new_crash(crashed_before);
        let resumed: Vec<String> =
            KINDS.iter().map(|k| format!("{k} {} ms", ms(outage(&log, pg_killed, Some(k)).1))).collect();
        let (gap, _) = outage(&log, bao_killed, None);
        let (acked, in_doubt, off_transit, (keys, made)) = verify(&ha, &log, first_id, bao_killed);
        ha.assert_no_new_crash(crashed_before);
        if fallback == "off" {
            assert_eq!(off_transit, 0, "values written with the local key while fallback is off");
        }
        // What the application may see (docs/operations.md): its session cut by the leader's
        // end (57P01 or a closed connection), or 58030 while OpenBao has no active node — never
        // a plaintext, and never another error.
        let codes = by_code(&log);
        let unexpected: Vec<&String> =
            codes.keys().filter(|c| !["connection", "57P01", "58030"].contains(&c.as_str())).collect();
        assert!(
            unexpected.is_empty(),
            "statements failed with other SQLSTATEs than a cut session or 58030 (fallback {fallback}): {codes:?}"
        );
        // Replica reads of Transit and envelope values may fail while OpenBao fails over (58030).
        let (reads, read_failures) = check_reads(&log, pg_killed, &["58030"]);
        let status: String = ha
            .leader_session()
            .query_one("SELECT format('%s failovers, %s fallback encryptions', failovers, fallback_encryptions) FROM credcrypt.status()", &[])
            .expect("status")
            .get(0);
        report(&format!(
            "both layers (fallback {fallback}): OpenBao node {bao} killed, PostgreSQL leader {} killed 2 s later; \
             longest write outage {} ms; writes resumed after the PostgreSQL kill: {}; {acked} rows acknowledged, lost 0, \
             {in_doubt} committed but not acknowledged; Transit-table values on the local key (fallback): {off_transit}; \
             every stored value a ciphertext; failed statements {} {codes:?}; {keys} envelope data keys of the last 2 s ({made} made in the run) readable; \
             replica reads {reads}, failed {read_failures}; new leader's worker: {status}",
            leader.name,
            ms(gap),
            resumed.join(", "),
            log.failures.len()
        ));
    }
    ha.leader_session().batch_execute("ALTER ROLE ha_app RESET credcrypt.fallback").expect("reset fallback");
    ha.wait_healthy(Duration::from_secs(180));
    ha.wait_bao_healthy(Duration::from_secs(120));
}
