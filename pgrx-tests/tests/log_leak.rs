//! Run by scripts/test.sh as its own step, after every other black-box suite and the Node.js
//! example have run their plaintexts, keys and tokens through the server at
//! `log_min_messages = debug1` with verbose error fields: neither the server log nor any
//! OpenBao log may contain them. Ignored in a plain `cargo test` (it needs those suites to have
//! run first): `cargo test -p credcrypt-blackbox --test log_leak -- --ignored`.
//!
//! What is looked for: every test plaintext carries the word MARKER (e.g. `sk-…-SECRETMARKER-…`),
//! and every key, token and secret-id file the suites wrote is read back and its content searched.

use std::path::Path;

use credcrypt_blackbox::Cluster;

/// Every regular file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

#[test]
#[ignore = "needs every other suite to have run first: scripts/test.sh runs it as its own step"]
fn no_plaintext_key_or_token_in_any_log() {
    let c = Cluster::from_env();
    let mut all = Vec::new();
    files(&c.keys, &mut all);
    // Secrets: key files, tokens, secret ids, seal keys (their text, trimmed; long enough to be
    // meaningful).
    let secrets: Vec<String> = all
        .iter()
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            n.ends_with(".key") || n.contains("token") || n.contains("secret_id") || n.contains("password")
        })
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| s.len() >= 16)
        .collect();
    assert!(!secrets.is_empty(), "no key or token files found under {}", c.keys.display());
    // Logs: the server's, and every OpenBao server log the suites left.
    let mut logs = vec![(c.log.clone(), c.log_text())];
    for p in all.iter().filter(|p| p.extension().is_some_and(|e| e == "log")) {
        logs.push((p.clone(), String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()));
    }
    let server = &logs[0].1;
    assert!(server.contains("DEBUG:"), "the server log was not written at debug1: run through scripts/test.sh");
    let mut leaks = Vec::new();
    for (path, text) in &logs {
        if text.contains("MARKER") {
            let line = text.lines().find(|l| l.contains("MARKER")).unwrap_or_default();
            leaks.push(format!("{}: a test plaintext: {}", path.display(), line.chars().take(200).collect::<String>()));
        }
        for s in &secrets {
            if text.contains(s.as_str()) {
                leaks.push(format!("{}: the content of a key or token file", path.display()));
            }
        }
    }
    assert!(leaks.is_empty(), "{} leak(s):\n{}", leaks.len(), leaks.join("\n"));
}
