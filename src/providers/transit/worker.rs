//! The background worker: the only process that speaks HTTP to OpenBao.
//!
//! It sleeps on its latch; backends set it when they submit a request. Each round it takes
//! every READY slot, groups the items by operation and key, sends them to Transit as batches
//! (the client splits them under the server's JSON limits), and answers every slot. Requests
//! that arrive while a batch is in flight are coalesced into the next round. On SIGHUP it
//! reloads the configuration (and rebuilds its HTTP client when a `credcrypt.bao_*` setting
//! changed); on SIGTERM or postmaster death it exits; after a crash the postmaster restarts it
//! after `RESTART_AFTER`. It connects to no database (shared catalogs only), so it also runs
//! on hot standbys, and it shows in `pg_stat_activity` as `pg_credcrypt worker`.

use std::collections::HashMap;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant, SystemTime};

use credcrypt_core::wire::{self, Fail, FailKind, Op};
use credcrypt_openbao as openbao;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::prelude::*;
use zeroize::Zeroizing;

use super::backend::ItemResult;
use super::queue::{self, state, Header};
use crate::gucs;

/// The answer to one request: per-item results, or a whole-request failure.
type Answer = Result<Vec<ItemResult>, Fail>;

/// Delay before the postmaster restarts a crashed worker.
pub const RESTART_AFTER: Duration = Duration::from_secs(1);

/// Registers the worker (from `_PG_init`, while preloading).
pub fn register() {
    BackgroundWorkerBuilder::new("pg_credcrypt transit worker")
        .set_type("pg_credcrypt worker")
        .set_function("credcrypt_worker_main")
        .set_library("pg_credcrypt")
        .enable_shmem_access(None)
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(RESTART_AFTER))
        .load();
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The worker's view of its configuration, from the `credcrypt.bao_*` settings.
use gucs::BaoSettings as Settings;

/// Building the OpenBao client from the settings.
trait ClientFromSettings {
    fn client(&self) -> Result<openbao::Client, Fail>;
}

