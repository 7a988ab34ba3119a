//! One logical request: failover across the configured addresses (connection errors, 5xx,
//! 429 with `Retry-After`), 307/308 redirects followed by hand to configured addresses only,
//! bounded answers, and one re-authentication on 403 when asked.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use zeroize::Zeroizing;

use crate::error::{errors_text_of, sanitize_transport};
use crate::{Client, Error, ErrorKind};

/// Whether a request carries the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Authn {
    /// No token: the AppRole login itself.
    Anonymous,
    /// The current token.
    Token,
}

/// What a `403` answer to a request with the token means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum On403 {
    /// The answer itself (token lookups and renewals: re-authenticating would loop).
    Answer,
    /// The token may have expired or been revoked: authenticate once more and retry once
    /// (Transit operations); a second `403` is an error.
    Reauthenticate,
}

/// Largest response body read: a batch answer for the largest request (16 MiB of base64
/// plaintext answers at most ~22 MiB of ciphertexts).
pub(crate) const MAX_RESPONSE: u64 = 24 * 1024 * 1024;

/// Largest answer parsed into a generic JSON value (key reads, token lookups: a few KiB).
pub(crate) const MAX_SMALL_ANSWER: usize = 1024 * 1024;

/// A response body: may hold plaintexts or a token, so it is wiped when dropped.
pub(crate) type Body = Zeroizing<String>;

pub(crate) enum Attempt {
    Answer(u16, Body),
    Retry(ErrorKind, String),
    /// A failure that retrying elsewhere would not change.
    Fail(ErrorKind, String),
}

/// A small answer (key read, token lookup) as a JSON value; large ones are refused rather than
/// parsed into an unbounded tree.
pub(crate) fn small_json(body: &str) -> Result<Value, Error> {
    if body.len() > MAX_SMALL_ANSWER {
        return Err(Error::new(ErrorKind::Protocol, "OpenBao's answer is unexpectedly large"));
    }
    if body.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(body).map_err(|_| Error::new(ErrorKind::Protocol, "OpenBao's answer is not JSON"))
}

