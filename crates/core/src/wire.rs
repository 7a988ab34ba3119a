//! The messages backends and the background worker exchange through a shared-memory slot.
//!
//! A slot's buffer holds one request, and later the worker's response in its place. Both are
//! length-prefixed little-endian binary; decoding checks every length against the buffer, so
//! a corrupt slot yields an error, never a panic or an out-of-bounds read.
//!
//! ```text
//! request  = op:u8 key_len:u8 key n:u32 { flags:u8 len:u32 data [ctx_len:u32 ctx] }*
//! response = 0:u8 n:u32 { 0:u8 len:u32 data | 1:u8 kind:u8 msg_len:u16 msg }*   (per item)
//!          | 1:u8 kind:u8 msg_len:u16 msg                                          (whole request failed)
//! ```

use crate::error::{Error, ErrorKind, Result};

/// What a request asks the worker to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Encrypt each item's data (plaintext) with the key; answers `vault:vN:…` per item.
    Encrypt = 1,
    /// Decrypt each item's data (`vault:vN:…`); answers the plaintext per item.
    Decrypt = 2,
    /// Rotate the key; no items; answers one item with the new version in decimal.
    Rotate = 3,
    /// Check the key; no items; answers one item with the latest version in decimal.
    KeyInfo = 4,
    /// Generate a data key; no items; answers two items: the 32-byte plaintext key and its
    /// wrapped form `vault:vN:…`.
    DataKey = 5,
    /// Rewrap each item's data (`vault:vN:…`, no associated data) to the latest version.
    Rewrap = 6,
    /// Create the key if it does not exist (a per-row key's first use); no items; answers one
    /// item with the latest version in decimal.
    CreateKey = 7,
    /// Destroy the key and all its versions (crypto-shredding); no items; answers no item.
    DeleteKey = 8,
    /// Write each item's data (a secret) as a new version of a KV v2 secret; the key is the
    /// mount, each item's context is [`KvWriteMeta`]'s text form. The worker journals the
    /// write under the writer's transaction before it sends it; answers the version in decimal.
    KvWrite = 9,
    /// Read each item (data: `<version>:<path>`, context: the expected binding, 64 hex digits)
    /// from the KV v2 mount named by the key; answers the secret, if the binding matches.
    KvRead = 10,
    /// Destroy, once the (sub)transaction whose full id is each item's context commits, every
    /// version of the KV secret at the item's data: a path, or `binding:<database dir>:<binding
    /// id>` for every secret of a protected column (the subtrees `<database dir>/*/<binding id>`).
    /// The worker journals each item and answers at once (no items).
    KvForget = 11,
}

impl Op {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Op::Encrypt,
            2 => Op::Decrypt,
            3 => Op::Rotate,
            4 => Op::KeyInfo,
            5 => Op::DataKey,
            6 => Op::Rewrap,
            7 => Op::CreateKey,
            8 => Op::DeleteKey,
            9 => Op::KvWrite,
            10 => Op::KvRead,
            11 => Op::KvForget,
            _ => return None,
        })
    }
}

/// Why a request or an item failed, as carried through the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FailKind {
    /// OpenBao could not be reached (every address failed) or is rate limiting.
    Unavailable = 1,
    /// OpenBao is sealed.
    Sealed = 2,
    /// OpenBao refused the token or the policy denies the operation.
    PermissionDenied = 3,
    /// The Transit key does not exist.
    KeyNotFound = 4,
    /// The Transit key cannot encrypt (wrong type).
    UnsupportedKey = 5,
    /// Tampered value, or wrong associated data.
    AuthenticationFailed = 6,
    /// OpenBao rejected the input (e.g. not a valid Transit ciphertext).
    InvalidInput = 7,
    /// The worker's configuration is incomplete or invalid.
    Config = 8,
    /// The answer would not fit the slot.
    TooLarge = 9,
    /// Anything else.
    Other = 10,
    /// OpenBao refused the request itself (HTTP 4xx other than 403/429): not an outage.
    Rejected = 11,
    /// OpenBao's answer could not be understood.
    Protocol = 12,
    /// The value's key version is below the key's `min_decryption_version`.
    VersionRetired = 13,
    /// The KV secret version was destroyed or deleted, or never existed.
    Destroyed = 14,
}

impl FailKind {
    fn from_u8(b: u8) -> Self {
        match b {
            1 => FailKind::Unavailable,
            2 => FailKind::Sealed,
            3 => FailKind::PermissionDenied,
            4 => FailKind::KeyNotFound,
            5 => FailKind::UnsupportedKey,
            6 => FailKind::AuthenticationFailed,
            7 => FailKind::InvalidInput,
            8 => FailKind::Config,
            9 => FailKind::TooLarge,
            11 => FailKind::Rejected,
            12 => FailKind::Protocol,
            13 => FailKind::VersionRetired,
            14 => FailKind::Destroyed,
            _ => FailKind::Other,
        }
    }
}

