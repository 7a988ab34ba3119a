//! Re-encryption migrations (`CALL credcrypt.reencrypt_column`, sql/migrate.sql) and
//! `credcrypt.key_usage`.
//!
//! The procedure (PL/pgSQL, so it can COMMIT after every batch) calls:
//! - [`reencrypt_prepare`]: checks, resolves the target key and version, counts the work,
//!   records a run in `credcrypt.reencrypt_runs`;
//! - [`reencrypt_batch`]: one batch of one designation in one (leaf) table: a range of heap
//!   blocks, rows locked `FOR UPDATE SKIP LOCKED`, values classified, decrypted (Transit in
//!   batches), encrypted for the target, **verified by decrypting** before they are written, and
//!   written with the protection trigger bypassed (the values are already final). Values that
//!   cannot be read are left untouched and recorded in `credcrypt.reencrypt_failures`;
//! - [`reencrypt_finish`]: closes the run.
//!
//! Runs through the maintenance path, so tables under `enable_owner_rls` are fully covered
//! without BYPASSRLS.

use std::collections::BTreeMap;

use credcrypt_core::column::column_context;
use credcrypt_core::legacy::{self, Source};
use credcrypt_core::wire::Op;
use credcrypt_core::{mask, Error, ErrorKind, KeyRef};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier as qi, Spi};
use pgrx::PgSqlErrorCode::*;
use zeroize::Zeroizing;

use crate::api::crypto::{decrypt_each, encrypt_with, Decrypted};
use crate::errors::{fail, raise, OrRaise as _};
use crate::protect::admin::{as_catalog_owner, table};
use crate::rls::maintenance;

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
        KeyRef::Transit(name) => {
            let answer = crate::transit::backend::call(Op::KeyInfo, name, &[])?;
            let v = answer
                .into_iter()
                .next()
                .ok_or_else(|| Error::malformed("empty answer"))?
                .map_err(|f| crate::transit::backend::fail_to_error(&f))?;
            Ok(String::from_utf8_lossy(&v).into_owned())
        }
    }
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

/// A designation as the migration needs it.
struct Designation {
    root: pg_sys::Oid,
    column: String,
    path: Vec<String>,
    binds: Vec<String>,
    mask: Option<(String, usize, usize)>,
}

fn designation(binding_id: &str) -> Designation {
    Spi::connect(|c| {
        let mut rows = c.select(
            "SELECT relid::oid, column_name::text, json_path, bind_columns::text[], mask_column::text, mask_prefix, mask_suffix \
               FROM credcrypt.protected_columns WHERE binding_id = $1",
            None,
            &[binding_id.into()],
        )?;
        let Some(r) = rows.next() else { return Ok(None) };
        Ok::<_, pgrx::spi::SpiError>(Some(Designation {
            root: r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
            column: r.get::<String>(2)?.unwrap_or_default(),
            path: r.get::<Vec<String>>(3)?.unwrap_or_default(),
            binds: r.get::<Vec<String>>(4)?.unwrap_or_default(),
            mask: r.get::<String>(5)?.map(|m| {
                (m, r.get::<i32>(6).ok().flatten().unwrap_or(0) as usize, r.get::<i32>(7).ok().flatten().unwrap_or(4) as usize)
            }),
        }))
    })
    .unwrap_or_else(|e| spi_fail(e))
    .unwrap_or_else(|| {
        fail(ERRCODE_UNDEFINED_OBJECT, "the designation was removed during the migration", None, "Run the migration again.")
    })
}

/// SQL for the value of a designation in row alias `t`.
fn value_expr(d: &Designation) -> String {
    crate::protect::admin::value_expr("t", &d.column, &d.path)
}

