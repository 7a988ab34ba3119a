//! The client against a real OpenBao dev server (the `bao` binary from scripts/setup.sh).

mod common;
use common::client;

use std::io::{Read as _, Write as _};
use std::time::Duration;

use credcrypt_openbao::{Auth, Client, Config, ErrorKind, Item, ItemErrorKind, TransitBatch, TransitOp};
use credcrypt_test_support::{free_port, write_secret_file, Bao};
use zeroize::Zeroizing;

fn dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("credcrypt-openbao-{name}-{}", std::process::id()))
}

fn token_file(bao: &Bao, name: &str) -> std::path::PathBuf {
    let p = bao.dir.join(name);
    write_secret_file(&p, &bao.token("1h"));
    p
}

fn item(data: &[u8], ad: Option<&[u8]>) -> Item {
    Item { data: Zeroizing::new(data.to_vec()), associated_data: ad.map(<[u8]>::to_vec) }
}

#[test]
fn batches_chunk_and_fail_per_item() {
    let bao = Bao::start(0, &dir("batch"));
    bao.setup("1h");
    let mut c = client(vec![bao.addr.clone()], token_file(&bao, "t"));

    // 1,200 values: more than one request's worth under the 1000-JSON-string limit, in order.
    let items: Vec<Item> = (0..1200).map(|i| item(format!("value-{i}").as_bytes(), Some(b"ctx"))).collect();
    let cts = c.encrypt("app", &items).unwrap();
    assert_eq!(cts.len(), 1200);
    assert!(cts.iter().all(|r| r.as_ref().unwrap().starts_with("vault:v1:")));
    let back: Vec<Item> = cts.iter().map(|r| item(r.as_ref().unwrap().as_bytes(), Some(b"ctx"))).collect();
    let plain = c.decrypt("app", &back).unwrap();
    for (i, p) in plain.iter().enumerate() {
        assert_eq!(p.as_ref().unwrap().as_slice(), format!("value-{i}").as_bytes());
    }

    // A batch with one tampered value and one wrong-context value: only those two fail.
    let good = cts[0].as_ref().unwrap().clone();
    let mut tampered = good.clone().into_bytes();
    let n = tampered.len();
    tampered[n - 3] = if tampered[n - 3] == b'A' { b'B' } else { b'A' };
    let batch = vec![
        item(good.as_bytes(), Some(b"ctx")),
        item(&tampered, Some(b"ctx")),
        item(good.as_bytes(), Some(b"other")),
        item(cts[1].as_ref().unwrap().as_bytes(), Some(b"ctx")),
    ];
    let r = c.decrypt("app", &batch).unwrap();
    assert_eq!(r[0].as_ref().unwrap().as_slice(), b"value-0");
    assert_eq!(r[1].as_ref().unwrap_err().kind, ItemErrorKind::AuthenticationFailed);
    assert_eq!(r[2].as_ref().unwrap_err().kind, ItemErrorKind::AuthenticationFailed);
    assert_eq!(r[3].as_ref().unwrap().as_slice(), b"value-1");
    assert!(!format!("{:?}", r[1]).contains("vault:"), "an item error echoes the ciphertext");

    // Missing key, wrong key type, rotation.
    // Reading a missing key says so; encrypting with it is refused (with upsert disabled and no
    // `create` capability OpenBao answers 403 rather than creating the key).
    assert_eq!(c.key_info("missing").unwrap_err().kind, ErrorKind::KeyNotFound);
    let e = c.encrypt("missing", &[item(b"x", None)]).unwrap_err().kind;
    assert!(matches!(e, ErrorKind::KeyNotFound | ErrorKind::PermissionDenied), "{e:?}");
    let info = c.key_info("signing").unwrap();
    assert!(!info.supports_encryption, "{info:?}");
    assert!(c.key_info("app").unwrap().supports_encryption);
    assert_eq!(c.rotate("app").unwrap(), 2);
    assert!(c.encrypt("app", &[item(b"x", None)]).unwrap()[0].as_ref().unwrap().starts_with("vault:v2:"));
}

