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

use std::collections::{BTreeMap, HashMap};

use credcrypt_core::column::column_context;
use credcrypt_core::legacy::{self, Source};
use credcrypt_core::wire::Op;
use credcrypt_core::{mask, Error, ErrorKind, KeyRef};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier as qi;
use pgrx::PgSqlErrorCode::*;
use zeroize::Zeroizing;

use crate::api::crypto::{decrypt_each, encrypt_with, Decrypted};
use crate::errors::{fail, raise, OrRaise as _};
use crate::postgres::guard::as_catalog_owner;
use crate::postgres::relation::{leaves, lock_against_writers, table, Table};
use crate::postgres::scope::{maintain, with_bypass};
use crate::postgres::spi;

fn spi_fail(e: pgrx::spi::SpiError) -> ! {
    fail(ERRCODE_INTERNAL_ERROR, format!("pg_credcrypt: migration query failed: {e}"), None, "Report this as a bug.")
}

/// The version a value must have to count as "on the target": the local key's id, or the
/// Transit key's latest version.
fn target_version(key: &KeyRef) -> Result<String, Error> {
    match key {
        // Envelope values move between Transit versions by rewrapping their data keys
        // (rotate_key), not by rewriting rows: any data key of the key is on target.
        KeyRef::Envelope(_) => Ok("any".into()),
        KeyRef::Local => crate::keys::with_keyring(|r| r.current_key().map(|k| k.id().to_hex())),
        KeyRef::Transit(name) => latest_transit_version(name).map(|v| v.to_string()),
    }
}

/// The latest version of Transit key `name`, asked of OpenBao through the worker.
fn latest_transit_version(name: &str) -> Result<u32, Error> {
    let answer = crate::transit::backend::call(Op::KeyInfo, name, &[])?;
    let v = answer
        .into_iter()
        .next()
        .ok_or_else(|| Error::internal("the worker sent no answer for a key lookup"))?
        .map_err(|f| crate::transit::backend::fail_to_error(&f))?;
    std::str::from_utf8(&v)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| Error::internal("the worker's key lookup answer is not a version number"))
}

/// Whether `value` still needs work to be on `target` (a key reference) at `version`.
#[pg_extern(immutable, parallel_safe, strict, name = "_reencrypt_needed")]
fn reencrypt_needed(value: &str, target: &str, version: &str) -> bool {
    match legacy::classify(value) {
        Source::Local(kid) => !(target == "local" && kid.to_hex() == version),
        Source::Transit { key, version: v } => {
            !(target.strip_prefix("transit:") == Some(key.as_str()) && v.to_string() == version)
        }
        Source::Envelope { key, .. } => target.strip_prefix("envelope:") != Some(key.as_str()),
        _ => true,
    }
}

/// Where a stored value comes from, as one short text: `local:<key id>`,
/// `transit:<key>:<version>`, `envelope:<key>:<data key id>`, `vault:<version>`, `legacy`,
/// `malformed` or `plaintext`. No secret (a key id is a fingerprint). For `key_usage`, which
/// groups by it in SQL so that no table is read into memory.
#[pg_extern(immutable, parallel_safe, strict, name = "_value_source")]
fn value_source(value: &str) -> String {
    match legacy::classify(value) {
        Source::Local(kid) => format!("local:{}", kid.to_hex()),
        Source::Transit { key, version } => format!("transit:{key}:{version}"),
        Source::Envelope { key, data_key } => format!("envelope:{key}:{}", data_key.to_hex()),
        Source::BareVault(v) => format!("vault:{v}"),
        Source::LegacyNode => "legacy".into(),
        Source::Malformed => "malformed".into(),
        Source::Plaintext => "plaintext".into(),
    }
}

/// A designation as the migration needs it.
struct Designation {
    root: pg_sys::Oid,
    column: String,
    path: Vec<String>,
    binds: Vec<String>,
    mask: Option<(String, usize, usize)>,
    key: String,
}

fn designation(binding_id: &str) -> Designation {
    spi::rows(
        "SELECT relid::pg_catalog.oid, column_name::pg_catalog.text, json_path, bind_columns::pg_catalog.text[], \
                mask_column::pg_catalog.text, mask_prefix, mask_suffix, key_name \
           FROM credcrypt.protected_columns WHERE binding_id OPERATOR(pg_catalog.=) $1",
        &[binding_id.into()],
        |r| {
            let mask = match r.get::<String>(5)? {
                Some(m) => Some((
                    m,
                    r.get::<i32>(6)?.unwrap_or(0).max(0) as usize,
                    r.get::<i32>(7)?.unwrap_or(4).max(0) as usize,
                )),
                None => None,
            };
            Ok(Designation {
                root: r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                column: r.get::<String>(2)?.unwrap_or_default(),
                path: r.get::<Vec<String>>(3)?.unwrap_or_default(),
                binds: r.get::<Vec<String>>(4)?.unwrap_or_default(),
                mask,
                key: r.get::<String>(8)?.unwrap_or_default(),
            })
        },
    )
    .unwrap_or_else(|e| spi_fail(e))
    .into_iter()
    .next()
    .unwrap_or_else(|| {
        fail(
            ERRCODE_UNDEFINED_OBJECT,
            "the designation was removed during the migration",
            None,
            "Run the migration again.",
        )
    })
}

