//! The file-system and server-state part of `credcrypt.security_report()` (the catalog checks
//! are SQL, in sql/rls.sql): key and credential files readable by others, a key in
//! postgresql.auto.conf, an inline key, the library not preloaded.

use std::os::unix::fs::MetadataExt as _;

use credcrypt_core::keyfile::{check_mode, split_paths};
use pgrx::prelude::*;

use crate::gucs;

/// One finding: (severity, object, finding, fix).
type Finding = (String, String, String, String);

fn finding(severity: &str, object: impl Into<String>, what: impl Into<String>, fix: impl Into<String>) -> Finding {
    (severity.into(), object.into(), what.into(), fix.into())
}

fn setting(s: &'static pgrx::guc::GucSetting<Option<std::ffi::CString>>) -> String {
    String::from_utf8_lossy(gucs::raw(s)).trim().to_owned()
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
#[pg_extern(volatile, name = "_environment_findings")]
#[allow(clippy::type_complexity)] // the row type is spelled out for pgrx's SQL generation
fn environment_findings(
) -> TableIterator<'static, (name!(severity, String), name!(object, String), name!(finding, String), name!(fix, String))>
{
    let mut out = Vec::new();
    let key_file = setting(&gucs::LOCAL_KEY_FILE);
    if !key_file.is_empty() {
        file_findings(&mut out, "credcrypt.local_key_file", &key_file);
    }
    for p in split_paths(&setting(&gucs::LOCAL_PREVIOUS_KEY_FILES)) {
        file_findings(&mut out, "credcrypt.local_previous_key_files", p);
    }
    for (guc, s) in [
        ("credcrypt.bao_token_file", &gucs::BAO_TOKEN_FILE),
        ("credcrypt.bao_secret_id_file", &gucs::BAO_SECRET_ID_FILE),
        ("credcrypt.legacy_key_file", &gucs::LEGACY_KEY_FILE),
    ] {
        let v = setting(s);
        if !v.is_empty() {
            file_findings(&mut out, guc, &v);
        }
    }
    if !gucs::raw(&gucs::LOCAL_KEY).trim_ascii().is_empty() {
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
    for addr in setting(&gucs::BAO_ADDR).split(',').map(str::trim).filter(|a| !a.is_empty()) {
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
    if crate::transit::queue::get().is_none() {
        out.push(finding(
            "warning",
            "shared_preload_libraries",
            "pg_credcrypt is not preloaded: the Transit provider is unavailable, and the secret settings are only protected once the library is loaded",
            "Add pg_credcrypt to shared_preload_libraries and restart PostgreSQL.",
        ));
    }
    TableIterator::new(out)
}