impl Client {
    /// Sends a JSON request with the token (authenticating first when there is none yet).
    pub(crate) fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Zeroizing<String>>,
        on_403: On403,
    ) -> Result<(u16, Body), Error> {
        if self.token.is_none() {
            self.authenticate()?;
        }
        let (status, v) = self.request_raw(method, path, body.as_ref(), Authn::Token)?;
        if status == 403 && on_403 == On403::Reauthenticate {
            self.token = None;
            self.authenticate()?;
            let (status, v) = self.request_raw(method, path, body.as_ref(), Authn::Token)?;
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
    pub(crate) fn request_raw(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Zeroizing<String>>,
        auth: Authn,
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
        auth: Authn,
        deadline: Instant,
    ) -> Attempt {
        let mut url = format!("{base}/v1/{path}");
        for _hop in 0..3 {
            self.status.http_requests += 1;
            let token = self.token.as_ref().map(|t| t.value.as_str().to_owned()).map(Zeroizing::new);
            let result = if method == "GET" || method == "DELETE" {
                let mut r = if method == "GET" { self.agent.get(&url) } else { self.agent.delete(&url) };
                if let (Authn::Token, Some(t)) = (auth, &token) {
                    r = r.header("X-Vault-Token", t.as_str());
                }
                if let Some(ns) = &self.cfg.namespace {
                    r = r.header("X-Vault-Namespace", ns);
                }
                r.call()
            } else {
                let mut r = self.agent.post(&url).header("Content-Type", "application/json");
                if let (Authn::Token, Some(t)) = (auth, &token) {
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
                    // A standby sends a login (or token lookup) to a configured node: not followed,
                    // the configured addresses are tried directly instead. While a raft cluster
                    // elects a new active node, standbys redirect to the dead one: that is an
                    // outage (58030, local fallback when enabled), not a protocol error.
                    Some(_) => {
                        return Attempt::Retry(
                            ErrorKind::Unavailable,
                            format!(
                                "{base}: a standby redirected {path} (not followed; trying the configured addresses)"
                            ),
                        )
                    }
                    None => {
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
    fn redirect_target(&self, base: &str, loc: &str) -> Option<String> {
        redirect_target(&self.cfg.addrs, base, loc)
    }

    /// POSTs every body of `requests` to its path on the active address with the current token,
    /// up to `in_flight` at a time, from short-lived scoped threads that share the client's
    /// pool of keep-alive connections. An answer is returned only when it is final: any status
    /// but 403, 429, 5xx and redirects. Everything else — no token, a transport error, a 403
    /// (expired token), 429, 5xx, a redirect, a thread that could not start or panicked — is
    /// `None`, and the caller sends that body through [`Client::request`] (failover,
    /// re-authentication, back-off), as it would have without this pass. After the first such
    /// failure the pass sends nothing more (the rest go the normal way too).
    pub(crate) fn post_concurrently(
        &mut self,
        requests: &[(String, Zeroizing<String>)],
        in_flight: usize,
    ) -> Vec<Option<(u16, Body)>> {
        let unsettled = || requests.iter().map(|_| None).collect();
        if requests.is_empty() || (self.token.is_none() && self.authenticate().is_err()) {
            return unsettled();
        }
        let Some(token) = self.token.as_ref().map(|t| Zeroizing::new(t.value.as_str().to_owned())) else {
            return unsettled();
        };
        let base = self.cfg.addrs[self.active % self.cfg.addrs.len()].clone();
        let (agent, namespace) = (&self.agent, self.cfg.namespace.as_deref());
        let sent = AtomicU64::new(0);
        let post = |(path, body): &(String, Zeroizing<String>)| -> Option<(u16, Body)> {
            sent.fetch_add(1, Ordering::Relaxed);
            let url = format!("{base}/v1/{path}");
            let mut r =
                agent.post(&url).header("Content-Type", "application/json").header("X-Vault-Token", token.as_str());
            if let Some(ns) = namespace {
                r = r.header("X-Vault-Namespace", ns);
            }
            let mut resp = r.send(body.as_str()).ok()?;
            let status = resp.status().as_u16();
            if status == 403 || status == 429 || status >= 500 || (300..400).contains(&status) {
                return None;
            }
            let text = resp.body_mut().with_config().limit(MAX_RESPONSE).read_to_string().ok()?;
            Some((status, Zeroizing::new(text)))
        };
        let answers = concurrently(requests, in_flight, "credcrypt-bao", |request| {
            let answer = post(request);
            let settled = answer.is_some();
            (answer, settled)
        });
        self.status.http_requests += sent.load(Ordering::Relaxed);
        answers.into_iter().map(Option::flatten).collect()
    }
}

/// Runs `f` over `items` from up to `workers` short-lived scoped threads (named
/// `<name>-<n>`), each taking the next item until none is left; `f` answers an outcome and
/// whether the pass may go on (false: no thread takes another item — a failure the rest would
/// meet too). Outcomes in `items`' order; `None` for an item not taken, or taken by a thread
/// that panicked or could not start (the caller sends those the normal way).
pub(crate) fn concurrently<T: Sync, O: Send>(
    items: &[T],
    workers: usize,
    name: &str,
    f: impl Fn(&T) -> (O, bool) + Sync,
) -> Vec<Option<O>> {
    let mut out: Vec<Option<O>> = items.iter().map(|_| None).collect();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers.clamp(1, items.len().max(1)) {
            let (next, stop, f) = (&next, &stop, &f);
            let spawned = std::thread::Builder::new().name(format!("{name}-{w}")).spawn_scoped(s, move || {
                let mut done = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(k) else { break };
                    let (o, go_on) = f(item);
                    if !go_on {
                        stop.store(true, Ordering::Relaxed);
                    }
                    done.push((k, o));
                }
                done
            });
            match spawned {
                Ok(h) => handles.push(h),
                // No more threads (resource limits): the ones running share the work.
                Err(_) => break,
            }
        }
        for h in handles {
            // A thread that panicked loses its outcomes: its items go the normal path.
            if let Ok(done) = h.join() {
                for (k, o) in done {
                    if let Some(slot) = out.get_mut(k) {
                        *slot = Some(o);
                    }
                }
            }
        }
    });
    out
}

/// The URL a `Location` header points to, if it is on one of `addrs`. A relative location
/// must be an absolute path (`/v1/…`) on the current address `base`.
pub(crate) fn redirect_target(addrs: &[String], base: &str, loc: &str) -> Option<String> {
    if let Some(path) = loc.strip_prefix('/') {
        return (!path.starts_with('/')).then(|| format!("{base}/{path}"));
    }
    addrs.iter().find_map(|a| {
        let rest = loc.strip_prefix(a.as_str())?;
        rest.starts_with('/').then(|| loc.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_generic_answers_are_refused() {
        let big = format!("{{\"data\":\"{}\"}}", "a".repeat(MAX_SMALL_ANSWER + 1));
        assert_eq!(small_json(&big).unwrap_err().kind, ErrorKind::Protocol);
        assert_eq!(small_json("").unwrap(), Value::Null);
        assert_eq!(small_json("{\"a\":1}").unwrap()["a"], 1);
    }
}
