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
}

impl Provider {
    /// The provider's name as it appears in the format and in `ciphertext_info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Local => "local",
            Provider::Transit => "transit",
            Provider::Envelope => "envelope",
        }
    }
}

/// The key version field: a key id for the local provider, a number for Transit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyVersion {
    /// Fingerprint of the local key that encrypted the value.
    LocalId(KeyId),
    /// Transit key version (1 or more).
    Transit(u32),
    /// Id of the envelope data key.
    DataKey(KeyId),
}

/// A parsed (not yet decrypted) ciphertext that borrows from its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ciphertext<'a> {
    /// Format version (always 1 for values this parser accepts).
    pub format_version: u32,
    /// Provider that encrypted the value.
    pub provider: Provider,
    /// Key name (`local` for the local provider).
    pub key_name: &'a str,
    /// Key id or version.
    pub key_version: KeyVersion,
    /// Whether a context (associated data) is bound.
    pub has_context: bool,
    /// The header, up to and including the colon before the payload.
    pub header: &'a str,
    /// The payload text.
    pub payload: &'a str,
    /// Local and envelope providers: the decoded payload, nonce ‖ ciphertext ‖ tag. Empty for Transit.
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
    format!("{PREFIX_V1}local:local:{}:{}:", id.to_hex(), if has_context { 'c' } else { 'n' })
}

/// The header of an envelope ciphertext (also its associated-data prefix).
pub fn envelope_header(key_name: &str, data_key: KeyId, has_context: bool) -> String {
    format!("{PREFIX_V1}envelope:{key_name}:{}:{}:", data_key.to_hex(), if has_context { 'c' } else { 'n' })
}

/// Appends the base64url payload to a local header.
pub fn finish_local(mut header: String, payload: &[u8]) -> String {
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
    fn other_versions_are_unsupported_not_malformed() {
        let e = Ciphertext::parse("cc2:local:local:0000000000000000:n:AAAA").unwrap_err();
        assert_eq!(e.kind, ErrorKind::UnsupportedVersion);
        let e = Ciphertext::parse("hello").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Malformed);
        let e = Ciphertext::parse("cc:").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Malformed);
    }
}
