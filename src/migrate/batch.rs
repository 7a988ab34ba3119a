//! One batch of a migration (a window of heap blocks of one leaf table, rows locked
//! `FOR UPDATE SKIP LOCKED`, values re-encrypted and verified) and the write-back, which
//! `unprotect_column … decrypt_existing` also uses.

use credcrypt_core::legacy::{self, Source};
use credcrypt_core::{mask, Error, ErrorKind, KeyRef};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier as qi;
use pgrx::PgSqlErrorCode::*;

use super::run::{failed_ctids, record_progress, run, Counts};
use super::sources::{bind_exprs, designation, needed_sql, plaintexts, value_expr, Designation, Picked};
use super::spi_fail;
use crate::errors::{fail, raise, OrRaise as _};
use crate::postgres::guard::as_catalog_owner;
use crate::postgres::relation::{leaves, table, Table};
use crate::postgres::scope::{maintain, with_writes, Announced, Writes};
use crate::postgres::spi;
use crate::providers::{decrypt_each, encrypt_per_row, encrypt_with, ColumnKey};

/// What one batch did.
pub(crate) struct Batch {
    pub(crate) next: String,
    pub(crate) seen: i32,
    pub(crate) changed: i32,
    pub(crate) failed: i32,
    pub(crate) finished: bool,
}

