//! Blind-index keys: where their root material comes from, and the backend's cache of derived
//! keys (the index values themselves are computed by [`credcrypt_core::blind`]).
//!
//! - A `local` designation's index key is derived from the local key that was current when the
//!   index version was made (`local:<key id>`): no key material is stored anywhere.
//! - A `transit:` or `envelope:` designation's index key is derived from 32 random bytes that
//!   OpenBao Transit generates and wraps (`transit/datakey`) with the associated data
//!   `pg_credcrypt/data-key/v1:index:<binding id>:<version>` — in the namespace no SQL caller may
//!   pass as a context, so the wrapped root never unwraps through the decrypt functions. The
//!   root is unwrapped through the worker once per backend and cached for
//!   `credcrypt.envelope_cache_ttl`, like envelope data keys.
//!
//! Why a wrapped key and not Transit's `hmac` endpoint: the protection trigger computes an
//! index for every row it writes, and a worker round trip per row (≈0.3–2 ms) would make every
//! protected INSERT of a Transit-rooted designation as slow as a per-value Transit call; with a
//! cached root the index costs one HMAC (≈0.3 µs). The trade-off — the root lives in backend
//! memory for the cache's lifetime, as envelope data keys do — is documented in
//! docs/architecture.md.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use credcrypt_core::blind::{IndexKey, IndexRoot};
use credcrypt_core::wire::{Op, ReqItem};
use credcrypt_core::{Error, ErrorKind, KeyId, KeyRef};

use crate::gucs;
use crate::providers::envelope::RESERVED_CONTEXT;
use crate::providers::local;
use crate::providers::transit::backend;

/// How long a key derived from a local key is trusted before the key ring is consulted again
/// (the ring itself follows key-file changes at most once a second).
const LOCAL_RECHECK: Duration = Duration::from_secs(1);

/// Where an index version's key comes from, as recorded in `credcrypt.index_keys.root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Root {
    /// Derived from the local key with this id.
    Local(KeyId),
    /// Derived from 32 bytes wrapped by this Transit key.
    Transit(String),
}

impl Root {
    /// The root a new index version of a designation under `key` gets: the current local key,
    /// or the designation's Transit key (for `transit:` and `envelope:`).
    pub(crate) fn for_key(key: &KeyRef) -> Result<Root, Error> {
        match key {
            KeyRef::Local => local::with_keyring(|r| r.current_key().map(|k| Root::Local(k.id()))),
            KeyRef::Transit(name) | KeyRef::Envelope(name) => Ok(Root::Transit(name.clone())),
            KeyRef::Kv(_) => Err(crate::providers::kv_not_served()),
        }
    }

    /// Parses `local:<key id>` or `transit:<name>`.
    pub(crate) fn parse(s: &str) -> Result<Root, Error> {
        if let Some(id) = s.strip_prefix("local:") {
            return KeyId::from_hex(id)
                .map(Root::Local)
                .ok_or_else(|| Error::new(ErrorKind::CatalogMismatch, "an index key's local root is not a key id"));
        }
        match s.strip_prefix("transit:") {
            Some(name) if !name.is_empty() => Ok(Root::Transit(name.to_owned())),
            _ => Err(Error::new(ErrorKind::CatalogMismatch, "an index key's root is neither local nor transit")),
        }
    }
}

impl std::fmt::Display for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Root::Local(id) => write!(f, "local:{id}"),
            Root::Transit(name) => write!(f, "transit:{name}"),
        }
    }
}

/// The associated data an index root is wrapped with.
fn wrapping_aad(binding_id: &str, version: u16) -> String {
    format!("{RESERVED_CONTEXT}index:{binding_id}:{version}")
}

/// Makes the root material of a new index version: nothing to store for a local root; for a
/// Transit root, the wrapped form of 32 new random bytes (which this backend also caches).
pub(crate) fn new_root(root: &Root, binding_id: &str, version: u16) -> Result<Option<String>, Error> {
    let Root::Transit(name) = root else {
        // Fails now (not at the first INSERT) when the key is not loaded.
        key(binding_id, version, root, None)?;
        return Ok(None);
    };
    let aad = wrapping_aad(binding_id, version);
    let (bytes, wrapped) = backend::data_key(name, Some(aad.as_bytes()))?;
    let derived = Rc::new(IndexRoot::new(&bytes).derive(binding_id, version)?);
    cache_put(binding_id, version, &wrapped, derived);
    Ok(Some(wrapped))
}

