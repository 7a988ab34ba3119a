//! The lifecycle of a re-encryption run (`credcrypt.reencrypt_runs`): prepare (checks, target,
//! count), progress, the final verification count and the summary.

use std::collections::BTreeMap;

use pgrx::prelude::*;
use pgrx::spi::quote_identifier as qi;
use pgrx::PgSqlErrorCode::*;

use super::sources::{bindings_of, designation, needed_sql, target_version, value_expr, Designation};
use super::spi_fail;
use crate::errors::{fail, OrRaise as _};
use crate::postgres::guard::as_catalog_owner;
use crate::postgres::relation::{leaves, lock_against_writers, table, Table};
use crate::postgres::scope::maintain;
use crate::postgres::spi;
use crate::providers::ColumnKey;

/// Values of designation `d` in `leaf` that still need work to be on `target` at `version`,
/// leaving out the tuple ids in `skip` (read as the table's owner).
pub(crate) fn count_needed(
    t: &Table,
    leaf: &str,
    d: &Designation,
    target: &str,
    version: &str,
    skip: &[String],
) -> i64 {
    let v = value_expr(d);
    let needed = needed_sql(d, &v, target);
    let sql = format!(
        "SELECT pg_catalog.count(*) FROM ONLY {leaf} t WHERE {v} IS NOT NULL \
            AND {needed} AND NOT (t.ctid OPERATOR(pg_catalog.=) ANY ($3::pg_catalog.text[]::pg_catalog.tid[]))"
    );
    maintain(t.oid, || spi::one::<i64>(&sql, &[target.into(), version.into(), skip.to_vec().into()]))
        .unwrap_or_else(|e| spi_fail(e))
        .unwrap_or(0)
}

/// One-way hashes (bcrypt) among the values of designation `d` in `leaf`: a migration leaves
/// them as they are (they cannot be decrypted) and says how many.
fn count_hashes(t: &Table, leaf: &str, d: &Designation) -> i64 {
    let v = value_expr(d);
    let sql = format!(
        "SELECT pg_catalog.count(*) FROM ONLY {leaf} t WHERE {v} IS NOT NULL \
            AND pg_catalog.starts_with(credcrypt._value_source(({v})::pg_catalog.text), 'bcrypt:')"
    );
    maintain(t.oid, || spi::one::<i64>(&sql, &[])).unwrap_or_else(|e| spi_fail(e)).unwrap_or(0)
}

