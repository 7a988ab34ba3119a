//! The token's lifecycle: read from a file or obtained by AppRole login, renewed at about 2/3
//! of its TTL, replaced when renewal no longer extends it or OpenBao refuses it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::transport::{small_json, Authn, On403};
use crate::{Auth, Client, Error, ErrorKind};

pub(crate) struct Token {
    pub(crate) value: Zeroizing<String>,
    pub(crate) expires: Option<Instant>,
    pub(crate) refresh_at: Option<Instant>,
    pub(crate) renewable: bool,
}

/// Pause before retrying a failed renewal.
pub(crate) const MAINTAIN_RETRY: Duration = Duration::from_secs(2);

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

impl Client {
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
                self.request("POST", "auth/token/renew-self", Some(Zeroizing::new("{}".into())), On403::Answer)?;
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

    pub(crate) fn authenticate(&mut self) -> Result<(), Error> {
        self.status.logins += 1;
        match self.cfg.auth.clone() {
            Auth::TokenFile(path) => {
                let value = read_file(&path, "token")?;
                self.token = Some(Token { value, expires: None, refresh_at: None, renewable: false });
                let (status, body) = self.request("GET", "auth/token/lookup-self", None, On403::Answer)?;
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
                let (status, answer) =
                    self.request_raw("POST", &format!("auth/{mount}/login"), Some(&body), Authn::Anonymous)?;
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
