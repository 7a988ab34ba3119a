//! Maps core errors onto PostgreSQL errors: one SQLSTATE and one hint per kind.
//!
//! The catalogue is documented in docs/errors.md; keep both in step. Messages come from the
//! core crate and are sanitized there (no plaintext, key, token or ciphertext).

use credcrypt_core::{Error, ErrorKind};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// SQLSTATE and hint for an error kind.
pub fn classify(kind: ErrorKind) -> (PgSqlErrorCode, &'static str) {
    use PgSqlErrorCode::*;
    match kind {
        ErrorKind::Malformed => (
            ERRCODE_INVALID_TEXT_REPRESENTATION,
            "Pass a value produced by credcrypt.encrypt_credential; credcrypt.is_encrypted(value) tests a value without raising an error.",
        ),
        ErrorKind::UnsupportedVersion => (
            ERRCODE_FEATURE_NOT_SUPPORTED,
            "The value was written by a newer pg_credcrypt; upgrade the extension on this server.",
        ),
        ErrorKind::InParallelQuery => (
            ERRCODE_FEATURE_NOT_SUPPORTED,
            "Encrypt outside a parallel query: pg_credcrypt's encrypting functions are PARALLEL UNSAFE (after ALTER EXTENSION pg_credcrypt UPDATE to 0.3.0), and so must be any function of yours that calls them.",
        ),
        ErrorKind::UnsupportedProvider => (
            ERRCODE_FEATURE_NOT_SUPPORTED,
            "Use a key reference this build serves there: 'local', 'transit:<name>', 'envelope:<name>' or (text columns and values) 'kv:<mount>'.",
        ),
        ErrorKind::AuthenticationFailed => (
            ERRCODE_EXTERNAL_ROUTINE_INVOCATION_EXCEPTION,
            "Decrypt with exactly the context given to encrypt_credential, and make sure the key that encrypted the value is configured. A tampered value cannot be recovered.",
        ),
        ErrorKind::KeyNotConfigured => (
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "Create a key with: openssl rand -base64 32 > /etc/postgresql/credcrypt.key; chmod 600 it (owned by postgres); set credcrypt.local_key_file in postgresql.conf; SELECT pg_reload_conf();",
        ),
        ErrorKind::UnknownKeyId => (
            ERRCODE_UNDEFINED_OBJECT,
            "The value was encrypted with a key this server does not have: an older local key (list its file in credcrypt.local_previous_key_files and reload), or an envelope data key missing from credcrypt.data_keys or whose wrapped key no longer unwraps.",
        ),
        ErrorKind::TooLarge => (
            ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            "pg_credcrypt encrypts values of up to 16 MiB and contexts of up to 64 KiB; store large documents elsewhere and encrypt their credentials only.",
        ),
        ErrorKind::InvalidKeyConfig => (
            ERRCODE_CONFIG_FILE_ERROR,
            "A local key is 32 random bytes in standard base64 (openssl rand -base64 32), in a file of mode 0600 owned by the server's user; fix postgresql.conf and SELECT pg_reload_conf().",
        ),
        ErrorKind::InvalidKeyRef => (
            ERRCODE_INVALID_PARAMETER_VALUE,
            "Use 'local', 'transit:<key name>', 'envelope:<key name>' or 'kv:<mount>', or NULL for credcrypt.default_key.",
        ),
        ErrorKind::NotUtf8 => (
            ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
            "The value was encrypted from bytea; read it with credcrypt.decrypt_credential_bytea.",
        ),
        ErrorKind::InvalidArgument => (ERRCODE_INVALID_PARAMETER_VALUE, "See docs/sql-reference.md for the valid ranges."),
        ErrorKind::RandomFailure => (
            ERRCODE_SYSTEM_ERROR,
            "The kernel's getrandom(2) failed; check the server's operating system.",
        ),
        ErrorKind::NotPreloaded => (
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "Add pg_credcrypt to shared_preload_libraries in postgresql.conf and restart the server; the local provider works without it.",
        ),
        ErrorKind::ProviderUnavailable => (
            ERRCODE_IO_ERROR,
            "Check that OpenBao is running and unsealed at credcrypt.bao_addr, and SELECT * FROM credcrypt.status(). Nothing was written. For encryption during outages a superuser may set credcrypt.fallback = 'local'.",
        ),
        ErrorKind::WorkerTimeout => (
            ERRCODE_IO_ERROR,
            "The worker is busy or OpenBao answers slowly: SELECT * FROM credcrypt.status(); a longer credcrypt.request_timeout_ms waits longer. Nothing was written.",
        ),
        ErrorKind::ProviderDenied => (
            ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            "Check the worker's token (credcrypt.bao_token_file) or AppRole (credcrypt.bao_role_id, credcrypt.bao_secret_id_file) and its policy: update on transit/encrypt/<key> and transit/decrypt/<key>; for kv:<mount>, the three paths of docs/openbao.md.",
        ),
        ErrorKind::TransitKeyNotFound => (
            ERRCODE_UNDEFINED_OBJECT,
            "Create the key in OpenBao (bao write -f transit/keys/<name>) or fix the key name.",
        ),
        ErrorKind::WrongKeyType => (
            ERRCODE_WRONG_OBJECT_TYPE,
            "Use a Transit key of an encryption type such as aes256-gcm96 or chacha20-poly1305.",
        ),
        ErrorKind::ProviderNotConfigured => (
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "Set credcrypt.bao_addr and either credcrypt.bao_token_file or credcrypt.bao_role_id + credcrypt.bao_secret_id_file in postgresql.conf, then SELECT pg_reload_conf(); for kv:<mount>, the mount must be a KV version 2 engine the token may use (docs/openbao.md).",
        ),
        ErrorKind::CatalogMismatch => (
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "Compare SELECT * FROM credcrypt.protected_columns_info with the table; remove a stale designation with credcrypt.unprotect_column and protect the column again.",
        ),
        ErrorKind::NotAString => (
            ERRCODE_INVALID_PARAMETER_VALUE,
            "A protected jsonb key must hold a JSON string (or be absent or null); store the credential as a string.",
        ),
        ErrorKind::ProviderRejected => (
            ERRCODE_INVALID_PARAMETER_VALUE,
            "OpenBao refused the request itself (not an outage, so no fallback applies): check the key name and credcrypt.transit_mount (for kv:<mount>, the mount and its policy).",
        ),
        ErrorKind::ProviderProtocol => (
            ERRCODE_PROTOCOL_VIOLATION,
            "OpenBao's answer was not understood (not an outage, so no fallback applies): check that credcrypt.bao_addr points at OpenBao or Vault, and see the server log.",
        ),
        ErrorKind::KeyVersionRetired => (
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "The Transit key's min_decryption_version was raised above this value's version before the value was re-encrypted: lower it again (bao write transit/keys/<key>/config min_decryption_version=<N>), then CALL credcrypt.reencrypt_column and check credcrypt.safe_to_retire() before raising it.",
        ),
        ErrorKind::Internal => (ERRCODE_INTERNAL_ERROR, "This is a bug in pg_credcrypt; please report it with the server log."),
        ErrorKind::KeyDestroyed => (
            ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
            "The key or secret was destroyed on purpose (credcrypt.shred_key, see credcrypt.erasures; or, for a kv: value, the row that owned it was deleted): the value can never be decrypted. Delete the row, or write a new value.",
        ),
    }
}

/// Raises a PostgreSQL ERROR with a SQLSTATE, message, optional detail and hint. For the
/// errors of the administrative functions, which are not core errors.
#[track_caller]
pub fn fail(code: PgSqlErrorCode, message: impl Into<String>, detail: Option<String>, hint: &str) -> ! {
    let mut report = ErrorReport::new(code, message.into(), "pg_credcrypt").set_hint(hint);
    if let Some(d) = detail {
        report = report.set_detail(d);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Raises `e` as a PostgreSQL ERROR. Never returns.
#[track_caller]
pub fn raise(e: Error) -> ! {
    let (code, hint) = classify(e.kind);
    let mut report = ErrorReport::new(code, e.message, "pg_credcrypt").set_hint(e.hint.unwrap_or(hint));
    if let Some(d) = e.detail {
        report = report.set_detail(d);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Unwraps a core result or raises its error.
pub trait OrRaise<T> {
    /// The value, or a PostgreSQL ERROR.
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, Error> {
    #[track_caller]
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => raise(e),
        }
    }
}

/// An object the call names does not exist, or is not what the call needs (`42704`).
pub fn undefined(message: impl Into<String>, hint: &str) -> ! {
    fail(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, message, None, hint)
}
