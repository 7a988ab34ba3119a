//! KV version 2: versioned secrets at `<mount>/data/<path>`, read one by one or many at once
//! over concurrent keep-alive connections, written with check-and-set, destroyed per version.
//!
//! The mount is a parameter of every call (it is not [`crate::Config::mount`], the Transit
//! mount). Mount names and paths are checked here and refused ([`ErrorKind::InvalidArgument`],
//! without echoing them) unless they use only the characters that need no percent-encoding:
//! a mount is 1–128 of `A-Z a-z 0-9 _ . -`; a path is `/`-separated segments of 1–255 of
//! `A-Z a-z 0-9 _ . = , -`, at most 1024 bytes in all; neither may be `.` or `..`.
//!
//! What OpenBao 2.7 answers (checked against the real dev server):
//!
//! | request | case | answer |
//! |---|---|---|
//! | `GET <m>/data/<p>?version=N` | live version | 200, `data.data` = fields, `data.metadata.version` = N |
//! | | soft-deleted version | **404**, `data.data` null, `data.metadata.deletion_time` set |
//! | | destroyed version | **404**, `data.data` null, `data.metadata.destroyed` true |
//! | | no such path / version | 404 `{"errors":[]}` |
//! | | no such mount | 404 `{"errors":["no handler for route …"]}` |
//! | | a non-KV mount (transit) | 404 `{"errors":["… unsupported path …"]}` |
//! | | `version=0` | the current version |
//! | | N > 2⁶³−1 | 400 (refused here before sending) |
//! | `POST <m>/data/<p>` `{"options":{"cas":N},"data":{…}}` | written | 200, `data.version` |
//! | | cas ≠ current version (0: path must not exist) | 400 `check-and-set parameter did not match the current version` |
//! | | a KV **v1** mount | 204 (it stored a v1 key `data/<p>`!) |
//! | `POST <m>/destroy/<p>` `{"versions":[…]}` | any (also missing path/versions) | 204; an empty list is 400 |
//! | `DELETE <m>/metadata/<p>` | any (also missing path) | 204 |
//! | `GET <m>/metadata/<p>` | exists | 200, `current_version`, `oldest_version`, `versions{"N":{…}}` |
//! | | missing | 404 `{"errors":[]}` |
//! | `GET <m>/metadata/<d>/?list=true` | directory | 200 `data.keys` (subdirectories end in `/`) |
//! | | missing, or a leaf | 404 `{"errors":[]}` |
//!
//! A token whose policy denies the path gets 403 (`permission denied`, multi-line) like a
//! refused token; the client re-authenticates once before reporting
//! [`ErrorKind::PermissionDenied`].

use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use zeroize::Zeroizing;

use crate::error::errors_text_of;
use crate::transit::push_json_str;
use crate::transport::{concurrently, redirect_target, small_json, On403, MAX_RESPONSE};
use crate::{Client, Error, ErrorKind};

/// Most concurrent requests [`Client::kv_read_many`] keeps outstanding (also the client's
/// idle-connection pool per address).
pub const KV_MAX_IN_FLIGHT: usize = 16;

/// Most entries [`Client::kv_list_recursive`] collects before giving up.
pub const KV_MAX_LIST_ENTRIES: usize = 1_000_000;

/// Concurrent passes one [`Client::kv_read_many`] call makes before reading what is left one
/// by one.
const MAX_ROUNDS: usize = 16;

/// Largest version number OpenBao accepts (it parses it as a signed 64-bit integer).
const MAX_VERSION: u64 = i64::MAX as u64;

/// One version of a KV secret: the fields, in the order OpenBao gives them (sorted by name).
/// `Debug` shows the field names only.
#[derive(Clone, PartialEq, Eq)]
pub struct KvData {
    /// The version read (the current one when 0 was asked for).
    pub version: u64,
    /// Field name and value (wiped when dropped).
    pub fields: Vec<(String, Zeroizing<String>)>,
}

impl KvData {
    /// The value of field `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

impl std::fmt::Debug for KvData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvData")
            .field("version", &self.version)
            .field("fields", &self.fields.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What reading one version of a KV secret found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvValue {
    /// The version's fields.
    Data(KvData),
    /// Soft-deleted (`deletion_time` set; can be undeleted in OpenBao).
    Deleted {
        /// The version.
        version: u64,
    },
    /// Destroyed (the data is gone for good).
    Destroyed {
        /// The version.
        version: u64,
    },
    /// No such path, or no such version (never written, or evicted past `max_versions`).
    Missing,
}

/// One version in a secret's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvVersionInfo {
    /// Version number.
    pub version: u64,
    /// `created_time` as OpenBao gives it (RFC 3339; empty if absent).
    pub created_time: String,
    /// Soft-deleted (`deletion_time` set).
    pub deleted: bool,
    /// Destroyed.
    pub destroyed: bool,
}

/// A secret's metadata (`GET <mount>/metadata/<path>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvMetadata {
    /// Latest version written.
    pub current_version: u64,
    /// `oldest_version` as OpenBao gives it (0 until versions are evicted or it is set).
    pub oldest_version: u64,
    /// Versions kept per secret (0: the mount's default, 10 unless configured).
    pub max_versions: u64,
    /// Whether writes must carry `cas`.
    pub cas_required: bool,
    /// The versions OpenBao still tracks, in ascending order.
    pub versions: Vec<KvVersionInfo>,
}

