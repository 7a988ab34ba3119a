//! Reading a designation and its stored values: which source each value comes from, whether it
//! is on the target, and its plaintext (decrypted in batches per provider).

use credcrypt_core::legacy::{self, Source};
use credcrypt_core::{Error, ErrorKind, KeyRef};
use pgrx::prelude::*;
use pgrx::spi::quote_identifier as qi;

use zeroize::Zeroizing;

use super::spi_fail;
use crate::errors::OrRaise as _;
use crate::postgres::spi;
use crate::providers::{decrypt_each, ColumnKey, Decrypted};
use credcrypt_core::column::FormatPart;

/// The version a value must have to count as "on the target": the local key's id, or the
/// Transit key's latest version; any version of a per-row key (each tenant's key rotates on
/// its own).
pub(crate) fn target_version(key: &ColumnKey) -> Result<String, Error> {
    let ColumnKey::Fixed(key) = key else { return Ok("any".into()) };
    match key {
        // Envelope values move between Transit versions by rewrapping their data keys
        // (rotate_key), not by rewriting rows: any data key of the key is on target.
        KeyRef::Envelope(_) => Ok("any".into()),
        KeyRef::Local => crate::providers::local::with_keyring(|r| r.current_key().map(|k| k.id().to_hex())),
        KeyRef::Transit(name) => crate::providers::transit::latest_version(name).map(|v| v.to_string()),
        // A kv value keeps its KV version history where it is: any version is on target.
        KeyRef::Kv(_) => Ok("any".into()),
    }
}

/// Whether `value` still needs work to be on `target` (a key reference) at `version`.
pub(crate) fn needed(value: &str, target: &str, version: &str) -> bool {
    // Once per row a migration reads: a pg_credcrypt value whose header names another key or
    // version needs work whether its payload is well-formed or not (classify would say either
    // another key or malformed: both need work), so the payload is not decoded. Only a value
    // whose header names the target is classified in full.
    if let Some(rest) = value.strip_prefix("cc1:") {
        let mut fields = rest.splitn(4, ':');
        let (provider, key, v) = (fields.next(), fields.next(), fields.next());
        let maybe_on_target = match (provider, key, v) {
            (Some("local"), _, Some(v)) => target == "local" && v == version,
            (Some("transit"), Some(k), Some(v)) => {
                target.strip_prefix("transit:") == Some(k) && (version == "any" || v == version)
            }
            (Some("envelope"), Some(k), _) => target.strip_prefix("envelope:") == Some(k),
            (Some("kv"), Some(k), _) => target.strip_prefix("kv:") == Some(k),
            _ => false,
        };
        if !maybe_on_target {
            return true;
        }
    }
    match legacy::classify(value) {
        Source::Local(kid) => !(target == "local" && kid.to_hex() == version),
        Source::Transit { key, version: v } => {
            !(target.strip_prefix("transit:") == Some(key.as_str()) && (version == "any" || v.to_string() == version))
        }
        Source::Envelope { key, .. } => target.strip_prefix("envelope:") != Some(key.as_str()),
        Source::Kv { mount, .. } => target.strip_prefix("kv:") != Some(mount.as_str()),
        // One-way hashes cannot be decrypted: they stay as they are (verify_credential checks
        // them) until the application rotates the credential.
        Source::Bcrypt { .. } => false,
        _ => true,
    }
}

/// Where a stored value comes from, as one short text: `local:<key id>`,
/// `transit:<key>:<version>`, `envelope:<key>:<data key id>`, `vault:<version>`, `legacy`,
/// `malformed` or `plaintext`. No secret (a key id is a fingerprint). For `key_usage`, which
/// groups by it in SQL so that no table is read into memory.
pub(crate) fn source_of(value: &str) -> String {
    match legacy::classify(value) {
        Source::Local(kid) => format!("local:{}", kid.to_hex()),
        Source::Transit { key, version } => format!("transit:{key}:{version}"),
        Source::Envelope { key, data_key } => format!("envelope:{key}:{}", data_key.to_hex()),
        Source::BareVault(v) => format!("vault:{v}"),
        Source::Kv { mount, version } => format!("kv:{mount}:{version}"),
        Source::Bcrypt { cost } => format!("bcrypt:{cost}"),
        Source::LegacyNode => "legacy".into(),
        Source::Malformed => "malformed".into(),
        Source::Plaintext => "plaintext".into(),
    }
}

