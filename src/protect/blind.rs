//! Blind indexes of protected columns: the index keys of a designation (`credcrypt.index_keys`),
//! the administrative functions that create and rotate them, and the lookups
//! (`credcrypt.blind_index`, `credcrypt.blind_indexes`). The protection trigger writes the index
//! column ([`super::trigger`]); a migration recomputes it (`crate::migrate`).
//!
//! A designation with a blind index has one **current** index key version, and while a rotation
//! is being applied, **previous** ones: rows keep the index made with the version they were
//! written under until `reencrypt_column` recomputes them, and `blind_indexes()` answers with
//! the index under every version in use, so lookups find every row throughout a rotation. When a
//! migration finds no row left under a previous version, that version is dropped.

use std::rc::Rc;

use credcrypt_core::blind::{IndexKey, INDEX_LEN};
use credcrypt_core::{Error, ErrorKind, KeyRef};
use pgrx::prelude::*;
use pgrx::spi::quote_identifier as qi;
use pgrx::PgSqlErrorCode::*;

use crate::errors::{fail, OrRaise as _};
use crate::postgres::guard::as_catalog_owner;
use crate::postgres::relation::{column, lock_against_writers, table, Table};
use crate::postgres::scope::maintain;
use crate::postgres::spi;
use crate::providers::blind::{self as roots, Root};
use crate::providers::ColumnKey;

use super::sqlgen::value_expr;
use crate::postgres::spi::{exec as run, fail as spi_fail, get};

/// One version of a designation's index key, as recorded.
#[derive(Debug, Clone)]
pub(crate) struct Version {
    pub version: u16,
    pub root: Root,
    pub wrapped: Option<String>,
    pub current: bool,
}

impl Version {
    /// The derived key (cached per backend by the provider).
    pub(crate) fn key(&self, binding_id: &str) -> Result<Rc<IndexKey>, Error> {
        roots::key(binding_id, self.version, &self.root, self.wrapped.as_deref())
    }
}

/// A designation's blind index as the trigger and migrations use it: the index column and the
/// key versions, current first.
#[derive(Debug, Clone)]
pub(crate) struct BlindIndex {
    /// Name of the bytea column that holds the index.
    pub column: String,
    /// Key versions in use, the current one first.
    pub versions: Vec<Version>,
}

impl BlindIndex {
    /// The current index key.
    pub(crate) fn current(&self, binding_id: &str) -> Result<Rc<IndexKey>, Error> {
        self.versions
            .iter()
            .find(|v| v.current)
            .ok_or_else(|| {
                Error::new(ErrorKind::CatalogMismatch, "the blind index has no current key in credcrypt.index_keys")
                    .with_detail("rotate it with credcrypt.rotate_blind_index()")
            })?
            .key(binding_id)
    }

    /// The index of `plaintext` under the current key.
    pub(crate) fn index(&self, binding_id: &str, plaintext: &[u8]) -> Result<[u8; INDEX_LEN], Error> {
        Ok(self.current(binding_id)?.index(plaintext))
    }
}

/// Whether this version of the SQL has blind indexes (0.3.0 on): the library also serves the
/// SQL of earlier versions until `ALTER EXTENSION … UPDATE`.
pub(crate) fn available() -> bool {
    crate::postgres::catalog::has_column(c"protected_columns", c"blind_index_column")
}

/// The key versions of designation `binding_id`, current first, read with the latest snapshot
/// (a rotation committed after this transaction began is seen).
pub(crate) fn versions(binding_id: &str) -> Result<Vec<Version>, Error> {
    let binding = binding_id.into_datum();
    let rows: Vec<(i32, String, Option<String>, bool)> = as_catalog_owner(|| {
        spi::rows_latest(
            c"SELECT version, root, wrapped, state OPERATOR(pg_catalog.=) 'current' FROM credcrypt.index_keys \
               WHERE binding_id OPERATOR(pg_catalog.=) $1 ORDER BY state OPERATOR(pg_catalog.=) 'current' DESC, version DESC",
            &[(pg_sys::TEXTOID, binding)],
            |r| {
                (
                    r.get::<i32>(1).unwrap_or(0),
                    r.get::<String>(2).unwrap_or_default(),
                    r.get::<String>(3),
                    r.get::<bool>(4).unwrap_or(false),
                )
            },
        )
    })
    .map_err(|_| Error::new(ErrorKind::CatalogMismatch, "credcrypt.index_keys could not be read"))?;
    rows.into_iter()
        .map(|(version, root, wrapped, current)| {
            Ok(Version {
                version: u16::try_from(version)
                    .map_err(|_| Error::new(ErrorKind::CatalogMismatch, "an index key version is out of range"))?,
                root: Root::parse(&root)?,
                wrapped,
                current,
            })
        })
        .collect()
}

