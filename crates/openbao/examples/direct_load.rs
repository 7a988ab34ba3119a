//! Benchmark baseline: N clients calling OpenBao Transit directly, one request per value —
//! the pattern applications use today — or per `batch` values. Prints values/s and mean
//! latency.
//!
//! Mode `encrypt` (the default) encrypts without associated data; `roundtrip-ad` encrypts each
//! batch with associated data (one per value) and decrypts the answers again, as a migration
//! to Transit does for every row it verifies: values/s then counts round trips.
//!
//! `cargo run --release -p credcrypt-openbao --example direct_load -- <addr> <token-file> <key> <clients> <seconds> [batch] [mode]`
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use credcrypt_openbao::{Auth, Client, Config, Item};
use zeroize::Zeroizing;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!("usage: direct_load <addr> <token-file> <key> <clients> <seconds> [batch] [encrypt|roundtrip-ad]");
        std::process::exit(2);
    }
    let (addr, token, key) = (args[1].clone(), args[2].clone(), args[3].clone());
    let clients: usize = args[4].parse().expect("clients");
    let secs: u64 = args[5].parse().expect("seconds");
    let batch: usize = args.get(6).map_or(1, |b| b.parse().expect("batch"));
    let roundtrip = match args.get(7).map(String::as_str) {
        None | Some("encrypt") => false,
        Some("roundtrip-ad") => true,
        Some(m) => panic!("unknown mode {m}"),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let busy_ns = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let (addr, token, key) = (addr.clone(), token.clone(), key.clone());
            let (stop, done, busy_ns, calls) = (stop.clone(), done.clone(), busy_ns.clone(), calls.clone());
            std::thread::spawn(move || {
                let mut c = Client::new(Config {
                    addrs: vec![addr],
                    mount: "transit".into(),
                    namespace: None,
                    ca_file: None,
                    connect_timeout: Duration::from_secs(2),
                    request_timeout: Duration::from_secs(10),
                    auth: Auth::TokenFile(token.into()),
                })
                .expect("client");
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let items: Vec<Item> = (0..batch)
                        .map(|j| Item {
                            data: Zeroizing::new(
                                format!("sk-live-{t:02}-{i:012}-{j:04}-0123456789abcdef0123").into_bytes(),
                            ),
                            associated_data: roundtrip.then(|| format!("row:{t}:{i}:{j}").into_bytes()),
                        })
                        .collect();
                    let t0 = Instant::now();
                    let r = c.encrypt(&key, &items).expect("encrypt");
                    assert!(r.iter().all(Result::is_ok));
                    if roundtrip {
                        let back: Vec<Item> = r
                            .iter()
                            .zip(&items)
                            .map(|(ct, it)| Item {
                                data: Zeroizing::new(ct.as_ref().expect("ciphertext").clone().into_bytes()),
                                associated_data: it.associated_data.clone(),
                            })
                            .collect();
                        let p = c.decrypt(&key, &back).expect("decrypt");
                        assert!(p
                            .iter()
                            .zip(&items)
                            .all(|(p, it)| p.as_ref().is_ok_and(|p| p.as_slice() == it.data.as_slice())));
                    }
                    busy_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    calls.fetch_add(1, Ordering::Relaxed);
                    done.fetch_add(batch as u64, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("thread");
    }
    let el = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed) as f64;
    let lat_ms = busy_ns.load(Ordering::Relaxed) as f64 / calls.load(Ordering::Relaxed).max(1) as f64 / 1e6;
    let mode = if roundtrip { "roundtrip-ad" } else { "encrypt" };
    println!(
        "direct clients={clients} batch={batch} mode={mode} values_per_s={:.0} mean_latency_ms={lat_ms:.3}",
        n / el
    );
}
