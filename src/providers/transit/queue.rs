//! The shared-memory request queue between backends and the background worker.
//!
//! A fixed array of `credcrypt.queue_slots` slots (default 64), each with a 128 KiB buffer, set
//! up at server start (`shared_preload_libraries`). A slot moves through these states:
//!
//! ```text
//!   FREE --claim (backend, CAS)--> FILLING --submit--> READY --take (worker, CAS)--> WORKING
//!   WORKING --answer (worker, CAS)--> DONE --read (backend)--> FREE
//!   READY   --give up (backend, CAS)--> FILLING --wipe--> FREE
//!   WORKING --give up (backend, CAS)--> ABANDONED --answer (worker)--> wipe --> FREE
//!   DONE    --give up (backend)--> wipe --> FREE
//! ```
//!
//! Only a FREE slot can be claimed, and the worker answers with a compare-and-swap from
//! WORKING, so an answer for a backend that gave up can never land in a slot someone else has
//! reused: the slot stays ABANDONED (unusable) until the worker itself frees it. Every claim
//! also increments the slot's generation, and a backend reads an answer only if the slot's
//! generation is still the one it claimed (a check of that invariant: a mismatch is an
//! internal error, never a read of somebody else's answer). Buffers are wiped whenever
//! a slot returns to FREE, so plaintexts do not linger in shared memory.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst};

use pgrx::pg_sys;

/// Bytes of payload per slot (request, then response).
pub const SLOT_BYTES: usize = 128 * 1024;

/// Slot states.
pub mod state {
    /// Unused.
    pub const FREE: u32 = 0;
    /// Claimed by a backend that is writing its request.
    pub const FILLING: u32 = 1;
    /// Submitted, waiting for the worker.
    pub const READY: u32 = 2;
    /// Taken by the worker.
    pub const WORKING: u32 = 3;
    /// Answered, waiting for the backend to read.
    pub const DONE: u32 = 4;
    /// The backend gave up while the worker held the slot.
    pub const ABANDONED: u32 = 5;
}

/// Number of counters in [`Stats::errors`] (indexed by `FailKind as usize`).
pub const ERROR_KINDS: usize = 15;

/// Text fields written by the worker and read by `credcrypt.status()`, guarded by a seqlock.
#[repr(C)]
pub struct StatusText {
    seq: AtomicU64,
    active_addr: UnsafeCell<[u8; 256]>,
    last_error: UnsafeCell<[u8; 256]>,
}

/// Counters and worker state shown by `credcrypt.status()`.
#[repr(C)]
pub struct Stats {
    /// Requests (slots) answered.
    pub requests: AtomicU64,
    /// Items (values) answered.
    pub items: AtomicU64,
    /// Transit HTTP batch calls made (encrypt/decrypt).
    pub batches: AtomicU64,
    /// Item or request failures, by `FailKind`.
    pub errors: [AtomicU64; ERROR_KINDS],
    /// When the last failure of each kind happened (unix ms, 0 never).
    pub errors_at: [AtomicI64; ERROR_KINDS],
    /// Requests a backend gave up on because the worker did not answer within
    /// `credcrypt.request_timeout_ms` (or could not get a queue slot in that time).
    pub timeouts: AtomicU64,
    /// Values encrypted with the local key because OpenBao was unavailable (`credcrypt.fallback`).
    pub fallbacks: AtomicU64,
    /// Token time-to-live left, in ms, when last measured (-1 unknown / never expires).
    pub token_ttl_ms: AtomicI64,
    /// When that was measured (unix ms).
    pub token_ttl_at_ms: AtomicI64,
    /// Worker start time (unix ms).
    pub worker_started_ms: AtomicI64,
    /// Times the worker (re)started.
    pub worker_starts: AtomicU64,
    /// Address failovers made by the HTTP client.
    pub failovers: AtomicU64,
    /// Token renewals and logins.
    pub renewals: AtomicU64,
}

/// The queue header.
#[repr(C)]
pub struct Header {
    magic: u64,
    nslots: u32,
    /// Worker process id, 0 when no worker runs.
    pub worker_pid: AtomicI32,
    /// The worker's latch (`*mut Latch` as usize), 0 when no worker runs.
    pub worker_latch: AtomicUsize,
    /// Counters.
    pub stats: Stats,
    /// Text status.
    pub text: StatusText,
}

/// One request slot.
#[repr(C)]
pub struct Slot {
    /// See [`state`].
    pub state: AtomicU32,
    /// Incremented by every claim.
    pub generation: AtomicU64,
    /// The waiting backend's latch (`*mut Latch` as usize).
    pub owner_latch: AtomicUsize,
    /// The waiting backend's pid.
    pub owner_pid: AtomicI32,
    /// Bytes used in `data` (request, then response).
    pub len: AtomicU32,
    data: UnsafeCell<[u8; SLOT_BYTES]>,
}

const MAGIC: u64 = 0x6363_5155_4555_4531; // "ccQUEUE1"

/// The mapped queue of this process, or null when the library was not preloaded.
static mut QUEUE: *mut Header = std::ptr::null_mut();
static mut PREV_SHMEM_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP: pg_sys::shmem_startup_hook_type = None;
static mut NSLOTS: usize = 0;

fn total_size(nslots: usize) -> usize {
    std::mem::size_of::<Header>() + nslots * std::mem::size_of::<Slot>()
}