/// A designation as the migration needs it.
pub(crate) struct Designation {
    pub(crate) root: pg_sys::Oid,
    pub(crate) column: String,
    pub(crate) path: Vec<String>,
    pub(crate) binds: Vec<String>,
    pub(crate) mask: Option<(String, usize, usize)>,
    pub(crate) key: String,
    /// The blind index, if the designation has one.
    pub(crate) blind: Option<crate::protect::blind::BlindIndex>,
    /// For a column an application encrypts itself (no designation): the SQL expression, over
    /// row alias `t`, of each value's context (from the run's context format).
    pub(crate) context_sql: Option<String>,
}

impl Designation {
    /// How many values after the stored one a row query selects for the context: the bind
    /// values, or the one context of an application-managed column.
    pub(crate) fn selected(&self) -> usize {
        if self.context_sql.is_some() {
            1
        } else {
            self.binds.len()
        }
    }
}

/// The binding id that names the column of run N on a column an application encrypts itself.
pub(crate) const APP_BINDING: &str = "app:";

/// The SQL expression (over row alias `t` of table `relid`) of the context an application built
/// with `format` (`'owner:{owner}'`): literals and the columns' text forms joined with `||`, so a
/// NULL column makes the context NULL — no context —, as it did for the application. No format:
/// no context. Every placeholder must name a column of the table (`42703`).
pub(crate) fn context_sql(relid: pg_sys::Oid, format: Option<&str>) -> Result<String, Error> {
    let Some(format) = format else { return Ok("NULL::pg_catalog.text".into()) };
    let parts = credcrypt_core::column::parse_context_format(format)?;
    let mut sql = Vec::with_capacity(parts.len());
    for p in parts {
        match p {
            FormatPart::Literal(l) => sql.push(format!("{}::pg_catalog.text", pgrx::spi::quote_literal(l))),
            FormatPart::Column(c) => {
                let exists = spi::one::<bool>(
                    "SELECT true FROM pg_catalog.pg_attribute WHERE attrelid OPERATOR(pg_catalog.=) $1 \
                        AND attname OPERATOR(pg_catalog.=) $2::pg_catalog.name AND attnum OPERATOR(pg_catalog.>) 0 AND NOT attisdropped",
                    &[relid.into(), c.as_str().into()],
                )
                .unwrap_or_else(|e| spi_fail(e));
                if exists.is_none() {
                    return Err(Error::new(
                        ErrorKind::InvalidArgument,
                        "the context format names a column the table does not have",
                    )
                    .with_detail(format!("column \"{c}\"")));
                }
                sql.push(format!("(t.{})::pg_catalog.text", qi(&c)));
            }
        }
    }
    Ok(format!("({})", sql.join(" OPERATOR(pg_catalog.||) ")))
}

/// The column of a run on an application-managed column, as a designation.
fn app_designation(run_id: i64) -> Designation {
    let row = spi::rows(
        "SELECT relid::pg_catalog.oid, column_name::pg_catalog.text, target_key, context_format \
           FROM credcrypt.reencrypt_runs WHERE run_id OPERATOR(pg_catalog.=) $1 AND app_managed",
        &[run_id.into()],
        |r| {
            Ok((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<String>(4)?,
            ))
        },
    )
    .unwrap_or_else(|e| spi_fail(e))
    .into_iter()
    .next()
    .unwrap_or_else(|| {
        crate::errors::undefined("no such run on an application-managed column", "Run the migration again.")
    });
    let (root, column, key, format) = row;
    let mut d = plain_column(root, &column);
    d.key = key;
    d.context_sql = Some(context_sql(root, format.as_deref()).or_raise());
    d
}

/// A column an application encrypts itself, as a designation (for `key_usage`).
pub(crate) fn plain_column(relid: pg_sys::Oid, column: &str) -> Designation {
    Designation {
        root: relid,
        column: column.to_owned(),
        path: Vec::new(),
        binds: Vec::new(),
        mask: None,
        key: String::new(),
        blind: None,
        context_sql: Some("NULL::pg_catalog.text".into()),
    }
}

pub(crate) fn designation(binding_id: &str) -> Designation {
    if let Some(run_id) = binding_id.strip_prefix(APP_BINDING).and_then(|n| n.parse::<i64>().ok()) {
        return app_designation(run_id);
    }
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
                blind: None,
                context_sql: None,
            })
        },
    )
    .unwrap_or_else(|e| spi_fail(e))
    .into_iter()
    .next()
    .map(|d| Designation { blind: crate::protect::blind::of_designation(binding_id).or_raise(), ..d })
    .unwrap_or_else(|| {
        crate::errors::undefined("the designation was removed during the migration", "Run the migration again.")
    })
}

