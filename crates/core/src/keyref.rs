//! Key references: the strings SQL callers use to pick a key.
//!
//! - `local` — the local AES-256-GCM key (`credcrypt.local_key_file` / `credcrypt.local_key`);
//! - `transit:<name>` — the OpenBao Transit key `<name>`, one Transit call per value;
//! - `envelope:<name>` — local AES-256-GCM data keys wrapped by the Transit key `<name>`.
//!
//! Invalid references are never echoed back: a caller who swapped arguments could otherwise
//! see a plaintext in an error message.

use crate::error::{Error, ErrorKind, Result};
use crate::format::valid_key_name;

/// A parsed key reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// The local key.
    Local,
    /// A Transit key by name.
    Transit(String),
    /// Data keys wrapped by the named Transit key.
    Envelope(String),
}

impl KeyRef {
    /// Parses `local`, `transit:<name>` or `envelope:<name>` (name: `[A-Za-z0-9_.-]{1,128}`).
    pub fn parse(s: &str) -> Result<Self> {
        if s == "local" {
            return Ok(KeyRef::Local);
        }
        if let Some(name) = s.strip_prefix("transit:") {
            if valid_key_name(name) {
                return Ok(KeyRef::Transit(name.to_owned()));
            }
        }
        if let Some(name) = s.strip_prefix("envelope:") {
            if valid_key_name(name) {
                return Ok(KeyRef::Envelope(name.to_owned()));
            }
        }
        Err(Error::new(ErrorKind::InvalidKeyRef, "invalid key reference")
            .with_detail("a key reference is 'local', 'transit:<key name>' or 'envelope:<key name>' with a key name of 1 to 128 characters from [A-Za-z0-9_.-]"))
    }

    /// The Transit key behind a `transit:` or `envelope:` reference.
    pub fn transit_name(&self) -> Option<&str> {
        match self {
            KeyRef::Local => None,
            KeyRef::Transit(n) | KeyRef::Envelope(n) => Some(n),
        }
    }
}

impl std::fmt::Display for KeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyRef::Local => f.write_str("local"),
            KeyRef::Transit(n) => write!(f, "transit:{n}"),
            KeyRef::Envelope(n) => write!(f, "envelope:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!(KeyRef::parse("local").unwrap(), KeyRef::Local);
        assert_eq!(KeyRef::parse("transit:app").unwrap(), KeyRef::Transit("app".into()));
        assert_eq!(KeyRef::parse("envelope:app").unwrap(), KeyRef::Envelope("app".into()));
        assert_eq!(KeyRef::parse("envelope:app").unwrap().to_string(), "envelope:app");
        for bad in
            ["", "Local", "transit:", "transit:a b", "sk-live-secret", "transit:x:y", "envelope:", "envelope:a/b"]
        {
            let e = KeyRef::parse(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidKeyRef);
            assert!(!e.message.contains(bad) || bad.is_empty());
            assert!(!e.detail.unwrap().contains("sk-live"));
        }
    }
}
