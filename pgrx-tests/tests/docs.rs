//! Every ```sql block of README.md and docs/*.md is executed, so the documentation cannot rot.
//!
//! Per document, the blocks run in order in a fresh database, as the superuser, after a small
//! prelude that creates what the document assumes (its tables and roles). An HTML comment
//! `<!-- doctest: fresh -->` before a block starts a new database for it (a new runbook).
//! Signatures and fragments are written as ```text, not ```sql. OpenBao runs (dev server) for
//! the blocks that use `transit:app`.

use std::path::{Path, PathBuf};

use credcrypt_blackbox::bao::start_for;
use credcrypt_blackbox::Cluster;

/// What every document's database starts with, and what each one assumes besides.
fn prelude(doc: &str) -> String {
    let roles = "DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app_backend') THEN CREATE ROLE app_backend LOGIN; END IF;
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ingest_job') THEN CREATE ROLE ingest_job LOGIN; END IF;
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'reporting') THEN CREATE ROLE reporting LOGIN; END IF;
    END $$;";
    let extension = if doc == "README.md" { "" } else { "CREATE EXTENSION pg_credcrypt;" };
    let tables = match doc {
        "README.md" => "",
        "sql-reference.md" => {
            "CREATE TABLE api_keys (owner text, secret text);
             INSERT INTO api_keys VALUES ('alice', credcrypt.encrypt_credential('sk-live-0123456789', context => 'owner:alice'));
             CREATE TABLE tokens (id int PRIMARY KEY, raw text, enc text);
             INSERT INTO tokens SELECT g, 'tok-' || g, NULL FROM generate_series(1, 10) g;
             CREATE TABLE oauth_clients (client_id text PRIMARY KEY, client_secret text);
             INSERT INTO oauth_clients VALUES ('web-app', credcrypt.encrypt_credential('cs_live_presented_secret', context => 'client:web-app'));"
        }
        "migrations.md" => {
            "CREATE TABLE integration_credentials (id bigint PRIMARY KEY, user_id text, provider text, api_key text);
             INSERT INTO integration_credentials SELECT g, 'user-' || g, 'openai', 'sk-' || g FROM generate_series(1, 1000) g;"
        }
        "clients.md" => {
            "CREATE TABLE integration_credentials (id bigint PRIMARY KEY, user_id text NOT NULL, provider text, api_key text);
             SELECT credcrypt.protect_column('integration_credentials', 'api_key', bind_columns => ARRAY['id'], mask_column => 'api_key_mask');
             SELECT credcrypt.enable_owner_rls('integration_credentials', 'user_id');
             SELECT credcrypt.create_masked_view('integration_credentials', 'integration_credentials_masked');"
        }
        _ => "",
    };
    format!("{roles}\n{extension}\n{tables}")
}

/// The runnable blocks of a document: (line, starts a fresh database, SQL).
fn blocks(text: &str) -> Vec<(usize, bool, String)> {
    let mut out = Vec::new();
    let mut fresh = false;
    let mut current: Option<(usize, bool, String)> = None;
    for (n, line) in text.lines().enumerate() {
        if let Some((_, _, body)) = current.as_mut() {
            if line.starts_with("```") {
                out.push(current.take().expect("open block"));
            } else {
                body.push_str(line);
                body.push('\n');
            }
            continue;
        }
        if line.trim() == "<!-- doctest: fresh -->" {
            fresh = true;
        } else if line.trim() == "```sql" {
            current = Some((n + 1, fresh, String::new()));
            fresh = false;
        }
    }
    out
}

fn docs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut v = vec![root.join("README.md")];
    let mut d: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    d.sort();
    v.extend(d);
    v
}

#[test]
fn every_sql_example_in_the_docs_runs() {
    let c = Cluster::from_env();
    let _bao = start_for(&c);
    let mut ran = 0;
    for path in docs() {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let text = std::fs::read_to_string(&path).expect("read doc");
        let db = format!("doc_{}", name.trim_end_matches(".md").replace(['-', '.'], "_").to_lowercase());
        let reset = |c: &Cluster| {
            c.client("dropdb", &["--if-exists", &db]);
            let (ok, out) = c.client("createdb", &[&db]);
            assert!(ok, "{out}");
            c.psql_in(&db, "postgres", &prelude(&name)).expect_ok();
        };
        for (i, (line, fresh, sql)) in blocks(&text).into_iter().enumerate() {
            if i == 0 || fresh {
                reset(&c);
            }
            let o = c.psql_in(&db, "postgres", &sql);
            assert!(o.ok, "{name}:{line}: the example fails:\n{sql}\n{}", o.err);
            ran += 1;
        }
        c.client("dropdb", &["--if-exists", &db]);
    }
    assert!(ran >= 15, "only {ran} SQL examples found: did the docs lose their ```sql blocks?");
    #[allow(clippy::print_stdout)] // the count is the test's report
    {
        println!("{ran} SQL examples ran");
    }
}

