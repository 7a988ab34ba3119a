//! Every `credcrypt.*` setting, in one place. The statics are private: the rest of the
//! extension reads settings only through the typed accessors at the end of this file, which
//! trim, clamp and normalise once (a value below a minimum cannot reach a caller).
//!
//! Secret-bearing settings (`local_key`, `local_key_file`, `local_previous_key_files`) are
//! `SIGHUP` context, `SUPERUSER_ONLY`, `NO_SHOW_ALL` and `DISALLOW_IN_AUTO_FILE`: they are set
//! in `postgresql.conf` (or an included file) only, never by `ALTER SYSTEM`, never per session.

use std::ffi::{CStr, CString};

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;

/// Flags shared by every setting that carries or points at key material.
fn secret_flags() -> GucFlags {
    GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL | GucFlags::DISALLOW_IN_AUTO_FILE | GucFlags::NO_RESET_ALL
}

/// `credcrypt.default_key`: the key reference used when a function is given no key.
static DEFAULT_KEY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"local"));

/// `credcrypt.local_key_file`: absolute path of a file holding the base64 32-byte local key.
static LOCAL_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `credcrypt.local_key`: the base64 32-byte local key itself (prefer `local_key_file`).
static LOCAL_KEY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `credcrypt.local_previous_key_files`: comma-separated key files used for decryption only.
static LOCAL_PREVIOUS_KEY_FILES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `credcrypt.legacy_key_file`: file holding the AES-256 key an application used before
/// pg_credcrypt (Node.js `iv:authTag:ciphertext` values), for `reencrypt_column` only.
static LEGACY_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `credcrypt.bao_addr`: OpenBao address, or a comma-separated list tried in order (failover).
static BAO_ADDR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `credcrypt.bao_token_file`: file holding the worker's OpenBao token.
static BAO_TOKEN_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `credcrypt.bao_role_id`: AppRole role id (with `bao_secret_id_file`).
static BAO_ROLE_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `credcrypt.bao_secret_id_file`: file holding the AppRole secret id.
static BAO_SECRET_ID_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `credcrypt.bao_approle_mount`: AppRole auth mount path.
static BAO_APPROLE_MOUNT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"approle"));

/// `credcrypt.bao_namespace`: OpenBao namespace (X-Vault-Namespace), if any.
static BAO_NAMESPACE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `credcrypt.bao_ca_file`: PEM CA bundle for https OpenBao addresses.
static BAO_CA_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `credcrypt.transit_mount`: the Transit secrets engine's mount path.
static TRANSIT_MOUNT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"transit"));

/// `credcrypt.bao_connect_timeout_ms`: TCP/TLS connect timeout of the worker's HTTP client.
static BAO_CONNECT_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(2000);

/// `credcrypt.bao_request_timeout_ms`: overall timeout of one HTTP call, failover included.
static BAO_REQUEST_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(5000);

/// `credcrypt.request_timeout_ms`: how long a backend waits for the worker's answer.
static REQUEST_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(10000);

/// `credcrypt.reencrypt_progress_interval`: seconds between the progress NOTICEs of
/// `reencrypt_column` (0: every batch, -1: none; the progress view is always current).
static REENCRYPT_PROGRESS_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(10);

/// `credcrypt.queue_slots`: number of shared-memory request slots (128 KiB each).
static QUEUE_SLOTS: GucSetting<i32> = GucSetting::<i32>::new(64);

/// What to do when OpenBao is unreachable during encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, pgrx::PostgresGucEnum)]
pub enum Fallback {
    /// Fail closed: the statement errors and nothing is written.
    #[name = c"off"]
    Off,
    /// Encrypt with the local key, with a WARNING for every such value.
    #[name = c"local"]
    Local,
}

/// `credcrypt.fallback`: `off` (default, fail closed) or `local`.
static FALLBACK: GucSetting<Fallback> = GucSetting::<Fallback>::new(Fallback::Off);

