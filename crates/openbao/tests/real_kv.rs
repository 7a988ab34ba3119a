//! The KV version 2 client against a real OpenBao dev server (`secret/` is KV v2 in dev mode).

mod common;
use common::client;

use std::time::{Duration, Instant};

use credcrypt_openbao::{Client, Error, ErrorKind, KvValue};
use credcrypt_test_support::{write_secret_file, Bao};
use zeroize::Zeroizing;

/// A secret value no error message, `Debug` output or log line may ever contain.
const MARKER: &str = "sk-live-MARKER-7f3a9c";

/// What the tests' token may do: KV on `secret/` (but not `secret/{app,mix}/forbidden`), read `kv1/`.
const KV_POLICY: &str = r#"
path "secret/data/*"     { capabilities = ["create", "read", "update", "delete"] }
path "secret/metadata/*" { capabilities = ["read", "list", "delete"] }
path "secret/destroy/*"  { capabilities = ["update"] }
path "secret/data/app/forbidden" { capabilities = ["deny"] }
path "secret/data/mix/forbidden" { capabilities = ["deny"] }
path "kv1/*"             { capabilities = ["read", "list"] }
"#;

fn dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("credcrypt-kv-{name}-{}", std::process::id()))
}

/// A server with transit (`bao.setup`), a `kv1/` KV version 1 mount and the KV policy.
fn server(name: &str) -> Bao {
    let bao = Bao::start(0, &dir(name));
    bao.setup("1h");
    let policy = bao.dir.join("kv-policy.hcl");
    std::fs::write(&policy, KV_POLICY).unwrap();
    bao.must(&["policy", "write", "kvtest", policy.to_str().unwrap()]);
    bao.must(&["secrets", "enable", "-path=kv1", "-version=1", "kv"]);
    bao
}

/// A policy-limited token (transit policy + the KV policy) written to a 0600 file.
fn token_file(bao: &Bao, name: &str) -> std::path::PathBuf {
    let token = bao.must(&["token", "create", "-policy=credcrypt", "-policy=kvtest", "-ttl=1h", "-field=token"]);
    let p = bao.dir.join(name);
    write_secret_file(&p, token.trim());
    p
}

fn z(s: &str) -> Zeroizing<String> {
    Zeroizing::new(s.to_owned())
}

/// The fields of a live version, as (name, value) pairs.
#[track_caller]
fn data(v: &KvValue) -> (u64, Vec<(String, String)>) {
    match v {
        KvValue::Data(d) => (d.version, d.fields.iter().map(|(k, v)| (k.clone(), v.as_str().to_owned())).collect()),
        other => panic!("expected data, got {other:?}"),
    }
}

#[track_caller]
fn assert_clean(errors: &[Error]) {
    for e in errors {
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("MARKER"), "an error shows the secret: {shown}");
    }
}