/// Starts a run: checks, switches the column to the target key (unless a dry run), counts the
/// work and records the run. Returns (run id, values to change).
pub(crate) fn prepare(
    tbl: pg_sys::Oid,
    col: &str,
    target_key: Option<&str>,
    dry_run: bool,
    context_format: Option<&str>,
) -> (i64, i64) {
    // SAFETY: reads the transaction block state.
    if unsafe { pg_sys::IsTransactionBlock() } {
        fail(
            ERRCODE_ACTIVE_SQL_TRANSACTION,
            "credcrypt.reencrypt_column cannot run inside a transaction block",
            Some("it commits after every batch, so that a long migration holds no lock for long and can be resumed".into()),
            "Run CALL credcrypt.reencrypt_column(…) on its own, not after BEGIN (in psql, not with \\set AUTOCOMMIT off).",
        );
    }
    crate::postgres::catalog::require_current_sql();
    let t = table(tbl);
    let bindings = bindings_of(t.oid, Some(col));
    if bindings.is_empty() {
        return prepare_app(&t, col, target_key, dry_run, context_format);
    }
    if context_format.is_some() {
        fail(
            ERRCODE_INVALID_PARAMETER_VALUE,
            format!("column \"{col}\" of table {} is protected: its values are bound to their rows", t.sql_name),
            None,
            "Omit context_format: it is for columns an application encrypts itself.",
        );
    }
    let source_key = designation(&bindings[0]).key;
    let target = ColumnKey::parse(target_key.unwrap_or(&source_key)).or_raise();
    if matches!(target, ColumnKey::Fixed(credcrypt_core::KeyRef::Kv(_))) {
        // What protect_column refuses for kv: a key inside a jsonb column, a blind index.
        for binding in &bindings {
            let d = designation(binding);
            if !d.path.is_empty() || d.blind.is_some() {
                crate::errors::raise(crate::providers::kv_not_served());
            }
        }
    }
    if let ColumnKey::PerRow(t) = &target {
        // The column that chooses each row's key must be bound into its values, and a blind
        // index would outlive the destruction of a tenant's key.
        for binding in &bindings {
            let d = designation(binding);
            if !d.binds.contains(&t.column) {
                fail(
                    ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("the per-row key names column \"{}\", which is not a bind column of {}", t.column, qi(col)),
                    None,
                    "Protect the column again with that column among its bind_columns (unprotect_column, protect_column … existing_values => 'migrate'), then migrate.",
                );
            }
            if d.blind.is_some() {
                fail(
                    ERRCODE_INVALID_PARAMETER_VALUE,
                    "a column with a blind index cannot move to per-row keys",
                    None,
                    "A blind index is one keyed hash over the whole column: it would still link the values of a tenant whose key was destroyed.",
                );
            }
        }
    }
    let version = target_version(&target).or_raise();
    let target_text = target.to_string();
    if !dry_run && target_text != source_key {
        // New writes go to the target key from now on: keep writers out while it changes.
        lock_against_writers(&t);
        as_catalog_owner(|| {
            spi::run(
                "UPDATE credcrypt.protected_columns SET key_name = $3 WHERE relid OPERATOR(pg_catalog.=) $1 \
                    AND column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name",
                &[t.oid.into(), col.into(), target_text.as_str().into()],
            )
        })
        .unwrap_or_else(|e| spi_fail(e));
        // A kv: target: the rows' secrets are destroyed with the rows from now on.
        if matches!(target, ColumnKey::Fixed(credcrypt_core::KeyRef::Kv(_))) {
            crate::protect::designations::ensure_kv_triggers(&t);
        }
    }
    // A blind index follows the column to its key's root (the local key current now, or the
    // Transit key): a new index key version, which this run computes for every row — also when
    // the key reference stays `local` but the local key was rotated, so that the old key file
    // can go without taking the index (writes and lookups) with it.
    if !dry_run {
        if let ColumnKey::Fixed(target) = &target {
            let mut locked = target_text != source_key;
            for binding in &bindings {
                let has_index = crate::protect::blind::of_designation(binding).or_raise().is_some();
                if has_index && !crate::protect::blind::rooted_in(binding, target).or_raise() {
                    if !locked {
                        lock_against_writers(&t);
                        locked = true;
                    }
                    crate::protect::blind::new_version(binding, target);
                }
            }
        }
    }
    // Count the work (all leaf tables, all designations of the column).
    let mut total = 0i64;
    for binding in &bindings {
        let d = designation(binding);
        for (_, leaf) in leaves(t.oid) {
            total += count_needed(&t, &leaf, &d, &target_text, &version, &[]);
        }
    }
    let run_id = as_catalog_owner(|| {
        spi::run(
            "UPDATE credcrypt.reencrypt_runs SET state = 'interrupted' \
              WHERE relid OPERATOR(pg_catalog.=) $1 AND column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name \
                AND state OPERATOR(pg_catalog.=) 'running' \
                AND NOT EXISTS (SELECT FROM pg_catalog.pg_stat_activity a WHERE a.pid OPERATOR(pg_catalog.=) reencrypt_runs.backend_pid)",
            &[t.oid.into(), col.into()],
        )?;
        spi::rows_mut(
            "INSERT INTO credcrypt.reencrypt_runs (relid, column_name, source_key, target_key, target_version, dry_run, total, run_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, session_user) RETURNING run_id",
            &[
                t.oid.into(),
                col.into(),
                source_key.as_str().into(),
                target_text.as_str().into(),
                version.as_str().into(),
                dry_run.into(),
                total.into(),
            ],
            |r| r.get::<i64>(1),
        )
    })
    .unwrap_or_else(|e| spi_fail(e))
    .into_iter()
    .flatten()
    .next()
    .unwrap_or_else(|| fail(ERRCODE_INTERNAL_ERROR, "pg_credcrypt: the run could not be recorded", None, "Report this as a bug."));
    (run_id, total)
}