/// `credcrypt.envelope_max_uses`: values one envelope data key encrypts before a new one.
static ENVELOPE_MAX_USES: GucSetting<i32> = GucSetting::<i32>::new(1_000_000);

/// `credcrypt.envelope_max_age`: seconds a data key is used for encryption before a new one.
static ENVELOPE_MAX_AGE: GucSetting<i32> = GucSetting::<i32>::new(3600);

/// `credcrypt.envelope_cache_ttl`: seconds an unwrapped data key stays in a backend's cache.
static ENVELOPE_CACHE_TTL: GucSetting<i32> = GucSetting::<i32>::new(300);

/// `credcrypt.transit_bulk_threshold`: after this many values one statement writes into columns
/// protected with a Transit key, the rest are encrypted with envelope data keys of that Transit
/// key (0: never).
static TRANSIT_BULK_THRESHOLD: GucSetting<i32> = GucSetting::<i32>::new(0);

/// `credcrypt.auto_create_keys`: a per-row key (`envelope:tenant-{org_id}`) that does not exist
/// in OpenBao yet is created on its first use instead of failing with 42704.
static AUTO_CREATE_KEYS: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `credcrypt.kv_path_prefix`: the KV path every `kv:` secret of this server is written under
/// (then the database's name): what an OpenBao policy grants.
static KV_PATH_PREFIX: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"pg_credcrypt"));

/// `credcrypt.envelope_cache_size`: unwrapped data keys a backend keeps at most (and Transit keys
/// it keeps a current data key for): above the number of tenants a backend serves.
static ENVELOPE_CACHE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(4096);

/// Where decryptions are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, pgrx::PostgresGucEnum)]
pub enum AuditDecrypt {
    /// Not recorded.
    #[name = c"off"]
    Off,
    /// One LOG line per statement and decrypting role.
    #[name = c"log"]
    Log,
    /// One row per statement in `credcrypt.decrypt_audit` (the log on a standby, in a
    /// read-only transaction or parallel worker, and for rows lost to a rollback).
    #[name = c"table"]
    Table,
}

/// `credcrypt.audit_decrypt`: `off` (default), `log` or `table`. Superuser only.
static AUDIT_DECRYPT: GucSetting<AuditDecrypt> = GucSetting::<AuditDecrypt>::new(AuditDecrypt::Off);

/// What `SHOW`, `current_setting()` and `pg_settings` report for `credcrypt.local_key`: never
/// the key — also not to members of `pg_read_all_settings`, whom `SUPERUSER_ONLY` does not stop.
unsafe extern "C-unwind" fn show_hidden_key() -> *const std::ffi::c_char {
    if raw(&LOCAL_KEY).is_empty() {
        c"".as_ptr()
    } else {
        c"(hidden by pg_credcrypt)".as_ptr()
    }
}