#[test]
fn round_trip_cas_rotation_destroy_delete() {
    let bao = server("rt");
    let mut c = client(vec![bao.addr.clone()], token_file(&bao, "t"));
    let mut errors = Vec::new();

    // Round trip, with characters that need JSON escaping.
    let pw = z(&format!("{MARKER}-v1 \"quoted\" \\ \n ünïcode"));
    assert_eq!(c.kv_write("secret", "app/db", &[("password", &pw), ("user", &z("alice"))], 0).unwrap(), 1);
    let v = c.kv_read("secret", "app/db", 1).unwrap();
    assert_eq!(data(&v), (1, vec![("password".into(), pw.to_string()), ("user".into(), "alice".into())]));
    assert!(!format!("{v:?}").contains("MARKER"), "Debug of a value shows it: {v:?}");

    // cas 0 on an existing path, or a stale cas: CasMismatch, nothing written.
    let e = c.kv_write("secret", "app/db", &[("password", &z(&format!("{MARKER}-lost")))], 0).unwrap_err();
    assert_eq!(e.kind, ErrorKind::CasMismatch, "{e}");
    errors.push(e);
    let e = c.kv_write("secret", "app/db", &[("password", &z(MARKER))], 7).unwrap_err();
    assert_eq!(e.kind, ErrorKind::CasMismatch, "{e}");
    errors.push(e);

    // Rotation: versions 1, 2, 3 all readable, each with its own data; 0 reads the current one.
    for v in 2..=3u64 {
        let value = z(&format!("{MARKER}-v{v}"));
        assert_eq!(c.kv_write("secret", "app/db", &[("password", &value)], v - 1).unwrap(), v);
    }
    for v in 1..=3u64 {
        let (version, fields) = data(&c.kv_read("secret", "app/db", v).unwrap());
        assert_eq!(version, v);
        assert!(fields[0].1.starts_with(&format!("{MARKER}-v{v}")), "version {v} answered another version's data");
    }
    assert_eq!(data(&c.kv_read("secret", "app/db", 0).unwrap()).0, 3);
    assert_eq!(c.kv_read("secret", "app/db", 4).unwrap(), KvValue::Missing);
    assert_eq!(c.kv_read("secret", "app/none", 1).unwrap(), KvValue::Missing);
    let m = c.kv_metadata("secret", "app/db").unwrap().unwrap();
    assert_eq!(m.current_version, 3);
    assert_eq!(m.versions.iter().map(|v| v.version).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(m.versions.iter().all(|v| !v.created_time.is_empty() && !v.deleted && !v.destroyed), "{m:?}");

    // Destroy version 2: Destroyed, 1 and 3 still read; destroying again (and a version or
    // path that never existed) is fine.
    c.kv_destroy_versions("secret", "app/db", &[2]).unwrap();
    assert_eq!(c.kv_read("secret", "app/db", 2).unwrap(), KvValue::Destroyed { version: 2 });
    assert_eq!(data(&c.kv_read("secret", "app/db", 1).unwrap()).0, 1);
    assert_eq!(data(&c.kv_read("secret", "app/db", 3).unwrap()).0, 3);
    c.kv_destroy_versions("secret", "app/db", &[2, 99]).unwrap();
    c.kv_destroy_versions("secret", "app/never", &[1]).unwrap();
    c.kv_destroy_versions("secret", "app/db", &[]).unwrap();

    // Soft delete of the current version (DELETE secret/data/app/db, by the CLI): Deleted.
    bao.must(&["kv", "delete", "-mount=secret", "app/db"]);
    assert_eq!(c.kv_read("secret", "app/db", 3).unwrap(), KvValue::Deleted { version: 3 });
    assert_eq!(c.kv_read("secret", "app/db", 0).unwrap(), KvValue::Deleted { version: 3 });
    let m = c.kv_metadata("secret", "app/db").unwrap().unwrap();
    let flags: Vec<_> = m.versions.iter().map(|v| (v.version, v.deleted, v.destroyed)).collect();
    assert_eq!(flags, vec![(1, false, false), (2, false, true), (3, true, false)]);

    // Delete everything: every version Missing, no metadata, idempotent; cas 0 starts over.
    c.kv_delete_all("secret", "app/db").unwrap();
    for v in 0..=3u64 {
        assert_eq!(c.kv_read("secret", "app/db", v).unwrap(), KvValue::Missing, "version {v}");
    }
    assert_eq!(c.kv_metadata("secret", "app/db").unwrap(), None);
    c.kv_delete_all("secret", "app/db").unwrap();
    c.kv_delete_all("secret", "app/never").unwrap();
    assert_eq!(c.kv_write("secret", "app/db", &[("password", &z(MARKER))], 0).unwrap(), 1);

    // A missing mount, a non-KV mount: MountNotFound, not "missing secret" (for a token with
    // a capability there: the policy-limited one gets 403 PermissionDenied).
    let e = c.kv_read("secret-typo", "app/db", 1).unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
    let mut root = client(vec![bao.addr.clone()], {
        let p = bao.dir.join("root");
        write_secret_file(&p, &bao.root_token);
        p
    });
    for mount in ["nomount", "transit"] {
        let e = root.kv_read(mount, "app/db", 1).unwrap_err();
        assert_eq!(e.kind, ErrorKind::MountNotFound, "{mount}: {e}");
        errors.push(e);
        let e = root.kv_write(mount, "app/db", &[("password", &z(MARKER))], 0).unwrap_err();
        assert_eq!(e.kind, ErrorKind::MountNotFound, "{mount}: {e}");
        errors.push(e);
        let e = root.kv_metadata(mount, "app/db").unwrap_err();
        assert_eq!(e.kind, ErrorKind::MountNotFound, "{mount}: {e}");
    }

    // Denied by policy: PermissionDenied (after one re-authentication).
    let e = c.kv_write("secret", "app/forbidden", &[("password", &z(MARKER))], 0).unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
    errors.push(e);
    let e = c.kv_read("secret", "app/forbidden", 1).unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
    errors.push(e);

    // Refused before sending, without repeating the argument.
    for (mount, path) in [
        ("secret", format!("app/{MARKER} x")),
        ("secret", format!("app/../{MARKER}")),
        ("secret", format!("{MARKER}?version=1")),
        ("secret", format!("/{MARKER}")),
        ("secret", "a/".repeat(600)),
        (&format!("{MARKER}/x")[..], "ok".to_owned()),
        (&format!("{MARKER} ")[..], "ok".to_owned()),
        ("a/b", "ok".to_owned()),
        ("..", "ok".to_owned()),
    ] {
        let e = c.kv_write(mount, &path, &[("password", &z(MARKER))], 0).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
        errors.push(e);
        let e = c.kv_read(mount, &path, 1).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
        errors.push(e);
    }
    let e = c.kv_read("secret", "app/db", u64::MAX).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert_clean(&errors);
    assert!(!format!("{c:?}").contains("MARKER"));
}

#[test]
fn list_and_list_recursive() {
    let bao = server("list");
    let mut c = client(vec![bao.addr.clone()], token_file(&bao, "t"));
    let leaves = ["tree/a", "tree/b/c", "tree/b/d/e", "tree/b/d/f=1,2", "tree/x.y/z-_"];
    for p in leaves.iter().chain(&["other/q", "top"]) {
        c.kv_write("secret", p, &[("v", &z(p))], 0).unwrap();
    }
    // A leaf that also is a directory, and a leaf whose versions are all destroyed (still listed).
    c.kv_write("secret", "tree/b", &[("v", &z("b"))], 0).unwrap();
    c.kv_destroy_versions("secret", "tree/a", &[1]).unwrap();
    assert_eq!(c.kv_list("secret", "tree").unwrap(), vec!["a", "b", "b/", "x.y/"]);
    assert_eq!(c.kv_list("secret", "tree/b/").unwrap(), vec!["c", "d/"]);
    assert_eq!(c.kv_list("secret", "").unwrap(), vec!["other/", "top", "tree/"]);
    assert!(c.kv_list("secret", "nothing/here").unwrap().is_empty());
    assert!(c.kv_list("secret", "top").unwrap().is_empty(), "a leaf lists as an empty directory");

    let mut want: Vec<String> = leaves.iter().map(|s| (*s).to_owned()).collect();
    want.push("tree/b".into());
    want.sort();
    assert_eq!(c.kv_list_recursive("secret", "tree").unwrap(), want);
    assert_eq!(c.kv_list_recursive("secret", "tree/b/d/").unwrap(), vec!["tree/b/d/e", "tree/b/d/f=1,2"]);
    let all = c.kv_list_recursive("secret", "").unwrap();
    assert_eq!(all.len(), want.len() + 2);
    assert!(all.contains(&"other/q".to_owned()) && all.contains(&"top".to_owned()));
    assert!(c.kv_list_recursive("secret", "nothing").unwrap().is_empty());

    // After delete_all the leaf is gone from the listing.
    c.kv_delete_all("secret", "tree/b/d/e").unwrap();
    assert_eq!(c.kv_list_recursive("secret", "tree/b/d").unwrap(), vec!["tree/b/d/f=1,2"]);

    // A name the client cannot address (written by someone else) stops the walk, unechoed.
    bao.must(&["kv", "put", "-mount=secret", &format!("odd/{MARKER} with space"), "v=1"]);
    assert_eq!(c.kv_list("secret", "odd").unwrap().len(), 1, "kv_list gives names as they are");
    let e = c.kv_list_recursive("secret", "odd").unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert_clean(&[e]);
}

#[test]
fn mount_versions() {
    let bao = server("mounts");
    bao.must(&["secrets", "enable", "-path=kvplain", "kv"]);
    let root = bao.dir.join("root");
    write_secret_file(&root, &bao.root_token);
    let mut c = client(vec![bao.addr.clone()], root);
    assert_eq!(c.kv_mount_version("secret").unwrap(), Some(2));
    assert_eq!(c.kv_mount_version("kv1").unwrap(), Some(1));
    assert_eq!(c.kv_mount_version("kvplain").unwrap(), Some(1), "kv without options is version 1");
    assert_eq!(c.kv_mount_version("transit").unwrap(), None);
    assert_eq!(c.kv_mount_version("missing").unwrap(), None);
    assert_eq!(c.kv_mount_version("sys").unwrap(), None);
    assert_eq!(c.kv_mount_version("..").unwrap_err().kind, ErrorKind::InvalidArgument);

    // A limited token: mounts it has a capability under are seen, others are None.
    let mut lim = client(vec![bao.addr.clone()], token_file(&bao, "t"));
    assert_eq!(lim.kv_mount_version("secret").unwrap(), Some(2));
    assert_eq!(lim.kv_mount_version("kv1").unwrap(), Some(1));
    assert_eq!(lim.kv_mount_version("kvplain").unwrap(), None, "no capability under kvplain/");
    assert_eq!(lim.kv_mount_version("missing").unwrap(), None);
    let logins = lim.status().logins;
    assert_eq!(lim.kv_mount_version("missing").unwrap(), None);
    assert_eq!(lim.status().logins, logins, "a preflight 403 is an answer, not a refused token");

    // A refused token: PermissionDenied, not None.
    let bad = bao.dir.join("bad");
    write_secret_file(&bad, "s.not-a-token");
    let e = client(vec![bao.addr.clone()], bad).kv_mount_version("secret").unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
}

/// Writes `n` secrets `bulk/<i>` with field `v` = `<MARKER>-<i>`.
fn write_bulk(c: &mut Client, n: usize) {
    for i in 0..n {
        c.kv_write("secret", &format!("bulk/{i}"), &[("v", &z(&format!("{MARKER}-{i}")))], 0).unwrap();
    }
}

fn bulk_reqs(n: usize) -> Vec<(String, String, u64)> {
    (0..n).map(|i| ("secret".to_owned(), format!("bulk/{i}"), 1)).collect()
}

#[track_caller]
fn check_bulk(out: &[Result<KvValue, Error>], n: usize) {
    assert_eq!(out.len(), n);
    for (i, r) in out.iter().enumerate() {
        let v = r.as_ref().unwrap_or_else(|e| panic!("item {i}: {e}"));
        let (version, fields) = data(v);
        assert_eq!((version, fields[0].1.as_str()), (1, format!("{MARKER}-{i}").as_str()), "item {i}");
    }
}

#[test]
fn read_many_in_order_with_every_case() {
    let bao = server("many");
    let token = token_file(&bao, "t");
    let mut c = client(vec![bao.addr.clone()], token.clone());
    write_bulk(&mut c, 2000);

    let before = c.status().http_requests;
    let out = c.kv_read_many(&bulk_reqs(2000), 8);
    check_bulk(&out, 2000);
    let sent = c.status().http_requests - before;
    assert_eq!(sent, 2000, "one request per item, counted");
    check_bulk(&c.kv_read_many(&bulk_reqs(2000), 1), 2000);
    check_bulk(&c.kv_read_many(&bulk_reqs(50), 64), 50);
    assert!(c.kv_read_many(&[], 8).is_empty());

    // A mix: present, other versions, destroyed, soft-deleted, missing path and version,
    // invalid path, policy-denied path, missing mount.
    c.kv_write("secret", "mix/rot", &[("v", &z("two"))], 0).unwrap();
    c.kv_write("secret", "mix/rot", &[("v", &z("three"))], 1).unwrap();
    c.kv_write("secret", "mix/rot", &[("v", &z("four"))], 2).unwrap();
    c.kv_destroy_versions("secret", "mix/rot", &[2]).unwrap();
    bao.must(&["kv", "delete", "-mount=secret", "mix/rot"]);
    let r = |m: &str, p: &str, v: u64| (m.to_owned(), p.to_owned(), v);
    let reqs = vec![
        r("secret", "bulk/7", 1),
        r("secret", "mix/rot", 1),
        r("secret", "mix/rot", 2),
        r("secret", "mix/rot", 3),
        r("secret", "mix/rot", 9),
        r("secret", "mix/none", 1),
        r("secret", &format!("bad path {MARKER}"), 1),
        r("secret", "mix/forbidden", 1),
        r("nomount", "x", 1),
        r("secret", "bulk/1999", 0),
    ];
    for in_flight in [1, 4, 8] {
        let logins = c.status().logins;
        let out = c.kv_read_many(&reqs, in_flight);
        assert_eq!(out.len(), reqs.len());
        assert_eq!(data(out[0].as_ref().unwrap()).1[0].1, format!("{MARKER}-7"));
        assert_eq!(data(out[1].as_ref().unwrap()).1[0].1, "two");
        assert_eq!(out[2].as_ref().unwrap(), &KvValue::Destroyed { version: 2 });
        assert_eq!(out[3].as_ref().unwrap(), &KvValue::Deleted { version: 3 });
        assert_eq!(out[4].as_ref().unwrap(), &KvValue::Missing);
        assert_eq!(out[5].as_ref().unwrap(), &KvValue::Missing);
        assert_eq!(out[6].as_ref().unwrap_err().kind, ErrorKind::InvalidArgument);
        assert_eq!(out[7].as_ref().unwrap_err().kind, ErrorKind::PermissionDenied);
        // The policy grants nothing on nomount/: 403 (a root token gets MountNotFound).
        assert_eq!(out[8].as_ref().unwrap_err().kind, ErrorKind::PermissionDenied);
        assert_eq!(data(out[9].as_ref().unwrap()).1[0].1, format!("{MARKER}-1999"));
        assert!(c.status().logins - logins <= 2, "one re-authentication per call at most");
        let errors: Vec<Error> = out.iter().filter_map(|r| r.as_ref().err().cloned()).collect();
        assert_clean(&errors);
        assert!(!format!("{out:?}").contains("MARKER"));
    }

    // The token is revoked between calls and a new one is in the file: the concurrent pass
    // gets 403s, re-reads the token once and reads everything.
    let old = std::fs::read_to_string(&token).unwrap();
    bao.must(&["token", "revoke", old.trim()]);
    let fresh = bao.must(&["token", "create", "-policy=kvtest", "-ttl=1h", "-field=token"]);
    write_secret_file(&token, fresh.trim());
    let logins = c.status().logins;
    check_bulk(&c.kv_read_many(&bulk_reqs(500), 8), 500);
    assert_eq!(c.status().logins, logins + 1);

    // A token refused for good: every item PermissionDenied, no secret in the errors.
    bao.must(&["token", "revoke", fresh.trim()]);
    let out = c.kv_read_many(&bulk_reqs(100), 8);
    assert!(out.iter().all(|r| r.as_ref().unwrap_err().kind == ErrorKind::PermissionDenied));
}

#[test]
fn read_many_fails_over_mid_call() {
    // Two servers with the same values; the client uses the first until it dies.
    let mut a = server("fo-a");
    let b = server("fo-b");
    let token = token_file(&a, "t");
    let token_b = token_file(&b, "tb");
    write_bulk(&mut client(vec![a.addr.clone()], token.clone()), 300);
    write_bulk(&mut client(vec![b.addr.clone()], token_b.clone()), 300);
    let mut c = client(vec![a.addr.clone(), b.addr.clone()], token.clone());
    check_bulk(&c.kv_read_many(&bulk_reqs(300), 8), 300);
    assert_eq!(c.status().active_addr, a.addr);

    // The first server dies; the second only knows its own token (now in the file).
    a.kill();
    std::fs::copy(&token_b, &token).unwrap();
    let start = Instant::now();
    check_bulk(&c.kv_read_many(&bulk_reqs(300), 8), 300);
    assert_eq!(c.status().active_addr, b.addr);
    assert!(c.status().failovers >= 1);
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());

    // Both dead: every item Unavailable, quickly (one outage, not one per item).
    drop(b);
    let start = Instant::now();
    let out = c.kv_read_many(&bulk_reqs(300), 8);
    assert!(out.iter().all(|r| r.as_ref().unwrap_err().kind == ErrorKind::Unavailable));
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
}

