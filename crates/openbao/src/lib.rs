//! OpenBao / HashiCorp Vault Transit client used by pg_credcrypt's background worker.
//!
//! Blocking, single-threaded, no PostgreSQL: the worker calls it with batches it has
//! coalesced from many backends.
//!
//! - **Failover.** `Config::addrs` is tried in order, starting with the last address that
//!   worked. Connection errors, 5xx (sealed nodes answer 503) and 429 (honouring `Retry-After`,
//!   capped) move to the next address, with a short back-off after each full round, all within
//!   `request_timeout`. `307` redirects (standby → active) are followed by hand, re-sending the
//!   body. `400`, `404` and a second `403` are never retried.
//! - **Auth.** A token file (re-read when the token is refused or cannot be renewed) or AppRole
//!   (`auth/<mount>/login`). Renewable tokens are renewed at about 2/3 of their TTL; others are
//!   replaced by logging in again / re-reading the file. A `403` triggers one re-authentication
//!   and one retry. Tokens and secret ids live in zeroizing buffers and never appear in errors
//!   or `Debug` output.
//! - **Batching.** Items are split so that a request stays under OpenBao's default
//!   `max_request_json_strings` (1000: every key and string value counts) and a body of 16 MiB.
//!   A partly failed batch (HTTP 400 with `data.batch_results`) fails only its bad items.
//! - **Sanitized errors.** Messages carry addresses, key names, HTTP statuses and fixed texts;
//!   never a token, secret id, plaintext, ciphertext, associated data or raw server body.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};
use zeroize::Zeroizing;

/// Client configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Base addresses, e.g. `http://127.0.0.1:8200`, tried in order.
    pub addrs: Vec<String>,
    /// Transit mount path (`transit`).
    pub mount: String,
    /// `X-Vault-Namespace`, if any.
    pub namespace: Option<String>,
    /// PEM CA bundle for `https` addresses.
    pub ca_file: Option<PathBuf>,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Budget for one call, failover and retries included.
    pub request_timeout: Duration,
    /// How to obtain a token.
    pub auth: Auth,
}

/// How the client obtains its token.
#[derive(Clone)]
pub enum Auth {
    /// A file holding the token.
    TokenFile(PathBuf),
    /// AppRole login.
    AppRole {
        /// Auth mount (`approle`).
        mount: String,
        /// Role id.
        role_id: String,
        /// File holding the secret id.
        secret_id_file: PathBuf,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::TokenFile(p) => f.debug_tuple("TokenFile").field(p).finish(),
            Auth::AppRole { mount, secret_id_file, .. } => f
                .debug_struct("AppRole")
                .field("mount", mount)
                .field("role_id", &"<hidden>")
                .field("secret_id_file", secret_id_file)
                .finish(),
        }
    }
}

/// One value of a batch.
pub struct Item {
    /// Plaintext (encrypt) or `vault:vN:…` (decrypt).
    pub data: Zeroizing<Vec<u8>>,
    /// Associated data, if any.
    pub associated_data: Option<Vec<u8>>,
}

/// What a whole call failed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No address answered usefully (connection errors, 5xx, 429, timeouts).
    Unavailable,
    /// The server is sealed.
    Sealed,
    /// 403 even after re-authenticating.
    PermissionDenied,
    /// Login failed (bad role id / secret id / unreadable token).
    AuthFailed,
    /// The Transit key does not exist.
    KeyNotFound,
    /// Configuration problem (no address, bad CA file, unreadable credential file).
    InvalidConfig,
    /// The server rejected the request (400 without per-item results).
    BadRequest,
    /// Unexpected response.
    Protocol,
    /// The request is too large.
    TooLarge,
}

/// A whole-call failure with a sanitized message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// Category.
    pub kind: ErrorKind,
    /// Sanitized message.
    pub message: String,
}

impl Error {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into() }
    }
}

/// Why one item failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemErrorKind {
    /// Tampered value or wrong associated data.
    AuthenticationFailed,
    /// Not a valid Transit ciphertext / input.
    InvalidInput,
    /// The key does not exist.
    KeyNotFound,
    /// The value's key version is below the key's `min_decryption_version`.
    VersionRetired,
    /// Anything else.
    Other,
}

/// A per-item failure with a fixed, sanitized message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ItemError {
    /// Category.
    pub kind: ItemErrorKind,
    /// Sanitized message.
    pub message: String,
}

/// One decrypted item: the plaintext (zeroized on drop) or why it failed.
pub type Decrypted = Result<Zeroizing<Vec<u8>>, ItemError>;