impl ClientFromSettings for Settings {
    fn client(&self) -> Result<openbao::Client, Fail> {
        let cfg_fail = |m: &str| Fail { kind: FailKind::Config, message: m.to_owned() };
        let addrs: Vec<String> = self
            .addrs
            .split(',')
            .map(|a| a.trim().trim_end_matches('/').to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        if addrs.is_empty() {
            return Err(cfg_fail("credcrypt.bao_addr is not set"));
        }
        let auth = if !self.token_file.is_empty() {
            openbao::Auth::TokenFile(self.token_file.clone().into())
        } else if !self.role_id.is_empty() && !self.secret_id_file.is_empty() {
            openbao::Auth::AppRole {
                mount: if self.approle_mount.is_empty() { "approle".into() } else { self.approle_mount.clone() },
                role_id: self.role_id.clone(),
                secret_id_file: self.secret_id_file.clone().into(),
            }
        } else {
            return Err(cfg_fail(
                "no OpenBao credentials: set credcrypt.bao_token_file, or credcrypt.bao_role_id and credcrypt.bao_secret_id_file",
            ));
        };
        openbao::Client::new(openbao::Config {
            addrs,
            mount: if self.mount.is_empty() { "transit".into() } else { self.mount.clone() },
            namespace: (!self.namespace.is_empty()).then(|| self.namespace.clone()),
            ca_file: (!self.ca_file.is_empty()).then(|| self.ca_file.clone().into()),
            connect_timeout: self.connect,
            request_timeout: self.request,
            auth,
        })
        .map_err(|e| fail_of(&e))
    }
}

/// Maps a client error to a queue failure (messages are sanitized by the client).
pub(crate) fn fail_of(e: &openbao::Error) -> Fail {
    use openbao::ErrorKind as K;
    let kind = match e.kind {
        K::Unavailable => FailKind::Unavailable,
        K::Sealed => FailKind::Sealed,
        K::PermissionDenied | K::AuthFailed => FailKind::PermissionDenied,
        K::KeyNotFound => FailKind::KeyNotFound,
        K::InvalidConfig => FailKind::Config,
        K::TooLarge => FailKind::TooLarge,
        K::BadRequest | K::CasMismatch | K::InvalidArgument => FailKind::Rejected,
        K::MountNotFound => FailKind::Config,
        K::Protocol => FailKind::Protocol,
    };
    Fail { kind, message: e.to_string() }
}

fn item_fail_of(e: &openbao::ItemError) -> Fail {
    use openbao::ItemErrorKind as K;
    let kind = match e.kind {
        K::AuthenticationFailed => FailKind::AuthenticationFailed,
        K::InvalidInput => FailKind::InvalidInput,
        K::KeyNotFound => FailKind::KeyNotFound,
        K::VersionRetired => FailKind::VersionRetired,
        K::Other => FailKind::Other,
    };
    Fail { kind, message: e.to_string() }
}

/// The encrypt or decrypt items of one (operation, key) in a worker round: the requests
/// (`members`, indices into the round's requests) they came from, and each item's request.
struct Set {
    op: openbao::TransitOp,
    key: String,
    members: Vec<usize>,
    items: Vec<openbao::Item>,
    owners: Vec<usize>,
}

/// Keeps the items of a KV read answer that fit one queue slot, in order, and answers the
/// others with `TooLarge` ("read alone"): the backend then asks for each of them alone (one
/// secret always fits). The answer's encoding is counted exactly ([`wire::encode_response`]),
/// the error items included, so that the whole answer fits.
fn fit_slot(items: Vec<ItemResult>) -> Vec<ItemResult> {
    const ALONE: &str = "read alone";
    let alone = 4 + ALONE.len();
    // Start from every answer given up, then keep answers in order while they fit.
    let mut used = 64 + items.iter().map(|r| r.as_ref().map_or_else(|f| 4 + f.message.len(), |_| alone)).sum::<usize>();
    items
        .into_iter()
        .map(|r| match r {
            Ok(v) => {
                let kept = used - alone + 5 + v.len();
                if kept <= queue::SLOT_BYTES {
                    used = kept;
                    Ok(v)
                } else {
                    Err(Fail { kind: FailKind::TooLarge, message: ALONE.into() })
                }
            }
            Err(f) => Err(f),
        })
        .collect()
}

/// How many checked keys the worker remembers before it starts over.
const CHECKED_KEYS_MAX: usize = 4096;

struct Worker {
    q: &'static Header,
    settings: Settings,
    client: Result<openbao::Client, Fail>,
    /// Keys already checked to be encryption keys (cleared on reconfiguration and rotation).
    /// Only positive answers are kept, at most [`CHECKED_KEYS_MAX`]: a key that is missing now
    /// may be created a moment later, and names that callers probe must not grow the map.
    checked_keys: HashMap<String, ()>,
    last_error: String,
    /// The kv provider's journal of writes whose transaction has not ended.
    kv: crate::providers::kv_journal::Journal,
    /// How many requests the last round served ([`Worker::linger`]).
    last_round: usize,
}

/// How long the worker waits for more requests before a round, at most, when the round before
/// served several: under concurrent single-row writes each request arrives alone, and waiting
/// a moment lets one Transit call serve more of them. A round after a single request does not
/// wait, so a lone client's latency is unchanged.
const LINGER: Duration = Duration::from_micros(300);

impl Worker {
    fn reconfigure(&mut self) {
        let s = gucs::bao_settings();
        if s != self.settings || self.client.is_err() {
            self.client = s.client();
            self.settings = s;
            self.checked_keys.clear();
            let addr = self.settings.addrs.split(',').next().unwrap_or("").trim().to_owned();
            self.q.set_text(Some(&addr), None);
            if let Err(f) = self.client.as_ref().map(|_| ()).map_err(Fail::clone) {
                self.note_error(&f);
            }
        }
    }

    fn note_error(&mut self, f: &Fail) {
        if let Some(c) = self.q.stats.errors.get(f.kind as usize) {
            c.fetch_add(1, SeqCst);
        }
        if let Some(t) = self.q.stats.errors_at.get(f.kind as usize) {
            t.store(now_ms(), SeqCst);
        }
        if f.message != self.last_error {
            self.last_error = f.message.clone();
            self.q.set_text(None, Some(&f.message));
            log!("pg_credcrypt worker: {}", f.message);
        }
    }

    fn publish_client_status(&self) {
        if let Ok(c) = &self.client {
            let st = c.status();
            self.q.set_text(Some(&st.active_addr), None);
            let ttl = st.token_ttl_left.map_or(-1, |d| d.as_millis() as i64);
            self.q.stats.token_ttl_ms.store(ttl, SeqCst);
            self.q.stats.token_ttl_at_ms.store(now_ms(), SeqCst);
            self.q.stats.failovers.store(st.failovers, SeqCst);
            self.q.stats.renewals.store(st.renewals + st.logins, SeqCst);
        }
    }

