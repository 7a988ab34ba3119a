//! pg_credcrypt: keeps credentials encrypted inside PostgreSQL.
//!
//! Layout:
//! - [`api`]: the SQL functions of schema `credcrypt`;
//! - [`gucs`]: every `credcrypt.*` setting;
//! - [`audit`]: decrypt auditing (`credcrypt.audit_decrypt`);
//! - [`envelope`]: the envelope provider (Transit-wrapped data keys);
//! - [`keys`]: the backend's cached local key ring;
//! - [`migrate`]: re-encryption migrations and key usage;
//! - [`errors`]: core errors → SQLSTATE + hint;
//! - [`protect`]: protected columns (catalog cache, trigger, administrative functions);
//! - [`rls`]: the maintenance path through row-level security;
//! - [`postgres`]: glue that is not a SQL function (the log-redaction hook).
//!
//! The format and the cryptography live in the pure-Rust crate `credcrypt-core`.

use pgrx::prelude::*;

pub mod api;
pub mod audit;
pub mod errors;
pub mod gucs;
pub mod migrate;
pub mod postgres;
pub mod protect;
pub mod providers;
pub mod reports;
pub mod rls;
pub mod shred;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/roles.sql", name = "roles", bootstrap);
extension_sql_file!(
    "../sql/protect.sql",
    name = "protect",
    requires = [
        api::protect::protect_column_v2,
        api::protect::protect_column_v3,
        api::protect::unprotect_column_v2,
        api::protect::create_decrypted_view_v2,
        api::protect::create_masked_view_v2,
        api::protect::drop_masked_view,
        api::protect::invalidate_table,
        api::protect::xact_is_current,
        api::protect::note_rewrite,
        api::protect::was_rewritten,
        api::protect::type_class_sql,
        api::protect::protect_trigger,
        api::crypto::decrypt_credential,
    ]
);
extension_sql_file!(
    "../sql/blind.sql",
    name = "blind",
    requires = [
        "protect",
        api::blind::blind_index,
        api::blind::blind_indexes,
        api::blind::add_blind_index,
        api::blind::rotate_blind_index,
    ]
);
extension_sql_file!("../sql/shred.sql", name = "shred", requires = ["blind", api::transit::shred_key]);
extension_sql_file!(
    "../sql/rls.sql",
    name = "rls",
    requires =
        ["shred", api::rls::enable_owner_rls_v2, api::rls::disable_owner_rls_v2, api::report::environment_findings]
);
extension_sql_file!(
    "../sql/migrate.sql",
    name = "migrate",
    requires = [
        "rls",
        api::migrate::reencrypt_prepare,
        api::migrate::reencrypt_start,
        api::migrate::reencrypt_bindings,
        api::report::key_usage_of,
        api::migrate::reencrypt_batch,
        api::migrate::reencrypt_step,
        api::migrate::reencrypt_remaining,
        api::migrate::reencrypt_finish,
        api::migrate::reencrypt_close,
        api::migrate::reencrypt_leaves,
        api::migrate::reencrypt_needed,
        api::report::key_usage
    ]
);
extension_sql_file!("../sql/grants.sql", name = "grants", finalize);

/// Library entry point: registers the settings and the log-redaction hook; when preloaded,
/// also the shared-memory queue and the background worker of the Transit provider.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    quiet_backtraces();
    gucs::init();
    postgres::log_redact::install();
    protect::catalog::init();
    protect::trigger::init();
    protect::rewrites::init();
    audit::init();
    providers::envelope::init();
    // SAFETY: read-only flag set by PostgreSQL while processing shared_preload_libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        providers::transit::queue::init(gucs::queue_slots());
        providers::transit::worker::register();
    }
}

/// No Rust backtrace in what clients see. pgrx attaches one to the DETAIL of every PostgreSQL
/// error that passes through the extension's code whenever the standard library captures
/// backtraces (`RUST_BACKTRACE` in the server's environment): internal detail for anyone who
/// triggers an error, and the original DETAIL is lost. Capturing is switched off unless an
/// operator asked for library backtraces explicitly (`RUST_LIB_BACKTRACE`). Panic messages in
/// the server log are unaffected.
fn quiet_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY (of the environment): _PG_init runs on the main thread before the extension
        // starts any thread; nothing reads the environment concurrently.
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}

#[cfg(any(test, feature = "pg_test"))]
mod tests;

/// Required by `cargo pgrx test`: settings for the test cluster.
#[cfg(test)]
pub mod pg_test {
    /// One-off initialization before the test cluster starts (none needed).
    pub fn setup(_options: Vec<&str>) {}

    /// The test cluster's settings: the current key file and a previous key file, which the
    /// tests create from inside the server (as its user, mode 0600) before first use.
    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "credcrypt.local_key_file = '/tmp/pg_credcrypt_pgtest/current.key'",
            "credcrypt.local_previous_key_files = '/tmp/pg_credcrypt_pgtest/previous.key'",
        ]
    }
}
