//! The worker's side of the `kv:<mount>` provider: writes journaled under their transaction,
//! reads checked against their binding, and the destruction of what aborted transactions wrote.
//!
//! **Journal.** Before it sends a write, the worker records `(transaction, mount, path,
//! version)` in `pg_credcrypt/kv_journal` under the data directory and fsyncs it (with
//! `cas`, the version a write gets is known before the write). At every round (at least once
//! a second) it asks the commit log about each recorded transaction: still running (or
//! prepared) → wait; committed → forget the entry; aborted, or never committed before a crash
//! → read the version back and, when it carries this transaction's id, destroy it. So a
//! secret written by a transaction that rolled back, or by a backend or server that crashed,
//! stays readable for at most about a second after its transaction ended while OpenBao is
//! reachable; while it is not, the journal keeps the work (and nothing can read KV either).
//! The backend made its transaction id durable before asking (a flushed WAL record carries
//! it), so recovery never hands the id out again.
//!
//! The journal is per server: it is not replicated, so a failover loses the destroys the old
//! primary had not done yet (docs/architecture.md).

use std::io::Write as _;
use std::path::PathBuf;

use credcrypt_core::verify::constant_time_eq;
use credcrypt_core::wire::{Fail, FailKind, KvWriteMeta, ReqItem};
use credcrypt_openbao as openbao;
use pgrx::pg_sys;
use zeroize::Zeroizing;

use super::transit::backend::ItemResult;

/// KV data field of the secret (text secrets).
const FIELD_VALUE: &str = "value";
/// KV data field of a secret that is not valid UTF-8 (standard base64).
const FIELD_VALUE_B64: &str = "value_b64";
/// KV data field of the binding (mount, path, context).
const FIELD_BINDING: &str = "pg_credcrypt_binding";
/// KV data field of the writing transaction's full id.
const FIELD_XID: &str = "pg_credcrypt_xid";

/// Reads sent to OpenBao at once by one worker round.
const READS_IN_FLIGHT: usize = 8;

/// One write whose transaction has not been seen to end (`version` > 0), or one destruction
/// waiting for its transaction's commit (`version` 0; `path` a path or a `binding:` target).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    xid: u64,
    mount: String,
    version: u64,
    path: String,
}

impl Entry {
    fn is_forget(&self) -> bool {
        self.version == 0
    }
}

/// The journal of pending writes (in memory, mirrored to disk on every change).
pub(crate) struct Journal {
    file: PathBuf,
    entries: Vec<Entry>,
    /// KV v2 mounts checked to exist (positive answers only).
    mounts: std::collections::HashSet<String>,
    /// Whether the last resolution left work for the next round (it does at most
    /// [`WORK_PER_ROUND`] OpenBao calls, so that requests are served in between).
    backlog: bool,
}

/// Journal entries a resolution round may spend OpenBao calls on.
const WORK_PER_ROUND: usize = 64;

/// Whether an OpenBao failure may go away by itself (retry later) rather than be final (a
/// policy that forbids the call, a refused request: logged once and given up).
fn transient(e: &openbao::Error) -> bool {
    matches!(e.kind, openbao::ErrorKind::Unavailable | openbao::ErrorKind::Sealed)
}

/// Whether a KV path is under `credcrypt.kv_path_prefix` (the worker's own check, beside the
/// backends': it never writes, reads or destroys anything else).
fn within_prefix(path: &str) -> bool {
    path.strip_prefix(crate::gucs::kv_path_prefix().as_str()).is_some_and(|r| r.starts_with('/'))
}

/// What the commit log says about a transaction.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Running,
    Committed,
    Aborted,
}

fn outcome(fxid: u64) -> Outcome {
    // SAFETY: shared-memory reads of the transaction machinery, on the worker's main thread,
    // outside recovery (checked by the caller).
    unsafe {
        // Never assigned in this history (cannot happen for a journaled id, which a flushed WAL
        // record carries): it cannot have committed.
        if fxid >= pg_sys::ReadNextFullTransactionId().value {
            return Outcome::Aborted;
        }
        let xid = pg_sys::TransactionId::from((fxid & 0xffff_ffff) as u32);
        if pg_sys::TransactionIdIsInProgress(xid) {
            Outcome::Running
        } else if pg_sys::TransactionIdDidCommit(xid) {
            // An asynchronous commit (synchronous_commit = off, which any session may set) is
            // in the commit log before its WAL is on disk, and a crash can still undo it: a
            // DELETE whose secrets were destroyed would come back without them. Final only
            // once the commit record is flushed (what PostgreSQL's hint bits wait for too).
            if pg_sys::XLogNeedsFlush(pg_sys::TransactionIdGetCommitLSN(xid)) {
                Outcome::Running
            } else {
                Outcome::Committed
            }
        } else {
            Outcome::Aborted
        }
    }
}