/// A Transit key's properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Key type, e.g. `aes256-gcm96`.
    pub key_type: String,
    /// Whether the key is derived (needs a `context`).
    pub derived: bool,
    /// Latest version.
    pub latest_version: u32,
    /// Oldest version that may decrypt.
    pub min_decryption_version: u32,
    /// Whether the key type can encrypt.
    pub supports_encryption: bool,
}

/// Client state for monitoring.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// Address in use.
    pub active_addr: String,
    /// Time left on the token, if it expires.
    pub token_ttl_left: Option<Duration>,
    /// Logins (AppRole) or token-file reads.
    pub logins: u64,
    /// Successful renewals.
    pub renewals: u64,
    /// Moves to another address.
    pub failovers: u64,
    /// HTTP requests sent.
    pub http_requests: u64,
}

struct Token {
    value: Zeroizing<String>,
    expires: Option<Instant>,
    refresh_at: Option<Instant>,
    renewable: bool,
}

/// The client.
pub struct Client {
    cfg: Config,
    agent: ureq::Agent,
    active: usize,
    token: Option<Token>,
    status: Status,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("cfg", &self.cfg).field("status", &self.status).finish_non_exhaustive()
    }
}

/// JSON strings one request may carry (OpenBao's default limit is 1000; keep a margin).
const MAX_JSON_STRINGS: usize = 900;
/// Body bytes one request may carry.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Pause before retrying a failed renewal.
const MAINTAIN_RETRY: Duration = Duration::from_secs(2);
/// Largest response body read: a batch answer for the largest request (16 MiB of base64
/// plaintext answers at most ~22 MiB of ciphertexts).
const MAX_RESPONSE: u64 = 24 * 1024 * 1024;
/// Largest answer parsed into a generic JSON value (key reads, token lookups: a few KiB).
const MAX_SMALL_ANSWER: usize = 1024 * 1024;

/// A response body: may hold plaintexts or a token, so it is wiped when dropped.
type Body = Zeroizing<String>;

enum Attempt {
    Answer(u16, Body),
    Retry(ErrorKind, String),
    /// A failure that retrying elsewhere would not change.
    Fail(ErrorKind, String),
}

/// A small answer (key read, token lookup) as a JSON value; large ones are refused rather than
/// parsed into an unbounded tree.
fn small_json(body: &str) -> Result<Value, Error> {
    if body.len() > MAX_SMALL_ANSWER {
        return Err(Error::new(ErrorKind::Protocol, "OpenBao's answer is unexpectedly large"));
    }
    if body.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(body).map_err(|_| Error::new(ErrorKind::Protocol, "OpenBao's answer is not JSON"))
}

/// A batch answer (`data.batch_results`), parsed into exactly the fields used; plaintexts go
/// straight into wiping strings.
#[derive(serde::Deserialize)]
struct BatchAnswer {
    data: Option<BatchData>,
    #[serde(default)]
    errors: Vec<String>,
}

#[derive(serde::Deserialize)]
struct BatchData {
    batch_results: Option<Vec<BatchItem>>,
}

/// One item of a batch answer.
#[derive(serde::Deserialize)]
struct BatchItem {
    ciphertext: Option<String>,
    plaintext: Option<Zeroizing<String>>,
    #[serde(default)]
    error: String,
}

#[derive(serde::Deserialize)]
struct DataKeyAnswer {
    data: Option<DataKeyData>,
}

#[derive(serde::Deserialize)]
struct DataKeyData {
    plaintext: Zeroizing<String>,
    ciphertext: String,
}

#[derive(serde::Deserialize)]
struct LoginAnswer {
    auth: Option<LoginAuth>,
}