    fn maintain(&mut self) {
        let due = match &self.client {
            Ok(c) => c.next_maintenance().is_some_and(|t| t <= Instant::now()),
            Err(_) => false,
        };
        if due {
            if let Ok(c) = &mut self.client {
                if let Err(e) = c.maintain() {
                    let f = fail_of(&e);
                    self.note_error(&f);
                }
            }
        }
    }

    /// Destroys what aborted transactions wrote to KV (see `providers::kv_journal`).
    fn resolve_kv(&mut self) {
        if let Ok(client) = self.client.as_mut() {
            self.kv.resolve(client);
        }
    }

    fn sleep_for(&self) -> Duration {
        // Pending KV writes are resolved at least four times a second.
        let cap = if self.kv.has_backlog() {
            Duration::from_millis(5)
        } else if self.kv.is_empty() {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(250)
        };
        match &self.client {
            Ok(c) => c.next_maintenance().map_or(cap, |t| t.saturating_duration_since(Instant::now()).min(cap)),
            Err(_) => cap,
        }
    }

    /// Checks that a key exists and can encrypt (once per key while the answer is yes).
    fn check_key(&mut self, key: &str) -> Result<(), Fail> {
        if self.checked_keys.contains_key(key) {
            return Ok(());
        }
        let client = self.client.as_mut().map_err(|f| f.clone())?;
        let r = match client.key_info(key) {
            Ok(info) if info.supports_encryption => Ok(()),
            Ok(info) => Err(Fail {
                kind: FailKind::UnsupportedKey,
                message: format!("Transit key {key} is of type {}, which cannot encrypt", info.key_type),
            }),
            Err(e) => Err(fail_of(&e)),
        };
        // Remember "yes" only: "no such key" or "wrong type" can change (the key is created or
        // replaced), and a failure is retried on the next request.
        if r.is_ok() {
            if self.checked_keys.len() >= CHECKED_KEYS_MAX {
                self.checked_keys.clear();
            }
            self.checked_keys.insert(key.to_owned(), ());
        }
        r
    }