/// The number of heap blocks of `leaf` and the estimated rows per block.
pub(crate) fn blocks(leaf: pg_sys::Oid) -> (i64, f64) {
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
pub(crate) fn cursor_block(after: &str) -> i64 {
    after.trim_start_matches('(').split(',').next().and_then(|b| b.trim().parse().ok()).unwrap_or_else(|| bad_cursor())
}

pub(crate) fn batch(run_id: i64, leaf: pg_sys::Oid, binding_id: &str, after: &str, batch_size: i32) -> Batch {
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
    let needed = needed_sql(&d, &v, &run.target);
    let lock = if run.dry_run { "" } else { " FOR UPDATE OF t SKIP LOCKED" };
    let sql = format!(
        "SELECT t.ctid::pg_catalog.text, {v}{binds} FROM ONLY {leaf_name} t \
          WHERE t.ctid OPERATOR(pg_catalog.>) $4::pg_catalog.tid AND t.ctid OPERATOR(pg_catalog.<) '({end},0)'::pg_catalog.tid \
            AND {v} IS NOT NULL AND {needed} \
            AND NOT (t.ctid OPERATOR(pg_catalog.=) ANY ($3::pg_catalog.text[]::pg_catalog.tid[])) \
          ORDER BY t.ctid LIMIT {limit}{lock}",
        binds = bind_exprs(&d),
        limit = batch_size.max(1)
    );
    let failed_before = failed_ctids(run_id, leaf);
    let nb = d.selected();
    let args: [DatumWithOid<'_>; 4] =
        [run.target.as_str().into(), run.version.as_str().into(), failed_before.clone().into(), after.into()];
    let read = |r: &pgrx::spi::SpiHeapTupleData<'_>| Picked::read(r, nb);
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

    let contexts = Picked::contexts(&picked, binding_id);
    let plain = plaintexts(&picked, &sources, &contexts, [&run.source_key, &run.target]).or_raise();
    let target = ColumnKey::parse(&run.target).or_raise();
    // The batch's commit need not wait for its WAL to reach the disk (or a synchronous
    // standby): a crash can only lose whole batches, whose rows keep their previous, still
    // readable values, and the run's last transaction (`reencrypt_close`, which reports the run
    // complete) commits with the session's own setting, which flushes all earlier WAL first.
    // Not when KV secrets are written or destroyed: those are outside the WAL, and a destroy
    // must not follow a commit that a failover to a standby could still undo. (Set within the
    // batch's subtransaction: a failed batch leaves the setting as it was.)
    let kv_involved =
        matches!(target, ColumnKey::Fixed(KeyRef::Kv(_))) || sources.iter().any(|s| matches!(s, Source::Kv { .. }));
    if !kv_involved {
        spi::run("SELECT pg_catalog.set_config('synchronous_commit', 'off', true)", &[])
            .unwrap_or_else(|e| spi_fail(e));
    }
    let mut ok: Vec<usize> = (0..picked.len()).filter(|&i| plain[i].is_ok()).collect();
    let mut failures: Vec<(usize, String)> = (0..picked.len())
        .filter_map(|i| plain[i].as_ref().err().map(|e| (i, format!("cannot read the value: {}", describe(e)))))
        .collect();
    // The key of each row: the target, or for a per-row target the key the row's column names
    // (a row whose column cannot name a key is reported, and left as it is).
    let template_bind = match &target {
        ColumnKey::PerRow(t) => d.binds.iter().position(|b| *b == t.column),
        ColumnKey::Fixed(_) => None,
    };
    let mut keys: Vec<KeyRef> = Vec::with_capacity(ok.len());
    ok.retain(|&i| {
        let value = template_bind.and_then(|b| picked[i].binds.get(b)).and_then(|v| v.as_deref());
        match target.for_row(value) {
            Ok(k) => {
                keys.push(k.into_owned());
                true
            }
            Err(e) => {
                failures.push((i, format!("cannot name the row's key: {}", describe(&e))));
                false
            }
        }
    });
    let bytes: Vec<&[u8]> = ok.iter().map(|&i| plain[i].as_ref().map(|p| p.as_slice()).unwrap_or_default()).collect();
    let ctxs: Vec<Option<&str>> = ok.iter().map(|&i| Some(contexts[i].as_str())).collect();
    // One encryption call per key. Never fall back to the local key here: a migration to
    // Transit must land on Transit.
    let mut groups: std::collections::BTreeMap<String, Vec<usize>> = std::collections::BTreeMap::new();
    for (k, key) in keys.iter().enumerate() {
        groups.entry(key.to_string()).or_default().push(k);
    }
    let mut fresh: Vec<String> = vec![String::new(); ok.len()];
    for members in groups.values() {
        let key = &keys[members[0]];
        let b: Vec<&[u8]> = members.iter().map(|&k| bytes[k]).collect();
        let c: Vec<Option<&str>> = members.iter().map(|&k| ctxs[k]).collect();
        let out = match (&target, key) {
            // KV: each row's secret at the row's place (as the protection trigger writes it).
            (_, KeyRef::Kv(mount)) => {
                let (schema, table) = crate::providers::kv::relation_names(leaf);
                members
                    .iter()
                    .map(|&k| {
                        let p = &picked[ok[k]];
                        let identity: Vec<Option<&str>> = p.binds.iter().map(Option::as_deref).collect();
                        crate::providers::kv::row_place(mount, &schema, &table, binding_id, &identity, Some(&p.value))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .and_then(|places| crate::providers::kv::write(mount, &b, &c, &places))
            }
            (ColumnKey::Fixed(_), _) => encrypt_with(&b, key, &c, false),
            (ColumnKey::PerRow(_), _) => encrypt_per_row(&b, key, &c),
        }
        .unwrap_or_else(|e| raise(e));
        for (&k, ct) in members.iter().zip(out) {
            fresh[k] = ct;
        }
    }
    // Verify before writing: every new value must decrypt to the original.
    let fresh_refs: Vec<&str> = fresh.iter().map(String::as_str).collect();
    let check = decrypt_each(&fresh_refs, &ctxs, None).unwrap_or_else(|e| raise(e));
    let mut ctid_w = Vec::new();
    let mut new_w = Vec::new();
    let mut mask_w: Vec<Option<String>> = Vec::new();
    let mut index_w: Vec<Option<Vec<u8>>> = Vec::new();
    let index_key = d.blind.as_ref().map(|b| b.current(binding_id)).transpose().or_raise();
    for (k, &i) in ok.iter().enumerate() {
        match &check[k] {
            Ok(p) if p.as_slice() == bytes[k] => {
                ctid_w.push(picked[i].ctid.clone());
                new_w.push(fresh[k].clone());
                mask_w.push(
                    d.mask.as_ref().map(|(_, pre, suf)| mask::mask(&String::from_utf8_lossy(bytes[k]), *pre, *suf)),
                );
                index_w.push(index_key.as_ref().map(|key| key.index(bytes[k]).to_vec()));
            }
            _ => failures.push((i, "the new ciphertext did not decrypt to the original; nothing was written".into())),
        }
    }
    if !ctid_w.is_empty() {
        write_values(&root, (leaf, &leaf_name), &d, binding_id, &ctid_w, new_w, Some(mask_w), index_w);
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

/// Writes `values` (and masks) of designation `binding_id` into the rows `ctids` of leaf table
/// `leaf`, as the table's owner. The values are final (verified ciphertexts, or the plaintext
/// of `unprotect_column … decrypt_existing`): they are announced to the protection trigger,
/// with their blind indexes (`indexes`, in order; missing entries are NULL), and the trigger
/// lets exactly these values through in exactly these rows, writing the announced index
/// ([`crate::postgres::scope::Writes`]), and protects everything else the statement — or a
/// trigger of the table — writes.
#[allow(clippy::too_many_arguments)] // one write: where, what, and the values
pub(crate) fn write_values(
    root: &Table,
    leaf: (pg_sys::Oid, &str),
    d: &Designation,
    binding_id: &str,
    ctids: &[String],
    values: Vec<String>,
    masks: Option<Vec<Option<String>>>,
    indexes: Vec<Option<Vec<u8>>>,
) {
    let (leaf_oid, leaf_name) = leaf;
    let mut announced = std::collections::HashMap::with_capacity(ctids.len());
    let mut indexes = indexes.into_iter();
    for (c, v) in ctids.iter().zip(&values) {
        let tid = crate::postgres::scope::parse_tid(c).unwrap_or_else(|| bad_cursor());
        let index = indexes.next().flatten();
        announced.insert(tid, Announced { value: zeroize::Zeroizing::new(v.clone()), index });
    }
    let writes = Writes { relid: leaf_oid, binding_id: binding_id.to_owned(), values: announced };
    let set_value = if d.path.is_empty() {
        format!("{} = v.n", qi(&d.column))
    } else {
        format!("{} = {}", qi(&d.column), crate::protect::sqlgen::json_set_expr("t", &d.column, &d.path, "v.n"))
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
    let args = [
        (pg_sys::TEXTARRAYOID, ctids.to_vec().into_datum()),
        (pg_sys::TEXTARRAYOID, values.into_datum()),
        (pg_sys::TEXTARRAYOID, masks.into_datum()),
    ];
    maintain(root.oid, || with_writes(writes, || spi::run_generic(&update, &args))).unwrap_or_else(|e| spi_fail(e));
}

pub(crate) fn bad_cursor() -> ! {
    fail(ERRCODE_INVALID_PARAMETER_VALUE, "not a tuple id", None, "Use CALL credcrypt.reencrypt_column(...).")
}

/// A reason without values: the error's message and detail.
pub(crate) fn describe(e: &Error) -> String {
    match &e.detail {
        Some(d) => format!("{} ({d})", e.message),
        None => e.message.clone(),
    }
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
            let nb = d.selected();
            let picked: Vec<Picked> =
                maintain(t.oid, || spi::rows(&sql, &[], |r| Picked::read(r, nb))).unwrap_or_else(|e| spi_fail(e));
            start = end;
            if picked.is_empty() {
                continue;
            }
            let contexts = Picked::contexts(&picked, binding_id);
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
            write_values(t, (leaf, &leaf_name), &d, binding_id, &ctids, plain, None, Vec::new());
        }
    }
    done
}

/// One batch in a subtransaction. When it fails, its work is rolled back, the run is marked
/// `failed` with the error, and the error is returned: the procedure commits the state and
/// raises it.
pub(crate) fn step(
    run_id: i64,
    leaf: pg_sys::Oid,
    binding_id: &str,
    after: &str,
    batch_size: i32,
) -> Result<Batch, crate::postgres::subxact::Caught> {
    crate::postgres::subxact::in_subtransaction(|| batch(run_id, leaf, binding_id, after, batch_size)).inspect_err(
        |e| {
            as_catalog_owner(|| {
                spi::run(
                    "UPDATE credcrypt.reencrypt_runs SET state = 'failed', error = $2, updated_at = pg_catalog.clock_timestamp() \
                      WHERE run_id OPERATOR(pg_catalog.=) $1",
                    &[run_id.into(), format!("{}: {}", e.sqlstate, e.message).as_str().into()],
                )
            })
            .unwrap_or_else(|e| spi_fail(e));
        },
    )
}