/// SQL: whether the value `v` of designation `d` in row alias `t` needs work — it is not on the
/// target (`$1` target key, `$2` version; for a per-row target, the key the row's column names),
/// or its blind index is missing or not of the current index key version.
pub(crate) fn needed_sql(d: &Designation, v: &str, target: &str) -> String {
    let target_sql = match ColumnKey::parse(target) {
        Ok(ColumnKey::PerRow(t)) => {
            let kind = if t.envelope { "envelope" } else { "transit" };
            // Prefix and suffix are key-name characters only (checked when parsed).
            format!(
                "('{kind}:{}' OPERATOR(pg_catalog.||) (t.{})::pg_catalog.text OPERATOR(pg_catalog.||) '{}')",
                t.prefix,
                qi(&t.column),
                t.suffix
            )
        }
        _ => "$1".to_owned(),
    };
    let value = format!("credcrypt._reencrypt_needed({v}, {target_sql}, $2)");
    let current = d.blind.as_ref().and_then(|b| b.versions.iter().find(|x| x.current).map(|x| (b, x.version)));
    match current {
        Some((b, version)) => {
            let prefix = format!("'\\x{version:04x}'");
            format!("({value} OR {})", crate::protect::blind::stale_filter(&b.column, &prefix))
        }
        None => value,
    }
}

/// The binding ids of a table's designations (of one column, or all), in catalog order.
pub(crate) fn bindings_of(relid: pg_sys::Oid, col: Option<&str>) -> Vec<String> {
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
pub(crate) fn value_expr(d: &Designation) -> String {
    crate::protect::sqlgen::value_expr("t", &d.column, &d.path)
}

/// SQL for the bind values of a designation in row alias `t`, each `, t.x::text` — or the one
/// context of an application-managed column.
pub(crate) fn bind_exprs(d: &Designation) -> String {
    match &d.context_sql {
        Some(e) => format!(", {e}"),
        None => d.binds.iter().map(|b| format!(", (t.{})::pg_catalog.text", qi(b))).collect(),
    }
}

/// One row picked for work: ctid, value, bind values.
pub(crate) struct Picked {
    pub(crate) ctid: String,
    pub(crate) value: String,
    pub(crate) binds: Vec<Option<String>>,
}

impl Picked {
    /// The associated-data context of each picked row for designation `binding_id`.
    pub(crate) fn contexts(picked: &[Picked], binding_id: &str) -> Vec<String> {
        if binding_id.starts_with(APP_BINDING) {
            // The application's own context ('' = none: a NULL context, as it was written).
            return picked.iter().map(|p| p.binds.first().cloned().flatten().unwrap_or_default()).collect();
        }
        picked
            .iter()
            .map(|p| {
                let refs: Vec<Option<&str>> = p.binds.iter().map(|b| b.as_deref()).collect();
                credcrypt_core::column::column_context(binding_id, &refs).or_raise()
            })
            .collect()
    }

    /// A picked row from a query selecting `ctid::text, value, bind values…` (`nb` of them).
    pub(crate) fn read(r: &pgrx::spi::SpiHeapTupleData<'_>, nb: usize) -> Result<Picked, pgrx::spi::SpiError> {
        let mut binds = Vec::with_capacity(nb);
        for k in 0..nb {
            binds.push(r.get::<String>(3 + k)?);
        }
        Ok(Picked {
            ctid: r.get::<String>(1)?.unwrap_or_default(),
            value: r.get::<String>(2)?.unwrap_or_default(),
            binds,
        })
    }
}

/// Plaintext of each picked value, or why it cannot be read. `keys` are the run's source and
/// target keys: bare vault values are decrypted with the first of them that is a Transit key.
pub(crate) fn plaintexts(
    picked: &[Picked],
    sources: &[Source],
    contexts: &[String],
    keys: [&str; 2],
) -> Result<Vec<Decrypted>, Error> {
    let mut out: Vec<Decrypted> = picked.iter().map(|_| Err(Error::malformed("not processed"))).collect();
    // pg_credcrypt values: decrypted with the row's context, Transit ones in one batch per key.
    let cc1: Vec<usize> = (0..picked.len())
        .filter(|&i| {
            matches!(
                sources[i],
                Source::Local(_) | Source::Transit { .. } | Source::Envelope { .. } | Source::Kv { .. }
            )
        })
        .collect();
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
        let key = keys.into_iter().find(|k| k.starts_with("transit:"));
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
    let legacy_key = sources.contains(&Source::LegacyNode).then(crate::providers::local::legacy_key);
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