/// Starts a run on a column an application encrypts itself (no designation): every value,
/// with the context `context_format` builds for its row, moves to `target_key`.
fn prepare_app(t: &Table, col: &str, target_key: Option<&str>, dry_run: bool, format: Option<&str>) -> (i64, i64) {
    let Some(target_key) = target_key else {
        crate::errors::undefined(
            format!("column \"{col}\" of table {} is not protected", t.sql_name),
            "Protect it first (protect_column … existing_values => 'migrate', then CALL credcrypt.reencrypt_column(tbl, col)); for a column your application encrypts itself, name the target key and its context: CALL credcrypt.reencrypt_column(tbl, col, 'transit:<key>', context_format => 'owner:{owner}').",
        )
    };
    let c = crate::postgres::relation::column(t, col).unwrap_or_else(|| {
        crate::errors::undefined(
            format!("column \"{col}\" of table {} does not exist", t.sql_name),
            "Name a protected column, or a text column your application encrypts with encrypt_credential.",
        )
    });
    if !matches!(c.base_type.as_str(), "text" | "varchar") {
        fail(
            ERRCODE_DATATYPE_MISMATCH,
            format!("column \"{col}\" of table {} is {}, not text", t.sql_name, c.base_type),
            None,
            "reencrypt_column moves pg_credcrypt values kept in text columns.",
        );
    }
    let target = ColumnKey::parse(target_key).or_raise();
    if matches!(target, ColumnKey::PerRow(_)) {
        fail(
            ERRCODE_INVALID_PARAMETER_VALUE,
            "per-row keys are for protected columns",
            None,
            "Protect the column (protect_column … existing_values => 'migrate', bind_columns including the tenant column) to use per-row keys.",
        );
    }
    let version = target_version(&target).or_raise();
    let target_text = target.to_string();
    let mut d = super::sources::plain_column(t.oid, col);
    d.context_sql = Some(super::sources::context_sql(t.oid, format).or_raise());
    d.key = target_text.clone();
    let mut total = 0i64;
    for (_, leaf) in leaves(t.oid) {
        total += count_needed(t, &leaf, &d, &target_text, &version, &[]);
    }
    as_catalog_owner(|| {
        spi::rows_mut(
            "INSERT INTO credcrypt.reencrypt_runs (relid, column_name, source_key, target_key, target_version, dry_run, total, run_by, \
                                                  context_format, app_managed) \
             VALUES ($1, $2, 'application', $3, $4, $5, $6, session_user, $7, true) RETURNING run_id",
            &[
                t.oid.into(),
                col.into(),
                target_text.as_str().into(),
                version.as_str().into(),
                dry_run.into(),
                total.into(),
                format.into(),
            ],
            |r| r.get::<i64>(1),
        )
    })
    .unwrap_or_else(|e| spi_fail(e))
    .into_iter()
    .flatten()
    .next()
    .map(|run_id| (run_id, total))
    .unwrap_or_else(|| fail(ERRCODE_INTERNAL_ERROR, "pg_credcrypt: the run could not be recorded", None, "Report this as a bug."))
}

/// The designations a run works on: the column's, or the one pseudo-designation of an
/// application-managed column (`app:<run id>`).
pub(crate) fn run_bindings(run_id: i64) -> Vec<String> {
    let row = spi::two::<pg_sys::Oid, String>(
        "SELECT relid::pg_catalog.oid, CASE WHEN app_managed THEN NULL ELSE column_name::pg_catalog.text END \
           FROM credcrypt.reencrypt_runs WHERE run_id OPERATOR(pg_catalog.=) $1",
        &[run_id.into()],
    )
    .unwrap_or_else(|e| spi_fail(e));
    match row {
        (Some(relid), Some(column)) => bindings_of(relid, Some(&column)),
        (Some(_), None) => vec![format!("{}{run_id}", super::sources::APP_BINDING)],
        _ => Vec::new(),
    }
}