/// The blind index of designation `binding_id` if it has one (index column recorded).
pub(crate) fn of_designation(binding_id: &str) -> Result<Option<BlindIndex>, Error> {
    if !available() {
        return Ok(None);
    }
    let column = get::<String>(
        "SELECT blind_index_column::pg_catalog.text FROM credcrypt.protected_columns \
          WHERE binding_id OPERATOR(pg_catalog.=) $1",
        &[binding_id.into()],
    );
    match column {
        Some(column) => Ok(Some(BlindIndex { column, versions: versions(binding_id)? })),
        None => Ok(None),
    }
}

/// Makes version `n + 1` (or 1) of the index key of `binding_id`, rooted in `key`, current; the
/// version that was current becomes previous. Returns the new version.
pub(crate) fn new_version(binding_id: &str, key: &KeyRef) -> u16 {
    let last = get::<i32>(
        "SELECT pg_catalog.max(version) FROM credcrypt.index_keys WHERE binding_id OPERATOR(pg_catalog.=) $1",
        &[binding_id.into()],
    )
    .unwrap_or(0);
    let version = u16::try_from(last + 1).ok().filter(|v| *v > 0).unwrap_or_else(|| {
        fail(
            ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            "this blind index has used every key version (65535)",
            None,
            "Unprotect the column and protect it again to start a new designation.",
        )
    });
    let root = Root::for_key(key).or_raise();
    let wrapped = roots::new_root(&root, binding_id, version).or_raise();
    as_catalog_owner(|| {
        run(
            "UPDATE credcrypt.index_keys SET state = 'previous' \
              WHERE binding_id OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'current'",
            &[binding_id.into()],
        );
        run(
            "INSERT INTO credcrypt.index_keys (binding_id, version, root, wrapped) VALUES ($1, $2, $3, $4)",
            &[binding_id.into(), i32::from(version).into(), root.to_string().as_str().into(), wrapped.into()],
        );
    });
    version
}

/// Whether the current index key of `binding_id` is rooted where a new version under `key`
/// would be (the local key current now, or the same Transit key).
pub(crate) fn rooted_in(binding_id: &str, key: &KeyRef) -> Result<bool, Error> {
    let want = Root::for_key(key)?;
    Ok(versions(binding_id)?.iter().any(|v| v.current && v.root == want))
}

/// Drops the index key versions of `binding_id` other than the current one (no row uses them
/// any more: a migration has recomputed every index).
pub(crate) fn retire_previous(binding_id: &str) -> i64 {
    as_catalog_owner(|| {
        spi::rows_mut(
            "DELETE FROM credcrypt.index_keys WHERE binding_id OPERATOR(pg_catalog.=) $1 \
                AND state OPERATOR(pg_catalog.=) 'previous' RETURNING 1",
            &[binding_id.into()],
            |_| Ok(()),
        )
    })
    .map(|v| v.len() as i64)
    .unwrap_or_else(|e| spi_fail(e))
}

/// SQL: the index version prefix (2 bytes) of the current key, for "is this row's index
/// current?" filters.
pub(crate) fn version_prefix(version: u16) -> Vec<u8> {
    version.to_be_bytes().to_vec()
}

/// SQL text: whether row alias `t`'s index column needs (re)computing for a designation whose
/// value is `value_sql`, given the current version as bytea parameter `param`.
pub(crate) fn stale_filter(index_column: &str, param: &str) -> String {
    let c = format!("t.{}", qi(index_column));
    format!(
        "({c} IS NULL OR pg_catalog.length({c}) OPERATOR(pg_catalog.<>) {INDEX_LEN} \
          OR pg_catalog.substr({c}, 1, 2) OPERATOR(pg_catalog.<>) {param}::pg_catalog.bytea)"
    )
}

/// The number of rows of `t` whose value at (`col`, `path`) is set and whose index column does
/// not hold an index of the current version `version` — what `reencrypt_column` will compute.
fn rows_to_index(t: &Table, col: &str, path: &[String], index_column: &str, version: u16) -> i64 {
    let sql = format!(
        "SELECT pg_catalog.count(*) FROM {} t WHERE {} IS NOT NULL AND {}",
        t.sql_name,
        value_expr("t", col, path),
        stale_filter(index_column, "$1")
    );
    maintain(t.oid, || get::<i64>(&sql, &[version_prefix(version).into()])).unwrap_or(0)
}

