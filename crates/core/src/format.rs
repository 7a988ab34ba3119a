//! Ciphertext format v1: self-describing, versioned ASCII that fits in a `text` column.
//!
//! ```text
//! cc1:<provider>:<key name>:<key version>:<context flag>:<payload>
//! ```
//!
//! | field         | local provider                                  | transit provider                      |
//! |---------------|-------------------------------------------------|---------------------------------------|
//! | provider      | `local`                                         | `transit`                             |
//! | key name      | `local`                                         | Transit key name `[A-Za-z0-9_.-]{1,128}` |
//! | key version   | key id: 16 lowercase hex digits (a fingerprint) | decimal version, no leading zero      |
//! | context flag  | `c` context bound, `n` none                     | same                                  |
//! | payload       | base64url, no padding, of nonce(12) ‖ ct ‖ tag(16) | the Transit value `vault:v<N>:<base64>` unchanged, N = key version |
//!
//! The envelope provider (`cc1:envelope:<Transit key name>:<data key id>:<c|n>:<payload>`) has
//! the local provider's payload and associated data; its key version field is the id (16
//! lowercase hex digits, random) of the data key in `credcrypt.data_keys` that encrypted it.
//!
//! A KV reference (`cc1:kv:<mount>:<KV version>:<c|n>:<path>`) holds no ciphertext at all: the
//! secret is stored in the OpenBao KV v2 engine mounted at `<mount>`, at `<path>`, version
//! `<KV version>` (decimal, no leading zero). Its payload is the path: `/`-separated segments of
//! 1 to [`MAX_KV_SEGMENT_LEN`] characters from `[A-Za-z0-9_.=,~-]`, none `.` or `..`, at most
//! [`MAX_KV_PATH_LEN`] bytes in all ([`valid_kv_path`]). Nothing in it is secret; the context, if
//! any, is checked against a binding stored with the secret ([`crate::kv::kv_binding`]).
//!
//! The header (everything up to and including the colon before the payload) is part of the
//! associated data of the local provider, so no field can be changed without the value
//! failing authentication. Parsing is strict: exactly one spelling is accepted for each value.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;

use crate::error::{Error, ErrorKind, Result};
use crate::local::KeyId;
use crate::MAX_PLAINTEXT_LEN;

/// The format version this crate writes.
pub const FORMAT_VERSION: u32 = 1;

/// Prefix of every v1 ciphertext.
pub const PREFIX_V1: &str = "cc1:";

/// Length of the AES-GCM nonce in bytes (96 bits).
pub const NONCE_LEN: usize = 12;

/// Length of the AES-GCM tag in bytes (128 bits).
pub const TAG_LEN: usize = 16;

/// Longest key name accepted (bytes).
pub const MAX_KEY_NAME_LEN: usize = 128;

/// Longest ciphertext accepted by the parser, in bytes. Derived from [`MAX_PLAINTEXT_LEN`]:
/// a header of at most 200 bytes plus the base64 expansion of the largest payload.
pub const MAX_CIPHERTEXT_LEN: usize = 200 + (MAX_PLAINTEXT_LEN + NONCE_LEN + TAG_LEN + 64) * 4 / 3 + 4;

/// Which provider produced a ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// The local AES-256-GCM key.
    Local,
    /// OpenBao / Vault Transit.
    Transit,
    /// A data key wrapped by a Transit key (envelope encryption).
    Envelope,
    /// A reference to a secret kept in an OpenBao KV v2 engine (the value holds no ciphertext).
    Kv,
}

impl Provider {
    /// The provider's name as it appears in the format and in `ciphertext_info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Local => "local",
            Provider::Transit => "transit",
            Provider::Envelope => "envelope",
            Provider::Kv => "kv",
        }
    }
}

/// The key version field: a key id for the local provider, a number for Transit and KV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyVersion {
    /// Fingerprint of the local key that encrypted the value.
    LocalId(KeyId),
    /// Transit key version (1 or more).
    Transit(u32),
    /// Id of the envelope data key.
    DataKey(KeyId),
    /// Version (1 or more) of the KV v2 secret a `kv` reference names. A variant of its own, not
    /// [`KeyVersion::Transit`]: it numbers versions of one secret, not of a key, and
    /// [`Ciphertext::transit_version`] must never hand it to Transit code.
    Kv(u32),
}