/// The binding ids of a table's designations (of one column, or all), in catalog order.
fn bindings_of(relid: pg_sys::Oid, col: Option<&str>) -> Vec<String> {
    spi::rows(
        "SELECT binding_id FROM credcrypt.protected_columns WHERE relid OPERATOR(pg_catalog.=) $1 \
            AND ($2::pg_catalog.text IS NULL OR column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name) \
          ORDER BY column_name, json_path",
        &[relid.into(), col.into()],
        |r| Ok(r.get::<String>(1)?.unwrap_or_default()),
    )
    .unwrap_or_else(|e| spi_fail(e))
}

/// SQL for the value of a designation in row alias `t`.
fn value_expr(d: &Designation) -> String {
    crate::protect::admin::value_expr("t", &d.column, &d.path)
}

/// SQL for the bind values of a designation in row alias `t`, each `, t.x::text`.
fn bind_exprs(d: &Designation) -> String {
    d.binds.iter().map(|b| format!(", (t.{})::pg_catalog.text", qi(b))).collect()
}

/// Values of designation `d` in `leaf` that still need work to be on `target` at `version`,
/// leaving out the tuple ids in `skip` (read as the table's owner).
fn count_needed(t: &Table, leaf: &str, d: &Designation, target: &str, version: &str, skip: &[String]) -> i64 {
    let v = value_expr(d);
    let sql = format!(
        "SELECT pg_catalog.count(*) FROM ONLY {leaf} t WHERE {v} IS NOT NULL \
            AND credcrypt._reencrypt_needed({v}, $1, $2) AND NOT (t.ctid OPERATOR(pg_catalog.=) ANY ($3::pg_catalog.text[]::pg_catalog.tid[]))"
    );
    maintain(t.oid, || spi::one::<i64>(&sql, &[target.into(), version.into(), skip.to_vec().into()]))
        .unwrap_or_else(|e| spi_fail(e))
        .unwrap_or(0)
}

/// `_reencrypt_prepare(tbl, col, target_key, dry_run)`: see the module documentation.
#[pg_extern(volatile, name = "_reencrypt_prepare")]
#[search_path(pg_catalog, pg_temp)]
fn reencrypt_prepare(
    tbl: pg_sys::Oid,
    col: &str,
    target_key: Option<&str>,
    dry_run: bool,
) -> TableIterator<'static, (name!(run_id, i64), name!(total, i64))> {
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
        fail(
            ERRCODE_UNDEFINED_OBJECT,
            format!("column \"{col}\" of table {} is not protected", t.sql_name),
            None,
            "Protect it first: SELECT credcrypt.protect_column(tbl, col, …, existing_values => 'migrate'); then CALL credcrypt.reencrypt_column(tbl, col).",
        );
    }
    let source_key = designation(&bindings[0]).key;
    let target = match target_key {
        Some(k) => KeyRef::parse(k).or_raise(),
        None => KeyRef::parse(&source_key).or_raise(),
    };
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
    TableIterator::once((run_id, total))
}

/// The leaf tables of a protected table, for the procedure's loop.
#[pg_extern(stable, name = "_reencrypt_leaves")]
#[search_path(pg_catalog, pg_temp)]
fn reencrypt_leaves(tbl: pg_sys::Oid) -> TableIterator<'static, (name!(leaf, pg_sys::Oid),)> {
    TableIterator::new(leaves(tbl).into_iter().map(|(o, _)| (o,)))
}

/// The state of a run, as a batch needs it.
struct Run {
    root: pg_sys::Oid,
    source_key: String,
    target: String,
    version: String,
    dry_run: bool,
}

fn run(run_id: i64) -> Run {
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
        fail(
            ERRCODE_UNDEFINED_OBJECT,
            format!("no re-encryption run {run_id}"),
            None,
            "Start it with CALL credcrypt.reencrypt_column(...).",
        )
    })
}

/// One row picked for work: ctid, value, bind values.
struct Picked {
    ctid: String,
    value: String,
    binds: Vec<Option<String>>,
}

/// Outcome counters of one batch, by source kind.
#[derive(Default)]
struct Counts {
    by_source: BTreeMap<&'static str, i64>,
}

fn failed_ctids(run_id: i64, leaf: pg_sys::Oid) -> Vec<String> {
    spi::rows(
        "SELECT row_ctid::pg_catalog.text FROM credcrypt.reencrypt_failures \
          WHERE run_id OPERATOR(pg_catalog.=) $1 AND relid OPERATOR(pg_catalog.=) $2",
        &[run_id.into(), leaf.into()],
        |r| Ok(r.get::<String>(1)?.unwrap_or_default()),
    )
    .unwrap_or_else(|e| spi_fail(e))
}