/// What a backend tells the worker about one KV write (carried as an item's context, as text
/// `<full xid> <cas> <binding> <path>`): the transaction whose abort must destroy it, the
/// version the path is expected to be at, the binding stored with the secret, the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvWriteMeta {
    /// The writing (sub)transaction's full transaction id.
    pub xid: u64,
    /// The version the path is at (0: new path).
    pub cas: u64,
    /// The binding (64 lowercase hex digits).
    pub binding: String,
    /// The KV path.
    pub path: String,
}

impl KvWriteMeta {
    /// The text form.
    pub fn encode(&self) -> String {
        format!("{} {} {} {}", self.xid, self.cas, self.binding, self.path)
    }

    /// Parses the text form.
    pub fn decode(b: &[u8]) -> Result<Self> {
        let bad = || Error::malformed("a KV write request is malformed");
        let s = std::str::from_utf8(b).map_err(|_| bad())?;
        let mut it = s.splitn(4, ' ');
        let xid = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
        let cas = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
        let binding = it.next().filter(|b| b.len() == 64).ok_or_else(bad)?.to_owned();
        let path = it.next().filter(|p| crate::format::valid_kv_path(p)).ok_or_else(bad)?.to_owned();
        Ok(KvWriteMeta { xid, cas, binding, path })
    }
}

/// A failure with a sanitized message (no plaintext, token or ciphertext).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail {
    /// Category.
    pub kind: FailKind,
    /// Sanitized message.
    pub message: String,
}

/// One item of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReqItem<'a> {
    /// Plaintext (encrypt) or `vault:vN:…` (decrypt).
    pub data: &'a [u8],
    /// Associated data.
    pub context: Option<&'a [u8]>,
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// Operation.
    pub op: Op,
    /// Transit key name.
    pub key: &'a str,
    /// Items (none for Rotate / KeyInfo).
    pub items: Vec<ReqItem<'a>>,
}

/// The encoded size of a request with these items.
pub fn request_len(key: &str, items: &[ReqItem<'_>]) -> usize {
    2 + key.len() + 4 + items.iter().map(|i| 5 + i.data.len() + i.context.map_or(0, |c| 4 + c.len())).sum::<usize>()
}

fn too_large() -> Error {
    Error::new(ErrorKind::TooLarge, "request does not fit a queue slot")
}

/// Encodes a request into `buf`; returns the number of bytes written.
pub fn encode_request(buf: &mut [u8], op: Op, key: &str, items: &[ReqItem<'_>]) -> Result<usize> {
    let need = request_len(key, items);
    if need > buf.len() || key.len() > 255 || items.len() > u32::MAX as usize {
        return Err(too_large());
    }
    let mut w = Writer { buf, pos: 0 };
    w.u8(op as u8);
    w.u8(key.len() as u8);
    w.bytes(key.as_bytes());
    w.u32(items.len() as u32);
    for it in items {
        w.u8(u8::from(it.context.is_some()));
        w.u32(it.data.len() as u32);
        w.bytes(it.data);
        if let Some(c) = it.context {
            w.u32(c.len() as u32);
            w.bytes(c);
        }
    }
    Ok(w.pos)
}

/// Decodes a request.
pub fn decode_request(buf: &[u8]) -> Result<Request<'_>> {
    let mut r = Reader { buf, pos: 0 };
    let op = Op::from_u8(r.u8()?).ok_or_else(corrupt)?;
    let klen = r.u8()? as usize;
    let key = std::str::from_utf8(r.take(klen)?).map_err(|_| corrupt())?;
    let n = r.u32()? as usize;
    let mut items = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let flags = r.u8()?;
        let len = r.u32()? as usize;
        let data = r.take(len)?;
        let context = if flags & 1 == 1 {
            let clen = r.u32()? as usize;
            Some(r.take(clen)?)
        } else {
            None
        };
        items.push(ReqItem { data, context });
    }
    Ok(Request { op, key, items })
}