/// Every SQLSTATE the code can raise — `ERRCODE_…` in the Rust sources, `ERRCODE = '…'` in the
/// SQL files — is in docs/errors.md.
#[test]
fn every_raised_sqlstate_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let pg_major = std::env::var("PG_MAJOR").unwrap_or_else(|_| "15".into());
    let header = std::fs::read_to_string(format!("/usr/include/postgresql/{pg_major}/server/utils/errcodes.h"))
        .or_else(|_| std::fs::read_to_string("/usr/include/postgresql/15/server/utils/errcodes.h"))
        .expect("PostgreSQL's errcodes.h (postgresql-server-dev)");
    // "#define ERRCODE_IO_ERROR MAKE_SQLSTATE('5','8','0','3','0')" -> ("IO_ERROR", "58030")
    let mut codes = std::collections::HashMap::new();
    for line in header.lines() {
        let Some(rest) = line.strip_prefix("#define ERRCODE_") else { continue };
        let Some((name, def)) = rest.split_once(char::is_whitespace) else { continue };
        let state: String = def.chars().filter(|c| c.is_ascii_alphanumeric()).skip("MAKESQLSTATE".len()).collect();
        if state.len() == 5 {
            codes.insert(name.to_owned(), state);
        }
    }
    let mut raised = std::collections::BTreeMap::new();
    let mut scan = |dir: &Path, ext: &str| {
        for entry in walk(dir) {
            if entry.extension().and_then(|e| e.to_str()) != Some(ext) {
                continue;
            }
            let file = entry.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if file == "tests.rs" || file.contains("--0.1.0.sql") && !file.contains("--0.1.0--") {
                continue; // unit tests; the frozen 0.1.0 install script (historical)
            }
            let text = std::fs::read_to_string(&entry).expect("source");
            for (i, _) in text.match_indices("ERRCODE_") {
                let name: String = text[i + 8..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if let Some(code) = codes.get(&name) {
                    raised.entry(code.clone()).or_insert_with(|| format!("{file}: ERRCODE_{name}"));
                }
            }
            for (i, _) in text.match_indices("ERRCODE = '") {
                let name: String = text[i + 11..].chars().take_while(|c| *c != '\'').collect();
                let code = codes.get(&name.to_ascii_uppercase()).cloned().unwrap_or(name.clone());
                raised.entry(code).or_insert_with(|| format!("{file}: {name}"));
            }
        }
    };
    scan(&root.join("src"), "rs");
    scan(&root.join("sql"), "sql");
    assert!(raised.len() > 10, "the scan found too few codes: {raised:?}");
    let doc = std::fs::read_to_string(root.join("docs/errors.md")).expect("docs/errors.md");
    let missing: Vec<String> = raised
        .iter()
        .filter(|(code, _)| !doc.contains(&format!("`{code}`")))
        .map(|(c, w)| format!("{c} ({w})"))
        .collect();
    assert!(missing.is_empty(), "SQLSTATEs raised but not in docs/errors.md: {missing:#?}");
}

/// Every setting the library defines (`c"credcrypt.…"` names in src/gucs.rs) has its row in
/// docs/configuration.md.
#[test]
fn every_setting_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let src = std::fs::read_to_string(root.join("src/gucs.rs")).expect("src/gucs.rs");
    let doc = std::fs::read_to_string(root.join("docs/configuration.md")).expect("docs/configuration.md");
    // A setting's name is a whole literal (`c"credcrypt.fallback"`), not a description's first words.
    let names: std::collections::BTreeSet<String> = src
        .match_indices("c\"credcrypt.")
        .filter_map(|(i, _)| {
            let rest = &src[i + 2..];
            let name: String =
                rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.').collect();
            (name.len() > "credcrypt.".len() && rest[name.len()..].starts_with('"')).then_some(name)
        })
        .collect();
    assert!(names.len() > 20, "the scan found too few settings: {names:?}");
    let missing: Vec<&String> = names.iter().filter(|n| !doc.contains(&format!("`{n}`"))).collect();
    assert!(missing.is_empty(), "settings defined but not in docs/configuration.md: {missing:#?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