fn bad_arg(msg: impl Into<String>, hint: &str) -> ! {
    fail(ERRCODE_INVALID_PARAMETER_VALUE, msg, None, hint)
}

/// Checks (and creates, as bytea, if missing) the index column `index_column` of `t` for the
/// designation of `col`: its own column, not protected, masked, bound or another index.
pub(crate) fn prepare_column(t: &Table, col: &str, index_column: &str, binds: &[String], mask: Option<&str>) {
    if index_column == col || binds.iter().any(|b| b == index_column) || mask == Some(index_column) {
        bad_arg(
            "the blind index column must be a column of its own",
            "Name a new column, e.g. api_key_bidx; protect_column creates it as bytea.",
        );
    }
    let clash = get::<String>(
        "SELECT column_name::pg_catalog.text FROM credcrypt.protected_columns WHERE relid OPERATOR(pg_catalog.=) $1 \
            AND $2::pg_catalog.name IN (column_name, mask_column, blind_index_column) \
             OR (relid OPERATOR(pg_catalog.=) $1 AND $2::pg_catalog.name OPERATOR(pg_catalog.=) ANY (bind_columns)) \
          LIMIT 1",
        &[t.oid.into(), index_column.into()],
    );
    if let Some(other) = clash {
        bad_arg(
            format!("column \"{index_column}\" is already used by the protection of \"{other}\""),
            "Give each protected column its own blind index column.",
        );
    }
    // A masked view made before the index existed may show the column: reporting roles would
    // see which rows hold the same secret (masked views leave index columns out).
    let shown_by = get::<String>(
        "SELECT w.ev_class::pg_catalog.regclass::pg_catalog.text \
           FROM pg_catalog.pg_depend d \
           JOIN pg_catalog.pg_rewrite w ON w.oid OPERATOR(pg_catalog.=) d.objid \
           JOIN pg_catalog.pg_class v ON v.oid OPERATOR(pg_catalog.=) w.ev_class \
           JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) d.refobjid AND a.attnum OPERATOR(pg_catalog.=) d.refobjsubid \
          WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
            AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
            AND d.refobjid OPERATOR(pg_catalog.=) $1 AND a.attname OPERATOR(pg_catalog.=) $2::pg_catalog.name \
            AND v.relowner OPERATOR(pg_catalog.=) (SELECT oid FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'credcrypt_masker') \
          LIMIT 1",
        &[t.oid.into(), index_column.into()],
    );
    if let Some(view) = shown_by {
        fail(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("column \"{index_column}\" is shown by masked view {view}"),
            None,
            "Drop the view with credcrypt.drop_masked_view(), add the blind index, then create the view again: masked views leave blind index columns out.",
        );
    }
    match column(t, index_column) {
        Some(c) if c.base_type == "bytea" && !c.generated => {}
        Some(c) => bad_arg(
            format!("blind index column \"{index_column}\" is {}; it must be bytea", c.base_type),
            "Name a new column; protect_column creates it as bytea.",
        ),
        None => run(&format!("ALTER TABLE {} ADD COLUMN {} pg_catalog.bytea", t.sql_name, qi(index_column)), &[]),
    }
}

/// Refuses when this SQL version has no blind indexes.
fn require_available() {
    if !available() {
        fail(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "blind indexes need the extension's current SQL",
            None,
            "Run ALTER EXTENSION pg_credcrypt UPDATE.",
        );
    }
}

/// A designation of `t` found by column and json path: (binding id, key, index column).
fn find(t: &Table, col: &str, path: &[String]) -> (String, KeyRef, Option<String>) {
    let row = spi::three::<String, String, String>(
        "SELECT binding_id, key_name, blind_index_column::pg_catalog.text FROM credcrypt.protected_columns \
          WHERE relid OPERATOR(pg_catalog.=) $1 AND column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name \
            AND json_path OPERATOR(pg_catalog.=) $3",
        &[t.oid.into(), col.into(), path.to_vec().into()],
    )
    .unwrap_or_else(|e| spi_fail(e));
    match row {
        (Some(b), Some(k), idx) => match ColumnKey::parse(&k).or_raise() {
            ColumnKey::Fixed(key) => (b, key, idx),
            ColumnKey::PerRow(_) => bad_arg(
                "a column with per-row keys cannot have a blind index",
                "A blind index is one keyed hash over the whole column: it would still link the values of a tenant whose key was destroyed.",
            ),
        },
        _ => crate::errors::undefined(
            format!("column \"{col}\" of table {} is not protected{}", t.sql_name, path_text(path)),
            "SELECT * FROM credcrypt.protected_columns_info lists the protected columns (and their json paths).",
        ),
    }
}

