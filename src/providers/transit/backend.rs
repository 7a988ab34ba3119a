//! The backend side of the queue: hand a request to the worker and wait for its answer.
//!
//! While waiting, the backend sleeps on its latch and runs `CHECK_FOR_INTERRUPTS` on every
//! wake-up, so `statement_timeout`, `pg_cancel_backend` and postmaster death end the wait; a
//! drop guard gives the slot up on every exit path (including an ERROR unwinding through us).
//! Without an answer within `credcrypt.request_timeout_ms` the statement fails.

use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use credcrypt_core::wire::{self, Fail, FailKind, Op, ReqItem};
use credcrypt_core::{Error, ErrorKind};
use pgrx::pg_sys;
use zeroize::Zeroizing;

use super::queue::{self, state, Header, Slot, SLOT_BYTES};
use crate::gucs;

/// One answered item: the bytes (zeroized on drop) or the reason it failed.
pub type ItemResult = Result<Zeroizing<Vec<u8>>, Fail>;

/// Maps a whole-request failure to a core error.
pub fn fail_to_error(f: &Fail) -> Error {
    let kind = match f.kind {
        FailKind::Unavailable | FailKind::Sealed => ErrorKind::ProviderUnavailable,
        FailKind::Rejected => ErrorKind::ProviderRejected,
        FailKind::Protocol | FailKind::Other => ErrorKind::ProviderProtocol,
        FailKind::VersionRetired => ErrorKind::KeyVersionRetired,
        FailKind::PermissionDenied => ErrorKind::ProviderDenied,
        FailKind::KeyNotFound => ErrorKind::TransitKeyNotFound,
        FailKind::UnsupportedKey => ErrorKind::WrongKeyType,
        FailKind::AuthenticationFailed => ErrorKind::AuthenticationFailed,
        FailKind::InvalidInput => ErrorKind::Malformed,
        FailKind::Config => ErrorKind::ProviderNotConfigured,
        FailKind::TooLarge => ErrorKind::TooLarge,
        FailKind::Destroyed => ErrorKind::KeyDestroyed,
    };
    let message = match kind {
        ErrorKind::AuthenticationFailed => {
            "ciphertext authentication failed: the value was tampered with, or the key or context is wrong".to_owned()
        }
        ErrorKind::KeyDestroyed => format!("OpenBao KV: {}", f.message),
        _ if f.message.starts_with("OpenBao") => f.message.clone(),
        _ => format!("OpenBao Transit: {}", f.message),
    };
    Error::new(kind, message)
}

fn queue() -> Result<&'static Header, Error> {
    queue::get().ok_or_else(|| {
        Error::new(
            ErrorKind::NotPreloaded,
            "the OpenBao Transit provider needs pg_credcrypt in shared_preload_libraries",
        )
    })
}

/// Gives a claimed slot back on every exit path unless the answer was consumed.
struct Claim<'a> {
    slot: &'a Slot,
    /// The slot's index (for [`HELD`]).
    index: usize,
    armed: bool,
    /// The slot's generation when this backend claimed it.
    generation: u64,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        HELD.with(|h| h.borrow_mut().retain(|&i| i != self.index));
        if self.armed {
            give_up(self.slot);
        }
    }
}

