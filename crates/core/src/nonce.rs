//! Nonces from the operating system's CSPRNG, drawn in blocks to keep the per-value cost low.
//!
//! The pool remembers the process id that filled it and is discarded after a `fork`, so two
//! processes never hand out the same bytes (PostgreSQL backends are forked from the postmaster).

use std::sync::Mutex;

use crate::error::{Error, ErrorKind, Result};
use crate::format::NONCE_LEN;

const POOL_LEN: usize = NONCE_LEN * 256;

struct Pool {
    pid: u32,
    pos: usize,
    buf: [u8; POOL_LEN],
}

static POOL: Mutex<Pool> = Mutex::new(Pool { pid: 0, pos: POOL_LEN, buf: [0; POOL_LEN] });

/// Returns 12 fresh random bytes from the OS CSPRNG (getrandom(2)).
pub fn random_nonce() -> Result<[u8; NONCE_LEN]> {
    let mut pool = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let pid = std::process::id();
    if pool.pid != pid || pool.pos + NONCE_LEN > POOL_LEN {
        getrandom::getrandom(&mut pool.buf).map_err(|_| {
            Error::new(ErrorKind::RandomFailure, "the operating system's random number generator failed")
        })?;
        pool.pid = pid;
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
    #[test]
    fn nonces_differ() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(super::random_nonce().unwrap()));
        }
    }
}
