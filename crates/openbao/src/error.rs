//! Errors: kinds the worker maps to its failure classes, and messages that carry addresses,
//! key names, HTTP statuses and fixed texts only — never a token, secret id, plaintext,
//! ciphertext, associated data or raw server body.

use serde_json::Value;
use zeroize::Zeroizing;

use crate::transport::small_json;

/// What a whole call failed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No address answered usefully (connection errors, 5xx, 429, timeouts).
    Unavailable,
    /// The server is sealed.
    Sealed,
    /// 403 even after re-authenticating.
    PermissionDenied,
    /// Login failed (bad role id / secret id / unreadable token).
    AuthFailed,
    /// The Transit key does not exist.
    KeyNotFound,
    /// Configuration problem (no address, bad CA file, unreadable credential file).
    InvalidConfig,
    /// The server rejected the request (400 without per-item results).
    BadRequest,
    /// Unexpected response.
    Protocol,
    /// The request is too large.
    TooLarge,
    /// KV check-and-set: the secret is not at the version given (another writer was first);
    /// re-read the metadata and retry.
    CasMismatch,
    /// A KV mount name, path or version outside what the client accepts (refused before
    /// sending; the message does not repeat it).
    InvalidArgument,
    /// The KV mount does not exist or is not a KV version 2 mount.
    MountNotFound,
}

/// A whole-call failure with a sanitized message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// Category.
    pub kind: ErrorKind,
    /// Sanitized message.
    pub message: String,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into() }
    }
}

/// Why one item failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemErrorKind {
    /// Tampered value or wrong associated data.
    AuthenticationFailed,
    /// Not a valid Transit ciphertext / input.
    InvalidInput,
    /// The key does not exist.
    KeyNotFound,
    /// The value's key version is below the key's `min_decryption_version`.
    VersionRetired,
    /// Anything else.
    Other,
}

/// A per-item failure with a fixed, sanitized message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ItemError {
    /// Category.
    pub kind: ItemErrorKind,
    /// Sanitized message.
    pub message: String,
}

/// One decrypted item: the plaintext (zeroized on drop) or why it failed.
pub type Decrypted = Result<Zeroizing<Vec<u8>>, ItemError>;

pub(crate) fn errors_text_of(body: &str) -> String {
    small_json(body).map(|v| errors_text(&v)).unwrap_or_default()
}

pub(crate) fn errors_text(v: &Value) -> String {
    v.get("errors")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "))
        .unwrap_or_default()
}

pub(crate) fn item_error(msg: &str) -> ItemError {
    let m = msg.to_ascii_lowercase();
    let (kind, message) = if m.contains("message authentication failed") {
        (ItemErrorKind::AuthenticationFailed, "ciphertext authentication failed (tampered value or wrong context)")
    } else if m.contains("key not found") {
        (ItemErrorKind::KeyNotFound, "the Transit key does not exist")
    } else if m.contains("disallowed by policy") || m.contains("too old") {
        (ItemErrorKind::VersionRetired, "the value's key version is below the key's min_decryption_version")
    } else if m.contains("invalid ciphertext") || m.contains("invalid") || m.contains("decode") {
        (ItemErrorKind::InvalidInput, "OpenBao rejected the value as not a valid Transit ciphertext")
    } else {
        (ItemErrorKind::Other, "OpenBao could not process the value")
    };
    ItemError { kind, message: message.to_owned() }
}

/// Describes a transport error without anything from the request.
pub(crate) fn sanitize_transport(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(_) => "timed out".into(),
        ureq::Error::Io(io) => format!("connection error ({})", io.kind()),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        ureq::Error::Tls(_) => "TLS error".into(),
        _ => "transport error".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_errors_are_fixed_texts() {
        let e = item_error("cipher: message authentication failed");
        assert_eq!(e.kind, ItemErrorKind::AuthenticationFailed);
        let e = item_error("invalid ciphertext: sk-live-SECRET");
        assert!(!e.message.contains("SECRET"));
    }
}