struct Cached {
    key: Rc<IndexKey>,
    loaded: Instant,
    ttl: Duration,
}

thread_local! {
    /// Derived index keys by (binding id, version, root material): the wrapped root (random
    /// per key) or the local root — so a version made again after a rollback never meets a
    /// key cached for the rolled-back one.
    static CACHE: RefCell<HashMap<(String, u16, String), Cached>> = RefCell::new(HashMap::new());
}

fn cache_put(binding_id: &str, version: u16, material: &str, key: Rc<IndexKey>) {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let limit = gucs::envelope_cache_size();
        c.retain(|_, v| v.loaded.elapsed() < v.ttl);
        while c.len() >= limit {
            let Some(oldest) = c.iter().min_by_key(|(_, v)| v.loaded).map(|(k, _)| k.clone()) else { break };
            c.remove(&oldest);
        }
        let ttl = if material.starts_with("local:") { LOCAL_RECHECK } else { gucs::envelope_cache_ttl() };
        c.insert((binding_id.to_owned(), version, material.to_owned()), Cached { key, loaded: Instant::now(), ttl });
    });
}

/// The index key of version `version` of designation `binding_id`, whose root is `root`
/// (`wrapped`: the wrapped root of a Transit root).
pub(crate) fn key(binding_id: &str, version: u16, root: &Root, wrapped: Option<&str>) -> Result<Rc<IndexKey>, Error> {
    let material = match (root, wrapped) {
        (Root::Local(id), _) => format!("local:{id}"),
        (Root::Transit(_), Some(w)) => w.to_owned(),
        (Root::Transit(_), None) => {
            return Err(Error::new(ErrorKind::CatalogMismatch, "a Transit-rooted index key has no wrapped root"))
        }
    };
    let hit = CACHE.with(|c| {
        let cache_key = (binding_id.to_owned(), version, material.clone());
        c.borrow().get(&cache_key).filter(|v| v.loaded.elapsed() < v.ttl).map(|v| v.key.clone())
    });
    if let Some(k) = hit {
        return Ok(k);
    }
    let derived = match root {
        Root::Local(id) => local::with_keyring(|ring| {
            let k = ring.find(*id).ok_or_else(|| {
                Error::new(ErrorKind::UnknownKeyId, "the local key this blind index is derived from is not configured")
                    .with_detail(format!(
                        "key id {id}: keep it in credcrypt.local_previous_key_files, or rotate the blind index"
                    ))
            })?;
            k.index_root().derive(binding_id, version)
        })?,
        Root::Transit(name) => {
            let aad = wrapping_aad(binding_id, version);
            let mut answers = backend::call(
                Op::Decrypt,
                name,
                &[ReqItem { data: material.as_bytes(), context: Some(aad.as_bytes()) }],
            )?;
            let plain = answers
                .pop()
                .ok_or_else(|| Error::malformed("empty answer"))?
                .map_err(|f| backend::fail_to_error(&f))?;
            let bytes: &[u8; 32] =
                plain.as_slice().try_into().map_err(|_| Error::malformed("index root is not 32 bytes"))?;
            IndexRoot::new(bytes).derive(binding_id, version)?
        }
    };
    let derived = Rc::new(derived);
    cache_put(binding_id, version, &material, derived.clone());
    Ok(derived)
}

/// Wraps the index roots under Transit key `name` again with its latest version (after a
/// rotation: each is unwrapped and wrapped again with its associated data, in one batch each
/// way). `rows` are (binding id, version, wrapped); returns the new wrapped forms in order.
pub(crate) fn rewrap(name: &str, rows: &[(String, u16, String)]) -> Result<Vec<String>, Error> {
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(400) {
        let aads: Vec<String> = chunk.iter().map(|(b, v, _)| wrapping_aad(b, *v)).collect();
        let items: Vec<backend::Rewrap<'_>> = chunk
            .iter()
            .zip(&aads)
            .map(|((_, _, w), aad)| (w.as_bytes(), Some(aad.as_bytes()), Some(aad.as_bytes())))
            .collect();
        out.extend(backend::rewrap_with(name, &items)?);
    }
    Ok(out)
}
