//! The file-system and server-state part of `credcrypt.security_report()` (the catalog checks
//! are SQL, in sql/rls.sql): key and credential files readable by others, a key in
//! postgresql.auto.conf, an inline key, the library not preloaded.

use std::os::unix::fs::MetadataExt as _;

use credcrypt_core::keyfile::{check_mode, split_paths};
use pgrx::prelude::*;

use crate::gucs;

/// One finding: (severity, object, finding, fix).
pub(crate) type Finding = (String, String, String, String);

fn finding(severity: &str, object: impl Into<String>, what: impl Into<String>, fix: impl Into<String>) -> Finding {
    (severity.into(), object.into(), what.into(), fix.into())
}

fn file_findings(out: &mut Vec<Finding>, guc: &str, path: &str) {
    match std::fs::metadata(path) {
        Err(_) => out.push(finding(
            "critical",
            format!("{guc} = {path}"),
            "the file does not exist or cannot be read by the server",
            "Create it (mode 0600, owned by the server's user) or fix the setting, then SELECT pg_reload_conf().",
        )),
        Ok(m) => {
            if let Err(why) = check_mode(m.uid(), m.mode()) {
                out.push(finding("critical", format!("{guc} = {path}"), why, format!("chmod 600 {path}")));
            }
        }
    }
}

/// Findings about files and server state (helper of `credcrypt.security_report()`).
pub(crate) fn findings() -> Vec<Finding> {
    let mut out = Vec::new();
    for (guc, value) in gucs::secret_files() {
        if guc == "credcrypt.local_previous_key_files" {
            for path in split_paths(&value) {
                file_findings(&mut out, guc, path);
            }
        } else if !value.is_empty() {
            file_findings(&mut out, guc, &value);
        }
    }
    if gucs::inline_local_key_set() {
        out.push(finding(
            "warning",
            "credcrypt.local_key",
            "the local key is set inline in the configuration (visible to superusers and pg_read_all_settings members, copied with the configuration)",
            "Move it to a key file: credcrypt.local_key_file (mode 0600).",
        ));
    }
    // SAFETY: DataDir is set for the life of the backend.
    let data_dir = unsafe { std::ffi::CStr::from_ptr(pg_sys::DataDir) }.to_string_lossy().into_owned();
    let auto = std::fs::read_to_string(format!("{data_dir}/postgresql.auto.conf")).unwrap_or_default();
    for line in auto.lines().map(str::trim) {
        let name = line.split(['=', ' ']).next().unwrap_or_default().to_ascii_lowercase();
        if name.starts_with("credcrypt.local_key")
            || name.starts_with("credcrypt.legacy_key")
            || name.starts_with("credcrypt.bao_")
        {
            out.push(finding(
                "critical",
                format!("postgresql.auto.conf: {name}"),
                "a credcrypt key or credential setting was written by ALTER SYSTEM (the library was not preloaded when it ran)",
                "Remove it: ALTER SYSTEM RESET <setting>; put key settings in postgresql.conf and preload pg_credcrypt.",
            ));
        }
    }
    for addr in gucs::bao_settings().addrs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        if let Some(rest) = addr.strip_prefix("http://") {
            let host = rest.split('/').next().unwrap_or_default();
            let host = if let Some(h) = host.strip_prefix('[') {
                h.split(']').next().unwrap_or_default()
            } else {
                host.rsplit_once(':').map_or(host, |(h, _)| h)
            };
            let loopback = host == "localhost" || host == "::1" || host.starts_with("127.");
            if !loopback {
                out.push(finding(
                    "critical",
                    format!("credcrypt.bao_addr = {addr}"),
                    "the worker talks to OpenBao over plain HTTP on the network: its token and every plaintext sent to Transit cross it unencrypted",
                    "Use https:// (and credcrypt.bao_ca_file), or reach OpenBao on loopback only.",
                ));
            }
        }
    }
    if crate::providers::transit::queue::get().is_none() {
        out.push(finding(
            "warning",
            "shared_preload_libraries",
            "pg_credcrypt is not preloaded: the Transit provider is unavailable, and the secret settings are only protected once the library is loaded",
            "Add pg_credcrypt to shared_preload_libraries and restart PostgreSQL.",
        ));
    }
    out
}