#[derive(serde::Deserialize)]
struct LoginAuth {
    client_token: Zeroizing<String>,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

/// Writes a JSON string of base64 or Transit text (no character of which needs escaping).
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Reads a credential file (token, secret id). Like a key file, it must not be accessible to
/// other users: mode 0600 (0640 when owned by root), checked on the opened file.
fn read_file(path: &PathBuf, what: &str) -> Result<Zeroizing<String>, Error> {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt as _;
    let fail = |why: String| {
        Error::new(ErrorKind::InvalidConfig, format!("cannot use the {what} file {}: {why}", path.display()))
    };
    let mut file = std::fs::File::open(path).map_err(|e| fail(e.kind().to_string()))?;
    let meta = file.metadata().map_err(|e| fail(e.kind().to_string()))?;
    credcrypt_core::keyfile::check_mode(meta.uid(), meta.mode()).map_err(fail)?;
    let mut raw = Zeroizing::new(Vec::new());
    file.by_ref().take(64 * 1024).read_to_end(&mut raw).map_err(|e| fail(e.kind().to_string()))?;
    let s = std::str::from_utf8(&raw).map_err(|_| fail("not text".into()))?;
    let t = s.trim();
    if t.is_empty() {
        return Err(fail("empty".into()));
    }
    Ok(Zeroizing::new(t.to_owned()))
}

fn errors_text_of(body: &str) -> String {
    small_json(body).map(|v| errors_text(&v)).unwrap_or_default()
}

fn errors_text(v: &Value) -> String {
    v.get("errors")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "))
        .unwrap_or_default()
}

fn item_error(msg: &str) -> ItemError {
    let m = msg.to_ascii_lowercase();
    let (kind, message) = if m.contains("message authentication failed") {
        (ItemErrorKind::AuthenticationFailed, "ciphertext authentication failed (tampered value or wrong context)")
    } else if m.contains("key not found") {
        (ItemErrorKind::KeyNotFound, "the Transit key does not exist")
    } else if m.contains("disallowed by policy") || m.contains("too old") {
        (ItemErrorKind::VersionRetired, "the value's key version is below the key's min_decryption_version")
    } else if m.contains("invalid ciphertext") || m.contains("invalid") || m.contains("decode") {
        (ItemErrorKind::InvalidInput, "OpenBao rejected the value as not a valid Transit ciphertext")
    } else {
        (ItemErrorKind::Other, "OpenBao could not process the value")
    };
    ItemError { kind, message: message.to_owned() }
}

/// One `batch_input` object: the given fields, and the item's associated data if any.
fn entry(fields: &[(&str, &Zeroizing<String>)], it: &Item) -> Zeroizing<String> {
    let mut e = Zeroizing::new(String::with_capacity(fields.iter().map(|f| f.1.len() + 20).sum::<usize>() + 64));
    e.push('{');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            e.push(',');
        }
        push_json_str(&mut e, k);
        e.push(':');
        push_json_str(&mut e, v);
    }
    if let Some(a) = &it.associated_data {
        e.push_str(",\"associated_data\":");
        push_json_str(&mut e, &b64(a));
    }
    e.push('}');
    e
}

fn b64(v: &[u8]) -> String {
    STANDARD.encode(v)
}