/// Registers the shared-memory hooks. Call from `_PG_init` while preloading only.
pub fn init(nslots: usize) {
    // SAFETY: called once from _PG_init in the postmaster during shared_preload_libraries.
    unsafe {
        NSLOTS = nslots;
        PREV_SHMEM_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(shmem_request);
        PREV_SHMEM_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    // SAFETY: PostgreSQL calls this once in the postmaster while shared memory is sized.
    unsafe {
        if let Some(prev) = PREV_SHMEM_REQUEST {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(total_size(NSLOTS));
    }
}

/// Index of `AddinShmemInitLock` in `MainLWLockArray`: PostgreSQL's `lwlocknames.txt` (15,
/// 16) and `lwlocklist.h` (17, 18) fix it at 21, and the bindings carry no constant for it
/// (it is a macro). pgrx's own shared-memory helpers use the same index.
const ADDIN_SHMEM_INIT_LOCK: usize = 21;

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    // SAFETY: called in the postmaster (and in EXEC_BACKEND children) after shared memory
    // exists; AddinShmemInitLock serialises ShmemInitStruct as PostgreSQL requires.
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP {
            prev();
        }
        let lock = &raw mut (*pg_sys::MainLWLockArray.add(ADDIN_SHMEM_INIT_LOCK)).lock;
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let size = total_size(NSLOTS);
        let p = pg_sys::ShmemInitStruct(c"pg_credcrypt queue".as_ptr(), size, &mut found).cast::<Header>();
        if !found {
            std::ptr::write_bytes(p.cast::<u8>(), 0, size);
            (*p).magic = MAGIC;
            (*p).nslots = NSLOTS as u32;
            (*p).stats.token_ttl_ms.store(-1, SeqCst);
        }
        QUEUE = p;
        pg_sys::LWLockRelease(lock);
    }
}

/// The queue, if this server preloaded the library.
pub fn get() -> Option<&'static Header> {
    // SAFETY: QUEUE is set once at shmem startup (inherited by forked children) and points to
    // shared memory that lives as long as the server.
    unsafe {
        let p = QUEUE;
        if p.is_null() || (*p).magic != MAGIC {
            None
        } else {
            Some(&*p)
        }
    }
}

impl Header {
    /// Number of slots.
    pub fn nslots(&self) -> usize {
        self.nslots as usize
    }

    /// Slot `i`.
    pub fn slot(&self, i: usize) -> &Slot {
        assert!(i < self.nslots(), "slot index out of range");
        // SAFETY: the slots follow the header in the same allocation (see total_size).
        unsafe {
            let base = (self as *const Header).add(1).cast::<Slot>();
            &*base.add(i)
        }
    }

    /// Slots in use now: a backend is filling them, they wait for the worker or the worker
    /// serves them, their answer waits for its backend, or the worker has yet to free them
    /// after their backend gave up — every slot that is not free (a monitoring figure, read
    /// without locking).
    pub fn depth(&self) -> usize {
        (0..self.nslots()).filter(|&i| self.slot(i).state.load(SeqCst) != state::FREE).count()
    }

    /// Wakes the worker, if one runs.
    pub fn wake_worker(&self) {
        let latch = self.worker_latch.load(SeqCst);
        if latch != 0 {
            // SAFETY: the worker's latch lives in its PGPROC in shared memory; SetLatch on a
            // latch whose owner exited is harmless (PGPROC entries are never unmapped).
            unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) }
        }
    }

    /// Writes the text status (worker only).
    pub fn set_text(&self, active_addr: Option<&str>, last_error: Option<&str>) {
        let t = &self.text;
        t.seq.fetch_add(1, SeqCst);
        // SAFETY: only the single worker writes; readers retry on a changed/odd sequence.
        unsafe {
            if let Some(a) = active_addr {
                write_cstr(&mut *t.active_addr.get(), a);
            }
            if let Some(e) = last_error {
                write_cstr(&mut *t.last_error.get(), e);
            }
        }
        t.seq.fetch_add(1, SeqCst);
    }

    /// Reads the text status: (active address, last error).
    pub fn text(&self) -> (String, String) {
        let t = &self.text;
        loop {
            let s1 = t.seq.load(SeqCst);
            if s1 % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            // SAFETY: byte arrays in shared memory; a torn read is detected by the seqlock.
            let (a, e) = unsafe { (read_cstr(&*t.active_addr.get()), read_cstr(&*t.last_error.get())) };
            if t.seq.load(SeqCst) == s1 {
                return (a, e);
            }
        }
    }
}

fn write_cstr(dst: &mut [u8; 256], s: &str) {
    let mut n = s.len().min(255);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
    dst[n] = 0;
}

fn read_cstr(src: &[u8; 256]) -> String {
    let n = src.iter().position(|b| *b == 0).unwrap_or(src.len());
    String::from_utf8_lossy(&src[..n]).into_owned()
}

impl Slot {
    /// The slot's buffer.
    ///
    /// # Safety
    /// Only the current owner (the backend between claim and submit or after DONE; the
    /// worker between take and answer) may touch the buffer.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn buffer(&self) -> &mut [u8; SLOT_BYTES] {
        // SAFETY: exclusivity is guaranteed by the state machine (caller's contract).
        unsafe { &mut *self.data.get() }
    }

    /// Wipes the first `len` bytes of the buffer.
    ///
    /// # Safety
    /// As for [`Slot::buffer`].
    pub unsafe fn wipe(&self, len: usize) {
        // SAFETY: caller owns the buffer.
        let buf = unsafe { self.buffer() };
        let n = len.min(SLOT_BYTES);
        zeroize::Zeroize::zeroize(&mut buf[..n]);
    }
}
