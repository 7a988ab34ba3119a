//! Benchmark baseline for the kv provider: clients reading OpenBao KV v2 directly, one request
//! per value in sequence — what an application does without pg_credcrypt. Prints values/s and
//! mean latency.
//!
//! `kv_direct <addr> <token-file> <mount> <paths-file> <clients> <seconds>`: each client reads
//! random paths of the file (one `<path> <version>` per line) until the time is up;
//! `<clients>` 0: one client reads every path of the file once, in order (the sequential
//! baseline for a bulk decryption).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use credcrypt_openbao::{Auth, Client, Config, KvValue};

fn client(addr: &str, token: &str) -> Client {
    Client::new(Config {
        addrs: vec![addr.to_owned()],
        mount: "transit".into(),
        namespace: None,
        ca_file: None,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
        auth: Auth::TokenFile(token.into()),
    })
    .expect("client")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 7 {
        eprintln!("usage: kv_direct <addr> <token-file> <mount> <paths-file> <clients> <seconds>");
        std::process::exit(2);
    }
    let (addr, token, mount) = (args[1].clone(), args[2].clone(), args[3].clone());
    let paths: Vec<(String, u64)> = std::fs::read_to_string(&args[4])
        .expect("paths file")
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(p, v)| (p.to_owned(), v.parse().expect("version"))))
        .collect();
    let clients: usize = args[5].parse().expect("clients");
    let secs: u64 = args[6].parse().expect("seconds");
    if clients == 0 {
        let mut c = client(&addr, &token);
        let start = Instant::now();
        for (p, v) in &paths {
            assert!(matches!(c.kv_read(&mount, p, *v).expect("read"), KvValue::Data(_)));
        }
        let s = start.elapsed().as_secs_f64();
        println!("values={} seconds={s:.3} values_per_s={:.0}", paths.len(), paths.len() as f64 / s);
        return;
    }
    let paths = Arc::new(paths);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let busy_ns = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let (addr, token, mount, paths) = (addr.clone(), token.clone(), mount.clone(), paths.clone());
            let (stop, done, busy_ns) = (stop.clone(), done.clone(), busy_ns.clone());
            std::thread::spawn(move || {
                let mut c = client(&addr, &token);
                let mut i = t * 7919;
                while !stop.load(Ordering::Relaxed) {
                    let (p, v) = &paths[i % paths.len()];
                    i = i.wrapping_mul(1_103_515_245).wrapping_add(12_345) % 1_000_003;
                    let s = Instant::now();
                    assert!(matches!(c.kv_read(&mount, p, *v).expect("read"), KvValue::Data(_)));
                    busy_ns.fetch_add(s.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("client");
    }
    let n = done.load(Ordering::Relaxed);
    let lat = busy_ns.load(Ordering::Relaxed) as f64 / n.max(1) as f64 / 1e6;
    println!("values={n} values_per_s={:.0} mean_latency_ms={lat:.3}", n as f64 / secs as f64);
}