#[test]
fn failover_redirects_and_clean_errors() {
    let bao = Bao::start(0, &dir("failover"));
    bao.setup("1h");
    let token = token_file(&bao, "t");
    let dead = format!("http://127.0.0.1:{}", free_port());

    let mut c = client(vec![dead.clone(), bao.addr.clone()], token.clone());
    assert!(c.encrypt("app", &[item(b"x", None)]).unwrap()[0].is_ok());
    assert!(c.status().failovers >= 1);
    assert_eq!(c.status().active_addr, bao.addr);

    let mut all_dead = client(vec![dead], token.clone());
    assert_eq!(all_dead.encrypt("app", &[item(b"x", None)]).unwrap_err().kind, ErrorKind::Unavailable);

    // A standby-style 307: a loopback shim that redirects every request to the real server.
    let shim = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let shim_addr = format!("http://{}", shim.local_addr().unwrap());
    let target = bao.addr.clone();
    std::thread::spawn(move || {
        for stream in shim.incoming().take(8) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 65536];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = req.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let _ = write!(s, "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    // Followed when the target is one of the configured addresses (an HA cluster's nodes) …
    let mut via_standby = client(vec![shim_addr.clone(), bao.addr.clone()], token.clone());
    let ct = via_standby.encrypt("app", &[item(b"redirected", None)]).unwrap().remove(0).unwrap();
    assert_eq!(c.decrypt("app", &[item(ct.as_bytes(), None)]).unwrap()[0].as_ref().unwrap().as_slice(), b"redirected");
    // … and refused otherwise: the token and the plaintexts are sent to configured hosts only.
    let mut only_shim = client(vec![shim_addr], token.clone());
    let e = only_shim.encrypt("app", &[item(b"not-forwarded", None)]).unwrap_err();
    assert!(e.message.contains("refused a redirect"), "{e}");

    // A token file readable by other users is refused before it is used.
    let open = bao.dir.join("open");
    write_secret_file(&open, &bao.token("1h"));
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let e = client(vec![bao.addr.clone()], open).encrypt("app", &[item(b"x", None)]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidConfig);
    assert!(e.message.contains("chmod"), "{e}");

    // A refused token: PermissionDenied, and no error text carries the token.
    let bad = bao.dir.join("bad");
    write_secret_file(&bad, "s.SECRET-TOKEN-VALUE");
    let mut denied = client(vec![bao.addr.clone()], bad);
    let e = denied.encrypt("app", &[item(b"sk-PLAINTEXT", None)]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied);
    let shown = format!("{e} {e:?} {denied:?}");
    assert!(!shown.contains("SECRET-TOKEN") && !shown.contains("PLAINTEXT"), "{shown}");
}

/// A raft leader election as the worker sees it: the active node is dead and a standby
/// redirects everything (the login too) to it. The login is not followed to the standby's
/// target; the failure is an outage (`Unavailable`: 58030, local fallback when enabled), not a
/// protocol error. Failed before: `Protocol` ("refused a redirect to an address not in
/// credcrypt.bao_addr", SQLSTATE 08P01 and no fallback) when the standby was tried last.
#[test]
fn login_redirected_to_a_dead_active_node_is_an_outage() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let standby = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let standby_addr = format!("http://{}", standby.local_addr().unwrap());
    let target = dead.clone();
    std::thread::spawn(move || {
        for stream in standby.incoming().take(32) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 65536];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = req.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let _ = write!(s, "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    let d = dir("election");
    std::fs::create_dir_all(&d).unwrap();
    let sid = d.join("sid");
    write_secret_file(&sid, "credcrypt-secret-0001");
    let token = d.join("token");
    write_secret_file(&token, "s.not-used-before-the-lookup");
    for auth in [
        Auth::AppRole { mount: "approle".into(), role_id: "credcrypt-role".into(), secret_id_file: sid },
        Auth::TokenFile(token),
    ] {
        let mut c = Client::new(Config {
            addrs: vec![dead.clone(), standby_addr.clone()],
            mount: "transit".into(),
            namespace: None,
            ca_file: None,
            connect_timeout: Duration::from_millis(200),
            request_timeout: Duration::from_secs(2),
            auth,
        })
        .unwrap();
        let e = c.encrypt("app", &[item(b"during-the-election", None)]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
        assert!(!e.message.contains("not in credcrypt.bao_addr"), "{e}");
    }
}

#[test]
fn approle_tokens_are_renewed_or_replaced() {
    let bao = Bao::start(0, &dir("approle"));
    bao.setup("1h");
    bao.must(&["write", "auth/approle/role/credcrypt", "token_policies=credcrypt", "token_ttl=3s", "token_max_ttl=7s"]);
    let sid = bao.dir.join("sid");
    write_secret_file(&sid, "credcrypt-secret-0001");
    let mut c = Client::new(Config {
        addrs: vec![bao.addr.clone()],
        mount: "transit".into(),
        namespace: None,
        ca_file: None,
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(5),
        auth: Auth::AppRole { mount: "approle".into(), role_id: "credcrypt-role".into(), secret_id_file: sid },
    })
    .unwrap();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        assert!(c.encrypt("app", &[item(b"x", None)]).unwrap()[0].is_ok());
        c.maintain().unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    let st = c.status();
    assert!(st.renewals >= 1, "{st:?}");
    assert!(st.logins >= 2, "max TTL reached: a new login was needed: {st:?}");
    assert!(!format!("{c:?}").contains("credcrypt-secret-0001"));
}

#[test]
fn tls_with_a_ca_file() {
    let bao = Bao::start_tls(&dir("tls"));
    bao.setup("1h");
    let token = token_file(&bao, "t");
    let config = |ca: Option<std::path::PathBuf>| Config {
        addrs: vec![bao.addr.clone()],
        mount: "transit".into(),
        namespace: None,
        ca_file: ca,
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(3),
        auth: Auth::TokenFile(token.clone()),
    };
    assert!(bao.addr.starts_with("https://"));
    let mut c = Client::new(config(bao.ca_file.clone())).unwrap();
    let ct = c.encrypt("app", &[item(b"over tls", None)]).unwrap().remove(0).unwrap();
    assert_eq!(c.decrypt("app", &[item(ct.as_bytes(), None)]).unwrap()[0].as_ref().unwrap().as_slice(), b"over tls");
    // Without the CA the server's certificate is not trusted: no silent downgrade.
    let mut untrusted = Client::new(config(None)).unwrap();
    assert_eq!(untrusted.encrypt("app", &[item(b"x", None)]).unwrap_err().kind, ErrorKind::Unavailable);
    // A CA file that holds no certificate is a configuration error.
    let junk = bao.dir.join("junk.pem");
    std::fs::write(&junk, "not a pem").unwrap();
    assert_eq!(Client::new(config(Some(junk))).unwrap_err().kind, ErrorKind::InvalidConfig);
}

/// A loopback TCP proxy to `upstream` (`http://host:port`) that counts the connections it
/// accepts: its address, and the count.
fn counting_proxy(upstream: &str) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let upstream = upstream.trim_start_matches("http://").to_owned();
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_addr = format!("http://{}", proxy.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for client_side in proxy.incoming() {
            let Ok(client_side) = client_side else { continue };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let Ok(server_side) = std::net::TcpStream::connect(&upstream) else { continue };
            let (mut c2, mut s2) = (client_side.try_clone().unwrap(), server_side.try_clone().unwrap());
            let (mut c1, mut s1) = (client_side, server_side);
            std::thread::spawn(move || std::io::copy(&mut c1, &mut s1));
            std::thread::spawn(move || std::io::copy(&mut s2, &mut c2));
        }
    });
    (proxy_addr, accepted)
}

/// A call whose items need several requests sends them concurrently (`TRANSIT_IN_FLIGHT` at a
/// time): the answers stay in the items' order, each request is sent once, per-item errors land
/// on their own items whatever request they were in, and a refused token or a dead first
/// address sends the requests through the normal path (re-authentication, failover).
#[test]
fn concurrent_requests_keep_order_errors_and_recovery() {
    let bao = Bao::start(0, &dir("concurrent"));
    bao.setup("1h");
    let token = token_file(&bao, "t");
    let mut c = client(vec![bao.addr.clone()], token.clone());
    let n = 3000;
    let items: Vec<Item> =
        (0..n).map(|i| item(format!("sk-{i:05}").as_bytes(), Some(format!("id:{i}").as_bytes()))).collect();
    c.encrypt("app", &[item(b"warm", None)]).unwrap();
    let before = c.status().http_requests;
    let cts = c.encrypt("app", &items).unwrap();
    let requests = c.status().http_requests - before;
    // 3,000 items with associated data are 14 requests under the JSON-string limit: each sent once.
    assert!((10..=20).contains(&requests), "{requests} requests for {n} items");
    let mut back: Vec<Item> = cts
        .iter()
        .enumerate()
        .map(|(i, r)| item(r.as_ref().unwrap().as_bytes(), Some(format!("id:{i}").as_bytes())))
        .collect();
    // Wrong associated data in the first, a middle and the last request.
    for i in [3, n / 2, n - 1] {
        back[i].associated_data = Some(b"id:other".to_vec());
    }
    let plain = c.decrypt("app", &back).unwrap();
    assert_eq!(plain.len(), n);
    for (i, p) in plain.iter().enumerate() {
        if [3, n / 2, n - 1].contains(&i) {
            assert_eq!(p.as_ref().unwrap_err().kind, ItemErrorKind::AuthenticationFailed, "item {i}");
        } else {
            assert_eq!(p.as_ref().unwrap().as_slice(), format!("sk-{i:05}").as_bytes(), "item {i}");
        }
    }
    let rewrapped = c.rewrap("app", &back[..1000].iter().map(|it| item(&it.data, None)).collect::<Vec<_>>()).unwrap();
    assert_eq!(rewrapped.len(), 1000);

    // The token is revoked and the file holds a new one: every concurrent request is refused
    // (403), and the normal path re-reads the token file once and sends them again.
    let old = std::fs::read_to_string(&token).unwrap();
    write_secret_file(&token, &bao.token("1h"));
    bao.must(&["token", "revoke", old.trim()]);
    let again = c.encrypt("app", &items).unwrap();
    assert!(again.iter().all(|r| r.as_ref().unwrap().starts_with("vault:v1:")));

    // A dead first address: the concurrent pass fails and the normal path fails over.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut f = client(vec![dead, bao.addr.clone()], token.clone());
    let out = f.encrypt("app", &items).unwrap();
    assert_eq!(out.len(), n);
    assert!(f.status().failovers >= 1);
    let plain = f
        .decrypt(
            "app",
            &out.iter()
                .enumerate()
                .map(|(i, r)| item(r.as_ref().unwrap().as_bytes(), Some(format!("id:{i}").as_bytes())))
                .collect::<Vec<_>>(),
        )
        .unwrap();
    assert!(plain.iter().enumerate().all(|(i, p)| p.as_ref().unwrap().as_slice() == format!("sk-{i:05}").as_bytes()));

    // The requests really are concurrent: through a loopback proxy that counts connections, a
    // call of one request uses one keep-alive connection again and again, a call of many opens
    // several (one client, one by one, would reuse one).
    let (proxy_addr, accepted) = counting_proxy(&bao.addr);
    let mut p = client(vec![proxy_addr], token.clone());
    for _ in 0..5 {
        p.encrypt("app", &items[..100]).unwrap();
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "one request at a time reuses its connection");
    let out = p.encrypt("app", &items).unwrap();
    assert!(out.iter().all(Result::is_ok));
    let opened = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(opened >= 2, "{opened} connection(s): the requests of one call were not concurrent");

    // A missing key is a whole-call error, as one by one.
    assert!(matches!(
        c.encrypt("missing", &items).unwrap_err().kind,
        ErrorKind::KeyNotFound | ErrorKind::PermissionDenied
    ));
}

/// Several encrypt and decrypt sets in one call (a worker round serving several backends, for
/// several keys and both operations): their requests are outstanding together, each set
/// answers its own items in order, and a set that fails as a whole (a missing key) fails alone.
#[test]
fn transit_batches_serve_several_sets_together() {
    let bao = Bao::start(0, &dir("sets"));
    bao.setup("1h");
    let token = token_file(&bao, "t");
    let mut c = client(vec![bao.addr.clone()], token.clone());
    let plain = |tag: &str, n: usize| -> Vec<Item> {
        (0..n).map(|i| item(format!("{tag}-{i:04}").as_bytes(), Some(format!("{tag}:{i}").as_bytes()))).collect()
    };
    let (a, b) = (plain("a", 700), plain("b", 300));
    let earlier = c.encrypt("other", &b).unwrap();
    let sealed: Vec<Item> = earlier
        .iter()
        .enumerate()
        .map(|(i, r)| item(r.as_ref().unwrap().as_bytes(), Some(format!("b:{i}").as_bytes())))
        .collect();
    let missing = plain("m", 10);
    let sets = [
        TransitBatch { op: TransitOp::Encrypt, key: "app", items: &a },
        TransitBatch { op: TransitOp::Decrypt, key: "other", items: &sealed },
        TransitBatch { op: TransitOp::Encrypt, key: "missing", items: &missing },
        TransitBatch { op: TransitOp::Encrypt, key: "other", items: &b[..5] },
    ];
    let out = c.transit_batches(&sets);
    assert_eq!(out.len(), 4);
    let enc = out[0].as_ref().expect("set 0");
    assert_eq!(enc.len(), 700);
    let back: Vec<Item> = enc
        .iter()
        .enumerate()
        .map(|(i, r)| item(r.as_ref().unwrap().as_slice(), Some(format!("a:{i}").as_bytes())))
        .collect();
    let opened = c.decrypt("app", &back).unwrap();
    assert!(opened.iter().enumerate().all(|(i, p)| p.as_ref().unwrap().as_slice() == format!("a-{i:04}").as_bytes()));
    let dec = out[1].as_ref().expect("set 1");
    assert!(dec.iter().enumerate().all(|(i, p)| p.as_ref().unwrap().as_slice() == format!("b-{i:04}").as_bytes()));
    assert!(matches!(
        out[2].as_ref().map(|_| ()).unwrap_err().kind,
        ErrorKind::KeyNotFound | ErrorKind::PermissionDenied
    ));
    let last = out[3].as_ref().expect("set 3");
    assert!(last.len() == 5 && last.iter().all(|r| r.as_ref().unwrap().starts_with(b"vault:v1:")));

    // Two sets of one request each are sent at once: through a connection-counting proxy,
    // one set at a time reuses one keep-alive connection, two sets together open a second.
    let (proxy_addr, accepted) = counting_proxy(&bao.addr);
    let mut p = client(vec![proxy_addr], token);
    let one = [TransitBatch { op: TransitOp::Encrypt, key: "app", items: &a[..100] }];
    for _ in 0..5 {
        assert!(p.transit_batches(&one)[0].is_ok());
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "one request at a time reuses its connection");
    let two = [
        TransitBatch { op: TransitOp::Encrypt, key: "app", items: &a[..100] },
        TransitBatch { op: TransitOp::Decrypt, key: "other", items: &sealed[..100] },
    ];
    for _ in 0..3 {
        assert!(p.transit_batches(&two).iter().all(Result::is_ok));
    }
    let opened = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(opened >= 2, "{opened} connection(s): the two sets' requests were not concurrent");
}
