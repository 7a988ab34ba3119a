//! Key references: the strings SQL callers use to pick a key.
//!
//! - `local` — the local AES-256-GCM key (`credcrypt.local_key_file` / `credcrypt.local_key`);
//! - `transit:<name>` — the OpenBao Transit key `<name>`, one Transit call per value;
//! - `envelope:<name>` — local AES-256-GCM data keys wrapped by the Transit key `<name>`;
//! - `kv:<mount>` — each value stored as a secret in the OpenBao KV v2 engine mounted at
//!   `<mount>`, the column holding only a reference ([`crate::kv`]). Not available per row
//!   ([`KeyTemplate`]).
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
    /// Secrets stored in the OpenBao KV v2 engine at this mount.
    Kv(String),
}

impl KeyRef {
    /// Parses `local`, `transit:<name>`, `envelope:<name>` or `kv:<mount>` (name and mount:
    /// `[A-Za-z0-9_.-]{1,128}`, not `.` or `..`).
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
        if let Some(mount) = s.strip_prefix("kv:") {
            if valid_key_name(mount) {
                return Ok(KeyRef::Kv(mount.to_owned()));
            }
        }
        Err(Error::new(ErrorKind::InvalidKeyRef, "invalid key reference")
            .with_detail("a key reference is 'local', 'transit:<key name>', 'envelope:<key name>' or 'kv:<mount>' with a key name or mount of 1 to 128 characters from [A-Za-z0-9_.-]"))
    }

    /// The Transit key behind a `transit:` or `envelope:` reference (`None` for `local` and `kv:`).
    pub fn transit_name(&self) -> Option<&str> {
        match self {
            KeyRef::Local | KeyRef::Kv(_) => None,
            KeyRef::Transit(n) | KeyRef::Envelope(n) => Some(n),
        }
    }

    /// The KV mount behind a `kv:` reference.
    pub fn kv_mount(&self) -> Option<&str> {
        match self {
            KeyRef::Kv(m) => Some(m),
            _ => None,
        }
    }
}

/// A per-row key reference: `transit:<prefix>{<column>}<suffix>` or
/// `envelope:<prefix>{<column>}<suffix>` — the key of each row is the Transit key whose name is
/// the prefix, the value of the bind column `<column>` in that row, and the suffix (e.g.
/// `envelope:tenant-{org_id}`). The column value must be 1 to [`MAX_TENANT_VALUE_LEN`]
/// characters from `[A-Za-z0-9_-]` (no dot: `.` and `..` would name other OpenBao paths), and
/// the whole name a valid key name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    /// Whether values are encrypted per value by Transit (`transit:`) or with envelope data keys.
    pub envelope: bool,
    /// Text before the braces.
    pub prefix: String,
    /// The bind column named in braces.
    pub column: String,
    /// Text after the braces.
    pub suffix: String,
}

/// Longest column value a per-row key name takes.
pub const MAX_TENANT_VALUE_LEN: usize = 64;

impl KeyTemplate {
    /// Parses a per-row key reference; `Ok(None)` when `s` has no braces (an ordinary
    /// reference), an error when its braces are not exactly one `{column}` in a Transit or
    /// envelope reference whose fixed parts are valid key-name characters.
    pub fn parse(s: &str) -> Result<Option<Self>> {
        if !s.contains(['{', '}']) {
            return Ok(None);
        }
        let bad = || {
            Error::new(ErrorKind::InvalidKeyRef, "invalid per-row key reference").with_detail(
                "a per-row key reference is 'transit:<prefix>{<bind column>}<suffix>' or 'envelope:<prefix>{<bind column>}<suffix>', \
                 with exactly one {column} and a prefix and suffix from [A-Za-z0-9_.-]",
            )
        };
        let (envelope, rest) = match (s.strip_prefix("transit:"), s.strip_prefix("envelope:")) {
            (Some(r), _) => (false, r),
            (_, Some(r)) => (true, r),
            _ => return Err(bad()),
        };
        let (prefix, rest) = rest.split_once('{').ok_or_else(bad)?;
        let (column, suffix) = rest.split_once('}').ok_or_else(bad)?;
        let fixed_ok = |p: &str| p.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if column.is_empty()
            || column.len() > 63
            || column.contains(['{', '}'])
            || suffix.contains(['{', '}'])
            || !fixed_ok(prefix)
            || !fixed_ok(suffix)
            || prefix.len() + suffix.len() + MAX_TENANT_VALUE_LEN > crate::format::MAX_KEY_NAME_LEN
        {
            return Err(bad());
        }
        Ok(Some(KeyTemplate {
            envelope,
            prefix: prefix.to_owned(),
            column: column.to_owned(),
            suffix: suffix.to_owned(),
        }))
    }

