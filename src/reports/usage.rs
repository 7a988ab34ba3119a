//! `credcrypt.key_usage` and `credcrypt.safe_to_retire`: what every protected value is
//! encrypted with, counted over every row as each table's owner (the maintenance path), grouped
//! in SQL so that no table is read into memory.

use std::collections::{BTreeMap, HashMap};

use credcrypt_core::{Error, ErrorKind};
use pgrx::prelude::*;
use pgrx::spi::quote_identifier as qi;

use crate::errors::{raise, OrRaise as _};
use crate::migrate::sources::{designation, plain_column, value_expr, Designation};
use crate::migrate::spi_fail;
use crate::postgres::guard::as_catalog_owner;
use crate::postgres::relation::leaves;
use crate::postgres::scope::maintain;
use crate::postgres::spi;

/// One row of `key_usage`: table, column, json path, source, key, version, current, values.
pub(crate) type UsageRow = (String, String, Vec<String>, String, Option<String>, Option<String>, Option<bool>, i64);

/// A key name and version as `key_usage` shows them: (source, key reference, version).
pub(crate) type UsageKey = (String, Option<String>, Option<String>);

/// The usage of one designation: values per (source, key, version), read as the table's owner
/// through the maintenance path (every row, whatever the caller may see), grouped in SQL.
pub(crate) fn usage_of(
    relid: pg_sys::Oid,
    binding: &str,
    data_key_versions: &HashMap<String, String>,
) -> BTreeMap<UsageKey, i64> {
    usage_of_designation(relid, &designation(binding), data_key_versions)
}

/// [`usage_of`] for a designation — or a column an application encrypts itself.
fn usage_of_designation(
    relid: pg_sys::Oid,
    d: &Designation,
    data_key_versions: &HashMap<String, String>,
) -> BTreeMap<UsageKey, i64> {
    let v = value_expr(d);
    let mut agg: BTreeMap<UsageKey, i64> = BTreeMap::new();
    let local_known = |kid: &str| match credcrypt_core::KeyId::from_hex(kid) {
        Some(id) => crate::providers::local::with_keyring(|r| Ok(r.find(id).is_some())).unwrap_or(false),
        None => false,
    };
    for (_, leaf) in leaves(relid) {
        let sql = format!(
            // As text: a protected column whose type was changed behind the DDL checks (a
            // superuser with the event triggers off) is still counted (its values as plaintext or
            // malformed), never an error about the column's type.
            "SELECT credcrypt._value_source(({v})::pg_catalog.text), pg_catalog.count(*) FROM ONLY {leaf} t WHERE {v} IS NOT NULL GROUP BY 1"
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
                    // Its data key was destroyed with its Transit key (shred_key), or is missing.
                    None if crate::providers::erasure_of(k).is_some() => {
                        ("destroyed".into(), Some(format!("envelope:{k}")), None)
                    }
                    None => ("unreadable".into(), Some(format!("envelope:{k}")), None),
                },
                ["vault", ver] => ("vault".into(), None, Some((*ver).into())),
                ["kv", mount, ver] => ("kv".into(), Some(format!("kv:{mount}")), Some((*ver).into())),
                ["bcrypt", cost] => ("bcrypt".into(), None, Some(format!("cost {cost}"))),
                ["legacy"] => ("legacy".into(), None, None),
                ["plaintext"] => ("plaintext".into(), None, None),
                _ => ("unreadable".into(), None, None),
            };
            *agg.entry(key).or_default() += n;
        }
    }
    agg
}

/// How many protected values (of every designation, every row) are under Transit key `name`,
/// per value or through envelope data keys — what destroying the key makes unreadable.
pub(crate) fn values_under(name: &str) -> i64 {
    let dek = data_key_versions();
    let (transit, envelope) = (format!("transit:{name}"), format!("envelope:{name}"));
    designations_to_report(None)
        .into_iter()
        .map(|(relid, binding, _, _)| {
            usage_of(relid, &binding, &dek)
                .into_iter()
                .filter(|((_, key, _), _)| {
                    key.as_deref() == Some(transit.as_str()) || key.as_deref() == Some(envelope.as_str())
                })
                .map(|(_, n)| n)
                .sum::<i64>()
        })
        .sum()
}