/// A parsed (not yet decrypted) ciphertext that borrows from its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ciphertext<'a> {
    /// Format version (always 1 for values this parser accepts).
    pub format_version: u32,
    /// Provider that encrypted the value.
    pub provider: Provider,
    /// Key name (`local` for the local provider, the mount for KV).
    pub key_name: &'a str,
    /// Key id or version.
    pub key_version: KeyVersion,
    /// Whether a context (associated data) is bound.
    pub has_context: bool,
    /// The header, up to and including the colon before the payload.
    pub header: &'a str,
    /// The payload text (the KV path for KV references).
    pub payload: &'a str,
    /// Local and envelope providers: the decoded payload, nonce ‖ ciphertext ‖ tag. Empty for
    /// Transit and KV.
    pub local_bytes: Vec<u8>,
}

/// Returns true when `name` is a valid key name: `[A-Za-z0-9_.-]{1,128}`, other than `.` and
/// `..` (which would name a different OpenBao path once placed in a URL).
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= MAX_KEY_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Longest KV path a `kv` reference carries, in bytes.
pub const MAX_KV_PATH_LEN: usize = 1024;

/// Longest segment of a KV path, in bytes.
pub const MAX_KV_SEGMENT_LEN: usize = 255;

/// Returns true when `segment` is a valid KV path segment: 1 to [`MAX_KV_SEGMENT_LEN`]
/// characters from `[A-Za-z0-9_.=,~-]`, other than `.` and `..`.
pub fn valid_kv_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment.len() <= MAX_KV_SEGMENT_LEN
        && segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'=' | b',' | b'~' | b'-'))
}

/// Returns true when `path` is a valid KV path: [`valid_kv_segment`]s separated by single `/`
/// (no leading, trailing or doubled `/`), at most [`MAX_KV_PATH_LEN`] bytes.
pub fn valid_kv_path(path: &str) -> bool {
    !path.is_empty() && path.len() <= MAX_KV_PATH_LEN && path.split('/').all(valid_kv_segment)
}

/// Parses a decimal without sign or leading zero, 1..=i32::MAX (so it fits SQL `int`).
fn parse_version_number(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: u64 = s.parse().ok()?;
    (1..=i32::MAX as u64).contains(&v).then_some(v as u32)
}

/// Detects a `cc<digits>:` prefix of another format version and reports it as unsupported.
fn other_version(text: &str) -> Option<Error> {
    let rest = text.strip_prefix("cc")?;
    let digits: &str = &rest[..rest.bytes().take_while(u8::is_ascii_digit).count()];
    if digits.is_empty() || digits.len() > 9 || !rest[digits.len()..].starts_with(':') {
        return None;
    }
    Some(
        Error::new(ErrorKind::UnsupportedVersion, "unsupported pg_credcrypt ciphertext format version").with_detail(
            format!("format version {digits} is not supported; this build reads version {FORMAT_VERSION}"),
        ),
    )
}

