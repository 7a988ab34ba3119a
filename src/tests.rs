//! `#[pg_test]`s: every SQL function against a real server, with real (non-superuser) roles.
//!
//! The cluster's `credcrypt.local_key_file` and `credcrypt.local_previous_key_files` point at
//! files that [`ensure_keys`] writes from inside the server (as its OS user, mode 0600). The
//! previous key is the published test-vector key, so the docs' vectors decrypt through SQL.

#[pgrx::pg_schema]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use credcrypt_core::LocalKey;
    use pgrx::prelude::*;

    const DIR: &str = "/tmp/pg_credcrypt_pgtest";
    /// Current test key (base64 of 32 bytes 0x40..0x5f).
    const CURRENT_B64: &str = "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=";
    /// Previous test key: the test-vector key, bytes 0x00..0x1f.
    const PREVIOUS_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    /// Published vector (docs/format.md): "sk-live-4f9a0c2e7b1d" with context "user:42".
    const VECTOR: &str =
        "cc1:local:local:f17d75248b1bb562:c:oKGio6SlpqeoqaqrlXNRQSy9Z5JWA76yNxnyu0fOaHQDXiIjKFsgBoa0-izbAJz9";

    fn ensure_keys() {
        std::fs::create_dir_all(DIR).unwrap();
        std::fs::set_permissions(DIR, std::fs::Permissions::from_mode(0o700)).unwrap();
        for (name, b64) in [("current.key", CURRENT_B64), ("previous.key", PREVIOUS_B64)] {
            let path = format!("{DIR}/{name}");
            if std::fs::read_to_string(&path).ok().as_deref() != Some(b64) {
                std::fs::write(&path, b64).unwrap();
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        if one::<bool>("SELECT to_regprocedure('pg_temp.err(text)') IS NOT NULL") == Some(true) {
            return;
        }
        Spi::run(
            "CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $f$
             DECLARE m text; d text; h text;
             BEGIN
               EXECUTE q;
               RETURN 'OK';
             EXCEPTION WHEN OTHERS THEN
               GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
               RETURN SQLSTATE || '|' || m || '|' || coalesce(d, '') || '|' || coalesce(h, '');
             END $f$",
        )
        .unwrap();
    }

    fn one<T: IntoDatum + FromDatum>(sql: &str) -> Option<T> {
        Spi::get_one::<T>(sql).unwrap()
    }

    fn text(sql: &str) -> Option<String> {
        one::<String>(sql)
    }

    /// Runs `sql` and returns `SQLSTATE|message|detail|hint`, or `OK`.
    fn err(sql: &str) -> String {
        ensure_keys();
        let q = sql.replace('\'', "''");
        text(&format!("SELECT pg_temp.err('{q}')")).unwrap()
    }

    /// Asserts an error's SQLSTATE, that it has a hint, and that it leaks none of `secrets`.
    fn assert_err(sql: &str, sqlstate: &str, secrets: &[&str]) -> String {
        let e = assert_pg_err(sql, sqlstate, secrets);
        let hint = e.rsplit('|').next().unwrap();
        assert!(!hint.is_empty(), "no hint in {e}");
        e
    }

    /// Like [`assert_err`] for errors PostgreSQL itself raises (which carry no hint).
    fn assert_pg_err(sql: &str, sqlstate: &str, secrets: &[&str]) -> String {
        let e = err(sql);
        assert!(e.starts_with(&format!("{sqlstate}|")), "expected {sqlstate} from {sql}, got {e}");
        for s in secrets {
            assert!(!e.contains(s), "error leaks {s:?}: {e}");
        }
        e
    }

    fn enc(plaintext_sql: &str, rest: &str) -> String {
        ensure_keys();
        text(&format!("SELECT credcrypt.encrypt_credential({plaintext_sql}{rest})")).unwrap()
    }

    #[pg_test]
    fn round_trips_text_bytea_empty_unicode() {
        let ct = enc("'sk-live-abc123'", "");
        assert!(ct.starts_with("cc1:local:local:"));
        assert_eq!(text(&format!("SELECT credcrypt.decrypt_credential('{ct}')")).unwrap(), "sk-live-abc123");
        let ct = enc("''", "");
        assert_eq!(text(&format!("SELECT credcrypt.decrypt_credential('{ct}')")).unwrap(), "");
        let ct = enc("'pässwörd 🔑 ключ'", "");
        assert_eq!(text(&format!("SELECT credcrypt.decrypt_credential('{ct}')")).unwrap(), "pässwörd 🔑 ключ");
        let ct = enc("'\\x00ff10'::bytea", "");
        assert_eq!(
            one::<Vec<u8>>(&format!("SELECT credcrypt.decrypt_credential_bytea('{ct}')")).unwrap(),
            vec![0, 255, 16]
        );
        // Text encrypted, read back as bytea.
        let ct = enc("'abc'", "");
        assert_eq!(
            one::<Vec<u8>>(&format!("SELECT credcrypt.decrypt_credential_bytea('{ct}')")).unwrap(),
            b"abc".to_vec()
        );
        // Two encryptions differ.
        assert_ne!(enc("'same'", ""), enc("'same'", ""));
    }

    #[pg_test]
    fn null_in_null_out() {
        ensure_keys();
        assert_eq!(text("SELECT credcrypt.encrypt_credential(NULL::text)"), None);
        assert_eq!(text("SELECT credcrypt.encrypt_credential(NULL::bytea)"), None);
        assert_eq!(text("SELECT credcrypt.decrypt_credential(NULL)"), None);
        assert_eq!(one::<Vec<u8>>("SELECT credcrypt.decrypt_credential_bytea(NULL)"), None);
        assert_eq!(one::<bool>("SELECT credcrypt.verify_credential(NULL, 'x')"), None);
        assert_eq!(one::<bool>("SELECT credcrypt.is_encrypted(NULL)"), None);
        assert_eq!(text("SELECT credcrypt.mask(NULL)"), None);
        assert_eq!(one::<i64>("SELECT count(*) FROM credcrypt.ciphertext_info(NULL)"), Some(0));
    }

    #[pg_test]
    fn one_mebibyte_works_and_oversize_is_refused() {
        let ct = enc("repeat('x', 1048576)", "");
        assert_eq!(one::<i32>(&format!("SELECT length(credcrypt.decrypt_credential('{ct}'))")), Some(1_048_576));
        let e = assert_err("SELECT credcrypt.encrypt_credential(repeat('x', 16777217))", "54000", &[]);
        assert!(e.contains("16777216"), "{e}");
        assert_err("SELECT credcrypt.encrypt_credential('x', NULL, repeat('c', 65537))", "54000", &[]);
    }

    #[pg_test]
    fn context_is_bound() {
        let ct = enc("'SECRETMARKER-1'", ", context => 'user:42'");
        assert_eq!(text(&format!("SELECT credcrypt.decrypt_credential('{ct}', 'user:42')")).unwrap(), "SECRETMARKER-1");
        let secrets = ["SECRETMARKER", ct.as_str(), &ct[40..]];
        assert_err(&format!("SELECT credcrypt.decrypt_credential('{ct}', 'user:43')"), "39000", &secrets);
        let e = assert_err(&format!("SELECT credcrypt.decrypt_credential('{ct}')"), "39000", &secrets);
        assert!(e.contains("bound to a context"), "{e}");
        let plain = enc("'SECRETMARKER-2'", "");
        assert_err(&format!("SELECT credcrypt.decrypt_credential('{plain}', 'user:42')"), "39000", &["SECRETMARKER"]);
        // '' is the same as no context.
        assert_eq!(text(&format!("SELECT credcrypt.decrypt_credential('{plain}', '')")).unwrap(), "SECRETMARKER-2");
    }

    #[pg_test]
    fn tampering_is_refused() {
        let ct = enc("'SECRETMARKER-3'", "");
        let last = ct.chars().last().unwrap();
        let flipped = format!("{}{}", &ct[..ct.len() - 1], if last == 'A' { 'B' } else { 'A' });
        let mid = ct.len() - 10;
        let swapped = format!("{}{}{}", &ct[..mid], if &ct[mid..mid + 1] == "x" { "y" } else { "x" }, &ct[mid + 1..]);
        for bad in [flipped, swapped] {
            let e = err(&format!("SELECT credcrypt.decrypt_credential('{bad}')"));
            assert!(e.starts_with("39000|") || e.starts_with("22P02|"), "{e}");
            assert!(!e.contains("SECRETMARKER") && !e.contains(&ct[40..]), "{e}");
        }
        // The header is authenticated too: switching the context flag fails.
        let flag = ct.replacen(":n:", ":c:", 1);
        assert_err(&format!("SELECT credcrypt.decrypt_credential('{flag}', 'x')"), "39000", &["SECRETMARKER"]);
        assert_eq!(one::<bool>(&format!("SELECT credcrypt.verify_credential('{ct}', 'SECRETMARKER-3')")), Some(true));
    }

    #[pg_test]
    fn malformed_and_unsupported_inputs() {
        ensure_keys();
        for bad in [
            "",
            "sk-live-SECRETMARKER",
            "cc1:",
            "cc1:local:local:zz:n:AAAA",
            "cc1:local:local:f17d75248b1bb562:x:AAAA",
            "cc1:local:local:f17d75248b1bb562:n:!!!!",
        ] {
            assert_err(&format!("SELECT credcrypt.decrypt_credential('{bad}')"), "22P02", &["SECRETMARKER"]);
            assert_eq!(one::<bool>(&format!("SELECT credcrypt.is_encrypted('{bad}')")), Some(false));
        }
        assert_err("SELECT credcrypt.decrypt_credential('cc2:local:local:f17d75248b1bb562:n:AAAA')", "0A000", &[]);
        assert_err("SELECT credcrypt.decrypt_credential('cc1:transit:app:1:n:vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA')", "55000", &[]);
        // The pg_test cluster does not preload the library: Transit explains how to fix that.
        let e = assert_err("SELECT credcrypt.encrypt_credential('x', 'transit:app')", "55000", &[]);
        assert!(e.contains("shared_preload_libraries"), "{e}");
        // A plaintext passed where the key reference goes is not echoed.
        assert_err("SELECT credcrypt.encrypt_credential('x', 'sk-live-SECRETMARKER')", "22023", &["SECRETMARKER"]);
        assert_err("SELECT credcrypt.ciphertext_info('sk-live-SECRETMARKER')", "22P02", &["SECRETMARKER"]);
        // Bytes that are not text.
        let ct = enc("'\\xff00'::bytea", "");
        assert_err(&format!("SELECT credcrypt.decrypt_credential('{ct}')"), "22021", &[]);
        let ct = enc("'\\x410042'::bytea", "");
        assert_err(&format!("SELECT credcrypt.decrypt_credential('{ct}')"), "22021", &[]);
    }

    #[pg_test]
    fn default_key_setting() {
        ensure_keys();
        Spi::run("SET LOCAL credcrypt.default_key = 'transit:nope'").unwrap();
        assert_err("SELECT credcrypt.encrypt_credential('x')", "55000", &[]);
        assert!(enc("'x'", ", 'local'").starts_with("cc1:local:"));
        Spi::run("SET LOCAL credcrypt.default_key = 'garbage SECRETMARKER'").unwrap();
        assert_err("SELECT credcrypt.encrypt_credential('x')", "22023", &["SECRETMARKER"]);
    }

    #[pg_test]
    fn previous_key_decrypts_published_vector() {
        ensure_keys();
        assert_eq!(
            text(&format!("SELECT credcrypt.decrypt_credential('{VECTOR}', 'user:42')")).unwrap(),
            "sk-live-4f9a0c2e7b1d"
        );
        // New values use the current key, not the previous one.
        let ct = enc("'v'", "");
        let current = LocalKey::new(&std::array::from_fn(|i| 0x40 + i as u8)).id().to_hex();
        assert_eq!(text(&format!("SELECT key_id FROM credcrypt.ciphertext_info('{ct}')")).unwrap(), current);
        // A key that is neither current nor previous.
        let other = LocalKey::new(&[7u8; 32]).encrypt(b"SECRETMARKER", None).unwrap();
        let e = assert_err(&format!("SELECT credcrypt.decrypt_credential('{other}')"), "42704", &["SECRETMARKER"]);
        assert!(e.contains(&LocalKey::new(&[7u8; 32]).id().to_hex()), "{e}");
    }

    #[pg_test]
    fn verify_is_exact() {
        let ct = enc("'client-secret-xyz'", ", context => 'client:9'");
        let v = |cand: &str, ctx: &str| {
            one::<bool>(&format!("SELECT credcrypt.verify_credential('{ct}', '{cand}', '{ctx}')"))
        };
        assert_eq!(v("client-secret-xyz", "client:9"), Some(true));
        assert_eq!(v("client-secret-xyZ", "client:9"), Some(false));
        assert_eq!(v("client-secret-xy", "client:9"), Some(false));
        assert_eq!(v("", "client:9"), Some(false));
        assert_err(
            &format!("SELECT credcrypt.verify_credential('{ct}', 'client-secret-xyz', 'client:8')"),
            "39000",
            &["client-secret"],
        );
    }

    #[pg_test]
    fn info_and_is_encrypted() {
        let ct = enc("'v'", ", context => 'c'");
        assert_eq!(one::<bool>(&format!("SELECT credcrypt.is_encrypted('{ct}')")), Some(true));
        let row = text(&format!(
            "SELECT format('%s/%s/%s/%s/%s/%s', format_version, provider, key_name, key_version, has_context, key_id) FROM credcrypt.ciphertext_info('{ct}')"
        ))
        .unwrap();
        let current = LocalKey::new(&std::array::from_fn(|i| 0x40 + i as u8)).id().to_hex();
        assert_eq!(row, format!("1/local/local//t/{current}"));
        let t = "cc1:transit:app-key:3:n:vault:v3:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert_eq!(one::<bool>(&format!("SELECT credcrypt.is_encrypted('{t}')")), Some(true));
        assert_eq!(
            text(&format!("SELECT format('%s/%s/%s/%s', provider, key_name, key_version, has_context) FROM credcrypt.ciphertext_info('{t}')")).unwrap(),
            "transit/app-key/3/f"
        );
    }

    #[pg_test]
    fn mask_examples() {
        assert_eq!(text("SELECT credcrypt.mask('sk-live-0123456789abcdefa1b2', 3, 4)").unwrap(), "sk-…a1b2");
        assert_eq!(text("SELECT credcrypt.mask('ghp_0123456789abcdef')").unwrap(), "…cdef");
        assert_eq!(text("SELECT credcrypt.mask('short')").unwrap(), "…");
        assert_eq!(text("SELECT credcrypt.mask('')").unwrap(), "…");
        assert_eq!(text("SELECT credcrypt.mask('12345678', visible_suffix => 4)").unwrap(), "…5678");
        assert_err("SELECT credcrypt.mask('abc', -1, 2)", "22023", &[]);
    }

    #[pg_test]
    fn grants_follow_roles() {
        ensure_keys();
        let ct = enc("'SECRETMARKER-g'", "");
        Spi::run("CREATE ROLE cc_test_app NOLOGIN NOSUPERUSER NOBYPASSRLS").unwrap();
        Spi::run("SET LOCAL ROLE cc_test_app").unwrap();
        assert_eq!(one::<bool>("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"), Some(false));
        assert_pg_err("SELECT credcrypt.encrypt_credential('x')", "42501", &[]);
        assert_pg_err(&format!("SELECT credcrypt.decrypt_credential('{ct}')"), "42501", &["SECRETMARKER"]);
        assert_pg_err(&format!("SELECT credcrypt.decrypt_credential_bytea('{ct}')"), "42501", &[]);
        assert_pg_err(&format!("SELECT credcrypt.verify_credential('{ct}', 'x')"), "42501", &[]);
        // Key-free helpers stay public.
        assert_eq!(one::<bool>(&format!("SELECT credcrypt.is_encrypted('{ct}')")), Some(true));
        assert_eq!(text("SELECT credcrypt.mask('abcdefghij')").unwrap(), "…ghij");
        // Secret settings are invisible to it.
        assert_pg_err("SELECT current_setting('credcrypt.local_key_file')", "42501", &["/tmp"]);
        Spi::run("RESET ROLE").unwrap();
        Spi::run("GRANT credcrypt_encryptor TO cc_test_app").unwrap();
        Spi::run("SET LOCAL ROLE cc_test_app").unwrap();
        assert!(text("SELECT credcrypt.encrypt_credential('x')").unwrap().starts_with("cc1:"));
        assert_pg_err(&format!("SELECT credcrypt.decrypt_credential('{ct}')"), "42501", &[]);
        Spi::run("RESET ROLE").unwrap();
        Spi::run("GRANT credcrypt_decryptor TO cc_test_app").unwrap();
        Spi::run("SET LOCAL ROLE cc_test_app").unwrap();
        assert_eq!(text(&format!("SELECT credcrypt.decrypt_credential('{ct}')")).unwrap(), "SECRETMARKER-g");
        Spi::run("RESET ROLE").unwrap();
        // credcrypt_admin holds both.
        assert_eq!(one::<bool>("SELECT pg_has_role('credcrypt_admin', 'credcrypt_decryptor', 'MEMBER') AND pg_has_role('credcrypt_admin', 'credcrypt_encryptor', 'MEMBER')"), Some(true));
    }

    #[pg_test]
    fn secret_settings_are_hidden_and_prefix_reserved() {
        ensure_keys();
        assert_eq!(one::<i64>("SELECT count(*) FROM pg_settings WHERE name LIKE 'credcrypt.local%'"), Some(0));
        assert_eq!(one::<i64>("SELECT count(*) FROM pg_settings WHERE name = 'credcrypt.default_key'"), Some(1));
        assert_eq!(text("SELECT current_setting('credcrypt.default_key')").unwrap(), "local");
        // The secret settings cannot be changed in a session.
        assert_pg_err(
            "SET credcrypt.local_key = 'QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8='",
            "55P02",
            &["QEFCQ0RF"],
        );
        assert_pg_err("SET credcrypt.local_key_file = '/tmp/x'", "55P02", &[]);
        // Reserved prefix: unknown credcrypt.* names are refused.
        let e = err("SET credcrypt.no_such_setting = 'on'");
        assert!(!e.starts_with("OK"), "{e}");
    }
}