/// `_reencrypt_prepare(tbl, col, target_key, dry_run)`: see the module documentation.
#[pg_extern(volatile, name = "_reencrypt_prepare")]
fn reencrypt_prepare(
    tbl: pg_sys::Oid,
    col: &str,
    target_key: Option<&str>,
    dry_run: bool,
) -> TableIterator<'static, (name!(run_id, i64), name!(total, i64))> {
    let t = table(tbl);
    let bindings: Vec<(String, String)> = Spi::connect(|c| {
        let rows = c.select(
            "SELECT binding_id, key_name FROM credcrypt.protected_columns WHERE relid = $1 AND column_name = $2 ORDER BY json_path",
            None,
            &[t.oid.into(), col.into()],
        )?;
        let mut v = Vec::new();
        for r in rows {
            v.push((r.get::<String>(1)?.unwrap_or_default(), r.get::<String>(2)?.unwrap_or_default()));
        }
        Ok::<_, pgrx::spi::SpiError>(v)
    })
    .unwrap_or_else(|e| spi_fail(e));
    if bindings.is_empty() {
        fail(
            ERRCODE_UNDEFINED_OBJECT,
            format!("column \"{col}\" of table {} is not protected", t.display),
            None,
            "Protect it first: SELECT credcrypt.protect_column(tbl, col, …, existing_values => 'migrate'); then CALL credcrypt.reencrypt_column(tbl, col).",
        );
    }
    let source_key = bindings[0].1.clone();
    let target = match target_key {
        Some(k) => KeyRef::parse(k).or_raise(),
        None => KeyRef::parse(&source_key).or_raise(),
    };
    let version = target_version(&target).or_raise();
    let target_text = target.to_string();
    if !dry_run && target_text != source_key {
        // New writes go to the target key from now on.
        as_catalog_owner(|| {
            Spi::run_with_args(
                "UPDATE credcrypt.protected_columns SET key_name = $3 WHERE relid = $1 AND column_name = $2",
                &[t.oid.into(), col.into(), target_text.as_str().into()],
            )
        })
        .unwrap_or_else(|e| spi_fail(e));
    }
    // Count the work (all leaf tables, all designations of the column).
    let mut total = 0i64;
    for (binding, _) in &bindings {
        let d = designation(binding);
        for leaf in leaves(t.oid) {
            let sql = format!(
                "SELECT count(*) FROM ONLY {leaf} t WHERE {v} IS NOT NULL AND credcrypt._reencrypt_needed({v}, $1, $2)",
                v = value_expr(&d)
            );
            let n = maintenance(t.oid, || {
                crate::postgres::spi::one::<i64>(&sql, &[target_text.as_str().into(), version.as_str().into()])
            })
            .unwrap_or_else(|e| spi_fail(e))
            .unwrap_or(0);
            total += n;
        }
    }
    let run_id = as_catalog_owner(|| {
        Spi::run_with_args(
            "UPDATE credcrypt.reencrypt_runs SET state = 'interrupted' \
              WHERE relid = $1 AND column_name = $2 AND state = 'running' \
                AND NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = reencrypt_runs.backend_pid)",
            &[t.oid.into(), col.into()],
        )?;
        Spi::get_one_with_args::<i64>(
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
        )
    })
    .unwrap_or_else(|e| spi_fail(e))
    .unwrap_or(0);
    TableIterator::once((run_id, total))
}

/// The leaf tables of `root` (itself when it is not partitioned), as quoted SQL names.
fn leaves(root: pg_sys::Oid) -> Vec<String> {
    leaf_oids(root).into_iter().map(|(_, name)| name).collect()
}

fn leaf_oids(root: pg_sys::Oid) -> Vec<(pg_sys::Oid, String)> {
    Spi::connect(|c| {
        let rows = c.select(
            "SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.oid = $1 AND c.relkind = 'r' \
                 OR c.oid IN (SELECT relid FROM pg_catalog.pg_partition_tree($1) WHERE isleaf) \
              ORDER BY 1",
            None,
            &[root.into()],
        )?;
        let mut v = Vec::new();
        for r in rows {
            v.push((r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid), r.get::<String>(2)?.unwrap_or_default()));
        }
        Ok::<_, pgrx::spi::SpiError>(v)
    })
    .unwrap_or_else(|e| spi_fail(e))
}

