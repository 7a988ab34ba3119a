//! OpenBao / HashiCorp Vault Transit client used by pg_credcrypt's background worker.
//!
//! Blocking, single-threaded (except [`Client::kv_read_many`] and Transit calls that need
//! several requests, which run a few scoped threads for the duration of the call), no
//! PostgreSQL: the worker calls it with batches it has coalesced from many backends.
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
//!   The requests of one call are sent [`TRANSIT_IN_FLIGHT`] at a time over keep-alive
//!   connections.
//! - **KV version 2.** Versioned secrets on any KV v2 mount (a parameter of each call):
//!   check-and-set writes, reads of a given version (data, soft-deleted, destroyed or missing),
//!   many reads at once over concurrent keep-alive connections, metadata, destroy, list.
//! - **Sanitized errors.** Messages carry addresses, key names, HTTP statuses and fixed texts;
//!   never a token, secret id, plaintext, ciphertext, associated data or raw server body.

//!
//! Modules: [`config`] (what the worker configures), [`error`] (sanitized errors),
//! [`transport`] (failover, redirects, bounded answers), [`auth`] (token lifecycle),
//! [`transit`] (the Transit operations) and [`kv`] (KV version 2).

mod auth;
mod config;
mod error;
mod kv;
mod transit;
mod transport;

use std::sync::Arc;
use std::time::{Duration, Instant};

use auth::Token;

pub use config::{Auth, Config, Item};
pub use error::{Decrypted, Error, ErrorKind, ItemError, ItemErrorKind};
pub use kv::{KvData, KvMetadata, KvValue, KvVersionInfo, KV_MAX_IN_FLIGHT, KV_MAX_LIST_ENTRIES};
pub use transit::{KeyInfo, TransitBatch, TransitOp, TRANSIT_IN_FLIGHT};

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
            // Keep-alive connections for the concurrent KV reads (`kv_read_many`).
            .max_idle_connections(2 * KV_MAX_IN_FLIGHT)
            .max_idle_connections_per_host(KV_MAX_IN_FLIGHT);
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
}