/// A forget target: a KV path, or `binding:<path>:<binding id>`.
fn forget_target_ok(t: &str) -> bool {
    match t.strip_prefix("binding:").and_then(|r| r.rsplit_once(':')) {
        Some((dir, binding)) => {
            credcrypt_core::format::valid_kv_path(dir) && credcrypt_core::column::is_binding_id(binding)
        }
        None => credcrypt_core::format::valid_kv_path(t),
    }
}

fn fail(kind: FailKind, message: impl Into<String>) -> Fail {
    Fail { kind, message: message.into() }
}

impl Journal {
    /// Loads the journal left by the previous worker (a line it cannot parse is kept out, with a
    /// log line: it names no secret).
    pub(crate) fn load() -> Journal {
        let file = PathBuf::from("pg_credcrypt").join("kv_journal");
        let mut entries = Vec::new();
        if let Ok(text) = std::fs::read_to_string(&file) {
            for line in text.lines().filter(|l| !l.is_empty()) {
                let mut it = line.splitn(5, ' ');
                let parsed = (|| {
                    let kind = it.next()?;
                    let xid = it.next()?.parse().ok()?;
                    let mount = it.next()?.to_owned();
                    let version: u64 = it.next()?.parse().ok()?;
                    let path = it.next()?.to_owned();
                    match kind {
                        "W" if version > 0 => Some(Entry { xid, mount, version, path }),
                        "D" if version == 0 => Some(Entry { xid, mount, version, path }),
                        _ => None,
                    }
                })();
                match parsed {
                    Some(e) => entries.push(e),
                    None => pgrx::log!("pg_credcrypt worker: skipped a malformed line of {}", file.display()),
                }
            }
        }
        Journal { file, entries, mounts: Default::default(), backlog: false }
    }

    /// Whether writes wait for their transaction's end.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the last resolution round left work it could do now.
    pub(crate) fn has_backlog(&self) -> bool {
        self.backlog
    }