    /// The key reference of a row whose bind column holds `value` (its text form); an error
    /// (never echoing the value) for NULL or a value that cannot be part of a key name.
    pub fn resolve(&self, value: Option<&str>) -> Result<KeyRef> {
        let Some(v) = value else {
            return Err(Error::new(ErrorKind::InvalidArgument, "the per-row key's column is NULL")
                .with_detail(format!("column \"{}\" chooses the key of each row; give it a value", self.column)));
        };
        if v.is_empty()
            || v.len() > MAX_TENANT_VALUE_LEN
            || !v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        {
            return Err(Error::new(ErrorKind::InvalidArgument, "the per-row key's column holds a value that cannot name a key")
                .with_detail(format!(
                    "column \"{}\" chooses the key of each row: its values must be 1 to {MAX_TENANT_VALUE_LEN} characters from [A-Za-z0-9_-]",
                    self.column
                )));
        }
        let name = format!("{}{v}{}", self.prefix, self.suffix);
        if !valid_key_name(&name) {
            return Err(Error::new(ErrorKind::InvalidArgument, "the per-row key name is not a valid key name"));
        }
        Ok(if self.envelope { KeyRef::Envelope(name) } else { KeyRef::Transit(name) })
    }

    /// Whether `name` (a Transit key name) is one this template can produce.
    pub fn matches(&self, name: &str) -> bool {
        name.strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_suffix(self.suffix.as_str()))
            .is_some_and(|v| self.resolve(Some(v)).is_ok())
    }
}

impl std::fmt::Display for KeyTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = if self.envelope { "envelope" } else { "transit" };
        write!(f, "{p}:{}{{{}}}{}", self.prefix, self.column, self.suffix)
    }
}

impl std::fmt::Display for KeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyRef::Local => f.write_str("local"),
            KeyRef::Transit(n) => write!(f, "transit:{n}"),
            KeyRef::Envelope(n) => write!(f, "envelope:{n}"),
            KeyRef::Kv(m) => write!(f, "kv:{m}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let t = KeyTemplate::parse("envelope:tenant-{org_id}").unwrap().unwrap();
        assert_eq!(t.to_string(), "envelope:tenant-{org_id}");
        assert_eq!(t.column, "org_id");
        assert_eq!(t.resolve(Some("acme")).unwrap(), KeyRef::Envelope("tenant-acme".into()));
        assert_eq!(t.resolve(Some("42")).unwrap(), KeyRef::Envelope("tenant-42".into()));
        let uuid = "0b6f9a6e-6a4d-4c58-9b1e-3f0c8d2a1b7e";
        assert_eq!(t.resolve(Some(uuid)).unwrap(), KeyRef::Envelope(format!("tenant-{uuid}")));
        assert!(
            t.matches("tenant-acme") && !t.matches("tenant-") && !t.matches("other-acme") && !t.matches("tenant-a.b")
        );
        let x = KeyTemplate::parse("transit:{tenant}.creds").unwrap().unwrap();
        assert_eq!(x.resolve(Some("t1")).unwrap(), KeyRef::Transit("t1.creds".into()));
        assert_eq!(KeyTemplate::parse("transit:app").unwrap(), None);
        assert_eq!(KeyTemplate::parse("local").unwrap(), None);
        for bad in [
            "local:{x}",
            "transit:{}",
            "transit:a{b}{c}",
            "transit:a{b",
            "transit:a}b",
            "envelope:a/{b}",
            "transit:a{b}c d",
            "{x}",
            "kv:{x}",
            "kv:secret-{tenant}",
        ] {
            assert_eq!(KeyTemplate::parse(bad).unwrap_err().kind, ErrorKind::InvalidKeyRef, "{bad}");
        }
        for hostile in ["../x", "a b", ".", "..", "", "a/b", "x%2f", &"a".repeat(65), "ünï"] {
            let e = t.resolve(Some(hostile)).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument, "{hostile}");
            assert!(
                hostile.is_empty()
                    || !e.message.contains(hostile) && !e.detail.clone().unwrap_or_default().contains(hostile)
            );
        }
        assert!(t.resolve(None).is_err());
    }

    #[test]
    fn parse() {
        assert_eq!(KeyRef::parse("local").unwrap(), KeyRef::Local);
        assert_eq!(KeyRef::parse("transit:app").unwrap(), KeyRef::Transit("app".into()));
        assert_eq!(KeyRef::parse("envelope:app").unwrap(), KeyRef::Envelope("app".into()));
        assert_eq!(KeyRef::parse("envelope:app").unwrap().to_string(), "envelope:app");
        let kv = KeyRef::parse("kv:secret").unwrap();
        assert_eq!(kv, KeyRef::Kv("secret".into()));
        assert_eq!((kv.to_string().as_str(), kv.transit_name(), kv.kv_mount()), ("kv:secret", None, Some("secret")));
        assert_eq!(KeyRef::parse("kv:kv-v2.prod").unwrap(), KeyRef::Kv("kv-v2.prod".into()));
        assert_eq!(KeyRef::parse("transit:app").unwrap().kv_mount(), None);
        for bad in [
            "",
            "Local",
            "transit:",
            "transit:a b",
            "sk-live-secret",
            "transit:x:y",
            "envelope:",
            "envelope:a/b",
            "kv:",
            "kv",
            "KV:secret",
            "kv:a/b",
            "kv:.",
            "kv:..",
            "kv:a:b",
            "kv:sk-live-secret x",
        ] {
            let e = KeyRef::parse(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidKeyRef);
            assert!(!e.message.contains(bad) || bad.is_empty());
            let detail = e.detail.unwrap();
            assert!(!detail.contains("sk-live") && detail.contains("'kv:<mount>'"));
        }
    }
}