/// The leaf tables of a protected table, for the procedure's loop.
#[pg_extern(stable, name = "_reencrypt_leaves")]
fn reencrypt_leaves(tbl: pg_sys::Oid) -> TableIterator<'static, (name!(leaf, pg_sys::Oid),)> {
    TableIterator::new(leaf_oids(tbl).into_iter().map(|(o, _)| (o,)))
}

/// The state of a run, as `_reencrypt_batch` needs it.
struct Run {
    root: pg_sys::Oid,
    source_key: String,
    target: String,
    version: String,
    dry_run: bool,
}

fn run(run_id: i64) -> Run {
    Spi::connect(|c| {
        let mut rows = c.select(
            "SELECT relid::oid, source_key, target_key, target_version, dry_run FROM credcrypt.reencrypt_runs WHERE run_id = $1",
            None,
            &[run_id.into()],
        )?;
        let Some(r) = rows.next() else { return Ok(None) };
        Ok::<_, pgrx::spi::SpiError>(Some(Run {
            root: r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
            source_key: r.get::<String>(2)?.unwrap_or_default(),
            target: r.get::<String>(3)?.unwrap_or_default(),
            version: r.get::<String>(4)?.unwrap_or_default(),
            dry_run: r.get::<bool>(5)?.unwrap_or(true),
        }))
    })
    .unwrap_or_else(|e| spi_fail(e))
    .unwrap_or_else(|| fail(ERRCODE_UNDEFINED_OBJECT, format!("no re-encryption run {run_id}"), None, "Start it with CALL credcrypt.reencrypt_column(...)."))
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
    Spi::connect(|c| {
        let rows = c.select(
            "SELECT row_ctid::text FROM credcrypt.reencrypt_failures WHERE run_id = $1 AND relid = $2",
            None,
            &[run_id.into(), leaf.into()],
        )?;
        let mut v = Vec::new();
        for r in rows {
            v.push(r.get::<String>(1)?.unwrap_or_default());
        }
        Ok::<_, pgrx::spi::SpiError>(v)
    })
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

/// `_reencrypt_batch(run_id, leaf, binding_id, after, batch_size)`: see the module
/// documentation. Works on up to `batch_size` rows after the tuple id `after`, within a window
/// of heap blocks; returns the tuple id the next batch starts after, and what this one did.
#[pg_extern(volatile, name = "_reencrypt_batch")]
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
    let Some((_, leaf_name)) = leaf_oids(root.oid).into_iter().find(|(o, _)| *o == leaf) else {
        fail(
            ERRCODE_INVALID_PARAMETER_VALUE,
            "not a leaf table of the protected table",
            None,
            "Use CALL credcrypt.reencrypt_column(...).",
        )
    };
    let (nblocks, per_page) = crate::postgres::spi::two::<i64, f64>(
        "SELECT pg_relation_size($1) / current_setting('block_size')::bigint, \
                CASE WHEN relpages > 0 AND reltuples > 0 THEN reltuples / relpages ELSE 100 END::float8 \
           FROM pg_catalog.pg_class WHERE oid = $1",
        &[leaf.into()],
    )
    .map(|(a, b)| (a.unwrap_or(0), b.unwrap_or(100.0)))
    .unwrap_or_else(|e| spi_fail(e));
    let start_block: i64 = after
        .trim_start_matches('(')
        .split(',')
        .next()
        .and_then(|b| b.trim().parse().ok())
        .unwrap_or_else(|| bad_cursor());
    if start_block >= nblocks {
        return TableIterator::once((after.to_owned(), 0, 0, 0, true));
    }
    // A window of blocks expected to hold a few batches; LIMIT keeps the batch exact.
    let step = ((4.0 * f64::from(batch_size.max(1)) / per_page.max(1.0)).ceil() as i64).clamp(1, 1 << 20);
    let end = start_block + step;

    let v = value_expr(&d);
    let binds: Vec<String> = d.binds.iter().map(|b| format!(", t.{}::text", qi(b))).collect();
    let lock = if run.dry_run { "" } else { " FOR UPDATE OF t SKIP LOCKED" };
    let sql = format!(
        "SELECT t.ctid::text, {v}{binds} FROM ONLY {leaf_name} t \
          WHERE t.ctid > $4::tid AND t.ctid < '({end},0)'::tid AND {v} IS NOT NULL \
            AND credcrypt._reencrypt_needed({v}, $1, $2) AND NOT (t.ctid = ANY ($3::text[]::tid[])) \
          ORDER BY t.ctid LIMIT {limit}{lock}",
        binds = binds.concat(),
        limit = batch_size.max(1)
    );
    let failed_before = failed_ctids(run_id, leaf);
    let nb = d.binds.len();
    // A read-write client: the query locks rows (FOR UPDATE), which read-only SPI refuses.
    let picked: Vec<Picked> = maintenance(root.oid, || {
        Spi::connect_mut(|c| {
            let rows = c.update(
                &sql,
                None,
                &[run.target.as_str().into(), run.version.as_str().into(), failed_before.clone().into(), after.into()],
            )?;
            let mut out = Vec::new();
            for r in rows {
                let mut binds = Vec::with_capacity(nb);
                for k in 0..nb {
                    binds.push(r.get::<String>(3 + k)?);
                }
                out.push(Picked {
                    ctid: r.get::<String>(1)?.unwrap_or_default(),
                    value: r.get::<String>(2)?.unwrap_or_default(),
                    binds,
                });
            }
            Ok::<_, pgrx::spi::SpiError>(out)
        })
    })
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
        (format!("({},0)", end), end >= nblocks)
    };
    if run.dry_run || picked.is_empty() {
        record_progress(run_id, seen, 0, 0, &counts);
        return TableIterator::once((next, seen, 0, 0, finished));
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
        let set_value = if d.path.is_empty() {
            format!("{} = v.n", qi(&d.column))
        } else {
            format!(
                "{c} = jsonb_set(t.{c}, {p}, to_jsonb(v.n))",
                c = qi(&d.column),
                p = crate::protect::admin::path_literal(&d.path)
            )
        };
        let set_mask = d.mask.as_ref().map(|(m, _, _)| format!(", {} = v.m", qi(m))).unwrap_or_default();
        let update = format!(
            "UPDATE ONLY {leaf_name} t SET {set_value}{set_mask} \
               FROM unnest($1::text[]::tid[], $2::text[], $3::text[]) AS v(c, n, m) WHERE t.ctid = v.c"
        );
        let args: [DatumWithOid<'_>; 3] = [ctid_w.clone().into(), new_w.into(), mask_w.into()];
        maintenance(root.oid, || crate::protect::trigger::with_bypass(root.oid, || Spi::run_with_args(&update, &args)))
            .unwrap_or_else(|e| spi_fail(e));
    }
    if !failures.is_empty() {
        for (i, reason) in &failures {
            let kind = sources[*i].kind();
            as_catalog_owner(|| {
                Spi::run_with_args(
                    "INSERT INTO credcrypt.reencrypt_failures (run_id, relid, row_ctid, source, reason) VALUES ($1, $2, $3::tid, $4, $5)",
                    &[run_id.into(), leaf.into(), picked[*i].ctid.as_str().into(), kind.into(), reason.as_str().into()],
                )
            })
            .unwrap_or_else(|e| spi_fail(e));
        }
    }
    let changed = ctid_w.len() as i32;
    let failed = failures.len() as i32;
    record_progress(run_id, seen, changed, failed, &counts);
    TableIterator::once((next, seen, changed, failed, finished))
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
    let by_source = serde_json::to_string(&counts.by_source).unwrap_or_else(|_| "{}".into());
    as_catalog_owner(|| {
        Spi::run_with_args(
            "UPDATE credcrypt.reencrypt_runs r SET done = done + $2, changed = changed + $3, failed = failed + $4, \
                    by_source = (SELECT coalesce(jsonb_object_agg(k, coalesce((r.by_source->>k)::bigint, 0) + coalesce((n.j->>k)::bigint, 0)), '{}') \
                                   FROM (SELECT $5::jsonb AS j) n, LATERAL (SELECT jsonb_object_keys(r.by_source) UNION SELECT jsonb_object_keys(n.j)) AS keys(k)), \
                    updated_at = clock_timestamp() \
              WHERE run_id = $1",
            &[run_id.into(), i64::from(seen).into(), i64::from(changed).into(), i64::from(failed).into(), by_source.as_str().into()],
        )
    })
    .unwrap_or_else(|e| spi_fail(e));
}

