//! Every `credcrypt.*` setting, in one place, with typed accessors.
//!
//! Secret-bearing settings (`local_key`, `local_key_file`, `local_previous_key_files`) are
//! `SIGHUP` context, `SUPERUSER_ONLY`, `NO_SHOW_ALL` and `DISALLOW_IN_AUTO_FILE`: they are set
//! in `postgresql.conf` (or an included file) only, never by `ALTER SYSTEM`, never per session.

use std::ffi::{CStr, CString};

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;

/// Flags shared by every setting that carries or points at key material.
fn secret_flags() -> GucFlags {
    GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL | GucFlags::DISALLOW_IN_AUTO_FILE | GucFlags::NO_RESET_ALL
}

/// `credcrypt.default_key`: the key reference used when a function is given no key.
pub static DEFAULT_KEY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"local"));

/// `credcrypt.local_key_file`: absolute path of a file holding the base64 32-byte local key.
pub static LOCAL_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `credcrypt.local_key`: the base64 32-byte local key itself (prefer `local_key_file`).
pub static LOCAL_KEY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `credcrypt.local_previous_key_files`: comma-separated key files used for decryption only.
pub static LOCAL_PREVIOUS_KEY_FILES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Registers every setting and reserves the `credcrypt.` prefix.
pub fn init() {
    GucRegistry::define_string_guc(
        c"credcrypt.default_key",
        c"Key reference used when a function is called without one ('local' or 'transit:<name>').",
        c"Any role may change it for its session.",
        &DEFAULT_KEY,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"credcrypt.local_key_file",
        c"Absolute path of a file holding the local AES-256 key in base64 (mode 0600).",
        c"Recommended over credcrypt.local_key. Set in postgresql.conf; superuser only; hidden from SHOW ALL.",
        &LOCAL_KEY_FILE,
        GucContext::Sighup,
        secret_flags(),
    );
    GucRegistry::define_string_guc(
        c"credcrypt.local_key",
        c"The local AES-256 key itself, in base64. Prefer credcrypt.local_key_file.",
        c"Set in postgresql.conf; superuser only; hidden from SHOW ALL; refused by ALTER SYSTEM.",
        &LOCAL_KEY,
        GucContext::Sighup,
        secret_flags(),
    );
    GucRegistry::define_string_guc(
        c"credcrypt.local_previous_key_files",
        c"Comma-separated key files of earlier local keys, used for decryption only.",
        c"Lets values encrypted before a key rotation be read and re-encrypted.",
        &LOCAL_PREVIOUS_KEY_FILES,
        GucContext::Sighup,
        secret_flags(),
    );
    reserve_prefix(c"credcrypt");
}

#[cfg(any(feature = "pg13", feature = "pg14"))]
fn reserve_prefix(prefix: &CStr) {
    // SAFETY: called from _PG_init on the main thread with a NUL-terminated static string.
    unsafe { pg_sys::EmitWarningsOnPlaceholders(prefix.as_ptr()) }
}

#[cfg(not(any(feature = "pg13", feature = "pg14")))]
fn reserve_prefix(prefix: &CStr) {
    // SAFETY: called from _PG_init on the main thread with a NUL-terminated static string.
    unsafe { pg_sys::MarkGUCPrefixReserved(prefix.as_ptr()) }
}

/// Reads a string setting's current value without copying it. The slice is valid until the
/// next configuration reload; callers copy what they keep.
pub fn raw(setting: &'static GucSetting<Option<CString>>) -> &'static [u8] {
    // SAFETY: the GUC machinery owns the pointer and keeps it valid until the value changes,
    // which only happens between statements (reload) on this, the main thread.
    unsafe {
        let p = *setting.as_ptr();
        if p.is_null() {
            &[]
        } else {
            CStr::from_ptr(p).to_bytes()
        }
    }
}

/// The default key reference (`credcrypt.default_key`).
pub fn default_key() -> String {
    String::from_utf8_lossy(raw(&DEFAULT_KEY)).into_owned()
}