impl Client {
    /// Builds a client (no network yet).
    pub fn new(cfg: Config) -> Result<Client, Error> {
        if cfg.addrs.is_empty() {
            return Err(Error::new(ErrorKind::InvalidConfig, "no OpenBao address configured"));
        }
        let mut builder = ureq::Agent::config_builder()
            .timeout_connect(Some(cfg.connect_timeout))
            .timeout_global(Some(cfg.request_timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .max_idle_connections_per_host(4);
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                Error::new(ErrorKind::InvalidConfig, format!("cannot read the CA file {}: {}", ca.display(), e.kind()))
            })?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c.to_owned()),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!("no certificate in the CA file {}", ca.display()),
                ));
            }
            builder = builder.tls_config(
                ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs))).build(),
            );
        }
        let agent = ureq::Agent::new_with_config(builder.build());
        let status = Status { active_addr: cfg.addrs[0].clone(), ..Status::default() };
        Ok(Client { cfg, agent, active: 0, token: None, status })
    }

    /// Monitoring snapshot.
    pub fn status(&self) -> Status {
        let mut s = self.status.clone();
        s.token_ttl_left =
            self.token.as_ref().and_then(|t| t.expires).map(|e| e.saturating_duration_since(Instant::now()));
        s
    }

    /// When [`Client::maintain`] has work to do (token renewal), if ever.
    pub fn next_maintenance(&self) -> Option<Instant> {
        self.token.as_ref().and_then(|t| t.refresh_at)
    }

    /// Renews or replaces the token when due.
    pub fn maintain(&mut self) -> Result<(), Error> {
        let Some(t) = &mut self.token else { return Ok(()) };
        if t.refresh_at.is_none_or(|at| Instant::now() < at) {
            return Ok(());
        }
        // Back off before trying: if OpenBao is down, the next attempt is in 2 s, not at once.
        t.refresh_at = Some(Instant::now() + MAINTAIN_RETRY);
        if t.renewable {
            let (status, body) =
                self.request("POST", "auth/token/renew-self", Some(Zeroizing::new("{}".into())), true, false)?;
            let body = small_json(&body)?;
            if status == 200 {
                let lease = body.pointer("/auth/lease_duration").and_then(Value::as_u64).unwrap_or(0);
                let renewable = body.pointer("/auth/renewable").and_then(Value::as_bool).unwrap_or(false);
                let old_left =
                    self.token.as_ref().and_then(|t| t.expires).map(|e| e.saturating_duration_since(Instant::now()));
                self.status.renewals += 1;
                // Renewal that no longer extends the token (max TTL reached): log in again instead.
                if lease > 0 && old_left.is_none_or(|l| Duration::from_secs(lease) > l + Duration::from_secs(1)) {
                    if let Some(t) = &mut self.token {
                        schedule(t, lease, renewable);
                    }
                    return Ok(());
                }
            }
        }
        self.token = None;
        self.authenticate()
    }

    fn authenticate(&mut self) -> Result<(), Error> {
        self.status.logins += 1;
        match self.cfg.auth.clone() {
            Auth::TokenFile(path) => {
                let value = read_file(&path, "token")?;
                self.token = Some(Token { value, expires: None, refresh_at: None, renewable: false });
                let (status, body) = self.request("GET", "auth/token/lookup-self", None, true, false)?;
                let body = small_json(&body)?;
                match status {
                    200 => {
                        let ttl = body.pointer("/data/ttl").and_then(Value::as_u64).unwrap_or(0);
                        let renewable = body.pointer("/data/renewable").and_then(Value::as_bool).unwrap_or(false);
                        if let Some(t) = &mut self.token {
                            schedule(t, ttl, renewable);
                        }
                        Ok(())
                    }
                    403 => {
                        self.token = None;
                        Err(Error::new(ErrorKind::PermissionDenied, "OpenBao refused the token in the token file"))
                    }
                    s => {
                        self.token = None;
                        Err(Error::new(ErrorKind::Protocol, format!("token lookup answered HTTP {s}")))
                    }
                }
            }
            Auth::AppRole { mount, role_id, secret_id_file } => {
                let secret = read_file(&secret_id_file, "secret id")?;
                let body = Zeroizing::new(json!({"role_id": role_id, "secret_id": secret.as_str()}).to_string());
                let (status, answer) = self.request_raw("POST", &format!("auth/{mount}/login"), Some(&body), false)?;
                if status != 200 {
                    return Err(Error::new(
                        ErrorKind::AuthFailed,
                        format!("AppRole login at auth/{mount} failed (HTTP {status})"),
                    ));
                }
                let auth = serde_json::from_str::<LoginAnswer>(&answer)
                    .ok()
                    .and_then(|a| a.auth)
                    .ok_or_else(|| Error::new(ErrorKind::Protocol, "AppRole login answered without a token"))?;
                let (lease, renewable) = (auth.lease_duration, auth.renewable);
                let mut t = Token { value: auth.client_token, expires: None, refresh_at: None, renewable };
                schedule(&mut t, lease, renewable);
                self.token = Some(t);
                Ok(())
            }
        }
    }

    /// Sends a JSON request; re-authenticates once on 403 when `auth`.
    fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Zeroizing<String>>,
        auth: bool,
        retry_403: bool,
    ) -> Result<(u16, Body), Error> {
        if auth && self.token.is_none() {
            self.authenticate()?;
        }
        let (status, v) = self.request_raw(method, path, body.as_ref(), auth)?;
        if status == 403 && auth && retry_403 {
            self.token = None;
            self.authenticate()?;
            let (status, v) = self.request_raw(method, path, body.as_ref(), auth)?;
            if status == 403 {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!("OpenBao denied {method} {path} (HTTP 403)"),
                ));
            }
            return Ok((status, v));
        }
        Ok((status, v))
    }

    /// One logical request with failover across addresses and 307 handling.
    fn request_raw(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Zeroizing<String>>,
        auth: bool,
    ) -> Result<(u16, Body), Error> {
        let deadline = Instant::now() + self.cfg.request_timeout;
        let n = self.cfg.addrs.len();
        let mut last = (ErrorKind::Unavailable, String::from("no address answered"));
        let mut round = 0u32;
        loop {
            for k in 0..n {
                let idx = (self.active + k) % n;
                if Instant::now() >= deadline {
                    return Err(Error::new(
                        last.0,
                        format!("OpenBao unavailable: {} (within {:?})", last.1, self.cfg.request_timeout),
                    ));
                }
                let base = self.cfg.addrs[idx].clone();
                match self.attempt(&base, method, path, body, auth, deadline) {
                    Attempt::Answer(status, v) => {
                        if idx != self.active {
                            self.status.failovers += 1;
                            self.active = idx;
                            self.status.active_addr = base;
                        }
                        return Ok((status, v));
                    }
                    Attempt::Retry(kind, why) => last = (kind, why),
                    Attempt::Fail(kind, why) => return Err(Error::new(kind, why)),
                }
            }
            round += 1;
            if round >= 3 || Instant::now() >= deadline {
                let msg = if last.0 == ErrorKind::Sealed {
                    "OpenBao is sealed".to_owned()
                } else {
                    format!("OpenBao unavailable: {}", last.1)
                };
                return Err(Error::new(last.0, msg));
            }
            let pause = Duration::from_millis(100 * u64::from(round));
            std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        }
    }

    fn attempt(
        &mut self,
        base: &str,
        method: &str,
        path: &str,
        body: Option<&Zeroizing<String>>,
        auth: bool,
        deadline: Instant,
    ) -> Attempt {
        let mut url = format!("{base}/v1/{path}");
        for _hop in 0..3 {
            self.status.http_requests += 1;
            let token = self.token.as_ref().map(|t| t.value.as_str().to_owned()).map(Zeroizing::new);
            let result = if method == "GET" {
                let mut r = self.agent.get(&url);
                if let (true, Some(t)) = (auth, &token) {
                    r = r.header("X-Vault-Token", t.as_str());
                }
                if let Some(ns) = &self.cfg.namespace {
                    r = r.header("X-Vault-Namespace", ns);
                }
                r.call()
            } else {
                let mut r = self.agent.post(&url).header("Content-Type", "application/json");
                if let (true, Some(t)) = (auth, &token) {
                    r = r.header("X-Vault-Token", t.as_str());
                }
                if let Some(ns) = &self.cfg.namespace {
                    r = r.header("X-Vault-Namespace", ns);
                }
                r.send(body.map_or("", |b| b.as_str()))
            };
            let mut resp = match result {
                Ok(r) => r,
                Err(e) => return Attempt::Retry(ErrorKind::Unavailable, format!("{base}: {}", sanitize_transport(&e))),
            };
            let status = resp.status().as_u16();
            if status == 307 || status == 308 {
                let Some(loc) = resp.headers().get("location").and_then(|v| v.to_str().ok()) else {
                    return Attempt::Retry(ErrorKind::Protocol, format!("{base}: redirect without Location"));
                };
                // Follow only to one of the configured addresses (same scheme, host and port):
                // the token and the body (plaintexts, a secret id) go nowhere else.
                match self.redirect_target(base, loc) {
                    Some(next) if !path.starts_with("auth/") => url = next,
                    _ => {
                        return Attempt::Retry(
                            ErrorKind::Protocol,
                            format!("{base}: refused a redirect to an address not in credcrypt.bao_addr"),
                        )
                    }
                }
                continue;
            }
            let text = match resp.body_mut().with_config().limit(MAX_RESPONSE).read_to_string() {
                Ok(t) => Zeroizing::new(t),
                Err(_) => {
                    return Attempt::Fail(
                        ErrorKind::Protocol,
                        format!("{base}: the answer is larger than {MAX_RESPONSE} bytes or not text"),
                    )
                }
            };
            if status == 503 {
                let sealed = errors_text_of(&text).to_ascii_lowercase().contains("sealed");
                return Attempt::Retry(
                    if sealed { ErrorKind::Sealed } else { ErrorKind::Unavailable },
                    format!("{base}: HTTP 503{}", if sealed { " (sealed)" } else { "" }),
                );
            }
            if status == 429 {
                let wait = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .map_or(Duration::from_millis(200), |s| Duration::from_secs(s).min(Duration::from_secs(2)));
                std::thread::sleep(wait.min(deadline.saturating_duration_since(Instant::now())));
                return Attempt::Retry(ErrorKind::Unavailable, format!("{base}: HTTP 429 (rate limited)"));
            }
            if status >= 500 {
                return Attempt::Retry(ErrorKind::Unavailable, format!("{base}: HTTP {status}"));
            }
            return Attempt::Answer(status, text);
        }
        Attempt::Retry(ErrorKind::Protocol, format!("{base}: too many redirects"))
    }

    /// The URL a `Location` header points to, if it is on one of the configured addresses.
    /// A relative location must be an absolute path (`/v1/…`) on the current address.
    fn redirect_target(&self, base: &str, loc: &str) -> Option<String> {
        if let Some(path) = loc.strip_prefix('/') {
            return (!path.starts_with('/')).then(|| format!("{base}/{path}"));
        }
        self.cfg.addrs.iter().find_map(|a| {
            let rest = loc.strip_prefix(a.as_str())?;
            rest.starts_with('/').then(|| loc.to_owned())
        })
    }

    fn transit_path(&self, what: &str, key: &str) -> String {
        format!("{}/{what}/{key}", self.cfg.mount)
    }

    /// One batch call. `entries` are the `batch_input` items, each already a JSON object text;
    /// the body is built in a wiping buffer (it carries plaintexts).
    fn batch_call(
        &mut self,
        what: &str,
        key: &str,
        entries: &[Zeroizing<String>],
    ) -> Result<Vec<Result<BatchItem, ItemError>>, Error> {
        let n = entries.len();
        let mut body = Zeroizing::new(String::with_capacity(entries.iter().map(|e| e.len() + 1).sum::<usize>() + 20));
        body.push_str("{\"batch_input\":[");
        for (i, e) in entries.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(e);
        }
        body.push_str("]}");
        let path = self.transit_path(what, key);
        let (status, text) = self.request("POST", &path, Some(body), true, true)?;
        let answer: Option<BatchAnswer> = serde_json::from_str(&text).ok();
        let errors = answer.as_ref().map(|a| a.errors.join("; ")).unwrap_or_default().to_ascii_lowercase();
        let results = answer.and_then(|a| a.data).and_then(|d| d.batch_results);
        match (status, results) {
            (200 | 400, Some(results)) if results.len() == n => Ok(results
                .into_iter()
                .map(|r| if r.error.is_empty() { Ok(r) } else { Err(item_error(&r.error)) })
                .collect()),
            (200, Some(results)) => Err(Error::new(
                ErrorKind::Protocol,
                format!("OpenBao answered {} results for {n} items of {what} on key {key}", results.len()),
            )),
            (400, _) => {
                if errors.contains("key not found") {
                    Err(Error::new(ErrorKind::KeyNotFound, format!("Transit key {key} does not exist")))
                } else if errors.contains("complexity") || errors.contains("too large") {
                    Err(Error::new(ErrorKind::TooLarge, "OpenBao refused the batch as too large"))
                } else {
                    Err(Error::new(ErrorKind::BadRequest, format!("OpenBao rejected {what} on key {key} (HTTP 400)")))
                }
            }
            (403, _) => {
                Err(Error::new(ErrorKind::PermissionDenied, format!("OpenBao denied {what} on key {key} (HTTP 403)")))
            }
            (404, _) => Err(Error::new(ErrorKind::KeyNotFound, format!("Transit key {key} does not exist"))),
            (413, _) => Err(Error::new(ErrorKind::TooLarge, "OpenBao refused the request body as too large")),
            (s, _) if (400..500).contains(&s) => {
                Err(Error::new(ErrorKind::BadRequest, format!("OpenBao rejected {what} on key {key} (HTTP {s})")))
            }
            (s, _) => {
                Err(Error::new(ErrorKind::Protocol, format!("unexpected answer to {what} on key {key}: HTTP {s}")))
            }
        }
    }

    /// Splits items into chunks under the JSON-string and body limits.
    fn chunks(items: &[Item]) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let (mut start, mut strings, mut bytes) = (0, 2, 32);
        for (i, it) in items.iter().enumerate() {
            let s = 2 + if it.associated_data.is_some() { 2 } else { 0 };
            let b = 40 + it.data.len() * 4 / 3 + it.associated_data.as_ref().map_or(0, |a| a.len() * 4 / 3 + 24);
            if i > start && (strings + s > MAX_JSON_STRINGS || bytes + b > MAX_BODY) {
                out.push(start..i);
                start = i;
                strings = 2;
                bytes = 32;
            }
            strings += s;
            bytes += b;
        }
        if start < items.len() {
            out.push(start..items.len());
        }
        out
    }

    /// Encrypts items with `key`; answers `vault:vN:…` per item, in order.
    pub fn encrypt(&mut self, key: &str, items: &[Item]) -> Result<Vec<Result<String, ItemError>>, Error> {
        let mut out = Vec::with_capacity(items.len());
        for range in Self::chunks(items) {
            let entries: Vec<Zeroizing<String>> =
                items[range].iter().map(|it| entry(&[("plaintext", &Zeroizing::new(b64(&it.data)))], it)).collect();
            for r in self.batch_call("encrypt", key, &entries)? {
                out.push(r.and_then(|v| {
                    v.ciphertext.ok_or(ItemError {
                        kind: ItemErrorKind::Other,
                        message: "OpenBao answered without a ciphertext".into(),
                    })
                }));
            }
        }
        Ok(out)
    }

    /// Decrypts `vault:vN:…` items with `key`; answers the plaintext per item, in order.
    pub fn decrypt(&mut self, key: &str, items: &[Item]) -> Result<Vec<Decrypted>, Error> {
        let mut out = Vec::with_capacity(items.len());
        for range in Self::chunks(items) {
            let entries: Vec<Zeroizing<String>> = items[range]
                .iter()
                .map(|it| entry(&[("ciphertext", &Zeroizing::new(String::from_utf8_lossy(&it.data).into_owned()))], it))
                .collect();
            for r in self.batch_call("decrypt", key, &entries)? {
                out.push(r.and_then(|v| {
                    let p = v.plaintext.unwrap_or_default();
                    STANDARD.decode(p.as_bytes()).map(Zeroizing::new).map_err(|_| ItemError {
                        kind: ItemErrorKind::Other,
                        message: "OpenBao answered a plaintext that is not base64".into(),
                    })
                }));
            }
        }
        Ok(out)
    }

    /// Generates a 256-bit data key: answers (plaintext key bytes, wrapped `vault:vN:…`).
    pub fn datakey(&mut self, key: &str) -> Result<(Zeroizing<Vec<u8>>, String), Error> {
        let path = self.transit_path("datakey/plaintext", key);
        let (status, text) = self.request("POST", &path, Some(Zeroizing::new("{\"bits\":256}".into())), true, true)?;
        match status {
            200 => {
                let d = serde_json::from_str::<DataKeyAnswer>(&text)
                    .ok()
                    .and_then(|a| a.data)
                    .ok_or_else(|| Error::new(ErrorKind::Protocol, "datakey answered without a key"))?;
                let ct = d.ciphertext.as_str();
                let key_bytes = STANDARD
                    .decode(d.plaintext.as_bytes())
                    .map(Zeroizing::new)
                    .map_err(|_| Error::new(ErrorKind::Protocol, "datakey answered a plaintext that is not base64"))?;
                if key_bytes.len() != 32 || !ct.starts_with("vault:v") {
                    return Err(Error::new(ErrorKind::Protocol, "datakey answered an unexpected key"));
                }
                Ok((key_bytes, ct.to_owned()))
            }
            403 => {
                Err(Error::new(ErrorKind::PermissionDenied, format!("OpenBao denied datakey on key {key} (HTTP 403)")))
            }
            400 | 404 => Err(Error::new(ErrorKind::KeyNotFound, format!("Transit key {key} does not exist"))),
            s => Err(Error::new(ErrorKind::Protocol, format!("unexpected answer to datakey on key {key}: HTTP {s}"))),
        }
    }

    /// Rewraps `vault:vN:…` items (no associated data) to the key's latest version.
    pub fn rewrap(&mut self, key: &str, items: &[Item]) -> Result<Vec<Result<String, ItemError>>, Error> {
        let mut out = Vec::with_capacity(items.len());
        for range in Self::chunks(items) {
            let entries: Vec<Zeroizing<String>> = items[range]
                .iter()
                .map(|it| {
                    let ct = Zeroizing::new(String::from_utf8_lossy(&it.data).into_owned());
                    entry(&[("ciphertext", &ct)], &Item { data: Zeroizing::new(Vec::new()), associated_data: None })
                })
                .collect();
            for r in self.batch_call("rewrap", key, &entries)? {
                out.push(r.and_then(|v| {
                    v.ciphertext.ok_or(ItemError {
                        kind: ItemErrorKind::Other,
                        message: "OpenBao answered without a ciphertext".into(),
                    })
                }));
            }
        }
        Ok(out)
    }

    /// Reads a key's properties.
    pub fn key_info(&mut self, key: &str) -> Result<KeyInfo, Error> {
        let path = self.transit_path("keys", key);
        let (status, text) = self.request("GET", &path, None, true, true)?;
        let v = small_json(&text)?;
        match status {
            200 => {
                let d =
                    v.get("data").ok_or_else(|| Error::new(ErrorKind::Protocol, "key read answered without data"))?;
                let num = |k: &str| d.get(k).and_then(Value::as_u64).unwrap_or(0) as u32;
                Ok(KeyInfo {
                    key_type: d.get("type").and_then(Value::as_str).unwrap_or("unknown").to_owned(),
                    derived: d.get("derived").and_then(Value::as_bool).unwrap_or(false),
                    latest_version: num("latest_version"),
                    min_decryption_version: num("min_decryption_version"),
                    supports_encryption: d.get("supports_encryption").and_then(Value::as_bool).unwrap_or(false),
                })
            }
            404 => Err(Error::new(ErrorKind::KeyNotFound, format!("Transit key {key} does not exist"))),
            403 => Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("OpenBao denied reading Transit key {key} (HTTP 403)"),
            )),
            s => Err(Error::new(ErrorKind::Protocol, format!("unexpected answer reading Transit key {key}: HTTP {s}"))),
        }
    }

    /// Rotates a key; returns the new latest version.
    pub fn rotate(&mut self, key: &str) -> Result<u32, Error> {
        let path = format!("{}/rotate", self.transit_path("keys", key));
        let (status, _) = self.request("POST", &path, Some(Zeroizing::new("{}".into())), true, true)?;
        match status {
            200 | 204 => Ok(self.key_info(key)?.latest_version),
            403 => Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("OpenBao denied rotating Transit key {key} (HTTP 403)"),
            )),
            400 | 404 => Err(Error::new(ErrorKind::KeyNotFound, format!("Transit key {key} does not exist"))),
            s => {
                Err(Error::new(ErrorKind::Protocol, format!("unexpected answer rotating Transit key {key}: HTTP {s}")))
            }
        }
    }
}