/// The state of a run, as a batch needs it.
pub(crate) struct Run {
    pub(crate) root: pg_sys::Oid,
    pub(crate) source_key: String,
    pub(crate) target: String,
    pub(crate) version: String,
    pub(crate) dry_run: bool,
}

pub(crate) fn run(run_id: i64) -> Run {
    spi::rows(
        "SELECT relid::pg_catalog.oid, source_key, target_key, target_version, dry_run \
           FROM credcrypt.reencrypt_runs WHERE run_id OPERATOR(pg_catalog.=) $1",
        &[run_id.into()],
        |r| {
            Ok(Run {
                root: r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                source_key: r.get::<String>(2)?.unwrap_or_default(),
                target: r.get::<String>(3)?.unwrap_or_default(),
                version: r.get::<String>(4)?.unwrap_or_default(),
                dry_run: r.get::<bool>(5)?.unwrap_or(true),
            })
        },
    )
    .unwrap_or_else(|e| spi_fail(e))
    .into_iter()
    .next()
    .unwrap_or_else(|| {
        crate::errors::undefined(
            format!("no re-encryption run {run_id}"),
            "Start it with CALL credcrypt.reencrypt_column(...).",
        )
    })
}

/// Outcome counters of one batch, by source kind.
#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) by_source: BTreeMap<&'static str, i64>,
}

pub(crate) fn failed_ctids(run_id: i64, leaf: pg_sys::Oid) -> Vec<String> {
    spi::rows(
        "SELECT row_ctid::pg_catalog.text FROM credcrypt.reencrypt_failures \
          WHERE run_id OPERATOR(pg_catalog.=) $1 AND relid OPERATOR(pg_catalog.=) $2",
        &[run_id.into(), leaf.into()],
        |r| Ok(r.get::<String>(1)?.unwrap_or_default()),
    )
    .unwrap_or_else(|e| spi_fail(e))
}

pub(crate) fn record_progress(run_id: i64, seen: i32, changed: i32, failed: i32, counts: &Counts) {
    as_catalog_owner(|| {
        let current = spi::one::<String>(
            "SELECT by_source::pg_catalog.text FROM credcrypt.reencrypt_runs WHERE run_id OPERATOR(pg_catalog.=) $1",
            &[run_id.into()],
        )?
        .unwrap_or_default();
        let mut merged: BTreeMap<String, i64> = serde_json::from_str(&current).unwrap_or_default();
        for (k, n) in &counts.by_source {
            *merged.entry((*k).to_owned()).or_default() += n;
        }
        let by_source = serde_json::to_string(&merged).unwrap_or_else(|_| "{}".into());
        spi::run(
            "UPDATE credcrypt.reencrypt_runs SET done = done OPERATOR(pg_catalog.+) $2, \
                    changed = changed OPERATOR(pg_catalog.+) $3, failed = failed OPERATOR(pg_catalog.+) $4, \
                    by_source = $5::pg_catalog.jsonb, updated_at = pg_catalog.clock_timestamp() \
              WHERE run_id OPERATOR(pg_catalog.=) $1",
            &[
                run_id.into(),
                i64::from(seen).into(),
                i64::from(changed).into(),
                i64::from(failed).into(),
                by_source.as_str().into(),
            ],
        )
    })
    .unwrap_or_else(|e| spi_fail(e));
}

/// Values of the designation in `leaf` that still need work (failures of this run excluded).
pub(crate) fn remaining(run_id: i64, leaf: pg_sys::Oid, binding_id: &str) -> i64 {
    let run = run(run_id);
    let root = table(run.root);
    let d = designation(binding_id);
    let Some((_, leaf_name)) = leaves(root.oid).into_iter().find(|(o, _)| *o == leaf) else { return 0 };
    count_needed(&root, &leaf_name, &d, &run.target, &run.version, &failed_ctids(run_id, leaf))
}