// ---------------------------------------------------------------------------------------------
// Names and paths

fn mount_ok(m: &str) -> bool {
    (1..=128).contains(&m.len())
        && m != "."
        && m != ".."
        && m.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn segment_ok(s: &str) -> bool {
    (1..=255).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'=' | b',' | b'-'))
}

fn path_ok(p: &str) -> bool {
    !p.is_empty() && p.len() <= 1024 && p.split('/').all(segment_ok)
}

fn check_mount(mount: &str) -> Result<(), Error> {
    if mount_ok(mount) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidArgument,
            "invalid KV mount name: use 1 to 128 of A-Z a-z 0-9 _ . - (not . or ..)",
        ))
    }
}

fn check(mount: &str, path: &str) -> Result<(), Error> {
    check_mount(mount)?;
    if path_ok(path) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidArgument,
            "invalid KV path: use /-separated segments of 1 to 255 of A-Z a-z 0-9 _ . = , - (not . or ..), \
             at most 1024 bytes",
        ))
    }
}

/// A directory for listing: empty (the mount's root) or a path, with or without a trailing `/`.
fn check_dir<'a>(mount: &str, dir: &'a str) -> Result<&'a str, Error> {
    let d = dir.strip_suffix('/').unwrap_or(dir);
    if d.is_empty() {
        check_mount(mount)?;
    } else {
        check(mount, d)?;
    }
    Ok(d)
}

fn check_version(v: u64) -> Result<(), Error> {
    if v <= MAX_VERSION {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::InvalidArgument, "invalid KV version: at most 2^63-1"))
    }
}

fn data_path(mount: &str, path: &str, version: u64) -> String {
    if version == 0 {
        format!("{mount}/data/{path}")
    } else {
        format!("{mount}/data/{path}?version={version}")
    }
}

// ---------------------------------------------------------------------------------------------
// Answers

/// `{"data":{"data":{…},"metadata":{…}},"errors":[…]}`: fields go straight into wiping strings.
#[derive(serde::Deserialize)]
struct ReadAnswer {
    data: Option<ReadData>,
    #[serde(default)]
    errors: Vec<String>,
}

#[derive(serde::Deserialize)]
struct ReadData {
    data: Option<Fields>,
    metadata: Option<VersionMeta>,
}

#[derive(serde::Deserialize)]
struct VersionMeta {
    #[serde(default)]
    version: u64,
    #[serde(default)]
    created_time: Option<String>,
    #[serde(default)]
    deletion_time: Option<String>,
    #[serde(default)]
    destroyed: bool,
}

impl VersionMeta {
    fn deleted(&self) -> bool {
        self.deletion_time.as_deref().is_some_and(|t| !t.is_empty())
    }
}

/// A secret's fields; `non_string` when a value is not a JSON string (written by another client).
struct Fields {
    fields: Vec<(String, Zeroizing<String>)>,
    non_string: bool,
}

/// One field value: a string (kept, wiped on drop) or anything else (skipped, noted).
struct FieldValue(Option<Zeroizing<String>>);

