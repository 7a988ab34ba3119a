//! Keeps the inline key out of the server log.
//!
//! PostgreSQL logs every setting a configuration reload changes, with its new value
//! (`parameter "credcrypt.local_key" changed to "<the key>"`), whatever the setting's flags.
//! This `emit_log_hook` rewrites any non-error message (LOG, WARNING, …) that names
//! `"credcrypt.local_key"` (quoted, as PostgreSQL quotes parameter names) before it is written,
//! so the value never reaches the log. Errors are left alone: PostgreSQL's errors about this
//! setting ("cannot be changed", "permission denied") never contain its value. The postmaster writes that message, so the hook is only fully effective when the library
//! is in `shared_preload_libraries` (recommended; required for the Transit provider). Key files
//! (`credcrypt.local_key_file`) avoid the problem altogether.

use std::ffi::CStr;

use pgrx::pg_sys;

/// Text that replaces a redacted message.
const REDACTED: &CStr = c"parameter \"credcrypt.local_key\" changed (new value hidden by pg_credcrypt)";

static mut PREVIOUS: pg_sys::emit_log_hook_type = None;

fn names_inline_key(message: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"\"credcrypt.local_key\"";
    message.windows(NEEDLE.len()).any(|w| w == NEEDLE)
}

unsafe extern "C-unwind" fn redact(edata: *mut pg_sys::ErrorData) {
    // SAFETY: PostgreSQL passes a valid ErrorData; we only replace its message with a
    // palloc'd copy of a static string (CurrentMemoryContext is ErrorContext here).
    unsafe {
        if !edata.is_null() && !(*edata).message.is_null() && (*edata).elevel < pgrx::PgLogLevel::ERROR as i32 {
            let msg = CStr::from_ptr((*edata).message).to_bytes();
            if names_inline_key(msg) {
                (*edata).message = pg_sys::pstrdup(REDACTED.as_ptr());
                (*edata).detail = std::ptr::null_mut();
                (*edata).detail_log = std::ptr::null_mut();
            }
        }
        if let Some(prev) = PREVIOUS {
            prev(edata);
        }
    }
}

/// Installs the hook (once per process, from `_PG_init`).
pub fn install() {
    // SAFETY: _PG_init runs once per process on the main thread; hooks are chained.
    unsafe {
        PREVIOUS = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(redact);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_only_the_inline_key() {
        assert!(super::names_inline_key(b"parameter \"credcrypt.local_key\" changed to \"abc\""));
        assert!(!super::names_inline_key(b"parameter \"credcrypt.local_key_file\" changed to \"/k\""));
        assert!(!super::names_inline_key(b"credcrypt.local_key does not hold valid base64"));
    }
}