/// Values of columns with per-row keys whose key is missing without a recorded erasure (a
/// helper of `credcrypt.security_report()`): envelope values whose data key is gone, and
/// per-value Transit keys OpenBao does not have. Reads every row of those columns.
pub(crate) fn missing_row_keys() -> Vec<crate::reports::environment::Finding> {
    let mut out = Vec::new();
    let dek = data_key_versions();
    let per_row = spi::rows(
        "SELECT relid::pg_catalog.oid, binding_id, column_name::pg_catalog.text FROM credcrypt.protected_columns \
          WHERE pg_catalog.strpos(key_name, '{') OPERATOR(pg_catalog.>) 0",
        &[],
        |r| {
            Ok((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
            ))
        },
    )
    .unwrap_or_else(|e| spi_fail(e));
    let mut checked: BTreeMap<String, bool> = BTreeMap::new();
    for (relid, binding, column) in per_row {
        let place = format!("{}.{}", table_display(relid), qi(&column));
        for ((source, key, _), n) in usage_of(relid, &binding, &dek) {
            let Some(key) = key else { continue };
            let name = key.split_once(':').map(|x| x.1).unwrap_or_default().to_owned();
            let missing = match source.as_str() {
                "unreadable" if key.starts_with("envelope:") => true,
                "transit" => *checked.entry(name.clone()).or_insert_with(|| {
                    matches!(crate::providers::transit::latest_version(&name), Err(e) if e.kind == ErrorKind::TransitKeyNotFound)
                        && crate::providers::erasure_of(&name).is_none()
                }),
                _ => false,
            };
            if missing {
                out.push((
                    "critical".to_owned(),
                    place.clone(),
                    format!("{n} value(s) under the per-row key {key} cannot be decrypted: the key is missing, and no erasure of it is recorded"),
                    format!("Restore the key in OpenBao (or credcrypt.data_keys from a backup); if it was destroyed on purpose, SELECT credcrypt.shred_key('{key}') records it"),
                ));
            }
        }
    }
    out
}