fn path_text(path: &[String]) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!(" at {{{}}}", path.join(","))
    }
}

/// `json_path` as given to the SQL functions: NULL or '{}' is the whole column.
pub(crate) fn json_path(path: Option<Vec<Option<String>>>) -> Vec<String> {
    path.unwrap_or_default()
        .into_iter()
        .map(|e| e.unwrap_or_else(|| bad_arg("json_path elements must not be NULL", "Pass object keys.")))
        .collect()
}

/// `add_blind_index`: gives an existing designation a blind index column and its first key.
pub(crate) fn add(tbl: pg_sys::Oid, col: &str, path: &[String], index_column: &str) -> (String, u16, i64) {
    require_available();
    let t = table(tbl);
    lock_against_writers(&t);
    let (binding_id, key, existing) = find(&t, col, path);
    if let Some(existing) = existing {
        fail(
            ERRCODE_DUPLICATE_OBJECT,
            format!("column \"{col}\" of table {} already has the blind index column \"{existing}\"", t.sql_name),
            None,
            "credcrypt.rotate_blind_index() gives it a new key.",
        );
    }
    let (binds, mask) = spi::two::<Vec<String>, String>(
        "SELECT bind_columns::pg_catalog.text[], mask_column::pg_catalog.text FROM credcrypt.protected_columns \
          WHERE binding_id OPERATOR(pg_catalog.=) $1",
        &[binding_id.as_str().into()],
    )
    .unwrap_or_else(|e| spi_fail(e));
    prepare_column(&t, col, index_column, &binds.unwrap_or_default(), mask.as_deref());
    let version = new_version(&binding_id, &key);
    as_catalog_owner(|| {
        run(
            "UPDATE credcrypt.protected_columns SET blind_index_column = $2 WHERE binding_id OPERATOR(pg_catalog.=) $1",
            &[binding_id.as_str().into(), index_column.into()],
        )
    });
    let todo = rows_to_index(&t, col, path, index_column, version);
    (binding_id, version, todo)
}

/// `rotate_blind_index`: a new current key for a designation's blind index.
pub(crate) fn rotate(tbl: pg_sys::Oid, col: &str, path: &[String]) -> (String, u16, i64) {
    require_available();
    let t = table(tbl);
    lock_against_writers(&t);
    let (binding_id, key, index_column) = find(&t, col, path);
    let Some(index_column) = index_column else {
        fail(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("column \"{col}\" of table {} has no blind index", t.sql_name),
            None,
            "credcrypt.add_blind_index() gives it one.",
        )
    };
    let version = new_version(&binding_id, &key);
    let todo = rows_to_index(&t, col, path, &index_column, version);
    (binding_id, version, todo)
}

/// The index column of `t`'s designation at (`col`, `path`) and its blind index, for a lookup
/// by the current user: who must be able to read the index column (an index is an equality
/// oracle on the table's secrets; without reading the column it answers nothing useful).
fn for_lookup(tbl: pg_sys::Oid, col: &str, path: &[String]) -> (String, BlindIndex) {
    require_available();
    let row = spi::three::<String, String, String>(
        "SELECT p.binding_id, p.blind_index_column::pg_catalog.text, p.relid::pg_catalog.regclass::pg_catalog.text \
           FROM credcrypt.protected_columns p \
          WHERE p.relid OPERATOR(pg_catalog.=) $1 AND p.column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name \
            AND p.json_path OPERATOR(pg_catalog.=) $3",
        &[tbl.into(), col.into(), path.to_vec().into()],
    )
    .unwrap_or_else(|e| spi_fail(e));
    let (binding_id, index_column, name) = match row {
        (Some(b), c, Some(n)) => (b, c, n),
        _ => crate::errors::undefined(
            format!("column \"{col}\"{} of the table is not protected", path_text(path)),
            "Pass the protected table (the partitioned table, not a partition) and column.",
        ),
    };
    let Some(index_column) = index_column else {
        fail(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("column \"{col}\" of table {name} has no blind index"),
            None,
            "An administrator gives it one with credcrypt.add_blind_index() (or protect_column(…, blind_index_column => …)).",
        )
    };
    let may_read = get::<bool>(
        "SELECT pg_catalog.has_column_privilege($1, $2::pg_catalog.name, 'SELECT')",
        &[tbl.into(), index_column.as_str().into()],
    )
    .unwrap_or(false);
    if !may_read {
        fail(
            ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied to read the blind index column \"{index_column}\" of table {name}"),
            None,
            "Grant SELECT on the table (or on that column) to the role that looks values up.",
        );
    }
    let versions = versions(&binding_id).or_raise();
    (binding_id.clone(), BlindIndex { column: index_column, versions })
}