/// Sequential vs concurrent reads; prints, asserts no timing. Run with
/// `cargo test --release -p credcrypt-openbao --test real_kv -- --ignored --nocapture`.
/// On the 2-core development machine (release build, machine otherwise idle to lightly
/// loaded): in_flight 1 ≈ 2.7 s, 2 ≈ 1.8–2.1 s, 4 ≈ 1.55–1.9 s, 8 ≈ 1.55–1.65 s,
/// 16 ≈ 1.6–1.9 s for 2,000 reads (the dev server is CPU-bound; see `Client::kv_read_many`).
#[test]
#[ignore]
#[allow(clippy::print_stdout)]
fn read_many_timing() {
    let bao = server("timing");
    let mut c = client(vec![bao.addr.clone()], token_file(&bao, "t"));
    write_bulk(&mut c, 2000);
    let reqs = bulk_reqs(2000);
    check_bulk(&c.kv_read_many(&reqs, 8), 2000); // warm the pool
    for in_flight in [1, 2, 4, 8, 16] {
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            let out = c.kv_read_many(&reqs, in_flight);
            best = best.min(t.elapsed());
            check_bulk(&out, 2000);
        }
        println!(
            "2000 KV reads, in_flight {in_flight:2}: {:7.1} ms ({:6.0} reads/s)",
            best.as_secs_f64() * 1000.0,
            2000.0 / best.as_secs_f64()
        );
    }
}
