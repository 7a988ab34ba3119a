//! Nonces from the operating system's CSPRNG, drawn in blocks to keep the per-value cost low.
//!
//! The pool is discarded after a `fork`, so two processes never hand out the same bytes
//! (PostgreSQL backends are forked from the postmaster). Forks are detected by a counter that a
//! `pthread_atfork` child handler increments (as OpenSSL and libsodium do), which costs nothing
//! per nonce, unlike a `getpid()` system call per value.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

use crate::error::{Error, ErrorKind, Result};
use crate::format::NONCE_LEN;

const POOL_LEN: usize = NONCE_LEN * 256;

/// Incremented in every child process right after `fork`.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(1);
static ATFORK: Once = Once::new();

extern "C" fn after_fork_in_child() {
    // Async-signal-safe: a single atomic add.
    FORK_GENERATION.fetch_add(1, Ordering::SeqCst);
}

fn fork_generation() -> u64 {
    ATFORK.call_once(|| {
        // SAFETY: registers a handler that only touches an atomic; no allocation, no locks.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        if rc != 0 {
            // Without the handler, fall back to treating every call as a new process.
            FORK_GENERATION.store(0, Ordering::SeqCst);
        }
    });
    FORK_GENERATION.load(Ordering::SeqCst)
}

struct Pool {
    generation: u64,
    pos: usize,
    buf: [u8; POOL_LEN],
}

static POOL: Mutex<Pool> = Mutex::new(Pool { generation: 0, pos: POOL_LEN, buf: [0; POOL_LEN] });

/// Returns `N` fresh random bytes from the OS CSPRNG (getrandom(2)), unpooled (for ids).
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b)
        .map_err(|_| Error::new(ErrorKind::RandomFailure, "the operating system's random source failed"))?;
    Ok(b)
}

/// Returns 12 fresh random bytes from the OS CSPRNG (getrandom(2)).
pub fn random_nonce() -> Result<[u8; NONCE_LEN]> {
    let mut pool = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let generation = fork_generation();
    // Generation 0 means "fork detection unavailable": refill every time.
    if generation == 0 || pool.generation != generation || pool.pos + NONCE_LEN > POOL_LEN {
        getrandom::getrandom(&mut pool.buf).map_err(|_| {
            Error::new(ErrorKind::RandomFailure, "the operating system's random number generator failed")
        })?;
        pool.generation = generation;
        pool.pos = 0;
    }
    let mut n = [0u8; NONCE_LEN];
    let start = pool.pos;
    n.copy_from_slice(&pool.buf[start..start + NONCE_LEN]);
    // Overwrite what was handed out so the same bytes can never be returned twice.
    pool.buf[start..start + NONCE_LEN].fill(0);
    pool.pos += NONCE_LEN;
    Ok(n)
}

#[cfg(test)]
mod tests {
    /// A forked child must not hand out the nonces its parent would hand out next.
    #[test]
    fn fork_discards_the_pool() {
        let _ = super::random_nonce().unwrap();
        let mut fds = [0; 2];
        // SAFETY: plain pipe/fork/read/write/waitpid; the child only draws a nonce, writes it and exits.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                let n = super::random_nonce().unwrap_or([0; 12]);
                libc::write(fds[1], n.as_ptr().cast(), n.len());
                libc::_exit(0);
            }
            let parent = super::random_nonce().unwrap();
            let mut child = [0u8; 12];
            assert_eq!(libc::read(fds[0], child.as_mut_ptr().cast(), 12), 12);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            assert_ne!(parent, child, "parent and child drew the same nonce after fork");
        }
    }

    #[test]
    fn nonces_differ() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(super::random_nonce().unwrap()));
        }
    }
}