/// Values of the designation in `leaf` that still need work (failures of this run excluded).
#[pg_extern(volatile, name = "_reencrypt_remaining")]
fn reencrypt_remaining(run_id: i64, leaf: pg_sys::Oid, binding_id: &str) -> i64 {
    let run = run(run_id);
    let root = table(run.root);
    let d = designation(binding_id);
    let Some((_, leaf_name)) = leaf_oids(root.oid).into_iter().find(|(o, _)| *o == leaf) else { return 0 };
    let v = value_expr(&d);
    let sql = format!(
        "SELECT count(*) FROM ONLY {leaf_name} t WHERE {v} IS NOT NULL AND credcrypt._reencrypt_needed({v}, $1, $2) \
            AND NOT (t.ctid = ANY ($3::text[]::tid[]))"
    );
    let failed = failed_ctids(run_id, leaf);
    maintenance(root.oid, || {
        crate::postgres::spi::one::<i64>(
            &sql,
            &[run.target.as_str().into(), run.version.as_str().into(), failed.into()],
        )
    })
    .unwrap_or_else(|e| spi_fail(e))
    .unwrap_or(0)
}

/// Closes a run and returns its summary line.
#[pg_extern(volatile, name = "_reencrypt_finish")]
fn reencrypt_finish(run_id: i64) -> String {
    as_catalog_owner(|| {
        Spi::get_one_with_args::<String>(
            "UPDATE credcrypt.reencrypt_runs SET state = 'finished', updated_at = clock_timestamp() WHERE run_id = $1 \
             RETURNING format('pg_credcrypt: %s %s.%s: %s of %s values %s, %s unreadable (see credcrypt.reencrypt_failures, run %s); by source: %s', \
                              CASE WHEN dry_run THEN 'dry run of' ELSE 'migrated' END, relid::regclass, quote_ident(column_name), \
                              CASE WHEN dry_run THEN done ELSE changed END, total, \
                              CASE WHEN dry_run THEN 'would change' ELSE 'now on ' || target_key END, failed, run_id, by_source::text)",
            &[run_id.into()],
        )
    })
    .unwrap_or_else(|e| spi_fail(e))
    .unwrap_or_default()
}