    /// Appends entries to the journal file and fsyncs it (the usual change: O(1) per entry).
    fn append(&self, new: &[Entry]) -> Result<(), Fail> {
        let io = |e: std::io::Error| fail(FailKind::Other, format!("cannot write the KV journal: {}", e.kind()));
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut text = String::new();
        for e in new {
            let kind = if e.is_forget() { 'D' } else { 'W' };
            text.push_str(&format!("{kind} {} {} {} {}\n", e.xid, e.mount, e.version, e.path));
        }
        let mut f = std::fs::OpenOptions::new().append(true).create(true).open(&self.file).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)
    }

    /// Writes the journal to disk: a temporary file, fsync, rename, fsync of the directory.
    fn persist(&self) -> Result<(), Fail> {
        let io = |e: std::io::Error| fail(FailKind::Other, format!("cannot write the KV journal: {}", e.kind()));
        let dir = self.file.parent().unwrap_or(std::path::Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = self.file.with_extension("tmp");
        let mut text = String::new();
        for e in &self.entries {
            let kind = if e.is_forget() { 'D' } else { 'W' };
            text.push_str(&format!("{kind} {} {} {} {}\n", e.xid, e.mount, e.version, e.path));
        }
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.file).map_err(io)?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }

    /// Checks once (while the answer is yes) that `mount` is a KV version 2 mount.
    fn check_mount(&mut self, client: &mut openbao::Client, mount: &str) -> Result<(), Fail> {
        if self.mounts.contains(mount) {
            return Ok(());
        }
        match client.kv_mount_version(mount) {
            Ok(Some(2)) => {
                if self.mounts.len() >= 256 {
                    self.mounts.clear();
                }
                self.mounts.insert(mount.to_owned());
                Ok(())
            }
            Ok(Some(v)) => Err(fail(
                FailKind::Config,
                format!("OpenBao mount {mount} is KV version {v}; the kv provider needs KV version 2"),
            )),
            Ok(None) => {
                Err(fail(FailKind::Config, format!("OpenBao has no KV mount {mount} (or the token may not use it)")))
            }
            Err(e) => Err(super::transit::worker_fail_of(&e)),
        }
    }

    /// Serves a `KvWrite` request: journals every item, then writes each (`cas`), then forgets
    /// the items whose write certainly did not happen.
    pub(crate) fn write(
        &mut self,
        client: &mut openbao::Client,
        mount: &str,
        items: &[ReqItem<'_>],
    ) -> Result<Vec<ItemResult>, Fail> {
        self.check_mount(client, mount)?;
        let metas: Vec<Result<KvWriteMeta, Fail>> = items
            .iter()
            .map(|it| {
                KvWriteMeta::decode(it.context.unwrap_or_default()).ok().filter(|m| within_prefix(&m.path)).ok_or_else(
                    || {
                        fail(
                            FailKind::InvalidInput,
                            "a KV write request is malformed or outside credcrypt.kv_path_prefix",
                        )
                    },
                )
            })
            .collect();
        let before = self.entries.len();
        for m in metas.iter().flatten() {
            self.entries.push(Entry { xid: m.xid, mount: mount.to_owned(), version: m.cas + 1, path: m.path.clone() });
        }
        if let Err(f) = self.append(&self.entries[before..]) {
            self.entries.truncate(before);
            return Err(f);
        }
        let mut out = Vec::with_capacity(items.len());
        let mut not_written = Vec::new();
        for (it, m) in items.iter().zip(&metas) {
            let m = match m {
                Ok(m) => m,
                Err(f) => {
                    out.push(Err(f.clone()));
                    continue;
                }
            };
            let value: Zeroizing<String>;
            let field = match std::str::from_utf8(it.data) {
                Ok(s) => {
                    value = Zeroizing::new(s.to_owned());
                    FIELD_VALUE
                }
                Err(_) => {
                    use base64::Engine as _;
                    value = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(it.data));
                    FIELD_VALUE_B64
                }
            };
            let binding = Zeroizing::new(m.binding.clone());
            let xid = Zeroizing::new(m.xid.to_string());
            let fields = [(field, &value), (FIELD_BINDING, &binding), (FIELD_XID, &xid)];
            let mut written = client.kv_write(mount, &m.path, &fields, m.cas);
            // A new version of an existing path (an UPDATE): the path may be past the version
            // the row holds (a write of an aborted transaction, destroyed or not, still counts),
            // so on a cas mismatch the write is journaled again at the current version and retried.
            let mut tries = 0;
            while m.cas > 0 && tries < 3 && matches!(&written, Err(e) if e.kind == openbao::ErrorKind::CasMismatch) {
                tries += 1;
                let current = match client.kv_metadata(mount, &m.path) {
                    Ok(Some(md)) => md.current_version,
                    Ok(None) => 0,
                    Err(e) => {
                        written = Err(e);
                        break;
                    }
                };
                self.entries.push(Entry {
                    xid: m.xid,
                    mount: mount.to_owned(),
                    version: current + 1,
                    path: m.path.clone(),
                });
                if let Err(f) = self.append(&self.entries[self.entries.len() - 1..]) {
                    self.entries.pop();
                    out.push(Err(f));
                    written = Ok(0);
                    break;
                }
                written = client.kv_write(mount, &m.path, &fields, current);
            }
            match written {
                Ok(0) => {} // answered above
                Ok(v) => {
                    // Journaled under the version cas promised; keep it as what it is otherwise.
                    if !self.entries.iter().any(|e| e.xid == m.xid && e.path == m.path && e.version == v) {
                        self.entries.push(Entry {
                            xid: m.xid,
                            mount: mount.to_owned(),
                            version: v,
                            path: m.path.clone(),
                        });
                        let _ = self.append(&self.entries[self.entries.len() - 1..]);
                    }
                    out.push(Ok(Zeroizing::new(v.to_string().into_bytes())));
                }
                Err(e) => {
                    if matches!(
                        e.kind,
                        openbao::ErrorKind::CasMismatch
                            | openbao::ErrorKind::InvalidArgument
                            | openbao::ErrorKind::MountNotFound
                    ) {
                        not_written.push((m.xid, m.path.clone()));
                    }
                    out.push(Err(super::transit::worker_fail_of(&e)));
                }
            }
        }
        if !not_written.is_empty() {
            self.entries.retain(|e| !not_written.iter().any(|(x, p)| *x == e.xid && *p == e.path));
            // A failure here leaves entries that resolution drops (their version holds no write of theirs).
            let _ = self.persist();
        }
        Ok(out)
    }

    /// Serves a `KvForget` request: journals each target under its transaction (the item's
    /// context); the destruction happens when that transaction has committed.
    pub(crate) fn forget(&mut self, mount: &str, items: &[ReqItem<'_>]) -> Result<Vec<ItemResult>, Fail> {
        let before = self.entries.len();
        for it in items {
            let target = std::str::from_utf8(it.data).ok().filter(|t| forget_target_ok(t)).filter(|t| {
                within_prefix(t.strip_prefix("binding:").and_then(|r| r.rsplit_once(':')).map_or(t, |(dir, _)| dir))
            });
            let xid = it.context.and_then(|c| std::str::from_utf8(c).ok()).and_then(|x| x.parse::<u64>().ok());
            let (Some(target), Some(xid)) = (target, xid) else {
                self.entries.truncate(before);
                return Err(fail(FailKind::InvalidInput, "a KV forget request is malformed"));
            };
            self.entries.push(Entry { xid, mount: mount.to_owned(), version: 0, path: target.to_owned() });
        }
        if let Err(f) = self.append(&self.entries[before..]) {
            self.entries.truncate(before);
            return Err(f);
        }
        Ok(Vec::new())
    }

    /// Destroys every version of a forget entry's target; false when it must be tried again
    /// (OpenBao unreachable or sealed). A final refusal is logged and given up.
    fn destroy_target(client: &mut openbao::Client, e: &Entry) -> bool {
        let give_up = |err: &openbao::Error| {
            pgrx::log!("pg_credcrypt worker: KV destroy after commit refused, given up: {err}");
            true
        };
        let paths = match e.path.strip_prefix("binding:").and_then(|r| r.rsplit_once(':')) {
            None => vec![e.path.clone()],
            Some((dir, binding)) => {
                // Every <dir>/<table>/<binding>/… subtree.
                let mut paths = Vec::new();
                match client.kv_list(&e.mount, dir) {
                    Ok(tables) => {
                        for t in tables.iter().filter(|t| t.ends_with('/')) {
                            let sub = format!("{dir}/{t}{binding}");
                            match client.kv_list_recursive(&e.mount, &sub) {
                                Ok(p) => paths.extend(p),
                                Err(err) if transient(&err) => return false,
                                Err(err) => return give_up(&err),
                            }
                        }
                    }
                    Err(err) if transient(&err) => return false,
                    Err(err) => return give_up(&err),
                }
                paths
            }
        };
        for p in paths {
            match client.kv_delete_all(&e.mount, &p) {
                Ok(()) => {}
                Err(err) if transient(&err) => return false,
                Err(err) => return give_up(&err),
            }
        }
        true
    }

    /// Serves a `KvRead` request: reads every item concurrently, and answers a secret only when
    /// its stored binding equals the expected one (constant time).
    pub(crate) fn read(
        &mut self,
        client: &mut openbao::Client,
        mount: &str,
        items: &[ReqItem<'_>],
    ) -> Result<Vec<ItemResult>, Fail> {
        self.check_mount(client, mount)?;
        let mut reqs = Vec::with_capacity(items.len());
        let mut parsed = Vec::with_capacity(items.len());
        for it in items {
            let p = std::str::from_utf8(it.data)
                .ok()
                .and_then(|s| s.split_once(':'))
                .and_then(|(v, p)| Some((v.parse::<u64>().ok().filter(|&v| v > 0)?, p.to_owned())))
                .filter(|(_, p)| within_prefix(p));
            if let Some((v, p)) = &p {
                reqs.push((mount.to_owned(), p.clone(), *v));
            }
            parsed.push(p);
        }
        let mut answers = client.kv_read_many(&reqs, READS_IN_FLIGHT).into_iter();
        let mut out = Vec::with_capacity(items.len());
        for (it, p) in items.iter().zip(parsed) {
            if p.is_none() {
                out.push(Err(fail(FailKind::InvalidInput, "a KV read request is malformed")));
                continue;
            }
            let answer = answers.next().unwrap_or(Ok(openbao::KvValue::Missing));
            out.push(match answer {
                Ok(openbao::KvValue::Data(d)) => {
                    let expected = it.context.unwrap_or_default();
                    let stored = d.get(FIELD_BINDING).map(|b| b.as_bytes().to_vec()).unwrap_or_default();
                    if !constant_time_eq(&stored, expected) {
                        Err(fail(
                            FailKind::AuthenticationFailed,
                            "the KV secret is bound to another row, path or context",
                        ))
                    } else if let Some(v) = d.get(FIELD_VALUE) {
                        Ok(Zeroizing::new(v.as_bytes().to_vec()))
                    } else if let Some(v) = d.get(FIELD_VALUE_B64) {
                        use base64::Engine as _;
                        base64::engine::general_purpose::STANDARD
                            .decode(v.as_bytes())
                            .map(Zeroizing::new)
                            .map_err(|_| fail(FailKind::Protocol, "a KV secret's value_b64 is not base64"))
                    } else {
                        Err(fail(FailKind::Protocol, "the KV secret has no value field"))
                    }
                }
                Ok(_) => Err(fail(
                    FailKind::Destroyed,
                    "the KV secret version was destroyed or deleted, or does not exist: the value can never be read",
                )),
                Err(e) => Err(super::transit::worker_fail_of(&e)),
            });
        }
        Ok(out)
    }

    /// Resolves the journal against the commit log (see the module comment). Outside recovery
    /// only: on a standby (or during recovery) the commit log is not final.
    pub(crate) fn resolve(&mut self, client: &mut openbao::Client) {
        // SAFETY: reads the recovery state from shared memory.
        if self.entries.is_empty() || unsafe { pg_sys::RecoveryInProgress() } {
            return;
        }
        let before = self.entries.len();
        let mut keep = Vec::with_capacity(self.entries.len());
        // OpenBao calls this round: bounded, so that a large rollback or DELETE does not hold
        // every other request up (the rest waits for the next round, soon after).
        let mut budget = WORK_PER_ROUND;
        let mut unavailable = false;
        self.backlog = false;
        for e in std::mem::take(&mut self.entries) {
            let o = outcome(e.xid);
            let needs_call = match o {
                Outcome::Running => false,
                Outcome::Committed => e.is_forget(),
                Outcome::Aborted => !e.is_forget(),
            };
            if needs_call && (budget == 0 || unavailable) {
                self.backlog |= !unavailable;
                keep.push(e);
                continue;
            }
            match o {
                Outcome::Running => keep.push(e),
                Outcome::Committed if e.is_forget() => {
                    budget -= 1;
                    if !Self::destroy_target(client, &e) {
                        unavailable = true;
                        keep.push(e);
                    }
                }
                Outcome::Committed => {}
                Outcome::Aborted if e.is_forget() => {}
                Outcome::Aborted => {
                    budget -= 1;
                    match client.kv_read(&e.mount, &e.path, e.version) {
                        Ok(openbao::KvValue::Data(d)) => {
                            let ours = d.get(FIELD_XID).is_some_and(|x| x == e.xid.to_string());
                            if ours {
                                match client.kv_destroy_versions(&e.mount, &e.path, &[e.version]) {
                                    Ok(()) => {}
                                    Err(err) if transient(&err) => {
                                        unavailable = true;
                                        keep.push(e);
                                    }
                                    Err(err) => {
                                        pgrx::log!(
                                            "pg_credcrypt worker: KV destroy after abort refused, given up: {err}"
                                        );
                                    }
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(err) if transient(&err) => {
                            unavailable = true;
                            keep.push(e);
                        }
                        Err(err) => pgrx::log!("pg_credcrypt worker: KV read after abort refused, given up: {err}"),
                    }
                }
            }
        }
        self.entries = keep;
        if self.entries.len() != before {
            if let Err(f) = self.persist() {
                pgrx::log!("pg_credcrypt worker: {}", f.message);
            }
        }
    }
}