impl<'a> Ciphertext<'a> {
    /// Parses `text` strictly. Checks the header fields and the payload's syntax (for the local
    /// provider: base64url without padding, canonical, long enough for nonce and tag).
    pub fn parse(text: &'a str) -> Result<Self> {
        if text.len() > MAX_CIPHERTEXT_LEN {
            return Err(Error::new(ErrorKind::TooLarge, "ciphertext exceeds the maximum size").with_detail(format!(
                "{} bytes; the limit is {} bytes",
                text.len(),
                MAX_CIPHERTEXT_LEN
            )));
        }
        let Some(rest) = text.strip_prefix(PREFIX_V1) else {
            return Err(other_version(text).unwrap_or_else(|| Error::malformed("missing the cc1: prefix")));
        };
        let mut fields = rest.splitn(5, ':');
        let provider = fields.next().ok_or_else(|| Error::malformed("missing provider"))?;
        let key_name = fields.next().ok_or_else(|| Error::malformed("missing key name"))?;
        let version = fields.next().ok_or_else(|| Error::malformed("missing key version"))?;
        let flag = fields.next().ok_or_else(|| Error::malformed("missing context flag"))?;
        let payload = fields.next().ok_or_else(|| Error::malformed("missing payload"))?;
        let has_context = match flag {
            "c" => true,
            "n" => false,
            _ => return Err(Error::malformed("context flag must be c or n")),
        };
        let header = &text[..text.len() - payload.len()];
        let mut local_bytes = Vec::new();
        let (provider, key_version) = match provider {
            "local" => {
                if key_name != "local" {
                    return Err(Error::malformed("the local provider's key name must be local"));
                }
                let id = KeyId::from_hex(version)
                    .ok_or_else(|| Error::malformed("local key id must be 16 lowercase hex digits"))?;
                local_bytes = decode_local_payload(payload)?;
                (Provider::Local, KeyVersion::LocalId(id))
            }
            "transit" => {
                if !valid_key_name(key_name) {
                    return Err(Error::malformed("invalid Transit key name"));
                }
                let v = parse_version_number(version).ok_or_else(|| Error::malformed("invalid Transit key version"))?;
                check_transit_payload(payload, v)?;
                (Provider::Transit, KeyVersion::Transit(v))
            }
            "envelope" => {
                if !valid_key_name(key_name) {
                    return Err(Error::malformed("invalid Transit key name"));
                }
                let id = KeyId::from_hex(version)
                    .ok_or_else(|| Error::malformed("data key id must be 16 lowercase hex digits"))?;
                local_bytes = decode_local_payload(payload)?;
                (Provider::Envelope, KeyVersion::DataKey(id))
            }
            "kv" => {
                if !valid_key_name(key_name) {
                    return Err(Error::malformed("invalid KV mount name"));
                }
                let v = parse_version_number(version).ok_or_else(|| Error::malformed("invalid KV version"))?;
                if !valid_kv_path(payload) {
                    return Err(Error::malformed("invalid KV path"));
                }
                (Provider::Kv, KeyVersion::Kv(v))
            }
            _ => return Err(Error::malformed("unknown provider")),
        };
        Ok(Self {
            format_version: FORMAT_VERSION,
            provider,
            key_name,
            key_version,
            has_context,
            header,
            payload,
            local_bytes,
        })
    }

    /// The numeric key version (Transit only).
    pub fn transit_version(&self) -> Option<u32> {
        match self.key_version {
            KeyVersion::Transit(v) => Some(v),
            _ => None,
        }
    }

    /// The local key id (local provider only).
    pub fn local_key_id(&self) -> Option<KeyId> {
        match self.key_version {
            KeyVersion::LocalId(id) => Some(id),
            _ => None,
        }
    }

    /// The data key id (envelope provider only).
    pub fn data_key_id(&self) -> Option<KeyId> {
        match self.key_version {
            KeyVersion::DataKey(id) => Some(id),
            _ => None,
        }
    }

    /// The KV mount a `kv` reference names (KV only).
    pub fn kv_mount(&self) -> Option<&'a str> {
        (self.provider == Provider::Kv).then_some(self.key_name)
    }

    /// The KV v2 version a `kv` reference names (KV only).
    pub fn kv_version(&self) -> Option<u32> {
        match self.key_version {
            KeyVersion::Kv(v) => Some(v),
            _ => None,
        }
    }

    /// The KV path a `kv` reference names, relative to its mount (KV only).
    pub fn kv_path(&self) -> Option<&'a str> {
        (self.provider == Provider::Kv).then_some(self.payload)
    }
}

fn decode_local_payload(payload: &str) -> Result<Vec<u8>> {
    let bytes =
        URL_SAFE_NO_PAD.decode(payload).map_err(|_| Error::malformed("payload is not canonical unpadded base64url"))?;
    if bytes.len() < NONCE_LEN + TAG_LEN {
        return Err(Error::malformed("payload is shorter than nonce and tag"));
    }
    Ok(bytes)
}