/// For each protected column (of `tbl`, or all): how many values are on which provider, key and
/// version, how many are plaintext and how many cannot be read here. `current` tells whether
/// that key version is what new values get (a Transit version below the latest can be retired
/// with `min_decryption_version` once its count is zero).
#[pg_extern(volatile, name = "_key_usage")]
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
    let designations: Vec<(pg_sys::Oid, String)> = Spi::connect(|c| {
        let rows = c.select(
            "SELECT relid::oid, binding_id FROM credcrypt.protected_columns WHERE $1::oid IS NULL OR relid = $1 \
              ORDER BY relid::regclass::text, column_name, json_path",
            None,
            &[tbl.into()],
        )?;
        let mut v = Vec::new();
        for r in rows {
            v.push((r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid), r.get::<String>(2)?.unwrap_or_default()));
        }
        Ok::<_, pgrx::spi::SpiError>(v)
    })
    .unwrap_or_else(|e| spi_fail(e));
    let mut latest: BTreeMap<String, Option<String>> = BTreeMap::new();
    // Envelope data keys: the Transit version each is wrapped with.
    let dek_versions: std::collections::HashMap<String, String> = as_catalog_owner(|| {
        Spi::connect(|c| {
            let rows =
                c.select("SELECT id, substring(wrapped FROM '^vault:v([0-9]+):') FROM credcrypt.data_keys", None, &[])?;
            let mut m = std::collections::HashMap::new();
            for r in rows {
                m.insert(r.get::<String>(1)?.unwrap_or_default(), r.get::<String>(2)?.unwrap_or_default());
            }
            Ok::<_, pgrx::spi::SpiError>(m)
        })
    })
    .unwrap_or_else(|e| spi_fail(e));
    let local_current = crate::keys::with_keyring(|r| r.current_key().map(|k| k.id().to_hex())).ok();
    let local_known =
        |kid: &credcrypt_core::KeyId| crate::keys::with_keyring(|r| Ok(r.find(*kid).is_some())).unwrap_or(false);
    let mut out = Vec::new();
    for (relid, binding) in designations {
        let d = designation(&binding);
        // Tables the caller may read; all rows (the maintenance path) only of tables it owns.
        let (table_name, readable, owner) = crate::postgres::spi::three::<String, bool, bool>(
            "SELECT c.oid::regclass::text, has_table_privilege(c.oid, 'SELECT'), pg_has_role(c.relowner, 'USAGE') \
               FROM pg_catalog.pg_class c WHERE c.oid = $1",
            &[relid.into()],
        )
        .map(|(a, b, c)| (a.unwrap_or_default(), b.unwrap_or(false), c.unwrap_or(false)))
        .unwrap_or_default();
        if !readable {
            continue;
        }
        let scope = if owner { relid } else { pg_sys::InvalidOid };
        let mut agg: BTreeMap<(String, Option<String>, Option<String>), i64> = BTreeMap::new();
        for leaf in leaves(relid) {
            let sql = format!("SELECT {} FROM ONLY {leaf} t WHERE {} IS NOT NULL", value_expr(&d), value_expr(&d));
            let values: Vec<String> = maintenance(scope, || {
                Spi::connect(|c| {
                    let rows = c.select(&sql, None, &[])?;
                    let mut v = Vec::new();
                    for r in rows {
                        v.push(r.get::<String>(1)?.unwrap_or_default());
                    }
                    Ok::<_, pgrx::spi::SpiError>(v)
                })
            })
            .unwrap_or_else(|e| spi_fail(e));
            for value in values {
                let key = match legacy::classify(&value) {
                    Source::Local(kid) if local_known(&kid) => {
                        ("local".into(), Some("local".into()), Some(kid.to_hex()))
                    }
                    Source::Local(kid) => ("unreadable".into(), Some("local".into()), Some(kid.to_hex())),
                    Source::Transit { key, version } => {
                        ("transit".into(), Some(format!("transit:{key}")), Some(version.to_string()))
                    }
                    Source::Envelope { key, data_key } => match dek_versions.get(&data_key.to_hex()) {
                        Some(v) => ("envelope".into(), Some(format!("envelope:{key}")), Some(v.clone())),
                        None => ("unreadable".into(), Some(format!("envelope:{key}")), None),
                    },
                    Source::BareVault(v) => ("vault".into(), None, Some(v.to_string())),
                    Source::LegacyNode => ("legacy".into(), None, None),
                    Source::Malformed => ("unreadable".into(), None, None),
                    Source::Plaintext => ("plaintext".into(), None, None),
                };
                *agg.entry(key).or_default() += 1;
            }
        }
        for ((source, key, version), n) in agg {
            let current = match (source.as_str(), &key, &version) {
                ("local", _, Some(v)) => local_current.as_ref().map(|c| c == v),
                ("transit" | "envelope", Some(k), Some(v)) => {
                    let transit = k.replacen("envelope:", "transit:", 1);
                    let l = latest
                        .entry(transit.clone())
                        .or_insert_with(|| KeyRef::parse(&transit).ok().and_then(|kr| target_version(&kr).ok()));
                    l.as_ref().map(|l| l == v)
                }
                _ => None,
            };
            out.push((table_name.clone(), d.column.clone(), d.path.clone(), source, key, version, current, n));
        }
    }
    TableIterator::new(out)
}