thread_local! {
    /// The slots this backend holds, for the exit callback: a backend terminated while it waits
    /// (FATAL, pg_terminate_backend) leaves through proc_exit, where Rust destructors do not run.
    static HELD: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
    static EXIT_HOOK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn release_on_exit(_code: std::ffi::c_int, _arg: pg_sys::Datum) {
    let held = HELD.with(|h| std::mem::take(&mut *h.borrow_mut()));
    if let Some(q) = queue::get() {
        for i in held {
            give_up(q.slot(i));
        }
    }
}

/// Records that this backend holds slot `i` (and registers the exit callback once).
fn hold(i: usize) {
    if !EXIT_HOOK.with(|h| h.replace(true)) {
        // SAFETY: registers a callback run by proc_exit in this backend, on the main thread.
        unsafe { pg_sys::before_shmem_exit(Some(release_on_exit), pg_sys::Datum::from(0)) };
    }
    HELD.with(|h| h.borrow_mut().push(i));
}

fn give_up(slot: &Slot) {
    loop {
        match slot.state.load(SeqCst) {
            state::READY => {
                if slot.state.compare_exchange(state::READY, state::FILLING, SeqCst, SeqCst).is_ok() {
                    // SAFETY: we own the slot again (FILLING).
                    unsafe { slot.wipe(slot.len.load(SeqCst) as usize) };
                    slot.state.store(state::FREE, SeqCst);
                    return;
                }
            }
            state::WORKING => {
                if slot.state.compare_exchange(state::WORKING, state::ABANDONED, SeqCst, SeqCst).is_ok() {
                    return; // the worker wipes and frees it when it finishes
                }
            }
            state::DONE | state::FILLING => {
                // SAFETY: the answer is ours to discard (DONE) or we never submitted (FILLING).
                unsafe { slot.wipe(SLOT_BYTES) };
                slot.state.store(state::FREE, SeqCst);
                return;
            }
            _ => return,
        }
    }
}

fn timeout() -> Duration {
    gucs::request_timeout()
}

fn wait_latch(ms: u64) {
    // SAFETY: MyLatch is this backend's own latch; called on the main thread.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms as _,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pgrx::check_for_interrupts!();
}

fn unanswered(deadline_ms: u128) -> Error {
    if let Some(q) = queue::get() {
        q.stats.timeouts.fetch_add(1, SeqCst);
    }
    Error::new(ErrorKind::WorkerTimeout, "the pg_credcrypt worker did not answer in time").with_detail(format!(
        "no answer within credcrypt.request_timeout_ms = {deadline_ms} ms; see credcrypt.status()"
    ))
}

/// Claims a free slot: with `may_wait`, waiting (interruptibly) until `deadline`; without,
/// only a slot free now (`None` otherwise) — for a backend that already holds one, so that
/// backends holding slots never wait for each other's.
fn claim(q: &'static Header, deadline: Instant, may_wait: bool) -> Result<Option<Claim<'static>>, Error> {
    // SAFETY: MyProcPid is set for every backend.
    let start = unsafe { pg_sys::MyProcPid } as usize;
    loop {
        for k in 0..q.nslots() {
            let i = (start + k) % q.nslots();
            let slot = q.slot(i);
            if slot.state.compare_exchange(state::FREE, state::FILLING, SeqCst, SeqCst).is_ok() {
                let generation = slot.generation.fetch_add(1, SeqCst) + 1;
                hold(i);
                return Ok(Some(Claim { slot, index: i, armed: true, generation }));
            }
        }
        if !may_wait {
            return Ok(None);
        }
        if Instant::now() >= deadline {
            return Err(unanswered(timeout().as_millis()));
        }
        wait_latch(5);
    }
}

/// Writes one request that fits a slot into a claimed slot and hands it to the worker.
fn fill(claim: &Claim<'static>, op: Op, key: &str, items: &[ReqItem<'_>]) -> Result<(), Error> {
    let slot = claim.slot;
    // SAFETY: the slot is FILLING and ours.
    let n = wire::encode_request(unsafe { slot.buffer() }, op, key, items)?;
    slot.len.store(n as u32, SeqCst);
    // SAFETY: MyLatch / MyProcPid belong to this backend.
    unsafe {
        slot.owner_latch.store(pg_sys::MyLatch as usize, SeqCst);
        slot.owner_pid.store(pg_sys::MyProcPid, SeqCst);
    }
    slot.state.store(state::READY, SeqCst);
    Ok(())
}

/// Waits for the answer in a submitted slot, reads it and frees the slot.
fn collect(mut claim: Claim<'static>, op: Op, sent: usize, deadline: Instant) -> Result<Vec<ItemResult>, Error> {
    let slot = claim.slot;
    loop {
        if slot.state.load(SeqCst) == state::DONE {
            // The slot is still the one this backend claimed (nobody can claim a slot that is
            // not FREE; the check makes a broken state machine an error, not a foreign answer).
            if slot.generation.load(SeqCst) != claim.generation {
                return Err(Error::internal("a queue slot changed hands while this backend held it"));
            }
            let len = (slot.len.load(SeqCst) as usize).min(SLOT_BYTES);
            // SAFETY: DONE: the worker is finished with the slot; it is ours to read.
            let raw = Zeroizing::new(unsafe { slot.buffer() }[..len].to_vec());
            // SAFETY: as above; wipe before returning the slot to the pool.
            unsafe { slot.wipe(len) };
            slot.state.store(state::FREE, SeqCst);
            claim.armed = false;
            let decoded = wire::decode_response(&raw)?;
            return match decoded {
                // One answer per item, always (key lookups and data keys have answers of their own: a data
                // key's one item only carries its associated data).
                Ok(answers) if matches!(op, Op::Encrypt | Op::Decrypt | Op::Rewrap) && answers.len() != sent => {
                    Err(Error::internal(format!("the worker answered {} value(s) for {sent} sent", answers.len())))
                }
                Ok(answers) => Ok(answers.into_iter().map(|r| r.map(|b| Zeroizing::new(b.to_vec()))).collect()),
                Err(fail) => Err(fail_to_error(&fail)),
            };
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(unanswered(timeout().as_millis()));
        }
        wait_latch((deadline - now).as_millis().clamp(1, 100) as u64);
    }
}

/// Slots one encryption or decryption may fill at once: the worker takes them in one round,
/// and their Transit requests go out together.
const PARTS_AT_ONCE: usize = 4;

/// Requests handed to the worker and not collected yet: the claimed slots, in order, with the
/// number of items each carries. Dropping it gives the slots up (an error unwinding, a cancel).
struct Submitted {
    parts: Vec<(Claim<'static>, usize)>,
    deadline: Instant,
}

/// Hands the first items of `items` to the worker in slot-sized parts: up to [`PARTS_AT_ONCE`]
/// slots for encrypt and decrypt (one for other operations, whose requests the worker serves
/// in slot order). Only the first slot is waited for; further ones are taken only if free, so
/// that no backend waits for a slot while it holds one.
fn submit(q: &'static Header, op: Op, key: &str, items: &[ReqItem<'_>]) -> Result<Submitted, Error> {
    let deadline = Instant::now() + timeout();
    let parts_at_once = if matches!(op, Op::Encrypt | Op::Decrypt) { PARTS_AT_ONCE } else { 1 };
    let mut parts = Vec::new();
    let mut sent = 0;
    loop {
        let end = sent + part_end(op, key, &items[sent..])?;
        let Some(claim) = claim(q, deadline, parts.is_empty())? else { break };
        fill(&claim, op, key, &items[sent..end])?;
        parts.push((claim, end - sent));
        sent = end;
        if sent == items.len() || parts.len() >= parts_at_once {
            break;
        }
    }
    q.wake_worker();
    Ok(Submitted { parts, deadline })
}

/// Upper bound of the answer's size for an item (encrypt answers are base64 and longer).
fn answer_len(op: Op, item: &ReqItem<'_>) -> usize {
    match op {
        Op::Encrypt => (item.data.len() + 28).div_ceil(3) * 4 + 32,
        _ => item.data.len() + 16,
    }
}

/// The largest plaintext the queue carries, in bytes.
pub const MAX_VALUE: usize = 64 * 1024;

/// The largest item a request may carry: a plaintext for encrypt, a ciphertext for decrypt.
fn max_item(op: Op) -> usize {
    match op {
        Op::Encrypt | Op::KvWrite => MAX_VALUE,
        _ => (MAX_VALUE + 28).div_ceil(3) * 4 + 64,
    }
}

/// The end of the first slot-sized part of `items` (at least one item; an empty request is
/// one part of nothing).
fn part_end(op: Op, key: &str, items: &[ReqItem<'_>]) -> Result<usize, Error> {
    let budget = SLOT_BYTES - 64 - key.len();
    let (mut req, mut ans, mut end) = (0usize, 0usize, 0usize);
    while end < items.len() {
        let it = &items[end];
        if it.data.len() > max_item(op) || it.context.map_or(0, <[u8]>::len) > 16 * 1024 {
            return Err(Error::new(ErrorKind::TooLarge, "value is too large for the OpenBao providers (Transit, KV)")
                .with_detail(format!("the limit is {MAX_VALUE} bytes per value and 16384 bytes of context")));
        }
        let r = 9 + it.data.len() + it.context.map_or(0, <[u8]>::len);
        let a = 9 + answer_len(op, it);
        if end > 0 && (req + r > budget || ans + a > budget) {
            break;
        }
        req += r;
        ans += a;
        end += 1;
    }
    Ok(end)
}

/// Sends `items` to the worker in as many slot-sized requests as needed and waits; answers in
/// order.
pub fn call(op: Op, key: &str, items: &[ReqItem<'_>]) -> Result<Vec<ItemResult>, Error> {
    let q = queue()?;
    let mut out = Vec::with_capacity(items.len());
    let mut start = 0;
    loop {
        // No slot is held here: the previous submission's slots were all collected.
        let Submitted { parts, deadline } = submit(q, op, key, &items[start..])?;
        for (claim, n) in parts {
            // An error drops the parts not collected yet: their slots are given up.
            out.extend(collect(claim, op, n, deadline)?);
            start += n;
        }
        if start == items.len() {
            return Ok(out);
        }
    }
}

/// A new 32-byte key generated by Transit key `key` (`transit/datakey`), wrapped with the
/// associated data `context`: (the key, zeroized on drop; its wrapped form `vault:vN:…`).
pub fn data_key(key: &str, context: Option<&[u8]>) -> Result<(Zeroizing<[u8; 32]>, String), Error> {
    let answer = call(Op::DataKey, key, &[ReqItem { data: &[], context }])?;
    let mut it = answer.into_iter();
    let plain = it.next().ok_or_else(|| Error::malformed("empty answer"))?.map_err(|f| fail_to_error(&f))?;
    let wrapped = it.next().ok_or_else(|| Error::malformed("empty answer"))?.map_err(|f| fail_to_error(&f))?;
    let wrapped = String::from_utf8(wrapped.to_vec()).map_err(|_| Error::malformed("wrapped key is not text"))?;
    let bytes: [u8; 32] = plain.as_slice().try_into().map_err(|_| Error::malformed("a data key is not 32 bytes"))?;
    Ok((Zeroizing::new(bytes), wrapped))
}

/// A wrapped key to wrap again: its wrapped form, the associated data to unwrap it with, and
/// the associated data to wrap it with.
pub type Rewrap<'a> = (&'a [u8], Option<&'a [u8]>, Option<&'a [u8]>);

/// Wraps keys again with the latest version of Transit key `key` ([`Rewrap`] items); one
/// Transit batch each way (Transit's rewrap cannot carry associated data). The new wrapped
/// forms, in order.
pub fn rewrap_with(key: &str, items: &[Rewrap<'_>]) -> Result<Vec<String>, Error> {
    let unwrap: Vec<ReqItem<'_>> = items.iter().map(|(w, from, _)| ReqItem { data: w, context: *from }).collect();
    let plain: Vec<Zeroizing<Vec<u8>>> = call(Op::Decrypt, key, &unwrap)?
        .into_iter()
        .map(|a| a.map_err(|f| fail_to_error(&f)))
        .collect::<Result<_, _>>()?;
    let wrap: Vec<ReqItem<'_>> =
        plain.iter().zip(items).map(|(p, (_, _, to))| ReqItem { data: p.as_slice(), context: *to }).collect();
    call(Op::Encrypt, key, &wrap)?
        .into_iter()
        .map(|a| {
            let w = a.map_err(|f| fail_to_error(&f))?;
            String::from_utf8(w.to_vec()).map_err(|_| Error::malformed("wrapped key is not text"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only "cannot reach OpenBao" may fall back to the local key; a request OpenBao refused or
    /// an answer it garbled must not (it once fell back after an HTTP 405).
    #[test]
    fn only_outages_are_unavailable() {
        let kind = |k| fail_to_error(&Fail { kind: k, message: "m".into() }).kind;
        assert_eq!(kind(FailKind::Unavailable), ErrorKind::ProviderUnavailable);
        assert_eq!(kind(FailKind::Sealed), ErrorKind::ProviderUnavailable);
        for k in
            [FailKind::Rejected, FailKind::Protocol, FailKind::Other, FailKind::VersionRetired, FailKind::InvalidInput]
        {
            assert_ne!(kind(k), ErrorKind::ProviderUnavailable, "{k:?}");
        }
    }
}