/// How a run ended: the final verification count.
pub(crate) struct Closed {
    pub(crate) summary: String,
    pub(crate) complete: bool,
    pub(crate) unreadable: i64,
    pub(crate) remaining: i64,
}

pub(crate) fn close(run_id: i64) -> Closed {
    let run = run(run_id);
    let root = table(run.root);
    let (column, changed, done, total) = spi::rows(
        "SELECT column_name::pg_catalog.text, changed, done, total FROM credcrypt.reencrypt_runs WHERE run_id OPERATOR(pg_catalog.=) $1",
        &[run_id.into()],
        |r| Ok((r.get::<String>(1)?.unwrap_or_default(), r.get::<i64>(2)?.unwrap_or(0), r.get::<i64>(3)?.unwrap_or(0), r.get::<i64>(4)?.unwrap_or(0))),
    )
    .unwrap_or_else(|e| spi_fail(e))
    .into_iter()
    .next()
    .unwrap_or_default();
    // The verification: every value of the column, now, that is not on the target.
    let (mut remaining, mut hashes) = (0i64, 0i64);
    for binding in run_bindings(run_id) {
        let d = designation(&binding);
        for (_, leaf) in leaves(root.oid) {
            remaining += count_needed(&root, &leaf, &d, &run.target, &run.version, &[]);
            hashes += count_hashes(&root, &leaf, &d);
        }
    }
    let unreadable = spi::one::<i64>(
        "SELECT pg_catalog.count(*) FROM credcrypt.reencrypt_failures WHERE run_id OPERATOR(pg_catalog.=) $1",
        &[run_id.into()],
    )
    .unwrap_or_else(|e| spi_fail(e))
    .unwrap_or(0);
    let complete = remaining == 0;
    if complete && !run.dry_run {
        // Every row's blind index is of the current key version: the previous ones can go.
        for binding in bindings_of(root.oid, Some(&column)) {
            crate::protect::blind::retire_previous(&binding);
        }
    }
    let place = format!("{}.{}", root.sql_name, qi(&column));
    let target = if run.target == "local" || run.target.starts_with("envelope:") {
        run.target.clone()
    } else {
        format!("{} v{}", run.target, run.version)
    };
    let summary = if run.dry_run {
        format!("pg_credcrypt: dry run of {place}: {done} of {total} value(s) would change to {target}; nothing was written")
    } else if complete {
        format!("pg_credcrypt: {place}: complete — every value is on {target} ({changed} re-encrypted by this run, run {run_id})")
    } else {
        let others = (remaining - unreadable).max(0);
        format!(
            "pg_credcrypt: {place}: NOT complete — {remaining} value(s) are not on {target}: {unreadable} could not be read \
             (see credcrypt.reencrypt_failures, run {run_id}), {others} were written during the run with another key or \
             not reached yet (CALL credcrypt.reencrypt_column again); {changed} re-encrypted by this run"
        )
    };
    let summary = if hashes > 0 {
        format!(
            "{summary}; {hashes} bcrypt hash(es) left as they are: one-way hashes cannot be decrypted \
             (credcrypt.verify_credential checks them until the application rotates those credentials)"
        )
    } else {
        summary
    };
    as_catalog_owner(|| {
        spi::run(
            "UPDATE credcrypt.reencrypt_runs SET state = 'finished', remaining = $2, complete = $3, \
                    updated_at = pg_catalog.clock_timestamp() WHERE run_id OPERATOR(pg_catalog.=) $1",
            &[run_id.into(), remaining.into(), (complete && !run.dry_run).into()],
        )
    })
    .unwrap_or_else(|e| spi_fail(e));
    Closed { summary, complete: complete || run.dry_run, unreadable, remaining }
}
