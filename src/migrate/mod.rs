//! Re-encryption migrations (`CALL credcrypt.reencrypt_column`, sql/migrate.sql),
//! `credcrypt.key_usage` and `credcrypt.safe_to_retire`.
//!
//! The procedure (PL/pgSQL, so it can COMMIT after every batch) calls:
//! - [`reencrypt_prepare`]: checks, resolves the target key and version, counts the work,
//!   records a run in `credcrypt.reencrypt_runs`;
//! - [`reencrypt_step`]: one batch of one designation in one (leaf) table: a range of heap
//!   blocks, rows locked `FOR UPDATE SKIP LOCKED`, values classified, decrypted (Transit in
//!   batches), encrypted for the target, **verified by decrypting** before they are written, and
//!   written with the protection trigger bypassed (the values are already final). Values that
//!   cannot be read are left untouched and recorded in `credcrypt.reencrypt_failures`. The
//!   batch runs in a subtransaction: when it fails (OpenBao down, cancelled), the run is marked
//!   `failed` with the error, the procedure commits that and raises the error;
//! - [`reencrypt_close`]: counts what is still not on the target (the verification) and closes
//!   the run.
//!
//! Every statement on the table runs as the table's owner in a security-restricted operation,
//! through the maintenance path ([`crate::postgres::scope::maintain`]): tables under
//! `enable_owner_rls` are fully covered without BYPASSRLS, and whatever the table's own
//! triggers or rules run, runs with the owner's rights, never the administrator's. Every SQL
//! text here names schema-qualified functions and operators and runs with the search path
//! pinned.

//!
//! The pieces: [`sources`] reads a designation and classifies and decrypts its stored values
//! (every source kind), [`run`] keeps the run's lifecycle in `credcrypt.reencrypt_runs`
//! (prepare, progress, verification, close), [`batch`] does one window of heap blocks and the
//! write-back. The SQL entry points are in [`crate::api::migrate`].

pub(crate) mod batch;
pub(crate) mod run;
pub(crate) mod sources;

pub(crate) use batch::decrypt_in_place;

use pgrx::PgSqlErrorCode::*;

use crate::errors::fail;

/// An SPI error in a migration statement: a bug (the statements are the extension's own).
pub(crate) fn spi_fail(e: pgrx::spi::SpiError) -> ! {
    fail(ERRCODE_INTERNAL_ERROR, format!("pg_credcrypt: migration query failed: {e}"), None, "Report this as a bug.")
}