/// Registers every setting and reserves the `credcrypt.` prefix.
pub fn init() {
    GucRegistry::define_string_guc(
        c"credcrypt.default_key",
        c"Key reference used when a function is called without one ('local', 'transit:<name>', 'envelope:<name>' or 'kv:<mount>').",
        c"Any role may change it for its session.",
        &DEFAULT_KEY,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"credcrypt.local_key_file",
        c"Absolute path of a file holding the local AES-256 key in base64 (mode 0600).",
        c"Recommended over credcrypt.local_key. Set in postgresql.conf; superuser only; hidden from SHOW ALL.",
        &LOCAL_KEY_FILE,
        GucContext::Sighup,
        secret_flags(),
    );
    GucRegistry::define_string_guc(
        c"credcrypt.legacy_key_file",
        c"File holding the AES-256 key of values an application encrypted itself (64 hex digits or base64; mode 0600).",
        c"Read by credcrypt.reencrypt_column to import Node.js iv:authTag:ciphertext values. Superuser only; hidden.",
        &LEGACY_KEY_FILE,
        GucContext::Sighup,
        secret_flags(),
    );
    // SAFETY: the show hook is a plain function returning static strings.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"credcrypt.local_key",
            c"The local AES-256 key itself, in base64. Prefer credcrypt.local_key_file.",
            c"Set in postgresql.conf; superuser only; hidden from SHOW ALL; refused by ALTER SYSTEM; never shown.",
            &LOCAL_KEY,
            GucContext::Sighup,
            secret_flags(),
            None,
            None,
            Some(show_hidden_key),
        );
    }
    GucRegistry::define_string_guc(
        c"credcrypt.local_previous_key_files",
        c"Comma-separated key files of earlier local keys, used for decryption only.",
        c"Lets values encrypted before a key rotation be read and re-encrypted.",
        &LOCAL_PREVIOUS_KEY_FILES,
        GucContext::Sighup,
        secret_flags(),
    );
    define_bao_settings();
    GucRegistry::define_int_guc(
        c"credcrypt.request_timeout_ms",
        c"How long a backend waits for the worker's answer before the statement fails (ms).",
        c"statement_timeout and query cancellation also end the wait.",
        &REQUEST_TIMEOUT_MS,
        1,
        3_600_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"credcrypt.reencrypt_progress_interval",
        c"Seconds between the progress NOTICEs of credcrypt.reencrypt_column (0: every batch, -1: none).",
        c"credcrypt.reencrypt_progress always shows the current progress.",
        &REENCRYPT_PROGRESS_INTERVAL,
        -1,
        86_400,
        GucContext::Userset,
        GucFlags::UNIT_S,
    );
    // A PGC_POSTMASTER setting may only be defined while preloading (PostgreSQL raises FATAL
    // otherwise); it only matters then anyway, when the queue is sized.
    // SAFETY: read-only flag set by PostgreSQL.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        GucRegistry::define_int_guc(
            c"credcrypt.queue_slots",
            c"Number of shared-memory request slots between backends and the worker (128 KiB each).",
            c"Takes effect at server start.",
            &QUEUE_SLOTS,
            4,
            1024,
            GucContext::Postmaster,
            GucFlags::default(),
        );
    }
    GucRegistry::define_enum_guc(
        c"credcrypt.fallback",
        c"When OpenBao is unreachable: off (fail closed) or local (encrypt with the local key, with a WARNING).",
        c"Decryption of Transit values never falls back.",
        &FALLBACK,
        GucContext::Suset,
        GucFlags::default(),
    );
    /// (name, description, setting, min, max, flags) of an integer setting.
    type IntGuc = (&'static CStr, &'static CStr, &'static GucSetting<i32>, i32, i32, GucFlags);
    let envelope: [IntGuc; 4] = [
        (
            c"credcrypt.envelope_max_uses",
            c"Values an envelope data key encrypts before the backend asks Transit for a new one.",
            &ENVELOPE_MAX_USES,
            1,
            i32::MAX,
            GucFlags::default(),
        ),
        (
            c"credcrypt.envelope_max_age",
            c"How long an envelope data key is used for encryption before a new one.",
            &ENVELOPE_MAX_AGE,
            1,
            i32::MAX,
            GucFlags::UNIT_S,
        ),
        (
            c"credcrypt.envelope_cache_ttl",
            c"How long a backend keeps an unwrapped data key (bounds exposure after a Transit key is revoked).",
            &ENVELOPE_CACHE_TTL,
            1,
            i32::MAX,
            GucFlags::UNIT_S,
        ),
        (
            c"credcrypt.envelope_cache_size",
            c"Unwrapped data keys a backend keeps at most.",
            &ENVELOPE_CACHE_SIZE,
            1,
            1_000_000,
            GucFlags::default(),
        ),
    ];
    for (name, short, setting, min, max, flags) in envelope {
        GucRegistry::define_int_guc(
            name,
            short,
            c"Set in postgresql.conf; superuser only.",
            setting,
            min,
            max,
            GucContext::Sighup,
            flags,
        );
    }
    GucRegistry::define_int_guc(
        c"credcrypt.transit_bulk_threshold",
        c"After this many values one statement writes into Transit-protected columns, encrypt the rest with envelope data keys of the same Transit key (0: never).",
        c"Bulk loads (COPY, INSERT ... SELECT) then need one Transit call per data key instead of one per row. Superuser only: it changes how a column's values are encrypted.",
        &TRANSIT_BULK_THRESHOLD,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"credcrypt.kv_path_prefix",
        c"KV path under which the kv:<mount> provider writes and reads secrets (then the database's name).",
        c"One or more segments of [A-Za-z0-9_.=,~-] separated by '/'. Grant the worker's OpenBao token exactly the three paths of docs/openbao.md (data, metadata and destroy under the prefix). In postgresql.conf (the worker and every backend must agree).",
        &KV_PATH_PREFIX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"credcrypt.auto_create_keys",
        c"Create a per-row Transit key (key_name 'envelope:tenant-{col}' or 'transit:tenant-{col}') in OpenBao on its first use.",
        c"Off: a missing per-row key is an error (42704). On: the worker creates it (the OpenBao policy must allow create on transit/keys/<prefix>*). Applies only to per-row keys of protected columns. Superuser only.",
        &AUTO_CREATE_KEYS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"credcrypt.audit_decrypt",
        c"Record who decrypted how many values of which column: off, log or table (credcrypt.decrypt_audit).",
        c"Never records a value. Superuser only, so a session cannot switch its own auditing off.",
        &AUDIT_DECRYPT,
        GucContext::Suset,
        GucFlags::default(),
    );
    reserve_prefix(c"credcrypt");
}