/// `blind_index` / `blind_indexes`: the index of each value under the current key, or (with
/// `all_versions`) under every key version in use, current first; and the designation's
/// column context (for the decrypt audit, which the SQL entry point records).
pub(crate) fn lookup(
    tbl: pg_sys::Oid,
    col: &str,
    path: &[String],
    values: &[Option<&str>],
    all_versions: bool,
) -> (String, Vec<Vec<u8>>) {
    let (binding_id, bi) = for_lookup(tbl, col, path);
    let keys: Vec<Rc<IndexKey>> = if all_versions {
        bi.versions.iter().map(|v| v.key(&binding_id)).collect::<Result<_, _>>().or_raise()
    } else {
        vec![bi.current(&binding_id).or_raise()]
    };
    let context = format!("{}{binding_id}", credcrypt_core::column::CONTEXT_PREFIX);
    let mut out = Vec::with_capacity(values.len() * keys.len());
    for v in values.iter().flatten() {
        for k in &keys {
            out.push(k.index(v.as_bytes()).to_vec());
        }
    }
    (context, out)
}

/// Wraps every blind-index root wrapped by Transit key `name` again with its latest version
/// (`rotate_key`): no index value changes. Returns how many were rewrapped.
pub(crate) fn rewrap_roots(name: &str) -> Result<i64, Error> {
    if !available() {
        return Ok(0);
    }
    let root = Root::Transit(name.to_owned()).to_string();
    let rows: Vec<(String, u16, String)> = as_catalog_owner(|| {
        spi::rows(
            "SELECT binding_id, version, wrapped FROM credcrypt.index_keys WHERE root OPERATOR(pg_catalog.=) $1 \
              ORDER BY binding_id, version",
            &[root.as_str().into()],
            |r| {
                Ok((
                    r.get::<String>(1)?.unwrap_or_default(),
                    u16::try_from(r.get::<i32>(2)?.unwrap_or(0)).unwrap_or(0),
                    r.get::<String>(3)?.unwrap_or_default(),
                ))
            },
        )
    })
    .map_err(|_| Error::new(ErrorKind::CatalogMismatch, "credcrypt.index_keys could not be read"))?;
    if rows.is_empty() {
        return Ok(0);
    }
    let wrapped = roots::rewrap(name, &rows)?;
    let bindings: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let versions: Vec<i32> = rows.iter().map(|r| i32::from(r.1)).collect();
    as_catalog_owner(|| {
        spi::run(
            "UPDATE credcrypt.index_keys k SET wrapped = v.w \
               FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.int4[]), \
                               pg_catalog.unnest($3::pg_catalog.text[])) AS v(b, n, w) \
              WHERE k.binding_id OPERATOR(pg_catalog.=) v.b AND k.version OPERATOR(pg_catalog.=) v.n",
            &[bindings.into(), versions.into(), wrapped.into()],
        )
    })
    .map_err(|_| Error::new(ErrorKind::CatalogMismatch, "credcrypt.index_keys could not be updated"))?;
    Ok(rows.len() as i64)
}

/// How many blind-index roots Transit key `name` wraps with version `version` or older (which
/// raising its `min_decryption_version` past `version` would make unusable).
pub(crate) fn roots_wrapped_up_to(name: &str, version: i32) -> i64 {
    if !available() {
        return 0;
    }
    let root = Root::Transit(name.to_owned()).to_string();
    as_catalog_owner(|| {
        get::<i64>(
            "SELECT pg_catalog.count(*) FROM credcrypt.index_keys WHERE root OPERATOR(pg_catalog.=) $1 \
                AND pg_catalog.substring(wrapped, '^vault:v([0-9]+):')::pg_catalog.int8 OPERATOR(pg_catalog.<=) $2::pg_catalog.int8",
            &[root.as_str().into(), version.into()],
        )
    })
    .unwrap_or(0)
}
