//! Keeps secrets out of the server log.
//!
//! - PostgreSQL logs every setting a configuration reload changes, with its new value
//!   (`parameter "credcrypt.local_key" changed to "<the key>"`), whatever the setting's flags.
//!   This `emit_log_hook` recognises that message by its *untranslated* format
//!   (`edata->message_id`, the same whatever `lc_messages` is) and the setting's name, and
//!   rewrites it before it is written. The postmaster writes that message, so the hook is only
//!   fully effective when the library is in `shared_preload_libraries` (recommended; required
//!   for the Transit provider). Key files (`credcrypt.local_key_file`) avoid it altogether.
//! - A failing `COPY … FROM` puts the input line (plaintext credentials included) into the
//!   error's CONTEXT (`COPY t, line 3: "…"`), which `log_min_error_statement` does not cover.
//!   The hook cuts the quoted input out of every COPY context line before the error is
//!   written (to the log and to the client, which sent the data anyway).

use std::ffi::CStr;

use pgrx::pg_sys;

/// Text that replaces a redacted message.
const REDACTED: &CStr = c"parameter \"credcrypt.local_key\" changed (new value hidden by pg_credcrypt)";

static mut PREVIOUS: pg_sys::emit_log_hook_type = None;

/// The untranslated format of PostgreSQL's "setting changed" message (guc-file.l).
const CHANGED_FORMAT: &[u8] = b"parameter \"%s\" changed to \"%s\"";

/// Whether a message names `credcrypt.local_key` itself (not `credcrypt.local_key_file`):
/// the name followed by anything but a name character, in any language's quoting.
fn names_inline_key(message: &[u8]) -> bool {
    const NAME: &[u8] = b"credcrypt.local_key";
    message.windows(NAME.len()).enumerate().any(|(i, w)| {
        w == NAME && message.get(i + NAME.len()).is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
    })
}

/// Whether a message with untranslated format `message_id` (if known) and text `message`
/// carries the inline key's value.
fn carries_inline_key(message_id: Option<&[u8]>, message: &[u8]) -> bool {
    match message_id {
        Some(id) => id == CHANGED_FORMAT && names_inline_key(message),
        // No format recorded (a message built by hand): decide on the text alone.
        None => names_inline_key(message),
    }
}

/// A COPY context line with its quoted input cut out: `COPY t, line 3: "…"` (or with a
/// column) becomes `COPY t, line 3: (input hidden by pg_credcrypt)`. Other lines unchanged.
fn redact_copy_context(context: &str) -> Option<String> {
    let mut changed = false;
    let lines: Vec<String> = context
        .lines()
        .map(|l| {
            if l.starts_with("COPY ") {
                if let Some(at) = l.find(": ") {
                    changed = true;
                    return format!("{}: (input hidden by pg_credcrypt)", &l[..at]);
                }
            }
            l.to_owned()
        })
        .collect();
    changed.then(|| lines.join("\n"))
}

unsafe extern "C-unwind" fn redact(edata: *mut pg_sys::ErrorData) {
    // SAFETY: PostgreSQL passes a valid ErrorData; we only replace its message with a
    // palloc'd copy of a static string (CurrentMemoryContext is ErrorContext here).
    unsafe {
        if !edata.is_null() && !(*edata).message.is_null() && (*edata).elevel < pgrx::PgLogLevel::ERROR as i32 {
            let msg = CStr::from_ptr((*edata).message).to_bytes();
            let id = (!(*edata).message_id.is_null()).then(|| CStr::from_ptr((*edata).message_id).to_bytes());
            if carries_inline_key(id, msg) {
                (*edata).message = pg_sys::pstrdup(REDACTED.as_ptr());
                (*edata).detail = std::ptr::null_mut();
                (*edata).detail_log = std::ptr::null_mut();
            }
        }
        if !edata.is_null() && !(*edata).context.is_null() {
            let context = CStr::from_ptr((*edata).context).to_string_lossy();
            if let Some(redacted) = redact_copy_context(&context) {
                if let Ok(c) = std::ffi::CString::new(redacted) {
                    (*edata).context = pg_sys::pstrdup(c.as_ptr());
                }
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
    use super::*;

    #[test]
    fn matches_the_changed_message_in_any_language() {
        // English, and the German translation (postgres-15.mo) of the same format.
        assert!(carries_inline_key(Some(CHANGED_FORMAT), b"parameter \"credcrypt.local_key\" changed to \"abc\""));
        assert!(carries_inline_key(
            Some(CHANGED_FORMAT),
            "Parameter »credcrypt.local_key« auf »abc« gesetzt".as_bytes()
        ));
        assert!(!carries_inline_key(Some(CHANGED_FORMAT), b"parameter \"credcrypt.local_key_file\" changed to \"/k\""));
        assert!(!carries_inline_key(Some(b"some other %s"), b"credcrypt.local_key"));
        assert!(carries_inline_key(None, b"parameter \"credcrypt.local_key\" changed to \"abc\""));
        assert!(!names_inline_key(b"credcrypt.local_key_file"));
    }

    #[test]
    fn copy_input_is_cut_out_of_the_context() {
        let c = "COPY creds, line 1, column config: \"{\"apiKey\": \"sk-SECRET\"}\"\nSQL statement \"x\"";
        let r = redact_copy_context(c).expect("redacted");
        assert!(!r.contains("sk-SECRET") && r.starts_with("COPY creds, line 1, column config: (input hidden"), "{r}");
        assert!(r.ends_with("SQL statement \"x\""));
        assert_eq!(redact_copy_context("PL/pgSQL function f() line 3"), None);
        assert!(!redact_copy_context("COPY t, line 2: \"a\tsk-SECRET\"").expect("redacted").contains("SECRET"));
    }
}
