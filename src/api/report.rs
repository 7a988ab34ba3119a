//! Entry points of the reports: `key_usage`, `safe_to_retire` and the environment part of
//! `security_report`. The work is in [`crate::reports`].

use pgrx::prelude::*;

use crate::reports::{environment, usage};

/// Findings about files and server state (helper of `credcrypt.security_report()`).
#[pg_extern(volatile, name = "_environment_findings")]
#[allow(clippy::type_complexity)] // the row type is spelled out for pgrx's SQL generation
fn environment_findings(
) -> TableIterator<'static, (name!(severity, String), name!(object, String), name!(finding, String), name!(fix, String))>
{
    let mut all = environment::findings();
    all.extend(usage::missing_row_keys());
    TableIterator::new(all)
}

/// For each protected column (of `tbl`, or all): how many values are on which provider, key and
/// version, how many are plaintext and how many cannot be read here. `current` tells whether
/// that key version is what new values get (a Transit version below the latest can be retired
/// with `min_decryption_version` once its count is zero). Every row of every protected table is
/// counted, whoever calls (an administrator need not own the tables, and row-level security
/// does not hide rows from it); a table that cannot be read, or a Transit key whose latest
/// version cannot be asked, is an error, never a partial answer.
#[pg_extern(volatile, name = "_key_usage")]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)] // the row type is spelled out for pgrx's SQL generation
pub(crate) fn key_usage(
    tbl: Option<pg_sys::Oid>,
) -> TableIterator<
    'static,
    (
        name!(table_name, String),
        name!(column_name, String),
        name!(json_path, Vec<String>),
        name!(source, String),
        name!(key_name, Option<String>),
        name!(key_version, Option<String>),
        name!(current, Option<bool>),
        name!(values, i64),
    ),
> {
    TableIterator::new(usage::key_usage(tbl, None))
}

/// `key_usage(tbl, col)`: [`key_usage`] for one column of a table — a protected column, or a
/// column the application encrypts itself (every value of it is counted the same way).
#[pg_extern(volatile, name = "_key_usage_of")]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)] // the row type is spelled out for pgrx's SQL generation
pub(crate) fn key_usage_of(
    tbl: Option<pg_sys::Oid>,
    col: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(table_name, String),
        name!(column_name, String),
        name!(json_path, Vec<String>),
        name!(source, String),
        name!(key_name, Option<String>),
        name!(key_version, Option<String>),
        name!(current, Option<bool>),
        name!(values, i64),
    ),
> {
    TableIterator::new(usage::key_usage(tbl, col))
}

/// Whether version `version` of Transit key `key_name` (`transit:<k>`, `envelope:<k>` or a
/// bare name) and every version below it can be retired — whether `min_decryption_version`
/// may be raised above it — without making a protected value unreadable: no value of any
/// protected column is on such a version (directly, or through an envelope data key wrapped
/// with it), and no envelope data key is wrapped with it. Reads every row of every protected
/// table (as `key_usage` does); an error, never a guess, when something cannot be read.
#[pg_extern(volatile, name = "safe_to_retire")]
#[search_path(pg_catalog, pg_temp)]
pub(crate) fn safe_to_retire(key_name: &str, version: i32) -> bool {
    usage::safe_to_retire(key_name, version)
}
