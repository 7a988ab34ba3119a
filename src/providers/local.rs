//! The backend's local key ring, built from the `credcrypt.local_*` settings and cached.
//!
//! The cache is rebuilt when any of the three settings changes (after `pg_reload_conf()`),
//! and when a key file changes on disk: files are re-examined (one `stat` each) at most once
//! per [`RECHECK`]. Building the ring reads the files with the checks of
//! [`credcrypt_core::keyfile`]. A broken configuration is cached as its error, so every call
//! fails the same way until the configuration is fixed.

use std::cell::RefCell;
use std::os::unix::fs::MetadataExt as _;
use std::time::{Duration, Instant};

use credcrypt_core::keyfile::{self, split_paths};
use credcrypt_core::{Error, ErrorKind, Keyring, LocalKey};
use zeroize::Zeroizing;

use crate::gucs;

/// How often key files are checked for changes on disk.
const RECHECK: Duration = Duration::from_secs(1);

/// Identity of a key file's content as seen by `stat`.
type Stamp = Option<(u64, u64, i64, i64, u64)>;

struct Cached {
    key_file: Vec<u8>,
    key_inline: Zeroizing<Vec<u8>>,
    previous: Vec<u8>,
    stamps: Vec<Stamp>,
    checked: Instant,
    ring: Result<Keyring, Error>,
}

thread_local! {
    static CACHE: RefCell<Option<Cached>> = const { RefCell::new(None) };
}

fn stamp(path: &str) -> Stamp {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
}

fn paths(key_file: &[u8], previous: &[u8]) -> Vec<String> {
    let mut v = Vec::new();
    let file = String::from_utf8_lossy(key_file);
    if !file.trim().is_empty() {
        v.push(file.trim().to_owned());
    }
    v.extend(split_paths(&String::from_utf8_lossy(previous)).map(str::to_owned));
    v
}

fn build(key_file: &[u8], key_inline: &[u8], previous: &[u8]) -> Result<Keyring, Error> {
    let file = String::from_utf8_lossy(key_file);
    let file = file.trim();
    let inline_set = !key_inline.trim_ascii().is_empty();
    let current = match (file.is_empty(), inline_set) {
        (false, true) => {
            return Err(Error::new(
                ErrorKind::InvalidKeyConfig,
                "both credcrypt.local_key_file and credcrypt.local_key are set",
            )
            .with_detail("set exactly one of them; credcrypt.local_key_file is recommended"));
        }
        (false, false) => Some(LocalKey::new(&*keyfile::read_key_file(file, "credcrypt.local_key_file")?)),
        (true, true) => Some(LocalKey::new(&*keyfile::parse_key_text(key_inline, "credcrypt.local_key")?)),
        (true, false) => None,
    };
    let previous = split_paths(&String::from_utf8_lossy(previous))
        .map(|p| keyfile::read_key_file(p, "credcrypt.local_previous_key_files").map(|k| LocalKey::new(&k)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Keyring { current, previous })
}

/// Whether two settings' bytes are equal. Empty ones (the usual `credcrypt.local_key` and
/// `credcrypt.local_previous_key_files`) are compared without calling `memcmp`: an empty slice
/// points at a dangling address, and glibc's AVX-512 `memcmp` reads it with an all-masked
/// load that takes a microcode assist on an unmapped page — measured at 14–17% of an
/// `encrypt_credential` call before this check.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

/// Runs `f` with the backend's key ring, rebuilding it first when the configuration changed.
pub fn with_keyring<R>(f: impl FnOnce(&Keyring) -> Result<R, Error>) -> Result<R, Error> {
    let gucs::LocalKeySettings { key_file, key_inline, previous } = gucs::local_key_settings();
    CACHE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let now = Instant::now();
        let fresh = match slot.as_mut() {
            Some(c)
                if same(&c.key_file, key_file) && same(&c.key_inline, key_inline) && same(&c.previous, previous) =>
            {
                if now.duration_since(c.checked) < RECHECK {
                    true
                } else {
                    c.checked = now;
                    paths(key_file, previous).iter().map(|p| stamp(p)).collect::<Vec<_>>() == c.stamps
                }
            }
            _ => false,
        };
        if !fresh {
            let stamps = paths(key_file, previous).iter().map(|p| stamp(p)).collect();
            *slot = Some(Cached {
                key_file: key_file.to_vec(),
                key_inline: Zeroizing::new(key_inline.to_vec()),
                previous: previous.to_vec(),
                stamps,
                checked: now,
                ring: build(key_file, key_inline, previous),
            });
        }
        match &slot.as_ref().expect("cache was just filled").ring {
            Ok(ring) => f(ring),
            Err(e) => Err(e.clone()),
        }
    })
}

/// The legacy application key named by `credcrypt.legacy_key_file` (read on every call: a
/// migration reads it once per batch).
pub fn legacy_key() -> Result<Zeroizing<[u8; 32]>, Error> {
    let path = gucs::legacy_key_file();
    if path.is_empty() {
        return Err(Error::new(ErrorKind::KeyNotConfigured, "credcrypt.legacy_key_file is not set")
            .with_detail("legacy application values can only be imported with their key"));
    }
    let text = keyfile::read_secret_file(&path, "credcrypt.legacy_key_file")?;
    credcrypt_core::legacy::parse_legacy_key(&text)
}