impl<'de> serde::Deserialize<'de> for FieldValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FieldValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldValue, E> {
                Ok(FieldValue(Some(Zeroizing::new(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<FieldValue, E> {
                Ok(FieldValue(Some(Zeroizing::new(v))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<FieldValue, E> {
                Ok(FieldValue(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<FieldValue, E> {
                Ok(FieldValue(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<FieldValue, E> {
                Ok(FieldValue(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<FieldValue, E> {
                Ok(FieldValue(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<FieldValue, E> {
                Ok(FieldValue(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<FieldValue, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FieldValue(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<FieldValue, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(FieldValue(None))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Fields, A::Error> {
                let mut out = Fields { fields: Vec::new(), non_string: false };
                while let Some(k) = a.next_key::<String>()? {
                    match a.next_value::<FieldValue>()?.0 {
                        Some(v) => out.fields.push((k, v)),
                        None => out.non_string = true,
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(serde::Deserialize)]
struct WriteAnswer {
    data: Option<WriteData>,
}

#[derive(serde::Deserialize)]
struct WriteData {
    version: u64,
}

#[derive(serde::Deserialize)]
struct MetaAnswer {
    data: Option<MetaData>,
}

#[derive(serde::Deserialize)]
struct MetaData {
    #[serde(default)]
    current_version: u64,
    #[serde(default)]
    oldest_version: u64,
    #[serde(default)]
    max_versions: u64,
    #[serde(default)]
    cas_required: bool,
    #[serde(default)]
    versions: std::collections::BTreeMap<String, VersionMeta>,
}

#[derive(serde::Deserialize)]
struct ListAnswer {
    data: Option<ListData>,
}

#[derive(serde::Deserialize)]
struct ListData {
    #[serde(default)]
    keys: Vec<String>,
}

/// A 404 whose body names no error is "no such path"; one that does ("no handler for route",
/// "unsupported path") means the mount is missing or not KV version 2.
fn mount_missing(body: &str) -> bool {
    !errors_text_of(body).is_empty()
}

fn mount_error(mount: &str) -> Error {
    Error::new(
        ErrorKind::MountNotFound,
        format!("{mount} is not a KV version 2 mount (no such mount, or another type)"),
    )
}

fn denied(what: &str, mount: &str, path: &str) -> Error {
    Error::new(ErrorKind::PermissionDenied, format!("OpenBao denied {what} KV {mount}/{path} (HTTP 403)"))
}

fn unexpected(what: &str, mount: &str, path: &str, status: u16) -> Error {
    let kind = match status {
        413 => ErrorKind::TooLarge,
        400..=499 => ErrorKind::BadRequest,
        _ => ErrorKind::Protocol,
    };
    Error::new(kind, format!("unexpected answer {what} KV {mount}/{path}: HTTP {status}"))
}

/// Interprets the answer to `GET <mount>/data/<path>?version=N`.
fn read_answer(status: u16, body: &str, mount: &str, path: &str) -> Result<KvValue, Error> {
    if status != 200 && status != 404 {
        return Err(match status {
            403 => denied("reading", mount, path),
            s => unexpected("reading", mount, path, s),
        });
    }
    let answer: ReadAnswer = serde_json::from_str(body).map_err(|_| {
        Error::new(ErrorKind::Protocol, format!("the answer reading KV {mount}/{path} is not a KV version 2 answer"))
    })?;
    let Some(d) = answer.data else {
        if status == 404 && answer.errors.is_empty() {
            return Ok(KvValue::Missing);
        }
        if status == 404 {
            return Err(mount_error(mount));
        }
        return Err(Error::new(ErrorKind::Protocol, format!("reading KV {mount}/{path} answered without data")));
    };
    let Some(meta) = d.metadata else {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!("reading KV {mount}/{path} answered without version metadata (a KV version 1 mount?)"),
        ));
    };
    if meta.destroyed {
        return Ok(KvValue::Destroyed { version: meta.version });
    }
    if meta.deleted() {
        return Ok(KvValue::Deleted { version: meta.version });
    }
    match (status, d.data) {
        (200, Some(f)) if !f.non_string => Ok(KvValue::Data(KvData { version: meta.version, fields: f.fields })),
        (200, Some(_)) => Err(Error::new(
            ErrorKind::Protocol,
            format!("KV {mount}/{path} version {} has a field that is not a string", meta.version),
        )),
        (404, _) => Ok(KvValue::Missing),
        _ => Err(Error::new(ErrorKind::Protocol, format!("reading KV {mount}/{path} answered without data"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrent reads

/// A validated read of [`Client::kv_read_many`].
struct ReadReq<'a> {
    idx: usize,
    mount: &'a str,
    path: &'a str,
    api: String,
}

/// How one read of a concurrent pass ended.
enum Outcome {
    /// A final answer (value or an error retrying would not change).
    Done(Result<KvValue, Error>),
    /// 403: an expired token or a policy that denies the path.
    Denied,
    /// Not sent, or a transport error, 5xx, 429 or unfollowable redirect: read it through the
    /// normal path (failover, back-off).
    Retry,
}

/// What the threads of a pass share: one address, one token, the client's agent (its pool).
struct PassCtx<'a> {
    agent: &'a ureq::Agent,
    base: &'a str,
    addrs: &'a [String],
    token: &'a str,
    namespace: Option<&'a str>,
    sent: &'a AtomicU64,
}

impl PassCtx<'_> {
    fn get(&self, r: &ReadReq<'_>) -> Outcome {
        let mut url = format!("{}/v1/{}", self.base, r.api);
        for _hop in 0..3 {
            self.sent.fetch_add(1, Ordering::Relaxed);
            let mut q = self.agent.get(&url).header("X-Vault-Token", self.token);
            if let Some(ns) = self.namespace {
                q = q.header("X-Vault-Namespace", ns);
            }
            let Ok(mut resp) = q.call() else { return Outcome::Retry };
            let status = resp.status().as_u16();
            if status == 307 || status == 308 {
                let next = resp
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|loc| redirect_target(self.addrs, self.base, loc));
                match next {
                    Some(n) => {
                        url = n;
                        continue;
                    }
                    None => return Outcome::Retry,
                }
            }
            let Ok(text) = resp.body_mut().with_config().limit(MAX_RESPONSE).read_to_string() else {
                return Outcome::Retry;
            };
            let text = Zeroizing::new(text);
            return match status {
                403 => Outcome::Denied,
                429 | 500.. => Outcome::Retry,
                s => Outcome::Done(read_answer(s, &text, r.mount, r.path)),
            };
        }
        Outcome::Retry
    }
}

/// Errors that say the server (not one item) is unusable: every other pending item would fail
/// the same way after the same wait.
fn is_outage(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::Unavailable | ErrorKind::Sealed | ErrorKind::AuthFailed | ErrorKind::InvalidConfig)
}

impl Client {
    /// The KV version of `mount`, asked the way the `bao` CLI does
    /// (`GET sys/internal/ui/mounts/<mount>`, which any token with a capability under the mount
    /// may read): `Some(2)` for KV version 2, `Some(1)` for version 1, `None` when there is no
    /// such mount, it is not a KV mount, or the token has no capability under it.
    ///
    /// OpenBao 2.7 answers 200 with `data.type` `"kv"` and `data.options` `{"version":"2"}` (the
    /// dev server's `secret/`), `{"version":"1"}`, or `{}` for a `kv` mount made without options
    /// (version 1); `data.type` `"transit"` etc. for other engines. A missing mount, or one the
    /// token has no capability under, answers **403** `preflight capability check returned 403
    /// …` (even to a root token) — that is `None`; a plain `permission denied` 403 is a refused
    /// token (re-authenticate once, then [`ErrorKind::PermissionDenied`]).
    pub fn kv_mount_version(&mut self, mount: &str) -> Result<Option<u8>, Error> {
        check_mount(mount)?;
        let api = format!("sys/internal/ui/mounts/{mount}");
        let preflight = |body: &str| errors_text_of(body).contains("preflight capability check");
        let (mut status, mut body) = self.request("GET", &api, None, On403::Answer)?;
        if status == 403 && !preflight(&body) {
            self.token = None;
            self.authenticate()?;
            (status, body) = self.request("GET", &api, None, On403::Answer)?;
        }
        match status {
            200 => {
                let v = small_json(&body)?;
                let d = v.get("data").ok_or_else(|| {
                    Error::new(ErrorKind::Protocol, format!("reading mount {mount} answered without data"))
                })?;
                if d.get("path").and_then(|p| p.as_str()) != Some(&format!("{mount}/")) {
                    return Ok(None);
                }
                if d.get("type").and_then(|t| t.as_str()) != Some("kv") {
                    return Ok(None);
                }
                match d.pointer("/options/version").and_then(|v| v.as_str()) {
                    None | Some("1") => Ok(Some(1)),
                    Some("2") => Ok(Some(2)),
                    Some(_) => Err(Error::new(ErrorKind::Protocol, format!("mount {mount} has an unknown KV version"))),
                }
            }
            403 if preflight(&body) => Ok(None),
            404 => Ok(None),
            403 => {
                Err(Error::new(ErrorKind::PermissionDenied, format!("OpenBao denied reading mount {mount} (HTTP 403)")))
            }
            s => Err(Error::new(ErrorKind::Protocol, format!("unexpected answer reading mount {mount}: HTTP {s}"))),
        }
    }

    /// Writes a new version of `<mount>/<path>` with check-and-set: `cas` must be the current
    /// version (0: the path must not exist yet, or have been deleted with
    /// [`Client::kv_delete_all`]). Returns the new version.
    ///
    /// A mismatch is [`ErrorKind::CasMismatch`]: another writer got there first; read the
    /// metadata again and retry. [`ErrorKind::MountNotFound`]: no such mount, or not KV
    /// version 2 (a KV version 1 mount stores the value under `data/<path>` and answers no
    /// version: check [`Client::kv_mount_version`] first).
    pub fn kv_write(
        &mut self,
        mount: &str,
        path: &str,
        fields: &[(&str, &Zeroizing<String>)],
        cas: u64,
    ) -> Result<u64, Error> {
        check(mount, path)?;
        check_version(cas)?;
        let mut body = Zeroizing::new(String::with_capacity(
            fields.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>() + 48,
        ));
        body.push_str(&format!("{{\"options\":{{\"cas\":{cas}}},\"data\":{{"));
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            push_json_str(&mut body, k);
            body.push(':');
            push_json_str(&mut body, v);
        }
        body.push_str("}}");
        let (status, text) = self.request("POST", &data_path(mount, path, 0), Some(body), On403::Reauthenticate)?;
        match status {
            200 => serde_json::from_str::<WriteAnswer>(&text).ok().and_then(|a| a.data).map(|d| d.version).ok_or_else(
                || Error::new(ErrorKind::Protocol, format!("writing KV {mount}/{path} answered no version")),
            ),
            204 => Err(Error::new(
                ErrorKind::MountNotFound,
                format!("{mount} is not a KV version 2 mount (the write answered no version)"),
            )),
            400 => {
                let e = errors_text_of(&text).to_ascii_lowercase();
                if e.contains("check-and-set parameter did not match") {
                    Err(Error::new(
                        ErrorKind::CasMismatch,
                        format!("KV {mount}/{path} is not at version {cas} (check-and-set mismatch)"),
                    ))
                } else if e.contains("complexity") || e.contains("too large") {
                    Err(Error::new(
                        ErrorKind::TooLarge,
                        format!("OpenBao refused the value for KV {mount}/{path} as too large"),
                    ))
                } else {
                    Err(Error::new(
                        ErrorKind::BadRequest,
                        format!("OpenBao rejected writing KV {mount}/{path} (HTTP 400)"),
                    ))
                }
            }
            403 => Err(denied("writing", mount, path)),
            404 => Err(mount_error(mount)),
            s => Err(unexpected("writing", mount, path, s)),
        }
    }

    /// Reads version `version` of `<mount>/<path>` (0: the current version).
    ///
    /// [`KvValue::Missing`] for a path or version that does not exist; an error
    /// ([`ErrorKind::MountNotFound`]) when the mount does not exist or is not a KV mount. A KV
    /// version 1 mount cannot be told from a missing path here (404 `{"errors":[]}`).
    pub fn kv_read(&mut self, mount: &str, path: &str, version: u64) -> Result<KvValue, Error> {
        check(mount, path)?;
        check_version(version)?;
        self.kv_read_api(mount, path, &data_path(mount, path, version))
    }

    fn kv_read_api(&mut self, mount: &str, path: &str, api: &str) -> Result<KvValue, Error> {
        let (status, text) = self.request("GET", api, None, On403::Reauthenticate)?;
        read_answer(status, &text, mount, path)
    }

    /// Reads many `(mount, path, version)` at once, answers in the same order.
    ///
    /// KV has no batch endpoint: up to `in_flight` (capped at [`KV_MAX_IN_FLIGHT`]) requests
    /// are outstanding at a time, from as many short-lived threads sharing the client's
    /// keep-alive pool, the current token and the active address. Threads touch no signal
    /// state (they inherit the caller's mask) and are all joined before this returns; a panic
    /// in one (not expected) only sends its items down the normal path.
    ///
    /// Failover and re-authentication stay those of single calls: an item that met a
    /// connection error, 5xx, 429 or a redirect off the configured addresses stops the pass and
    /// is read through the normal path (failover, back-off), then the rest continue
    /// concurrently; if that read finds OpenBao unavailable or sealed, or authentication
    /// failing, every pending item gets that error. Items answered 403 make the client
    /// re-authenticate once per call and retry them; a 403 with the fresh token is
    /// [`ErrorKind::PermissionDenied`] for that item. With `in_flight` ≤ 1 it reads one by one.
    ///
    /// Measured on the 2-core development machine (client and dev server share the cores;
    /// policy-limited service token; one small secret per read; release build; the ignored test
    /// `read_many_timing` in tests/real_kv.rs): 2,000 reads take ≈ 2.7 s one by one
    /// (`in_flight` 1, ≈ 1.35 ms each — the server's own cost: curl over keep-alive measured
    /// 1.1–1.4 ms per KV read with such a token, 0.6–0.75 ms with the root token) and
    /// ≈ 1.55–1.65 s with `in_flight` 8 (≈ 1,250 reads/s). 4 is about as good and 16 no better:
    /// the server is CPU-bound. With more server cores the gain grows.
    pub fn kv_read_many(&mut self, reqs: &[(String, String, u64)], in_flight: usize) -> Vec<Result<KvValue, Error>> {
        let mut out: Vec<Option<Result<KvValue, Error>>> = (0..reqs.len()).map(|_| None).collect();
        let mut todo = Vec::with_capacity(reqs.len());
        for (idx, (mount, path, version)) in reqs.iter().enumerate() {
            match check(mount, path).and_then(|()| check_version(*version)) {
                Ok(()) => todo.push(ReadReq { idx, mount, path, api: data_path(mount, path, *version) }),
                Err(e) => out[idx] = Some(Err(e)),
            }
        }
        let workers = in_flight.clamp(1, KV_MAX_IN_FLIGHT).min(todo.len());
        if workers > 1 && self.token.is_none() {
            if let Err(e) = self.authenticate() {
                for r in &todo {
                    out[r.idx] = Some(Err(e.clone()));
                }
                todo.clear();
            }
        }
        let mut reauthenticated = false;
        let mut rounds = 0;
        while !todo.is_empty() {
            if workers <= 1 || rounds >= MAX_ROUNDS {
                self.read_one_by_one(todo, &mut out);
                break;
            }
            rounds += 1;
            let outcomes = self.concurrent_pass(&todo, workers);
            let (mut retry, mut denied_items) = (Vec::new(), Vec::new());
            for (r, o) in todo.into_iter().zip(outcomes) {
                match o {
                    Outcome::Done(v) => out[r.idx] = Some(v),
                    Outcome::Denied => denied_items.push(r),
                    Outcome::Retry => retry.push(r),
                }
            }
            if !retry.is_empty() {
                // The address failed or moved: one read through the normal path fails over (or
                // waits out a 429); the rest continue concurrently from where it landed.
                let first = retry.remove(0);
                match self.kv_read_api(first.mount, first.path, &first.api) {
                    Err(e) if is_outage(e.kind) => {
                        for r in retry.iter().chain(&denied_items) {
                            out[r.idx] = Some(Err(e.clone()));
                        }
                        out[first.idx] = Some(Err(e));
                        return finish(out);
                    }
                    r => out[first.idx] = Some(r),
                }
                retry.extend(denied_items);
                todo = retry;
            } else if !denied_items.is_empty() && !reauthenticated {
                // The token may have expired or been revoked: one fresh token, one more try.
                reauthenticated = true;
                self.token = None;
                if let Err(e) = self.authenticate() {
                    for r in &denied_items {
                        out[r.idx] = Some(Err(e.clone()));
                    }
                    return finish(out);
                }
                todo = denied_items;
            } else {
                for r in &denied_items {
                    out[r.idx] = Some(Err(denied("reading", r.mount, r.path)));
                }
                todo = Vec::new();
            }
        }
        finish(out)
    }

    fn read_one_by_one(&mut self, todo: Vec<ReadReq<'_>>, out: &mut [Option<Result<KvValue, Error>>]) {
        let mut outage: Option<Error> = None;
        for r in todo {
            if let Some(e) = &outage {
                out[r.idx] = Some(Err(e.clone()));
                continue;
            }
            let v = self.kv_read_api(r.mount, r.path, &r.api);
            if let Err(e) = &v {
                if is_outage(e.kind) {
                    outage = Some(e.clone());
                }
            }
            out[r.idx] = Some(v);
        }
    }

    /// One concurrent pass over `todo` against the active address with the current token;
    /// outcomes in `todo`'s order.
    fn concurrent_pass(&mut self, todo: &[ReadReq<'_>], workers: usize) -> Vec<Outcome> {
        let Some(token) = self.token.as_ref().map(|t| Zeroizing::new(t.value.as_str().to_owned())) else {
            return todo.iter().map(|_| Outcome::Retry).collect();
        };
        let base = self.cfg.addrs[self.active % self.cfg.addrs.len()].clone();
        let sent = AtomicU64::new(0);
        let ctx = PassCtx {
            agent: &self.agent,
            base: &base,
            addrs: &self.cfg.addrs,
            token: token.as_str(),
            namespace: self.cfg.namespace.as_deref(),
            sent: &sent,
        };
        let slots = concurrently(todo, workers, "credcrypt-kv", |r| {
            let o = ctx.get(r);
            let go_on = !matches!(o, Outcome::Retry);
            (o, go_on)
        });
        self.status.http_requests += sent.load(Ordering::Relaxed);
        slots.into_iter().map(|o| o.unwrap_or(Outcome::Retry)).collect()
    }

    /// Metadata of `<mount>/<path>`; `None` when the path does not exist (never written, or
    /// deleted with [`Client::kv_delete_all`]).
    pub fn kv_metadata(&mut self, mount: &str, path: &str) -> Result<Option<KvMetadata>, Error> {
        check(mount, path)?;
        let (status, text) = self.request("GET", &format!("{mount}/metadata/{path}"), None, On403::Reauthenticate)?;
        match status {
            200 => {
                let d = serde_json::from_str::<MetaAnswer>(&text).ok().and_then(|a| a.data).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Protocol,
                        format!("the metadata of KV {mount}/{path} is not a KV version 2 answer"),
                    )
                })?;
                let mut versions = Vec::with_capacity(d.versions.len());
                for (k, m) in &d.versions {
                    let version = k.parse::<u64>().map_err(|_| {
                        Error::new(
                            ErrorKind::Protocol,
                            format!("the metadata of KV {mount}/{path} has a bad version number"),
                        )
                    })?;
                    versions.push(KvVersionInfo {
                        version,
                        created_time: m.created_time.clone().unwrap_or_default(),
                        deleted: m.deleted(),
                        destroyed: m.destroyed,
                    });
                }
                versions.sort_by_key(|v| v.version);
                Ok(Some(KvMetadata {
                    current_version: d.current_version,
                    oldest_version: d.oldest_version,
                    max_versions: d.max_versions,
                    cas_required: d.cas_required,
                    versions,
                }))
            }
            404 if mount_missing(&text) => Err(mount_error(mount)),
            404 => Ok(None),
            403 => Err(denied("reading the metadata of", mount, path)),
            s => Err(unexpected("reading the metadata of", mount, path, s)),
        }
    }

    /// Destroys versions of `<mount>/<path>` for good. Destroying a destroyed or missing
    /// version (or path) is not an error; an empty list sends nothing.
    pub fn kv_destroy_versions(&mut self, mount: &str, path: &str, versions: &[u64]) -> Result<(), Error> {
        check(mount, path)?;
        if versions.is_empty() {
            return Ok(());
        }
        for v in versions {
            check_version(*v)?;
        }
        let list = versions.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let body = Zeroizing::new(format!("{{\"versions\":[{list}]}}"));
        let (status, text) =
            self.request("POST", &format!("{mount}/destroy/{path}"), Some(body), On403::Reauthenticate)?;
        match status {
            200 | 204 => Ok(()),
            404 if mount_missing(&text) => Err(mount_error(mount)),
            404 => Ok(()),
            403 => Err(denied("destroying versions of", mount, path)),
            s => Err(unexpected("destroying versions of", mount, path, s)),
        }
    }

    /// Deletes `<mount>/<path>` entirely: every version and the metadata. A missing path is
    /// not an error.
    pub fn kv_delete_all(&mut self, mount: &str, path: &str) -> Result<(), Error> {
        check(mount, path)?;
        let (status, text) =
            self.request("DELETE", &format!("{mount}/metadata/{path}"), None, On403::Reauthenticate)?;
        match status {
            200 | 204 => Ok(()),
            404 if mount_missing(&text) => Err(mount_error(mount)),
            404 => Ok(()),
            403 => Err(denied("deleting", mount, path)),
            s => Err(unexpected("deleting", mount, path, s)),
        }
    }

    /// The entries of directory `dir` of `mount` (`""` for the root), as OpenBao gives them
    /// (sorted): names ending in `/` are subdirectories. A missing directory is empty.
    pub fn kv_list(&mut self, mount: &str, dir: &str) -> Result<Vec<String>, Error> {
        let d = check_dir(mount, dir)?;
        let api = if d.is_empty() {
            format!("{mount}/metadata/?list=true")
        } else {
            format!("{mount}/metadata/{d}/?list=true")
        };
        let (status, text) = self.request("GET", &api, None, On403::Reauthenticate)?;
        match status {
            200 => serde_json::from_str::<ListAnswer>(&text)
                .ok()
                .and_then(|a| a.data)
                .map(|d| d.keys)
                .ok_or_else(|| Error::new(ErrorKind::Protocol, format!("listing KV {mount}/{d} answered no list"))),
            404 if mount_missing(&text) => Err(mount_error(mount)),
            404 => Ok(Vec::new()),
            403 => Err(denied("listing", mount, d)),
            s => Err(unexpected("listing", mount, d, s)),
        }
    }

    /// Every secret path under `dir` (`""` for the whole mount), relative to the mount and
    /// sorted, e.g. `["app/db", "app/x/y"]`. Fails with [`ErrorKind::TooLarge`] past
    /// [`KV_MAX_LIST_ENTRIES`] entries, and with [`ErrorKind::InvalidArgument`] on an entry whose
    /// name uses characters outside the supported set (it could not be read with this client).
    pub fn kv_list_recursive(&mut self, mount: &str, dir: &str) -> Result<Vec<String>, Error> {
        let root = check_dir(mount, dir)?.to_owned();
        let mut leaves = Vec::new();
        let mut dirs = vec![root];
        let mut seen = 0usize;
        while let Some(d) = dirs.pop() {
            for entry in self.kv_list(mount, &d)? {
                seen += 1;
                if seen > KV_MAX_LIST_ENTRIES {
                    return Err(Error::new(
                        ErrorKind::TooLarge,
                        format!("more than {KV_MAX_LIST_ENTRIES} entries under KV {mount}/{d}"),
                    ));
                }
                let (name, is_dir) = match entry.strip_suffix('/') {
                    Some(n) => (n, true),
                    None => (entry.as_str(), false),
                };
                let full = if d.is_empty() { name.to_owned() } else { format!("{d}/{name}") };
                if !segment_ok(name) || !path_ok(&full) {
                    return Err(Error::new(
                        ErrorKind::InvalidArgument,
                        format!(
                            "an entry under KV {mount}/{d} has a name outside the supported characters \
                             (A-Z a-z 0-9 _ . = , -) or is too long"
                        ),
                    ));
                }
                if is_dir {
                    dirs.push(full);
                } else {
                    leaves.push(full);
                }
            }
        }
        leaves.sort();
        Ok(leaves)
    }
}

fn finish(out: Vec<Option<Result<KvValue, Error>>>) -> Vec<Result<KvValue, Error>> {
    out.into_iter()
        .map(|o| o.unwrap_or_else(|| Err(Error::new(ErrorKind::Protocol, "the read was not answered"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        assert!(mount_ok("secret") && mount_ok("kv-2_x.y") && !mount_ok("") && !mount_ok(".."));
        assert!(!mount_ok("a/b") && !mount_ok(&"m".repeat(129)) && mount_ok(&"m".repeat(128)));
        assert!(path_ok("a/b=c,d/e.f-g_h") && !path_ok("a//b") && !path_ok("/a") && !path_ok("a/"));
        assert!(!path_ok("a/../b") && !path_ok("a/./b") && !path_ok("a b") && !path_ok("a?x") && !path_ok("a%2f"));
        assert!(!path_ok("é") && !path_ok(&"s".repeat(256)) && path_ok(&"s".repeat(255)));
        assert!(!path_ok(&format!("{0}/{0}/{0}/{0}/{0}", "s".repeat(205))));
        assert_eq!(check_dir("secret", "").unwrap(), "");
        assert_eq!(check_dir("secret", "a/b/").unwrap(), "a/b");
        let e = check("secret", "sk-live-SECRET value").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(!format!("{e} {e:?}").contains("SECRET"));
        assert_eq!(check_version(u64::MAX).unwrap_err().kind, ErrorKind::InvalidArgument);
    }

    #[test]
    fn read_answers() {
        let live = r#"{"data":{"data":{"password":"p\"2","user":"u"},"metadata":{"created_time":"t","deletion_time":"","destroyed":false,"version":2}}}"#;
        let KvValue::Data(d) = read_answer(200, live, "m", "p").unwrap() else { panic!("not data") };
        assert_eq!((d.version, d.get("password"), d.get("user"), d.get("x")), (2, Some("p\"2"), Some("u"), None));
        assert!(!format!("{d:?}").contains("p\\\"2"));
        let deleted = r#"{"data":{"data":null,"metadata":{"deletion_time":"2026-01-01T00:00:00Z","destroyed":false,"version":3}}}"#;
        assert_eq!(read_answer(404, deleted, "m", "p").unwrap(), KvValue::Deleted { version: 3 });
        let destroyed = r#"{"data":{"data":null,"metadata":{"deletion_time":"","destroyed":true,"version":1}}}"#;
        assert_eq!(read_answer(404, destroyed, "m", "p").unwrap(), KvValue::Destroyed { version: 1 });
        assert_eq!(read_answer(404, r#"{"errors":[]}"#, "m", "p").unwrap(), KvValue::Missing);
        let e = read_answer(404, r#"{"errors":["no handler for route \"m/data/p\""]}"#, "m", "p").unwrap_err();
        assert_eq!(e.kind, ErrorKind::MountNotFound);
        let odd = r#"{"data":{"data":{"n":1,"o":{"a":[1,"SECRET"]},"s":"SECRET"},"metadata":{"version":1}}}"#;
        let e = read_answer(200, odd, "m", "p").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Protocol);
        assert!(!e.message.contains("SECRET"));
        let v1 = r#"{"data":{"data":{"k":"v"},"options":{"cas":0}}}"#;
        assert_eq!(read_answer(200, v1, "m", "p").unwrap_err().kind, ErrorKind::Protocol);
        assert_eq!(read_answer(403, "{}", "m", "p").unwrap_err().kind, ErrorKind::PermissionDenied);
        assert_eq!(read_answer(200, "<html>SECRET", "m", "p").unwrap_err().kind, ErrorKind::Protocol);
    }
}