/// Plaintext of one picked value, or why it cannot be read.
fn plaintexts(picked: &[Picked], sources: &[Source], contexts: &[String], run: &Run) -> Result<Vec<Decrypted>, Error> {
    let mut out: Vec<Decrypted> = picked.iter().map(|_| Err(Error::malformed("not processed"))).collect();
    // pg_credcrypt values: decrypted with the row's context, Transit ones in one batch per key.
    let cc1: Vec<usize> =
        (0..picked.len()).filter(|&i| matches!(sources[i], Source::Local(_) | Source::Transit { .. })).collect();
    if !cc1.is_empty() {
        let values: Vec<&str> = cc1.iter().map(|&i| picked[i].value.as_str()).collect();
        let ctxs: Vec<Option<&str>> = cc1.iter().map(|&i| Some(contexts[i].as_str())).collect();
        for (&i, r) in cc1.iter().zip(decrypt_each(&values, &ctxs, None)?) {
            out[i] = r;
        }
    }
    // Bare vault: values written by the application: no context, the column's Transit key.
    let vault: Vec<usize> = (0..picked.len()).filter(|&i| matches!(sources[i], Source::BareVault(_))).collect();
    if !vault.is_empty() {
        let key = [run.source_key.as_str(), run.target.as_str()].into_iter().find(|k| k.starts_with("transit:"));
        let values: Vec<&str> = vault.iter().map(|&i| picked[i].value.as_str()).collect();
        let ctxs: Vec<Option<&str>> = vec![None; vault.len()];
        match key {
            Some(k) => {
                for (&i, r) in vault.iter().zip(decrypt_each(&values, &ctxs, Some(k))?) {
                    out[i] = r;
                }
            }
            None => {
                for &i in &vault {
                    out[i] = Err(Error::new(ErrorKind::InvalidKeyRef, "a bare vault: value needs a Transit key")
                        .with_detail("neither the column's key nor the target is a Transit key"));
                }
            }
        }
    }
    let legacy_key = sources.contains(&Source::LegacyNode).then(crate::keys::legacy_key);
    for (i, s) in sources.iter().enumerate() {
        match s {
            Source::Plaintext => out[i] = Ok(Zeroizing::new(picked[i].value.as_bytes().to_vec())),
            Source::Malformed => out[i] = Err(Error::malformed("a cc1: value that does not parse")),
            Source::LegacyNode => {
                out[i] = match &legacy_key {
                    Some(Ok(k)) => legacy::decrypt_node(&picked[i].value, k),
                    Some(Err(e)) => Err(e.clone()),
                    None => Err(Error::malformed("legacy key not read")),
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// What one batch did.
struct Batch {
    next: String,
    seen: i32,
    changed: i32,
    failed: i32,
    finished: bool,
}

/// The number of heap blocks of `leaf` and the estimated rows per block.
fn blocks(leaf: pg_sys::Oid) -> (i64, f64) {
    spi::two::<i64, f64>(
        "SELECT pg_catalog.pg_relation_size($1) OPERATOR(pg_catalog./) pg_catalog.current_setting('block_size')::pg_catalog.int8, \
                (CASE WHEN relpages OPERATOR(pg_catalog.>) 0 AND reltuples OPERATOR(pg_catalog.>) 0 \
                      THEN reltuples OPERATOR(pg_catalog./) relpages ELSE 100 END)::pg_catalog.float8 \
           FROM pg_catalog.pg_class WHERE oid OPERATOR(pg_catalog.=) $1",
        &[leaf.into()],
    )
    .map(|(a, b)| (a.unwrap_or(0), b.unwrap_or(100.0)))
    .unwrap_or_else(|e| spi_fail(e))
}

/// The block a tuple-id cursor `(b,o)` points into.
fn cursor_block(after: &str) -> i64 {
    after.trim_start_matches('(').split(',').next().and_then(|b| b.trim().parse().ok()).unwrap_or_else(|| bad_cursor())
}

fn batch_impl(run_id: i64, leaf: pg_sys::Oid, binding_id: &str, after: &str, batch_size: i32) -> Batch {
    let run = run(run_id);
    let root = table(run.root);
    let d = designation(binding_id);
    if d.root != root.oid {
        fail(
            ERRCODE_INVALID_PARAMETER_VALUE,
            "the designation belongs to another table",
            None,
            "Use CALL credcrypt.reencrypt_column(...).",
        );
    }
    let Some((_, leaf_name)) = leaves(root.oid).into_iter().find(|(o, _)| *o == leaf) else {
        fail(
            ERRCODE_INVALID_PARAMETER_VALUE,
            "not a leaf table of the protected table",
            None,
            "Use CALL credcrypt.reencrypt_column(...).",
        )
    };
    let (nblocks, per_page) = blocks(leaf);
    let start_block = cursor_block(after);
    if start_block >= nblocks {
        return Batch { next: after.to_owned(), seen: 0, changed: 0, failed: 0, finished: true };
    }
    // A window of blocks expected to hold a few batches; LIMIT keeps the batch exact.
    let step = ((4.0 * f64::from(batch_size.max(1)) / per_page.max(1.0)).ceil() as i64).clamp(1, 1 << 20);
    let end = start_block + step;

    let v = value_expr(&d);
    let lock = if run.dry_run { "" } else { " FOR UPDATE OF t SKIP LOCKED" };
    let sql = format!(
        "SELECT t.ctid::pg_catalog.text, {v}{binds} FROM ONLY {leaf_name} t \
          WHERE t.ctid OPERATOR(pg_catalog.>) $4::pg_catalog.tid AND t.ctid OPERATOR(pg_catalog.<) '({end},0)'::pg_catalog.tid \
            AND {v} IS NOT NULL AND credcrypt._reencrypt_needed({v}, $1, $2) \
            AND NOT (t.ctid OPERATOR(pg_catalog.=) ANY ($3::pg_catalog.text[]::pg_catalog.tid[])) \
          ORDER BY t.ctid LIMIT {limit}{lock}",
        binds = bind_exprs(&d),
        limit = batch_size.max(1)
    );
    let failed_before = failed_ctids(run_id, leaf);
    let nb = d.binds.len();
    let args: [DatumWithOid<'_>; 4] =
        [run.target.as_str().into(), run.version.as_str().into(), failed_before.clone().into(), after.into()];
    let read = |r: &pgrx::spi::SpiHeapTupleData<'_>| {
        let mut binds = Vec::with_capacity(nb);
        for k in 0..nb {
            binds.push(r.get::<String>(3 + k)?);
        }
        Ok(Picked {
            ctid: r.get::<String>(1)?.unwrap_or_default(),
            value: r.get::<String>(2)?.unwrap_or_default(),
            binds,
        })
    };
    // Rows are locked (FOR UPDATE), which needs a read-write statement.
    let picked: Vec<Picked> =
        maintain(
            root.oid,
            || {
                if run.dry_run {
                    spi::rows(&sql, &args, read)
                } else {
                    spi::rows_mut(&sql, &args, read)
                }
            },
        )
        .unwrap_or_else(|e| spi_fail(e));

    let sources: Vec<Source> = picked.iter().map(|p| legacy::classify(&p.value)).collect();
    let mut counts = Counts::default();
    for s in &sources {
        *counts.by_source.entry(s.kind()).or_default() += 1;
    }
    let seen = picked.len() as i32;
    // A full batch continues after its last row; a short one has exhausted the window.
    let (next, finished) = if picked.len() == batch_size.max(1) as usize {
        (picked.last().map(|p| p.ctid.clone()).unwrap_or_default(), false)
    } else {
        (format!("({end},0)"), end >= nblocks)
    };
    if run.dry_run || picked.is_empty() {
        record_progress(run_id, seen, 0, 0, &counts);
        return Batch { next, seen, changed: 0, failed: 0, finished };
    }

    let contexts: Vec<String> = picked
        .iter()
        .map(|p| {
            let refs: Vec<Option<&str>> = p.binds.iter().map(|b| b.as_deref()).collect();
            column_context(binding_id, &refs).or_raise()
        })
        .collect();
    let plain = plaintexts(&picked, &sources, &contexts, &run).or_raise();
    let target = KeyRef::parse(&run.target).or_raise();
    let ok: Vec<usize> = (0..picked.len()).filter(|&i| plain[i].is_ok()).collect();
    let mut failures: Vec<(usize, String)> = (0..picked.len())
        .filter_map(|i| plain[i].as_ref().err().map(|e| (i, format!("cannot read the value: {}", describe(e)))))
        .collect();
    let bytes: Vec<&[u8]> = ok.iter().map(|&i| plain[i].as_ref().map(|p| p.as_slice()).unwrap_or_default()).collect();
    let ctxs: Vec<Option<&str>> = ok.iter().map(|&i| Some(contexts[i].as_str())).collect();
    // Never fall back to the local key here: a migration to Transit must land on Transit.
    let fresh = encrypt_with(&bytes, &target, &ctxs, false).unwrap_or_else(|e| raise(e));
    // Verify before writing: every new value must decrypt to the original.
    let fresh_refs: Vec<&str> = fresh.iter().map(String::as_str).collect();
    let check = decrypt_each(&fresh_refs, &ctxs, None).unwrap_or_else(|e| raise(e));
    let mut ctid_w = Vec::new();
    let mut new_w = Vec::new();
    let mut mask_w: Vec<Option<String>> = Vec::new();
    for (k, &i) in ok.iter().enumerate() {
        match &check[k] {
            Ok(p) if p.as_slice() == bytes[k] => {
                ctid_w.push(picked[i].ctid.clone());
                new_w.push(fresh[k].clone());
                mask_w.push(
                    d.mask.as_ref().map(|(_, pre, suf)| mask::mask(&String::from_utf8_lossy(bytes[k]), *pre, *suf)),
                );
            }
            _ => failures.push((i, "the new ciphertext did not decrypt to the original; nothing was written".into())),
        }
    }
    if !ctid_w.is_empty() {
        write_values(&root, &leaf_name, &d, &ctid_w, new_w, Some(mask_w));
    }
    for (i, reason) in &failures {
        let kind = sources[*i].kind();
        as_catalog_owner(|| {
            spi::run(
                "INSERT INTO credcrypt.reencrypt_failures (run_id, relid, row_ctid, source, reason) VALUES ($1, $2, $3::pg_catalog.tid, $4, $5)",
                &[run_id.into(), leaf.into(), picked[*i].ctid.as_str().into(), kind.into(), reason.as_str().into()],
            )
        })
        .unwrap_or_else(|e| spi_fail(e));
    }
    let changed = ctid_w.len() as i32;
    let failed = failures.len() as i32;
    record_progress(run_id, seen, changed, failed, &counts);
    Batch { next, seen, changed, failed, finished }
}

/// Writes `values` (and masks) into the rows `ctids` of `leaf`, as the table's owner, with the
/// protection trigger bypassed for this table: the values are final (verified ciphertexts, or
/// the plaintext of `unprotect_column … decrypt_existing`).
fn write_values(
    root: &Table,
    leaf_name: &str,
    d: &Designation,
    ctids: &[String],
    values: Vec<String>,
    masks: Option<Vec<Option<String>>>,
) {
    let set_value = if d.path.is_empty() {
        format!("{} = v.n", qi(&d.column))
    } else {
        format!("{} = {}", qi(&d.column), crate::protect::admin::json_set_expr("t", &d.column, &d.path, "v.n"))
    };
    let (set_mask, masks) = match (&d.mask, masks) {
        (Some((m, _, _)), Some(masks)) => (format!(", {} = v.m", qi(m)), masks),
        (_, masks) => (String::new(), masks.unwrap_or_else(|| vec![None; ctids.len()])),
    };
    let update = format!(
        "UPDATE ONLY {leaf_name} t SET {set_value}{set_mask} \
           FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]::pg_catalog.tid[]), pg_catalog.unnest($2::pg_catalog.text[]), \
                           pg_catalog.unnest($3::pg_catalog.text[])) AS v(c, n, m) \
          WHERE t.ctid OPERATOR(pg_catalog.=) v.c"
    );
    let args: [DatumWithOid<'_>; 3] = [ctids.to_vec().into(), values.into(), masks.into()];
    maintain(root.oid, || with_bypass(root.oid, || spi::run(&update, &args))).unwrap_or_else(|e| spi_fail(e));
}

/// `_reencrypt_batch(run_id, leaf, binding_id, after, batch_size)` (the procedure of 0.1.0):
/// one batch, errors raised as they happen.
#[pg_extern(volatile, name = "_reencrypt_batch")]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)] // the row type is spelled out for pgrx's SQL generation
fn reencrypt_batch(
    run_id: i64,
    leaf: pg_sys::Oid,
    binding_id: &str,
    after: &str,
    batch_size: i32,
) -> TableIterator<
    'static,
    (name!(next_after, String), name!(rows_seen, i32), name!(changed, i32), name!(failed, i32), name!(finished, bool)),
> {
    let b = batch_impl(run_id, leaf, binding_id, after, batch_size);
    TableIterator::once((b.next, b.seen, b.changed, b.failed, b.finished))
}

/// `_reencrypt_step(run_id, leaf, binding_id, after, batch_size)`: one batch in a
/// subtransaction. When it fails, its work is rolled back, the run is marked `failed` with the
/// error, and the error comes back as columns: the procedure commits the state and raises it.
#[pg_extern(volatile, name = "_reencrypt_step")]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)] // the row type is spelled out for pgrx's SQL generation
fn reencrypt_step(
    run_id: i64,
    leaf: pg_sys::Oid,
    binding_id: &str,
    after: &str,
    batch_size: i32,
) -> TableIterator<
    'static,
    (
        name!(next_after, String),
        name!(rows_seen, i32),
        name!(changed, i32),
        name!(failed, i32),
        name!(finished, bool),
        name!(error_code, Option<String>),
        name!(error_message, Option<String>),
        name!(error_detail, Option<String>),
        name!(error_hint, Option<String>),
    ),
> {
    match crate::postgres::subxact::in_subtransaction(|| batch_impl(run_id, leaf, binding_id, after, batch_size)) {
        Ok(b) => TableIterator::once((b.next, b.seen, b.changed, b.failed, b.finished, None, None, None, None)),
        Err(e) => {
            as_catalog_owner(|| {
                spi::run(
                    "UPDATE credcrypt.reencrypt_runs SET state = 'failed', error = $2, updated_at = pg_catalog.clock_timestamp() \
                      WHERE run_id OPERATOR(pg_catalog.=) $1",
                    &[run_id.into(), format!("{}: {}", e.sqlstate, e.message).as_str().into()],
                )
            })
            .unwrap_or_else(|e| spi_fail(e));
            TableIterator::once((after.to_owned(), 0, 0, 0, true, Some(e.sqlstate), Some(e.message), e.detail, e.hint))
        }
    }
}

fn bad_cursor() -> ! {
    fail(ERRCODE_INVALID_PARAMETER_VALUE, "not a tuple id", None, "Use CALL credcrypt.reencrypt_column(...).")
}

/// A reason without values: the error's message and detail.
fn describe(e: &Error) -> String {
    match &e.detail {
        Some(d) => format!("{} ({d})", e.message),
        None => e.message.clone(),
    }
}

fn record_progress(run_id: i64, seen: i32, changed: i32, failed: i32, counts: &Counts) {
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
#[pg_extern(volatile, name = "_reencrypt_remaining")]
#[search_path(pg_catalog, pg_temp)]
fn reencrypt_remaining(run_id: i64, leaf: pg_sys::Oid, binding_id: &str) -> i64 {
    let run = run(run_id);
    let root = table(run.root);
    let d = designation(binding_id);
    let Some((_, leaf_name)) = leaves(root.oid).into_iter().find(|(o, _)| *o == leaf) else { return 0 };
    count_needed(&root, &leaf_name, &d, &run.target, &run.version, &failed_ctids(run_id, leaf))
}

/// How a run ended: the final verification count.
struct Closed {
    summary: String,
    complete: bool,
    unreadable: i64,
    remaining: i64,
}

fn close(run_id: i64) -> Closed {
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
    let mut remaining = 0i64;
    for binding in bindings_of(root.oid, Some(&column)) {
        let d = designation(&binding);
        for (_, leaf) in leaves(root.oid) {
            remaining += count_needed(&root, &leaf, &d, &run.target, &run.version, &[]);
        }
    }
    let unreadable = spi::one::<i64>(
        "SELECT pg_catalog.count(*) FROM credcrypt.reencrypt_failures WHERE run_id OPERATOR(pg_catalog.=) $1",
        &[run_id.into()],
    )
    .unwrap_or_else(|e| spi_fail(e))
    .unwrap_or(0);
    let complete = remaining == 0;
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

/// Closes a run and returns its summary line (the procedure of 0.1.0).
#[pg_extern(volatile, name = "_reencrypt_finish")]
#[search_path(pg_catalog, pg_temp)]
fn reencrypt_finish(run_id: i64) -> String {
    close(run_id).summary
}

/// Closes a run: the final verification count, the summary, and whether every value is now on
/// the target (always true for a dry run).
#[pg_extern(volatile, name = "_reencrypt_close")]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)] // the row type is spelled out for pgrx's SQL generation
fn reencrypt_close(
    run_id: i64,
) -> TableIterator<
    'static,
    (name!(summary, String), name!(complete, bool), name!(unreadable, i64), name!(remaining, i64)),
> {
    let c = close(run_id);
    TableIterator::once((c.summary, c.complete, c.unreadable, c.remaining))
}

/// Decrypts every pg_credcrypt value of a designation in place (`unprotect_column …
/// decrypt_existing => true`), in windows of heap blocks; plaintext values are left as they
/// are. A value that cannot be decrypted raises an error (and nothing is changed).
pub(crate) fn decrypt_in_place(t: &Table, binding_id: &str) -> i64 {
    let d = designation(binding_id);
    let mut done = 0i64;
    let v = value_expr(&d);
    for (leaf, leaf_name) in leaves(t.oid) {
        let (nblocks, per_page) = blocks(leaf);
        let step = ((2000.0 / per_page.max(1.0)).ceil() as i64).clamp(1, 1 << 20);
        let mut start = 0i64;
        while start < nblocks {
            let end = start + step;
            let sql = format!(
                "SELECT t.ctid::pg_catalog.text, {v}{binds} FROM ONLY {leaf_name} t \
                  WHERE t.ctid OPERATOR(pg_catalog.>=) '({start},0)'::pg_catalog.tid \
                    AND t.ctid OPERATOR(pg_catalog.<) '({end},0)'::pg_catalog.tid \
                    AND pg_catalog.starts_with({v}, 'cc1:')",
                binds = bind_exprs(&d)
            );
            let nb = d.binds.len();
            let picked: Vec<Picked> = maintain(t.oid, || {
                spi::rows(&sql, &[], |r| {
                    let mut binds = Vec::with_capacity(nb);
                    for k in 0..nb {
                        binds.push(r.get::<String>(3 + k)?);
                    }
                    Ok(Picked {
                        ctid: r.get::<String>(1)?.unwrap_or_default(),
                        value: r.get::<String>(2)?.unwrap_or_default(),
                        binds,
                    })
                })
            })
            .unwrap_or_else(|e| spi_fail(e));
            start = end;
            if picked.is_empty() {
                continue;
            }
            let contexts: Vec<String> = picked
                .iter()
                .map(|p| {
                    let refs: Vec<Option<&str>> = p.binds.iter().map(|b| b.as_deref()).collect();
                    column_context(binding_id, &refs).or_raise()
                })
                .collect();
            let values: Vec<&str> = picked.iter().map(|p| p.value.as_str()).collect();
            let ctxs: Vec<Option<&str>> = contexts.iter().map(|c| Some(c.as_str())).collect();
            let mut plain = Vec::with_capacity(picked.len());
            for r in decrypt_each(&values, &ctxs, None).or_raise() {
                let p = r.map_err(|e| {
                    let detail = format!(
                        "column \"{}\" of table {}: {}",
                        d.column,
                        t.sql_name,
                        e.detail.clone().unwrap_or_default()
                    );
                    Error { detail: Some(detail), ..e }
                });
                let p = p.or_raise();
                match String::from_utf8(p.to_vec()) {
                    Ok(s) => plain.push(s),
                    Err(_) => raise(Error::new(ErrorKind::NotUtf8, "a decrypted value is not valid text")),
                }
            }
            let ctids: Vec<String> = picked.iter().map(|p| p.ctid.clone()).collect();
            done += ctids.len() as i64;
            write_values(t, &leaf_name, &d, &ctids, plain, None);
        }
    }
    done
}

/// A key name and version as `key_usage` shows them: (source, key reference, version).
type UsageKey = (String, Option<String>, Option<String>);

/// The usage of one designation: values per (source, key, version), read as the table's owner
/// through the maintenance path (every row, whatever the caller may see), grouped in SQL.
fn usage_of(relid: pg_sys::Oid, binding: &str, data_key_versions: &HashMap<String, String>) -> BTreeMap<UsageKey, i64> {
    let d = designation(binding);
    let v = value_expr(&d);
    let mut agg: BTreeMap<UsageKey, i64> = BTreeMap::new();
    let local_known = |kid: &str| match credcrypt_core::KeyId::from_hex(kid) {
        Some(id) => crate::keys::with_keyring(|r| Ok(r.find(id).is_some())).unwrap_or(false),
        None => false,
    };
    for (_, leaf) in leaves(relid) {
        let sql = format!(
            "SELECT credcrypt._value_source({v}), pg_catalog.count(*) FROM ONLY {leaf} t WHERE {v} IS NOT NULL GROUP BY 1"
        );
        let groups = maintain(relid, || {
            spi::rows(&sql, &[], |r| Ok((r.get::<String>(1)?.unwrap_or_default(), r.get::<i64>(2)?.unwrap_or(0))))
        })
        .unwrap_or_else(|e| spi_fail(e));
        for (source, n) in groups {
            let parts: Vec<&str> = source.splitn(3, ':').collect();
            let key: UsageKey = match parts.as_slice() {
                ["local", kid] if local_known(kid) => ("local".into(), Some("local".into()), Some((*kid).into())),
                ["local", kid] => ("unreadable".into(), Some("local".into()), Some((*kid).into())),
                ["transit", k, ver] => ("transit".into(), Some(format!("transit:{k}")), Some((*ver).into())),
                ["envelope", k, dek] => match data_key_versions.get(*dek) {
                    Some(ver) => ("envelope".into(), Some(format!("envelope:{k}")), Some(ver.clone())),
                    None => ("unreadable".into(), Some(format!("envelope:{k}")), None),
                },
                ["vault", ver] => ("vault".into(), None, Some((*ver).into())),
                ["legacy"] => ("legacy".into(), None, None),
                ["plaintext"] => ("plaintext".into(), None, None),
                _ => ("unreadable".into(), None, None),
            };
            *agg.entry(key).or_default() += n;
        }
    }
    agg
}

/// The Transit version each envelope data key is wrapped with.
fn data_key_versions() -> HashMap<String, String> {
    as_catalog_owner(|| {
        spi::rows("SELECT id, pg_catalog.substring(wrapped, '^vault:v([0-9]+):') FROM credcrypt.data_keys", &[], |r| {
            Ok((r.get::<String>(1)?.unwrap_or_default(), r.get::<String>(2)?.unwrap_or_default()))
        })
    })
    .unwrap_or_else(|e| spi_fail(e))
    .into_iter()
    .collect()
}

/// The designations to report on: (table OID, binding id), of `tbl` or all.
fn designations_to_report(tbl: Option<pg_sys::Oid>) -> Vec<(pg_sys::Oid, String, String, Vec<String>)> {
    spi::rows(
        "SELECT relid::pg_catalog.oid, binding_id, column_name::pg_catalog.text, json_path FROM credcrypt.protected_columns \
          WHERE $1::pg_catalog.oid IS NULL OR relid OPERATOR(pg_catalog.=) $1 \
          ORDER BY relid::pg_catalog.regclass::pg_catalog.text, column_name, json_path",
        &[tbl.into()],
        |r| {
            Ok((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<Vec<String>>(4)?.unwrap_or_default(),
            ))
        },
    )
    .unwrap_or_else(|e| spi_fail(e))
}

fn table_display(relid: pg_sys::Oid) -> String {
    spi::one::<String>("SELECT $1::pg_catalog.regclass::pg_catalog.text", &[relid.into()])
        .unwrap_or_else(|e| spi_fail(e))
        .unwrap_or_default()
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
fn key_usage(
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
    crate::postgres::catalog::require_current_sql();
    let dek = data_key_versions();
    let local_current = crate::keys::with_keyring(|r| r.current_key().map(|k| k.id().to_hex())).ok();
    let mut latest: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for (relid, binding, column, path) in designations_to_report(tbl) {
        let table_name = table_display(relid);
        for ((source, key, version), n) in usage_of(relid, &binding, &dek) {
            let current = match (source.as_str(), &key, &version) {
                ("local", _, Some(v)) => Some(local_current.as_ref() == Some(v)),
                ("transit" | "envelope", Some(k), Some(v)) => {
                    let name = k.split_once(':').map(|x| x.1).unwrap_or_default().to_owned();
                    if !latest.contains_key(&name) {
                        let l = latest_transit_version(&name).or_raise();
                        latest.insert(name.clone(), l.to_string());
                    }
                    Some(latest.get(&name) == Some(v))
                }
                _ => None,
            };
            out.push((table_name.clone(), column.clone(), path.clone(), source, key, version, current, n));
        }
    }
    TableIterator::new(out)
}

/// Whether version `version` of Transit key `key_name` (`transit:<k>`, `envelope:<k>` or a
/// bare name) and every version below it can be retired — whether `min_decryption_version`
/// may be raised above it — without making a protected value unreadable: no value of any
/// protected column is on such a version (directly, or through an envelope data key wrapped
/// with it), and no envelope data key is wrapped with it. Reads every row of every protected
/// table (as `key_usage` does); an error, never a guess, when something cannot be read.
#[pg_extern(volatile, name = "safe_to_retire")]
#[search_path(pg_catalog, pg_temp)]
fn safe_to_retire(key_name: &str, version: i32) -> bool {
    crate::postgres::catalog::require_current_sql();
    let name = key_name.strip_prefix("transit:").or_else(|| key_name.strip_prefix("envelope:")).unwrap_or(key_name);
    if !credcrypt_core::format::valid_key_name(name) || version < 1 {
        raise(Error::new(
            ErrorKind::InvalidArgument,
            "safe_to_retire needs a Transit key name and a version of 1 or more",
        ));
    }
    let below = |v: &str| v.parse::<i64>().map(|n| n <= i64::from(version)).unwrap_or(true);
    let dek = data_key_versions();
    // Data keys wrapped with the version: retiring it would make them (and their values) unreadable.
    let blocked_keys = spi::one::<i64>(
        "SELECT pg_catalog.count(*) FROM credcrypt.data_keys WHERE transit_key OPERATOR(pg_catalog.=) $1 \
            AND pg_catalog.substring(wrapped, '^vault:v([0-9]+):')::pg_catalog.int8 OPERATOR(pg_catalog.<=) $2::pg_catalog.int8",
        &[name.into(), version.into()],
    );
    let blocked_keys = as_catalog_owner(|| blocked_keys).unwrap_or_else(|e| spi_fail(e)).unwrap_or(0);
    let mut safe = blocked_keys == 0;
    if !safe {
        pgrx::notice!("pg_credcrypt: {blocked_keys} envelope data key(s) of {name} are wrapped with version {version} or older: SELECT credcrypt.rotate_key('envelope:{name}') rewraps them");
    }
    for (relid, binding, column, _) in designations_to_report(None) {
        let d = designation(&binding);
        let usage = usage_of(relid, &binding, &dek);
        let on_it: i64 = usage
            .iter()
            .filter(|((source, key, v), _)| match (source.as_str(), key.as_deref(), v.as_deref()) {
                ("transit", Some(k), Some(v)) => k == format!("transit:{name}") && below(v),
                ("envelope", Some(k), Some(v)) => k == format!("envelope:{name}") && below(v),
                // Bare vault: values carry no key name: those of a column on this key count.
                ("vault", _, Some(v)) => d.key == format!("transit:{name}") && below(v),
                _ => false,
            })
            .map(|(_, n)| *n)
            .sum();
        if on_it > 0 {
            safe = false;
            pgrx::notice!(
                "pg_credcrypt: {} value(s) of {}.{} are on {name} version {version} or older",
                on_it,
                table_display(relid),
                qi(&column)
            );
        }
    }
    safe
}