    /// After a round of several requests: waits (up to [`LINGER`]) until as many are READY as
    /// that round served, so that concurrent single-row writes share Transit calls.
    fn linger(&self) {
        if self.last_round < 2 {
            return;
        }
        let q = self.q;
        let deadline = Instant::now() + LINGER;
        while Instant::now() < deadline {
            let ready = (0..q.nslots()).filter(|&i| q.slot(i).state.load(SeqCst) == state::READY).count();
            if ready == 0 || ready >= self.last_round {
                return;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Takes every READY slot and answers it.
    fn serve(&mut self) {
        let q = self.q;
        self.linger();
        let mut taken = Vec::new();
        for i in 0..q.nslots() {
            let slot = q.slot(i);
            if slot.state.compare_exchange(state::READY, state::WORKING, SeqCst, SeqCst).is_ok() {
                taken.push(i);
            }
        }
        self.last_round = taken.len();
        if taken.is_empty() {
            return;
        }
        // Copy each request out of shared memory (zeroizing copies) and wipe the slot.
        let mut requests: Vec<(usize, Zeroizing<Vec<u8>>)> = Vec::with_capacity(taken.len());
        for &i in &taken {
            let slot = q.slot(i);
            let len = (slot.len.load(SeqCst) as usize).min(queue::SLOT_BYTES);
            // SAFETY: WORKING: the worker owns the buffer until it answers.
            let raw = Zeroizing::new(unsafe { slot.buffer() }[..len].to_vec());
            // SAFETY: as above.
            unsafe { slot.wipe(len) };
            requests.push((i, raw));
        }
        let mut answers: Vec<Answer> = Vec::with_capacity(requests.len());
        // Group encrypt/decrypt requests by (op, key) so one Transit batch serves many backends.
        let mut groups: HashMap<(u8, String), Vec<usize>> = HashMap::new();
        // KV reads of every backend, by mount: one concurrent pass serves them all.
        let mut kv_reads: HashMap<String, Vec<usize>> = HashMap::new();
        let decoded: Vec<_> = requests.iter().map(|(_, raw)| wire::decode_request(raw)).collect();
        for (k, d) in decoded.iter().enumerate() {
            answers.push(Err(Fail { kind: FailKind::Other, message: "not processed".into() }));
            match d {
                Ok(r) if matches!(r.op, Op::Encrypt | Op::Decrypt) => {
                    groups.entry((r.op as u8, r.key.to_owned())).or_default().push(k);
                }
                Ok(r) if r.op == Op::KvRead => kv_reads.entry(r.key.to_owned()).or_default().push(k),
                Ok(r) if matches!(r.op, Op::KvWrite | Op::KvForget) => {
                    answers[k] = match self.client.as_mut() {
                        // Journaled even while OpenBao is unreachable: done once it is back.
                        _ if r.op == Op::KvForget => self.kv.forget(r.key, &r.items),
                        Err(f) => Err(f.clone()),
                        Ok(client) => self.kv.write(client, r.key, &r.items),
                    };
                    q.stats.items.fetch_add(r.items.len() as u64, SeqCst);
                    if let Err(f) = &answers[k] {
                        let f = f.clone();
                        self.note_error(&f);
                    }
                }
                Ok(r) if r.op == Op::Rewrap => {
                    let items: Vec<openbao::Item> = r
                        .items
                        .iter()
                        .map(|it| openbao::Item { data: Zeroizing::new(it.data.to_vec()), associated_data: None })
                        .collect();
                    answers[k] = self.rewrap(r.key, &items);
                }
                Ok(r) => answers[k] = self.admin(r.op, r.key, r.items.first().and_then(|it| it.context)),
                Err(_) => answers[k] = Err(Fail { kind: FailKind::Other, message: "corrupt request".into() }),
            }
        }
        for (mount, members) in kv_reads {
            let mut items = Vec::new();
            for &k in &members {
                if let Ok(r) = &decoded[k] {
                    items.extend(r.items.iter().cloned());
                }
            }
            q.stats.items.fetch_add(items.len() as u64, SeqCst);
            let result = match self.client.as_mut() {
                Err(f) => Err(f.clone()),
                Ok(client) => self.kv.read(client, &mount, &items),
            };
            match result {
                Ok(results) => {
                    let mut results = results.into_iter();
                    for &k in &members {
                        let n = decoded[k].as_ref().map_or(0, |r| r.items.len());
                        answers[k] = Ok(fit_slot(results.by_ref().take(n).collect()));
                    }
                }
                Err(f) => {
                    self.note_error(&f);
                    for &k in &members {
                        answers[k] = Err(f.clone());
                    }
                }
            }
        }
        // Every (operation, key) group of the round: their Transit requests go out together.
        let mut sets: Vec<Set> = Vec::with_capacity(groups.len());
        for ((op, key), members) in groups {
            let op = if op == Op::Encrypt as u8 { openbao::TransitOp::Encrypt } else { openbao::TransitOp::Decrypt };
            let mut items = Vec::new();
            let mut owners = Vec::new();
            for &k in &members {
                let Ok(r) = &decoded[k] else { continue };
                for it in &r.items {
                    items.push(openbao::Item {
                        data: Zeroizing::new(it.data.to_vec()),
                        associated_data: it.context.map(<[u8]>::to_vec),
                    });
                    owners.push(k);
                }
            }
            q.stats.items.fetch_add(items.len() as u64, SeqCst);
            sets.push(Set { op, key, members, items, owners });
        }
        let results = self.batches(&sets);
        for (Set { members, owners, .. }, result) in sets.into_iter().zip(results) {
            match result {
                Ok(results) => {
                    for &k in &members {
                        answers[k] = Ok(Vec::new());
                    }
                    for (owner, r) in owners.into_iter().zip(results) {
                        if let Err(f) = &r {
                            self.note_error(f);
                        }
                        if let Ok(v) = &mut answers[owner] {
                            v.push(r);
                        }
                    }
                }
                Err(f) => {
                    self.note_error(&f);
                    for &k in &members {
                        answers[k] = Err(f.clone());
                    }
                }
            }
        }
        for ((i, _), answer) in requests.iter().zip(answers) {
            self.answer(*i, answer);
        }
        self.publish_client_status();
    }

    /// Encrypts and decrypts the round's sets together: the Transit requests of all of them
    /// share the client's window of concurrent requests. One answer per set.
    fn batches(&mut self, sets: &[Set]) -> Vec<Answer> {
        // An encryption's key is checked first (created if allowed); a set whose check failed
        // is not sent.
        let checked: Vec<Result<(), Fail>> = sets
            .iter()
            .map(|s| if s.op == openbao::TransitOp::Encrypt { self.check_key(&s.key) } else { Ok(()) })
            .collect();
        let client = match self.client.as_mut() {
            Ok(c) => c,
            Err(f) => return sets.iter().map(|_| Err(f.clone())).collect(),
        };
        let send: Vec<usize> = (0..sets.len()).filter(|&k| checked[k].is_ok()).collect();
        let batch: Vec<openbao::TransitBatch<'_>> = send
            .iter()
            .map(|&k| openbao::TransitBatch { op: sets[k].op, key: &sets[k].key, items: &sets[k].items })
            .collect();
        self.q.stats.batches.fetch_add(batch.len() as u64, SeqCst);
        let mut results = client.transit_batches(&batch).into_iter();
        let mut out = Vec::with_capacity(sets.len());
        for (k, check) in checked.into_iter().enumerate() {
            let answer = match check {
                Err(f) => Err(f),
                Ok(()) => match results.next() {
                    Some(Ok(v)) => Ok(v.into_iter().map(|r| r.map_err(|e| item_fail_of(&e))).collect()),
                    Some(Err(e)) => {
                        if e.kind == openbao::ErrorKind::KeyNotFound {
                            self.checked_keys.remove(&sets[k].key);
                        }
                        Err(fail_of(&e))
                    }
                    None => Err(Fail { kind: FailKind::Other, message: "not processed".into() }),
                },
            };
            out.push(answer);
        }
        out
    }

    fn rewrap(&mut self, key: &str, items: &[openbao::Item]) -> Answer {
        let client = self.client.as_mut().map_err(|f| f.clone())?;
        self.q.stats.batches.fetch_add(1, SeqCst);
        let v = client.rewrap(key, items).map_err(|e| fail_of(&e))?;
        Ok(v.into_iter().map(|r| r.map(|s| Zeroizing::new(s.into_bytes())).map_err(|e| item_fail_of(&e))).collect())
    }

    /// Key administration: a data key (with the request's associated data, if any), a rotation,
    /// the latest version, creating a per-row key, destroying a key.
    fn admin(&mut self, op: Op, key: &str, associated_data: Option<&[u8]>) -> Answer {
        let client = self.client.as_mut().map_err(|f| f.clone())?;
        if op == Op::DataKey {
            let (plain, wrapped) = client.datakey(key, associated_data).map_err(|e| fail_of(&e))?;
            return Ok(vec![Ok(plain), Ok(Zeroizing::new(wrapped.into_bytes()))]);
        }
        let version = match op {
            Op::Rotate => {
                self.checked_keys.remove(key);
                client.rotate(key).map_err(|e| fail_of(&e))?
            }
            Op::CreateKey => {
                let info = client.create_key(key).map_err(|e| fail_of(&e))?;
                if !info.supports_encryption || info.derived {
                    return Err(Fail {
                        kind: FailKind::UnsupportedKey,
                        message: format!("Transit key {key} exists and is not a plain encryption key"),
                    });
                }
                info.latest_version
            }
            Op::DeleteKey => {
                self.checked_keys.remove(key);
                client.delete_key(key).map_err(|e| fail_of(&e))?;
                return Ok(Vec::new());
            }
            _ => client.key_info(key).map_err(|e| fail_of(&e))?.latest_version,
        };
        Ok(vec![Ok(Zeroizing::new(version.to_string().into_bytes()))])
    }

    fn answer(&self, i: usize, answer: Answer) {
        let slot = self.q.slot(i);
        // SAFETY: the slot is WORKING or ABANDONED; either way only the worker touches it.
        let buf = unsafe { slot.buffer() };
        let len = match &answer {
            Ok(items) => wire::encode_response(buf, items).unwrap_or_else(|_| {
                wire::encode_failure(
                    buf,
                    &Fail { kind: FailKind::TooLarge, message: "the answer does not fit a queue slot".into() },
                )
            }),
            Err(f) => wire::encode_failure(buf, f),
        };
        slot.len.store(len as u32, SeqCst);
        self.q.stats.requests.fetch_add(1, SeqCst);
        if slot.state.compare_exchange(state::WORKING, state::DONE, SeqCst, SeqCst).is_ok() {
            let latch = slot.owner_latch.load(SeqCst);
            if latch != 0 {
                // SAFETY: the owner's latch lives in its PGPROC in shared memory.
                unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
            }
        } else {
            // The backend gave up: nobody will read this answer.
            // SAFETY: ABANDONED slots belong to the worker.
            unsafe { slot.wipe(len) };
            slot.state.store(state::FREE, SeqCst);
        }
    }

    /// After a restart: answer slots a previous worker held, free abandoned ones.
    fn recover(&self) {
        for i in 0..self.q.nslots() {
            let slot = self.q.slot(i);
            match slot.state.load(SeqCst) {
                state::WORKING => self.answer(
                    i,
                    Err(Fail {
                        kind: FailKind::Unavailable,
                        message: "the worker restarted while handling the request".into(),
                    }),
                ),
                state::ABANDONED => {
                    // SAFETY: nobody else uses an abandoned slot.
                    unsafe { slot.wipe(queue::SLOT_BYTES) };
                    slot.state.store(state::FREE, SeqCst);
                }
                _ => {}
            }
        }
    }
}

/// Holds asynchronous signals in this (the worker's main) thread while it talks to OpenBao, and
/// restores the mask when dropped.
///
/// The HTTP client starts helper threads (ureq resolves the host name on a thread of its own
/// when a timeout is set, for every new connection). A thread inherits its creator's signal
/// mask, and the kernel may run a process-directed signal's handler on any thread that does not
/// block it. pgrx's SIGHUP and SIGTERM handlers call into PostgreSQL (`SetLatch`), which pgrx
/// refuses off the main thread with a panic — inside a signal handler that is an abort, and the
/// postmaster answers a crashed background worker with a crash restart of the whole server.
/// Found under load by `scripts/test-ha`: Patroni reloads the configuration (SIGHUP to every
/// process) at each leader change. With the signals held here, every helper thread starts with
/// them blocked; what arrives meanwhile stays pending and is handled by this thread when the mask
/// is restored (the worker looks at the flags only between its rounds anyway). SIGQUIT (its
/// handler is PostgreSQL's `_exit`) and the synchronous fault signals stay deliverable.
struct SignalsHeld(libc::sigset_t);

impl SignalsHeld {
    fn new() -> SignalsHeld {
        // SAFETY: POSIX signal-set calls on sets owned here; the previous mask is kept and
        // restored by Drop.
        unsafe {
            let mut held: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut held);
            for sig in [libc::SIGQUIT, libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL, libc::SIGABRT] {
                libc::sigdelset(&mut held, sig);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &held, &mut old);
            SignalsHeld(old)
        }
    }
}

impl Drop for SignalsHeld {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `new` in this same thread.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// Worker entry point (named in `register`).
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn credcrypt_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // Connect to no database (shared catalogs only): the worker reads no table, yet becomes a
    // regular entry of pg_stat_activity that pg_terminate_backend can reach. Works on standbys.
    BackgroundWorker::connect_worker_to_spi(None, None);
    let Some(q) = queue::get() else {
        log!("pg_credcrypt worker: shared memory queue missing; exiting");
        return;
    };
    // SAFETY: MyProcPid and MyLatch are this process's own.
    unsafe {
        q.worker_pid.store(pg_sys::MyProcPid, SeqCst);
        q.worker_latch.store(pg_sys::MyLatch as usize, SeqCst);
    }
    q.stats.worker_starts.fetch_add(1, SeqCst);
    q.stats.worker_started_ms.store(now_ms(), SeqCst);
    let settings = gucs::bao_settings();
    let mut w = Worker {
        q,
        client: settings.client(),
        settings,
        checked_keys: HashMap::new(),
        last_error: String::new(),
        kv: crate::providers::kv_journal::Journal::load(),
        last_round: 0,
    };
    if let Err(f) = w.client.as_ref().map(|_| ()).map_err(Fail::clone) {
        w.note_error(&f);
    }
    w.recover();
    log!("pg_credcrypt worker started");
    loop {
        {
            let _held = SignalsHeld::new();
            w.serve();
            w.resolve_kv();
        }
        if !BackgroundWorker::wait_latch(Some(w.sleep_for())) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: main thread of a background worker; PostgreSQL's own reload routine.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            w.reconfigure();
        }
        let _held = SignalsHeld::new();
        w.maintain();
    }
    q.worker_latch.store(0, SeqCst);
    q.worker_pid.store(0, SeqCst);
    log!("pg_credcrypt worker stopped");
    // Exit code 1, not 0: a background worker that exits with 0 is never restarted, and a
    // worker stopped by pg_terminate_backend (SIGTERM) must come back after RESTART_AFTER.
    // At server shutdown the postmaster restarts nothing, whatever the code.
    // SAFETY: the standard way for a background worker to end; runs exit callbacks.
    unsafe { pg_sys::proc_exit(1) }
}