/// Encodes a per-item response; an error if it does not fit.
pub fn encode_response<T: AsRef<[u8]>>(buf: &mut [u8], items: &[std::result::Result<T, Fail>]) -> Result<usize> {
    let need = 5 + items
        .iter()
        .map(|i| match i {
            Ok(d) => 5 + d.as_ref().len(),
            Err(f) => 4 + f.message.len().min(u16::MAX as usize),
        })
        .sum::<usize>();
    if need > buf.len() {
        return Err(too_large());
    }
    let mut w = Writer { buf, pos: 0 };
    w.u8(0);
    w.u32(items.len() as u32);
    for it in items {
        match it {
            Ok(d) => {
                w.u8(0);
                w.u32(d.as_ref().len() as u32);
                w.bytes(d.as_ref());
            }
            Err(f) => {
                w.u8(1);
                w.fail(f);
            }
        }
    }
    Ok(w.pos)
}

/// Encodes a whole-request failure (always fits: the message is cut to the buffer).
pub fn encode_failure(buf: &mut [u8], fail: &Fail) -> usize {
    let mut f = fail.clone();
    let room = buf.len().saturating_sub(4);
    if f.message.len() > room {
        let mut cut = room;
        while !f.message.is_char_boundary(cut) {
            cut -= 1;
        }
        f.message.truncate(cut);
    }
    let mut w = Writer { buf, pos: 0 };
    w.u8(1);
    w.fail(&f);
    w.pos
}

/// A decoded response.
pub type Response<'a> = std::result::Result<Vec<std::result::Result<&'a [u8], Fail>>, Fail>;

/// Decodes a response.
pub fn decode_response(buf: &[u8]) -> Result<Response<'_>> {
    let mut r = Reader { buf, pos: 0 };
    match r.u8()? {
        0 => {
            let n = r.u32()? as usize;
            let mut out = Vec::with_capacity(n.min(4096));
            for _ in 0..n {
                if r.u8()? == 0 {
                    let len = r.u32()? as usize;
                    out.push(Ok(r.take(len)?));
                } else {
                    out.push(Err(r.fail()?));
                }
            }
            Ok(Ok(out))
        }
        1 => Ok(Err(r.fail()?)),
        _ => Err(corrupt()),
    }
}

fn corrupt() -> Error {
    Error::new(ErrorKind::Malformed, "corrupt message in the request queue")
}

struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }
    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    /// Kind, length and message of a failure (the caller writes the marker or tag before it).
    fn fail(&mut self, f: &Fail) {
        let msg = &f.message.as_bytes()[..f.message.len().min(u16::MAX as usize)];
        self.u8(f.kind as u8);
        self.bytes(&(msg.len() as u16).to_le_bytes());
        self.bytes(msg);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or_else(corrupt)?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn fail(&mut self) -> Result<Fail> {
        let kind = FailKind::from_u8(self.u8()?);
        let b = self.take(2)?;
        let len = u16::from_le_bytes([b[0], b[1]]) as usize;
        let message = String::from_utf8_lossy(self.take(len)?).into_owned();
        Ok(Fail { kind, message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let items = [ReqItem { data: b"abc", context: Some(b"ctx") }, ReqItem { data: b"", context: None }];
        let mut buf = vec![0u8; 256];
        let n = encode_request(&mut buf, Op::Encrypt, "app-key", &items).unwrap();
        assert_eq!(n, request_len("app-key", &items));
        let r = decode_request(&buf[..n]).unwrap();
        assert_eq!(r.op, Op::Encrypt);
        assert_eq!(r.key, "app-key");
        assert_eq!(r.items, items);
        assert!(encode_request(&mut buf[..10], Op::Encrypt, "app-key", &items).is_err());
    }

    #[test]
    fn response_round_trip() {
        let items: Vec<std::result::Result<Vec<u8>, Fail>> =
            vec![Ok(b"vault:v1:x".to_vec()), Err(Fail { kind: FailKind::AuthenticationFailed, message: "bad".into() })];
        let mut buf = vec![0u8; 256];
        let n = encode_response(&mut buf, &items).unwrap();
        let r = decode_response(&buf[..n]).unwrap().unwrap();
        assert_eq!(r[0], Ok(&b"vault:v1:x"[..]));
        assert_eq!(r[1].as_ref().unwrap_err().kind, FailKind::AuthenticationFailed);
        let n = encode_failure(&mut buf, &Fail { kind: FailKind::Sealed, message: "sealed".into() });
        assert_eq!(decode_response(&buf[..n]).unwrap().unwrap_err().kind, FailKind::Sealed);
        let n = encode_failure(&mut buf[..8], &Fail { kind: FailKind::Sealed, message: "long message".into() });
        assert_eq!(decode_response(&buf[..n]).unwrap().unwrap_err().message, "long");
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 1u64;
        for len in 0..300 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (seed >> 56) as u8
                })
                .collect();
            let _ = decode_request(&buf);
            let _ = decode_response(&buf);
        }
    }
}