fn schedule(t: &mut Token, ttl_secs: u64, renewable: bool) {
    t.renewable = renewable;
    if ttl_secs == 0 {
        t.expires = None;
        t.refresh_at = None;
    } else {
        let now = Instant::now();
        t.expires = Some(now + Duration::from_secs(ttl_secs));
        t.refresh_at = Some(now + Duration::from_millis(ttl_secs * 2000 / 3));
    }
}

/// Describes a transport error without anything from the request.
fn sanitize_transport(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(_) => "timed out".into(),
        ureq::Error::Io(io) => format!("connection error ({})", io.kind()),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        ureq::Error::Tls(_) => "TLS error".into(),
        _ => "transport error".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: usize, ctx: bool) -> Item {
        Item { data: Zeroizing::new(vec![b'x'; n]), associated_data: ctx.then(|| b"c".to_vec()) }
    }

    #[test]
    fn chunks_respect_string_limit() {
        let items: Vec<Item> = (0..1200).map(|_| item(10, false)).collect();
        let c = Client::chunks(&items);
        assert!(c.iter().all(|r| 2 + r.len() * 2 <= MAX_JSON_STRINGS));
        assert_eq!(c.iter().map(|r| r.len()).sum::<usize>(), 1200);
        let items: Vec<Item> = (0..500).map(|_| item(10, true)).collect();
        assert!(Client::chunks(&items).iter().all(|r| 2 + r.len() * 4 <= MAX_JSON_STRINGS));
        assert!(Client::chunks(&[]).is_empty());
    }

    #[test]
    fn item_errors_are_fixed_texts() {
        let e = item_error("cipher: message authentication failed");
        assert_eq!(e.kind, ItemErrorKind::AuthenticationFailed);
        let e = item_error("invalid ciphertext: sk-live-SECRET");
        assert!(!e.message.contains("SECRET"));
    }

    #[test]
    fn batch_entries_are_valid_json_and_answers_parse_into_wiping_strings() {
        let it = Item { data: Zeroizing::new(b"x".to_vec()), associated_data: Some(b"ctx\"\\".to_vec()) };
        let e = entry(&[("ciphertext", &Zeroizing::new("vault:v1:a\"b\\c\n".into()))], &it);
        let v: Value = serde_json::from_str(&e).expect("valid JSON");
        assert_eq!(v["ciphertext"], "vault:v1:a\"b\\c\n");
        assert_eq!(v["associated_data"], b64(b"ctx\"\\"));
        let a: BatchAnswer = serde_json::from_str(
            r#"{"data":{"batch_results":[{"plaintext":"c2VjcmV0"},{"error":"cipher: message authentication failed"}]},"warnings":null}"#,
        )
        .expect("parses");
        let r = a.data.and_then(|d| d.batch_results).expect("results");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].plaintext.as_deref().map(String::as_str), Some("c2VjcmV0"));
        assert!(r[1].error.contains("authentication"));
    }

    #[test]
    fn large_generic_answers_are_refused() {
        let big = format!("{{\"data\":\"{}\"}}", "a".repeat(MAX_SMALL_ANSWER + 1));
        assert_eq!(small_json(&big).unwrap_err().kind, ErrorKind::Protocol);
        assert_eq!(small_json("").unwrap(), Value::Null);
        assert_eq!(small_json("{\"a\":1}").unwrap()["a"], 1);
    }

    #[test]
    fn debug_hides_role_id() {
        let a = Auth::AppRole { mount: "approle".into(), role_id: "ROLE-SECRET".into(), secret_id_file: "/x".into() };
        assert!(!format!("{a:?}").contains("ROLE-SECRET"));
    }
}