/// Checks `vault:v<N>:<standard base64>` with N equal to the header's version.
pub fn check_transit_payload(payload: &str, version: u32) -> Result<()> {
    let rest =
        payload.strip_prefix("vault:v").ok_or_else(|| Error::malformed("Transit payload must start with vault:v"))?;
    let (ver, b64) =
        rest.split_once(':').ok_or_else(|| Error::malformed("Transit payload lacks its version separator"))?;
    if parse_version_number(ver) != Some(version) {
        return Err(Error::malformed("Transit payload version does not match the header"));
    }
    let raw = STANDARD.decode(b64).map_err(|_| Error::malformed("Transit payload is not canonical base64"))?;
    if raw.len() < NONCE_LEN + TAG_LEN {
        return Err(Error::malformed("Transit payload is too short"));
    }
    Ok(())
}

/// The header of a local ciphertext (also its associated-data prefix).
pub fn local_header(id: KeyId, has_context: bool) -> String {
    header("local:local:", "", id, has_context)
}

/// The header of an envelope ciphertext (also its associated-data prefix).
pub fn envelope_header(key_name: &str, data_key: KeyId, has_context: bool) -> String {
    header("envelope:", key_name, data_key, has_context)
}

/// Room left after a header for the payload of a typical credential (a plaintext of up to
/// about 100 bytes), so that [`finish_local`] appends it without moving the string; a longer
/// value grows it once.
const PAYLOAD_ROOM: usize = 192;

/// `cc1:<kind><name>:<16 hex digits>:<c|n>:` built by hand (once per value written: no
/// formatting machinery), with room for a typical payload.
fn header(kind: &str, name: &str, id: KeyId, has_context: bool) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(PREFIX_V1.len() + kind.len() + name.len() + 1 + 16 + 3 + PAYLOAD_ROOM);
    s.push_str(PREFIX_V1);
    s.push_str(kind);
    if !name.is_empty() {
        s.push_str(name);
        s.push(':');
    }
    for b in id.0 {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s.push(':');
    s.push(if has_context { 'c' } else { 'n' });
    s.push(':');
    s
}

/// Appends the base64url payload to a local header.
pub fn finish_local(mut header: String, payload: &[u8]) -> String {
    header.reserve((payload.len() * 4).div_ceil(3));
    URL_SAFE_NO_PAD.encode_string(payload, &mut header);
    header
}

/// Wraps a Transit ciphertext (`vault:vN:…`) in a v1 envelope. The value is carried unchanged.
pub fn wrap_transit(key_name: &str, vault_ciphertext: &str, has_context: bool) -> Result<String> {
    if !valid_key_name(key_name) {
        return Err(Error::new(ErrorKind::InvalidKeyRef, "invalid Transit key name"));
    }
    let ver = vault_ciphertext
        .strip_prefix("vault:v")
        .and_then(|r| r.split_once(':'))
        .and_then(|(v, _)| parse_version_number(v))
        .ok_or_else(|| Error::malformed("Transit answered a value that is not vault:v<N>:<base64>"))?;
    check_transit_payload(vault_ciphertext, ver)?;
    Ok(format!("{PREFIX_V1}transit:{key_name}:{ver}:{}:{vault_ciphertext}", if has_context { 'c' } else { 'n' }))
}

/// Builds the reference `cc1:kv:<mount>:<version>:<c|n>:<path>` to version `version` of the KV v2
/// secret at `path` in the engine mounted at `mount`. Errors, never echoing the input: an invalid
/// mount ([`valid_key_name`]) is `InvalidKeyRef`; a version outside 1..=2147483647 or an invalid
/// path ([`valid_kv_path`]) is `InvalidArgument`.
pub fn kv_reference(mount: &str, version: u32, has_context: bool, path: &str) -> Result<String> {
    if !valid_key_name(mount) {
        return Err(Error::new(ErrorKind::InvalidKeyRef, "invalid KV mount name")
            .with_detail("a KV mount name is 1 to 128 characters from [A-Za-z0-9_.-], other than . and .."));
    }
    if !(1..=i32::MAX as u32).contains(&version) {
        return Err(Error::new(ErrorKind::InvalidArgument, "KV version out of range")
            .with_detail("a KV version is 1 to 2147483647"));
    }
    if !valid_kv_path(path) {
        return Err(Error::new(ErrorKind::InvalidArgument, "invalid KV path").with_detail(KV_PATH_RULES));
    }
    Ok(format!("{PREFIX_V1}kv:{mount}:{version}:{}:{path}", if has_context { 'c' } else { 'n' }))
}