/// The Transit version each envelope data key is wrapped with.
pub(crate) fn data_key_versions() -> HashMap<String, String> {
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
pub(crate) fn designations_to_report(tbl: Option<pg_sys::Oid>) -> Vec<(pg_sys::Oid, String, String, Vec<String>)> {
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

pub(crate) fn table_display(relid: pg_sys::Oid) -> String {
    spi::one::<String>("SELECT $1::pg_catalog.regclass::pg_catalog.text", &[relid.into()])
        .unwrap_or_else(|e| spi_fail(e))
        .unwrap_or_default()
}

/// The rows of `credcrypt.key_usage` (documented at [`crate::api::report::key_usage`]).
pub(crate) fn key_usage(tbl: Option<pg_sys::Oid>, col: Option<&str>) -> Vec<UsageRow> {
    crate::postgres::catalog::require_current_sql();
    let dek = data_key_versions();
    let local_current = crate::providers::local::with_keyring(|r| r.current_key().map(|k| k.id().to_hex())).ok();
    let mut latest: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    let mut relids = Vec::new();
    let mut columns: Vec<(pg_sys::Oid, Designation, String, Vec<String>)> = designations_to_report(tbl)
        .into_iter()
        .filter(|(_, _, column, _)| col.is_none_or(|c| c == column))
        .map(|(relid, binding, column, path)| (relid, designation(&binding), column, path))
        .collect();
    if let (Some(relid), Some(c), true) = (tbl, col, columns.is_empty()) {
        // A column the application encrypts itself: every value of it, read as the owner.
        let t = crate::postgres::relation::table(relid);
        if crate::postgres::relation::column(&t, c).is_none() {
            crate::errors::undefined(
                format!("column \"{c}\" of table {} does not exist", t.sql_name),
                "Name a column of the table.",
            );
        }
        columns.push((relid, plain_column(relid, c), c.to_owned(), Vec::new()));
    }
    for (relid, d, column, path) in columns {
        let table_name = table_display(relid);
        for ((source, key, version), n) in usage_of_designation(relid, &d, &dek) {
            let current = match (source.as_str(), &key, &version) {
                ("local", _, Some(v)) => Some(local_current.as_ref() == Some(v)),
                ("transit" | "envelope", Some(k), Some(v)) => {
                    let name = k.split_once(':').map(|x| x.1).unwrap_or_default().to_owned();
                    if !latest.contains_key(&name) {
                        // A destroyed key (shred_key) has no latest version: its values are
                        // reported as destroyed below. A key missing otherwise is an error.
                        let l = match crate::providers::transit::latest_version(&name) {
                            Err(e)
                                if e.kind == ErrorKind::TransitKeyNotFound
                                    && crate::providers::erasure_of(&name).is_some() =>
                            {
                                String::new()
                            }
                            r => r.or_raise().to_string(),
                        };
                        latest.insert(name.clone(), l);
                    }
                    match latest.get(&name).map(String::as_str) {
                        Some("") => None,
                        l => Some(l == Some(v.as_str())),
                    }
                }
                _ => None,
            };
            // Values of a destroyed Transit key (per value) are reported as such.
            let destroyed = source == "transit" && current.is_none() && version.is_some();
            let source = if destroyed { "destroyed".to_owned() } else { source };
            out.push((table_name.clone(), column.clone(), path.clone(), source, key, version, current, n));
            relids.push(relid);
        }
    }
    record(tbl, &relids, &out);
    out
}

/// Keeps the answer in `credcrypt.key_usage_snapshot` (replacing what an earlier call recorded
/// for the same tables), for monitoring: the Prometheus queries read the snapshot, never the
/// tables. Nothing is recorded where nothing can be written (a standby, a read-only
/// transaction), and the answer is returned all the same.
fn record(tbl: Option<pg_sys::Oid>, relids: &[pg_sys::Oid], rows: &[UsageRow]) {
    // SAFETY: plain reads of backend-global state.
    let writable = unsafe { !pg_sys::RecoveryInProgress() && !pg_sys::XactReadOnly };
    if !writable {
        return;
    }
    as_catalog_owner(|| {
        // One writer at a time: two concurrent calls would each keep their own rows.
        spi::run("LOCK TABLE credcrypt.key_usage_snapshot IN SHARE ROW EXCLUSIVE MODE", &[])?;
        spi::run(
            "DELETE FROM credcrypt.key_usage_snapshot WHERE $1::pg_catalog.oid IS NULL OR relid OPERATOR(pg_catalog.=) $1",
            &[tbl.into()],
        )?;
        for (relid, (table, column, path, source, key, version, current, n)) in relids.iter().zip(rows) {
            spi::run(
                "INSERT INTO credcrypt.key_usage_snapshot \
                    (relid, table_name, column_name, json_path, source, key_name, key_version, current, \"values\") \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    (*relid).into(),
                    table.as_str().into(),
                    column.as_str().into(),
                    path.clone().into(),
                    source.as_str().into(),
                    key.clone().into(),
                    version.clone().into(),
                    (*current).into(),
                    (*n).into(),
                ],
            )?;
        }
        Ok::<(), pgrx::spi::SpiError>(())
    })
    .unwrap_or_else(|e| spi_fail(e));
}

/// The answer of `credcrypt.safe_to_retire` (documented at
/// [`crate::api::report::safe_to_retire`]); NOTICEs name what holds the version.
pub(crate) fn safe_to_retire(key_name: &str, version: i32) -> bool {
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
    let blocked_roots = crate::protect::blind::roots_wrapped_up_to(name, version);
    if blocked_roots > 0 {
        safe = false;
        pgrx::notice!("pg_credcrypt: {blocked_roots} blind-index key(s) are wrapped by {name} version {version} or older: SELECT credcrypt.rotate_key('transit:{name}') rewraps them");
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