/// The `credcrypt.bao_*` and `credcrypt.transit_mount` settings: SIGHUP, superuser only.
/// A user must never be able to point the worker (and its token) at another host.
fn define_bao_settings() {
    let strings: [(&'static CStr, &'static CStr, &'static GucSetting<Option<CString>>, bool); 8] = [
        (c"credcrypt.bao_addr", c"OpenBao address(es), comma-separated, tried in order.", &BAO_ADDR, false),
        (c"credcrypt.bao_token_file", c"File holding the worker's OpenBao token (mode 0600).", &BAO_TOKEN_FILE, true),
        (c"credcrypt.bao_role_id", c"AppRole role id used by the worker to log in.", &BAO_ROLE_ID, true),
        (
            c"credcrypt.bao_secret_id_file",
            c"File holding the AppRole secret id (mode 0600).",
            &BAO_SECRET_ID_FILE,
            true,
        ),
        (c"credcrypt.bao_approle_mount", c"Mount path of the AppRole auth method.", &BAO_APPROLE_MOUNT, false),
        (c"credcrypt.bao_namespace", c"OpenBao namespace (X-Vault-Namespace), if any.", &BAO_NAMESPACE, false),
        (c"credcrypt.bao_ca_file", c"PEM CA bundle used to verify https OpenBao addresses.", &BAO_CA_FILE, false),
        (c"credcrypt.transit_mount", c"Mount path of the Transit secrets engine.", &TRANSIT_MOUNT, false),
    ];
    for (name, short, setting, secret) in strings {
        let flags = if secret { secret_flags() } else { GucFlags::SUPERUSER_ONLY | GucFlags::DISALLOW_IN_AUTO_FILE };
        GucRegistry::define_string_guc(
            name,
            short,
            c"Read by the pg_credcrypt background worker; set in postgresql.conf and reload.",
            setting,
            GucContext::Sighup,
            flags,
        );
    }
    for (name, short, setting, default_max) in [
        (
            c"credcrypt.bao_connect_timeout_ms",
            c"Connect timeout of the worker's HTTP client (ms).",
            &BAO_CONNECT_TIMEOUT_MS,
            600_000,
        ),
        (
            c"credcrypt.bao_request_timeout_ms",
            c"Timeout of one OpenBao call including failover (ms).",
            &BAO_REQUEST_TIMEOUT_MS,
            600_000,
        ),
    ] {
        GucRegistry::define_int_guc(
            name,
            short,
            c"Read by the pg_credcrypt background worker.",
            setting,
            1,
            default_max,
            GucContext::Sighup,
            GucFlags::SUPERUSER_ONLY | GucFlags::UNIT_MS,
        );
    }
}

/// Reserves the `credcrypt.` prefix (PostgreSQL 15 and later; older releases are not
/// supported, the queue needs `shmem_request_hook`).
fn reserve_prefix(prefix: &CStr) {
    // SAFETY: called from _PG_init on the main thread with a NUL-terminated static string.
    unsafe { pg_sys::MarkGUCPrefixReserved(prefix.as_ptr()) }
}

/// Reads a string setting's current value without copying it. The slice is valid until the
/// next configuration reload; callers copy what they keep.
fn raw(setting: &'static GucSetting<Option<CString>>) -> &'static [u8] {
    // SAFETY: the GUC machinery owns the pointer and keeps it valid until the value changes,
    // which only happens between statements (reload) on this, the main thread.
    unsafe {
        let p = *setting.as_ptr();
        if p.is_null() {
            &[]
        } else {
            CStr::from_ptr(p).to_bytes()
        }
    }
}

/// A string setting's value, trimmed (paths, addresses and names).
fn text(setting: &'static GucSetting<Option<CString>>) -> String {
    String::from_utf8_lossy(raw(setting)).trim().to_owned()
}

/// A positive integer setting (the registered minimum is 1; clamped again so that no caller
/// can divide by zero or spin on a non-positive value).
fn positive(setting: &'static GucSetting<i32>) -> u64 {
    u64::try_from(setting.get()).unwrap_or(1).max(1)
}

/// The default key reference (`credcrypt.default_key`).
pub fn default_key() -> String {
    String::from_utf8_lossy(raw(&DEFAULT_KEY)).into_owned()
}

/// `credcrypt.fallback`.
pub fn fallback() -> Fallback {
    FALLBACK.get()
}

/// `credcrypt.audit_decrypt`.
pub fn audit_decrypt() -> AuditDecrypt {
    AUDIT_DECRYPT.get()
}

/// `credcrypt.queue_slots` (read once, at preload).
pub fn queue_slots() -> usize {
    usize::try_from(positive(&QUEUE_SLOTS)).unwrap_or(1)
}

/// `credcrypt.request_timeout_ms`: how long a backend waits for the worker.
pub fn request_timeout() -> std::time::Duration {
    std::time::Duration::from_millis(positive(&REQUEST_TIMEOUT_MS))
}

/// `credcrypt.kv_path_prefix`.
pub fn kv_path_prefix() -> String {
    String::from_utf8_lossy(raw(&KV_PATH_PREFIX)).into_owned()
}

/// `credcrypt.auto_create_keys`.
pub fn auto_create_keys() -> bool {
    AUTO_CREATE_KEYS.get()
}

/// `credcrypt.transit_bulk_threshold`: the number of values a statement writes into
/// Transit-protected columns before the rest go to envelope data keys; `None` when off.
pub fn transit_bulk_threshold() -> Option<u64> {
    u64::try_from(TRANSIT_BULK_THRESHOLD.get()).ok().filter(|&n| n > 0)
}

/// `credcrypt.envelope_max_uses`: values one data key encrypts before a new one is made.
pub fn envelope_max_uses() -> u64 {
    positive(&ENVELOPE_MAX_USES)
}

/// `credcrypt.envelope_max_age`: how long one data key encrypts new values.
pub fn envelope_max_age() -> std::time::Duration {
    std::time::Duration::from_secs(positive(&ENVELOPE_MAX_AGE))
}

/// `credcrypt.envelope_cache_ttl`: how long an unwrapped data key stays cached.
pub fn envelope_cache_ttl() -> std::time::Duration {
    std::time::Duration::from_secs(positive(&ENVELOPE_CACHE_TTL))
}

/// `credcrypt.envelope_cache_size`: how many unwrapped data keys a backend caches.
pub fn envelope_cache_size() -> usize {
    usize::try_from(positive(&ENVELOPE_CACHE_SIZE)).unwrap_or(1)
}

/// The three local-key settings as the key ring compares them (raw bytes, valid until the
/// next reload: the key ring copies what it keeps).
pub struct LocalKeySettings {
    /// `credcrypt.local_key_file`.
    pub key_file: &'static [u8],
    /// `credcrypt.local_key` (secret).
    pub key_inline: &'static [u8],
    /// `credcrypt.local_previous_key_files`.
    pub previous: &'static [u8],
}

/// The local-key settings.
pub fn local_key_settings() -> LocalKeySettings {
    LocalKeySettings {
        key_file: raw(&LOCAL_KEY_FILE),
        key_inline: raw(&LOCAL_KEY),
        previous: raw(&LOCAL_PREVIOUS_KEY_FILES),
    }
}

/// Whether `credcrypt.local_key` (the inline key) is set.
pub fn inline_local_key_set() -> bool {
    !raw(&LOCAL_KEY).trim_ascii().is_empty()
}

/// `credcrypt.legacy_key_file`, trimmed.
pub fn legacy_key_file() -> String {
    text(&LEGACY_KEY_FILE)
}

/// The settings naming files with keys or credentials, by name, trimmed (empty when unset),
/// for the security report.
pub fn secret_files() -> [(&'static str, String); 5] {
    [
        ("credcrypt.local_key_file", text(&LOCAL_KEY_FILE)),
        ("credcrypt.local_previous_key_files", text(&LOCAL_PREVIOUS_KEY_FILES)),
        ("credcrypt.bao_token_file", text(&BAO_TOKEN_FILE)),
        ("credcrypt.bao_secret_id_file", text(&BAO_SECRET_ID_FILE)),
        ("credcrypt.legacy_key_file", text(&LEGACY_KEY_FILE)),
    ]
}

/// What the worker needs to reach OpenBao, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaoSettings {
    /// `credcrypt.bao_addr`: one address or several, comma-separated.
    pub addrs: String,
    /// `credcrypt.transit_mount`.
    pub mount: String,
    /// `credcrypt.bao_namespace`.
    pub namespace: String,
    /// `credcrypt.bao_ca_file`.
    pub ca_file: String,
    /// `credcrypt.bao_token_file`.
    pub token_file: String,
    /// `credcrypt.bao_role_id`.
    pub role_id: String,
    /// `credcrypt.bao_secret_id_file`.
    pub secret_id_file: String,
    /// `credcrypt.bao_approle_mount`.
    pub approle_mount: String,
    /// `credcrypt.bao_connect_timeout_ms`.
    pub connect: std::time::Duration,
    /// `credcrypt.bao_request_timeout_ms`.
    pub request: std::time::Duration,
}

/// The OpenBao settings.
pub fn bao_settings() -> BaoSettings {
    BaoSettings {
        addrs: text(&BAO_ADDR),
        mount: text(&TRANSIT_MOUNT),
        namespace: text(&BAO_NAMESPACE),
        ca_file: text(&BAO_CA_FILE),
        token_file: text(&BAO_TOKEN_FILE),
        role_id: text(&BAO_ROLE_ID),
        secret_id_file: text(&BAO_SECRET_ID_FILE),
        approle_mount: text(&BAO_APPROLE_MOUNT),
        connect: std::time::Duration::from_millis(positive(&BAO_CONNECT_TIMEOUT_MS)),
        request: std::time::Duration::from_millis(positive(&BAO_REQUEST_TIMEOUT_MS)),
    }
}