/// The rules of [`valid_kv_path`], for error details.
pub(crate) const KV_PATH_RULES: &str =
    "a KV path is at most 1024 bytes of segments separated by single '/', each 1 to 255 \
     characters from [A-Za-z0-9_.=,~-] and neither . nor ..";

/// Builds the associated data for a value: its header, then the context bytes when bound.
pub fn associated_data(header: &str, context: Option<&[u8]>) -> Vec<u8> {
    let ctx = context.unwrap_or_default();
    let mut aad = Vec::with_capacity(header.len() + ctx.len());
    aad.extend_from_slice(header.as_bytes());
    aad.extend_from_slice(ctx);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version_number("1"), Some(1));
        assert_eq!(parse_version_number("2147483647"), Some(i32::MAX as u32));
        for bad in ["", "0", "01", "-1", "+1", "2147483648", "99999999999", "1a", " 1"] {
            assert_eq!(parse_version_number(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn key_names() {
        assert!(valid_key_name("payments-key_v2.prod"));
        assert!(!valid_key_name(""));
        assert!(!valid_key_name("a:b"));
        assert!(!valid_key_name("a/b"));
        assert!(!valid_key_name(&"a".repeat(129)));
    }

    #[test]
    fn transit_round_trip() {
        let vault = "vault:v3:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let s = wrap_transit("app-key", vault, true).unwrap();
        assert_eq!(s, format!("cc1:transit:app-key:3:c:{vault}"));
        let c = Ciphertext::parse(&s).unwrap();
        assert_eq!(c.provider, Provider::Transit);
        assert_eq!(c.key_name, "app-key");
        assert_eq!(c.transit_version(), Some(3));
        assert!(c.has_context);
        assert_eq!(c.payload, vault);
        // Version mismatch between header and payload.
        assert!(Ciphertext::parse(&s.replace("app-key:3:", "app-key:4:")).is_err());
        assert!(wrap_transit("app-key", "vault:v0:AAAA", false).is_err());
        assert!(wrap_transit("bad key", vault, false).is_err());
    }

    #[test]
    fn kv_round_trip() {
        let path = "pg_credcrypt/app/public.users/api_key/42/0011223344556677";
        let s = kv_reference("secret", 3, true, path).unwrap();
        assert_eq!(s, format!("cc1:kv:secret:3:c:{path}"));
        let c = Ciphertext::parse(&s).unwrap();
        assert_eq!(c.provider, Provider::Kv);
        assert_eq!(c.provider.as_str(), "kv");
        assert_eq!((c.kv_mount(), c.kv_version(), c.kv_path()), (Some("secret"), Some(3), Some(path)));
        assert!(c.has_context);
        assert_eq!(c.header, "cc1:kv:secret:3:c:");
        assert!(c.local_bytes.is_empty());
        // Never mistaken for another provider's fields, nor the others for KV.
        assert_eq!((c.transit_version(), c.local_key_id(), c.data_key_id()), (None, None, None));
        let t = Ciphertext::parse("cc1:transit:app-key:3:c:vault:v3:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
        assert_eq!((t.kv_mount(), t.kv_version(), t.kv_path()), (None, None, None));
        let n = kv_reference("kv-v2.prod", i32::MAX as u32, false, "a").unwrap();
        assert_eq!(n, "cc1:kv:kv-v2.prod:2147483647:n:a");
        assert_eq!(Ciphertext::parse(&n).unwrap().kv_version(), Some(i32::MAX as u32));
        // Every allowed character, a 255-character segment and a 1024-byte path.
        let all = "AZaz09_.=,~-";
        assert!(Ciphertext::parse(&format!("cc1:kv:m:1:n:{all}/~/x")).is_ok());
        let long = ["a".repeat(255), "b".repeat(255), "c".repeat(255), "d".repeat(254)].join("/");
        assert_eq!(long.len(), 1022);
        assert!(Ciphertext::parse(&format!("cc1:kv:m:1:n:{long}/e")).is_ok(), "1024 bytes");
        assert!(Ciphertext::parse(&format!("cc1:kv:m:1:n:{long}/ef")).is_err(), "1025 bytes");
    }

    #[test]
    fn kv_strict() {
        assert!(Ciphertext::parse("cc1:kv:m:1:n:a/b").is_ok());
        for bad in [
            "cc1:kv:m:01:n:a/b",
            "cc1:kv:m:0:n:a/b",
            "cc1:kv:m:+1:n:a/b",
            "cc1:kv:m:2147483648:n:a/b",
            "cc1:kv:m::n:a/b",
            "cc1:kv:m:1:C:a/b",
            "cc1:kv:m:1:N:a/b",
            "cc1:kv:m:1:x:a/b",
            "cc1:kv:m:1::a/b",
            "cc1:KV:m:1:n:a/b",
            "cc1:Kv:m:1:n:a/b",
            "cc1:kv::1:n:a/b",
            "cc1:kv:.:1:n:a/b",
            "cc1:kv:..:1:n:a/b",
            "cc1:kv:m/x:1:n:a/b",
            "cc1:kv:m:1:n:",
            "cc1:kv:m:1:n:a//b",
            "cc1:kv:m:1:n:/a/b",
            "cc1:kv:m:1:n:a/b/",
            "cc1:kv:m:1:n:a/../b",
            "cc1:kv:m:1:n:a/./b",
            "cc1:kv:m:1:n:..",
            "cc1:kv:m:1:n:a:b",
            "cc1:kv:m:1:n:a/b:",
            "cc1:kv:m:1:n:a b",
            "cc1:kv:m:1:n:a%2fb",
            "cc1:kv:m:1:n:a\\b",
            "cc1:kv:m:1:n:ü",
            "cc1:kv:m:1:n:a/b\n",
            "cc1:kv:m:1:n",
            "cc1:kv:m:1",
        ] {
            let e = Ciphertext::parse(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Malformed, "{bad:?}");
            assert!(!e.detail.unwrap_or_default().contains("a/b"), "{bad:?}");
        }
        let seg = "a".repeat(255);
        assert!(Ciphertext::parse(&format!("cc1:kv:m:1:n:{seg}")).is_ok());
        assert!(Ciphertext::parse(&format!("cc1:kv:m:1:n:{seg}a")).is_err());
        assert!(Ciphertext::parse(&format!("cc1:kv:{}:1:n:a", "m".repeat(129))).is_err());
    }

    #[test]
    fn kv_reference_refuses() {
        let e = kv_reference("bad mount", 1, false, "a").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidKeyRef);
        assert!(!e.detail.unwrap().contains("bad mount"));
        for v in [0, i32::MAX as u32 + 1, u32::MAX] {
            assert_eq!(kv_reference("m", v, false, "a").unwrap_err().kind, ErrorKind::InvalidArgument);
        }
        for p in ["", "/", "a/", "a//b", "..", "a/./b", "a:b", "sk-live-1234 secret", "a?b", "a#b", "a%2e"] {
            let e = kv_reference("m", 1, true, p).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument, "{p:?}");
            assert!(p.len() < 4 || !e.message.contains(p) && !e.detail.unwrap_or_default().contains(p));
        }
        assert!(kv_reference("m", 1, true, &"a".repeat(1025)).is_err());
    }

    #[test]
    fn other_versions_are_unsupported_not_malformed() {
        let e = Ciphertext::parse("cc2:local:local:0000000000000000:n:AAAA").unwrap_err();
        assert_eq!(e.kind, ErrorKind::UnsupportedVersion);
        let e = Ciphertext::parse("hello").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Malformed);
        let e = Ciphertext::parse("cc:").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Malformed);
    }
}
