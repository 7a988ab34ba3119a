//! A hot standby made with pg_basebackup from the test cluster, on loopback: protected values
//! (local key, Transit and envelope keys) decrypt there through the decrypted view, blind-index
//! lookups run there, a tenant key shredded on the primary makes its values unreadable there
//! too (also in a session that had them cached), the Transit worker runs on the standby and
//! writes nothing, table-mode decrypt auditing falls back to the standby's log, and after
//! promotion the node encrypts again.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use credcrypt_blackbox::bao::{free_port, start_for};
use credcrypt_blackbox::{Cluster, Outcome};

fn pg_bin(program: &str) -> String {
    let bin = std::env::var("CC_PGBIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    format!("{bin}/{program}")
}

fn as_postgres(args: &[&str]) -> bool {
    credcrypt_blackbox::as_postgres(args[0]).args(&args[1..]).stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}

struct Standby {
    dir: std::path::PathBuf,
    port: String,
}

impl Standby {
    fn psql(&self, user: &str, sql: &str) -> Outcome {
        let c = Cluster::from_env();
        let me = Cluster { port: self.port.clone(), host: self.dir.join("sock").to_string_lossy().into_owned(), ..c };
        me.psql(user, sql)
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.join("standby.log")).unwrap_or_default()).into_owned()
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        as_postgres(&[&pg_bin("pg_ctl"), "-D", &data.to_string_lossy(), "-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn hot_standby_decrypts_audits_to_its_log_and_takes_over_after_promotion() {
    let c = Cluster::from_env();
    c.ensure_login_role("sb_app", "credcrypt_encryptor, credcrypt_decryptor");
    let bao = start_for(&c);
    // Per-row keys need the tenant policy (docs/openbao.md).
    let token = bao.tenant_token("1h");
    let file = c.keys.join("bao-tenant.token");
    credcrypt_blackbox::bao::write_secret_file(&file, &token);
    credcrypt_blackbox::bao::point_at(&c, &bao.addr, &format!("credcrypt.bao_token_file = '{}'\n", file.display()));
    for t in ["a", "b"] {
        bao.must(&["write", "-f", &format!("transit/keys/tenant-sb{t}")]);
    }
    c.sql(
        "DROP TABLE IF EXISTS sb_creds CASCADE;
         CREATE TABLE sb_creds (id int PRIMARY KEY, local_key text, transit_key text, envelope_key text);
         SELECT credcrypt.protect_column('sb_creds', 'local_key', key_name => 'local', bind_columns => ARRAY['id']);
         SELECT credcrypt.protect_column('sb_creds', 'transit_key', key_name => 'transit:app', bind_columns => ARRAY['id']);
         SELECT credcrypt.protect_column('sb_creds', 'envelope_key', key_name => 'envelope:app', bind_columns => ARRAY['id']);
         SELECT credcrypt.create_decrypted_view('sb_creds', 'sb_creds_plain');
         GRANT SELECT, INSERT ON sb_creds TO sb_app;
         INSERT INTO sb_creds SELECT g, 'local-' || g, 'transit-' || g, 'envelope-' || g FROM generate_series(1, 50) g;
         ALTER ROLE sb_app SET credcrypt.audit_decrypt = 'table';
         DROP TABLE IF EXISTS sb_lookup, sb_tenants CASCADE;
         CREATE TABLE sb_lookup (id int PRIMARY KEY, api_key text);
         SELECT credcrypt.protect_column('sb_lookup', 'api_key', bind_columns => ARRAY['id'], blind_index_column => 'api_key_bidx');
         CREATE UNIQUE INDEX ON sb_lookup (api_key_bidx);
         INSERT INTO sb_lookup SELECT g, 'sk-sb-' || g FROM generate_series(1, 100) g;
         GRANT SELECT ON sb_lookup TO sb_app;
         CREATE TABLE sb_tenants (id int PRIMARY KEY, org_id text NOT NULL, api_key text);
         SELECT credcrypt.protect_column('sb_tenants', 'api_key', key_name => 'envelope:tenant-{org_id}', bind_columns => ARRAY['id', 'org_id']);
         SELECT credcrypt.create_decrypted_view('sb_tenants', 'sb_tenants_plain');
         INSERT INTO sb_tenants SELECT g, CASE WHEN g % 2 = 0 THEN 'sba' ELSE 'sbb' END, 'tenant-secret-' || g FROM generate_series(1, 20) g;
         GRANT SELECT ON sb_tenants, sb_tenants_plain TO sb_app;",
    );
    // The standby: a base backup of the running cluster, streaming, read-only.
    let dir = c.keys.join("standby");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sock")).expect("standby dir");
    assert!(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status().expect("chown").success());
    let data = dir.join("data");
    assert!(as_postgres(&[
        &pg_bin("pg_basebackup"),
        "-h",
        &c.host,
        "-p",
        &c.port,
        "-U",
        "postgres",
        "-D",
        &data.to_string_lossy(),
        "-R",
        "-X",
        "stream",
    ]));
    let port = free_port().to_string();
    let standby = Standby { dir: dir.clone(), port: port.clone() };
    let opts = format!("-c port={port} -c unix_socket_directories={}", dir.join("sock").display());
    assert!(as_postgres(&[
        &pg_bin("pg_ctl"),
        "-D",
        &data.to_string_lossy(),
        "-l",
        &dir.join("standby.log").to_string_lossy(),
        "-o",
        &opts,
        "-w",
        "start",
    ]));
    assert_eq!(standby.psql("postgres", "SELECT pg_is_in_recovery()").expect_ok(), "t");
    // The worker runs on the standby (no database connection, nothing written).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = standby.psql("sb_app", "SELECT count(*) FROM sb_creds_plain WHERE local_key = 'local-' || id AND transit_key = 'transit-' || id AND envelope_key = 'envelope-' || id");
        if o.ok && o.out == "50" {
            break;
        }
        assert!(Instant::now() < deadline, "the standby does not decrypt: {o:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(standby.psql("postgres", "SELECT worker_pid IS NOT NULL FROM credcrypt.status()").expect_ok(), "t");
    // Blind-index lookups run on the standby (they read only).
    assert_eq!(
        standby
            .psql("sb_app", "SELECT id FROM sb_lookup WHERE api_key_bidx = credcrypt.blind_index('sb_lookup', 'api_key', 'sk-sb-42')")
            .expect_ok(),
        "42"
    );
    // A tenant key shredded on the primary: its values become unreadable on the standby too,
    // also in a standby session that had its data keys cached; the other tenant still reads.
    let tenants = "SELECT org_id || ':' || count(*) FROM sb_tenants_plain WHERE api_key LIKE 'tenant-secret-%' GROUP BY org_id ORDER BY org_id";
    let standby_cluster =
        Cluster { port: port.clone(), host: dir.join("sock").to_string_lossy().into_owned(), ..Cluster::from_env() };
    let mut cached = credcrypt_blackbox::Session::open(&standby_cluster, "sb_app");
    assert_eq!(cached.run(tenants).out.replace('\n', " "), "sba:10 sbb:10");
    c.sql("SELECT credcrypt.shred_key('envelope:tenant-sba')");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = standby.psql(
            "sb_app",
            "SELECT count(*) FROM sb_tenants_plain WHERE org_id = 'sba' AND api_key LIKE 'tenant-secret-%'",
        );
        if o.sqlstate() == Some("38000") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the standby still decrypts a shredded tenant: {o:?}; replay: {}; log: {}",
            standby.psql("postgres", "SELECT pg_last_wal_replay_lsn()::text || ' ' || (SELECT count(*) FROM credcrypt.data_keys WHERE transit_key = 'tenant-sba')").out,
            standby.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        cached
            .run("SELECT count(*) FROM sb_tenants_plain WHERE org_id = 'sba' AND api_key LIKE 'tenant-secret-%'")
            .sqlstate(),
        Some("38000")
    );
    assert_eq!(
        cached.run("SELECT count(*) FROM sb_tenants_plain WHERE org_id = 'sbb' AND api_key LIKE 'tenant-secret-%'").out,
        "10"
    );
    drop(cached);
    // Auditing in table mode cannot write on a standby: the record goes to its log.
    assert!(
        standby.log().contains("role \"sb_app\" decrypted 50 value(s) of public.sb_creds.local_key"),
        "{}",
        standby.log()
    );
    // A standby cannot encrypt into a table (read-only), with a clear PostgreSQL error.
    assert_eq!(
        standby.psql("sb_app", "INSERT INTO sb_creds (id, local_key) VALUES (99, 'x')").sqlstate(),
        Some("25006")
    );
    // Promotion: the node takes writes, and they are encrypted (all three providers).
    assert!(as_postgres(&[&pg_bin("pg_ctl"), "-D", &data.to_string_lossy(), "-w", "promote"]));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = standby.psql(
            "sb_app",
            "INSERT INTO sb_creds VALUES (51, 'local-51', 'transit-51', 'envelope-51') RETURNING local_key LIKE 'cc1:local:%' AND transit_key LIKE 'cc1:transit:%' AND envelope_key LIKE 'cc1:envelope:%'",
        );
        if o.ok {
            assert_eq!(o.out, "t");
            break;
        }
        assert!(Instant::now() < deadline, "the promoted node does not encrypt: {o:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        standby.psql("sb_app", "SELECT count(*) FROM sb_creds_plain WHERE transit_key = 'transit-' || id").expect_ok(),
        "51"
    );
    c.sql("ALTER ROLE sb_app RESET credcrypt.audit_decrypt");
    c.sql("DROP TABLE sb_lookup, sb_tenants CASCADE");
}
