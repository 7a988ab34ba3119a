//! Local key material: parsing base64 key text and reading key files safely.
//!
//! Error messages name the *source* (a GUC name and, for files, the path) and never the value.

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Result};

/// Largest key file read, in bytes (a base64 key is 44 bytes plus whitespace).
const MAX_KEY_FILE_LEN: u64 = 4096;

/// Parses key text: standard base64 (with padding) of exactly 32 bytes, surrounding ASCII
/// whitespace ignored. `source` names where the text came from, e.g. `credcrypt.local_key`.
pub fn parse_key_text(text: &[u8], source: &str) -> Result<Zeroizing<[u8; 32]>> {
    let trimmed = text.trim_ascii();
    let decoded = Zeroizing::new(STANDARD.decode(trimmed).map_err(|_| {
        Error::new(ErrorKind::InvalidKeyConfig, format!("{source} does not hold valid base64"))
            .with_detail("a local key is 32 random bytes in standard base64, e.g. from: openssl rand -base64 32")
    })?);
    if decoded.len() != 32 {
        return Err(Error::new(ErrorKind::InvalidKeyConfig, format!("{source} does not hold a 32-byte key"))
            .with_detail(format!("the base64 decodes to {} bytes; AES-256 needs exactly 32", decoded.len())));
    }
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&decoded);
    Ok(key)
}

/// Checks a key file's mode the way PostgreSQL checks `ssl_key_file`: owned by root it may be
/// group-readable (0640); otherwise no group or other bits at all (0600).
pub fn check_mode(uid: u32, mode: u32) -> std::result::Result<(), String> {
    let allowed_extra = if uid == 0 { 0o040 } else { 0 };
    if mode & 0o077 & !allowed_extra != 0 {
        return Err(format!(
            "mode {:04o} allows access by other users; use chmod 0600 (or 0640 for a root-owned file)",
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Reads and parses a key file. `guc` names the setting that pointed at it.
pub fn read_key_file(path: &str, guc: &str) -> Result<Zeroizing<[u8; 32]>> {
    let buf = read_secret_file(path, guc)?;
    parse_key_text(&buf, &format!("the key file named by {guc} ({path})"))
}

/// Reads a small secret file with the key-file rules: absolute path, regular file, mode 0600
/// (0640 if root-owned), at most a few KiB. Errors name the setting and the path, never content.
pub fn read_secret_file(path: &str, guc: &str) -> Result<Zeroizing<Vec<u8>>> {
    let fail = |what: String| {
        Error::new(ErrorKind::InvalidKeyConfig, format!("cannot use the key file named by {guc}"))
            .with_detail(format!("{path}: {what}"))
    };
    if !path.starts_with('/') {
        return Err(fail("the path must be absolute".into()));
    }
    // A FIFO or device would block (or never end) on open or read: refuse anything but a
    // regular file before opening it, and open without blocking in case it was swapped since.
    let before = std::fs::metadata(path).map_err(|e| fail(e.kind().to_string()))?;
    if !before.is_file() {
        return Err(fail("not a regular file".into()));
    }
    let file = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| fail(e.kind().to_string()))?
    };
    let meta = file.metadata().map_err(|e| fail(e.kind().to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    check_mode(meta.uid(), meta.mode()).map_err(fail)?;
    if meta.len() > MAX_KEY_FILE_LEN {
        return Err(fail(format!("larger than {MAX_KEY_FILE_LEN} bytes")));
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_LEN as usize));
    file.take(MAX_KEY_FILE_LEN + 1).read_to_end(&mut buf).map_err(|e| fail(e.kind().to_string()))?;
    Ok(buf)
}

/// Splits a comma-separated list of paths, ignoring surrounding spaces and empty items.
pub fn split_paths(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("cc-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("key.fifo");
        let _ = std::fs::remove_file(&fifo);
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.to_str().unwrap().to_owned();
        std::thread::spawn(move || tx.send(read_key_file(&path, "credcrypt.local_key_file")).unwrap());
        let r = rx.recv_timeout(std::time::Duration::from_secs(5)).expect("reading a FIFO must not block");
        let e = r.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidKeyConfig);
        assert!(e.detail.unwrap().contains("not a regular file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    const KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn parses_and_trims() {
        let k = parse_key_text(format!("  {KEY_B64}\n").as_bytes(), "x").unwrap();
        assert_eq!(k[31], 31);
    }

    #[test]
    fn errors_name_source_not_value() {
        let secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQ=";
        let e = parse_key_text(secret.as_bytes(), "credcrypt.local_key").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidKeyConfig);
        assert!(e.message.contains("credcrypt.local_key"));
        assert!(!format!("{e:?}").contains(secret));
        let e = parse_key_text(b"not base64 !!", "credcrypt.local_key").unwrap_err();
        assert!(!format!("{e:?}").contains("not base64"));
    }

    #[test]
    fn modes() {
        assert!(check_mode(1000, 0o100600).is_ok());
        assert!(check_mode(1000, 0o100400).is_ok());
        assert!(check_mode(1000, 0o100640).is_err());
        assert!(check_mode(1000, 0o100644).is_err());
        assert!(check_mode(0, 0o100640).is_ok());
        assert!(check_mode(0, 0o100644).is_err());
        assert!(check_mode(0, 0o100660).is_err());
    }

    #[test]
    fn files() {
        let dir = std::env::temp_dir().join(format!("credcrypt-core-keyfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("k");
        std::fs::write(&p, KEY_B64).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let ps = p.to_str().unwrap();
        assert_eq!(read_key_file(ps, "g").unwrap()[1], 1);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o604)).unwrap();
        let e = read_key_file(ps, "g").unwrap_err();
        assert!(e.detail.unwrap().contains("chmod"));
        assert!(read_key_file("relative/path", "g").is_err());
        assert!(read_key_file(dir.join("missing").to_str().unwrap(), "g").is_err());
        assert!(read_key_file(dir.to_str().unwrap(), "g").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn paths() {
        assert_eq!(split_paths(" /a , ,/b,").collect::<Vec<_>>(), vec!["/a", "/b"]);
    }
}
