//! Designating and undesignating protected columns (`protect_column`, `unprotect_column`;
//! the SQL entry points are in [`crate::api::protect`]).
//!
//! The caller must own the table (as for ALTER TABLE). Every function runs with
//! `search_path = pg_catalog, pg_temp`, and every SQL text it builds — including the view
//! definitions it creates, which outlive the call — names schema-qualified functions,
//! operators and types only. Changing designations locks the table against writers
//! (SHARE ROW EXCLUSIVE, as CREATE TRIGGER does). DDL runs as the caller; statements that read
//! or write the table's rows run as the table's owner in a security-restricted operation
//! ([`crate::postgres::scope::maintain`]); the catalog rows are written as the catalog's
//! owner, so `credcrypt.protected_columns` needs no write grant to anyone.

use credcrypt_core::column::new_binding_id;
use credcrypt_core::KeyRef;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier as qi;
use pgrx::PgSqlErrorCode::*;

use crate::errors::{fail, OrRaise as _};
use crate::postgres::guard::as_catalog_owner;
use crate::postgres::relation::{column, lock_against_writers, require_column, table, Table};
use crate::postgres::scope::maintain;
use crate::postgres::spi;
use crate::providers::ColumnKey;

use super::sqlgen::{value_expr, Desig};

/// Name of the trigger `protect_column` installs. Triggers fire in name order; this one must
/// fire last among BEFORE ROW triggers — it checks so itself when it fires, and DDL that would
/// put another BEFORE ROW trigger after it is refused.
pub const TRIGGER_NAME: &str = "zz_credcrypt_protect";

/// Types whose text form is stable across sessions and servers (no DateStyle, TimeZone,
/// extra_float_digits or padding effects), so they can be bound into a context.
const BINDABLE_TYPES: &[&str] = &["int2", "int4", "int8", "numeric", "text", "varchar", "uuid", "name", "oid"];

pub(crate) use crate::postgres::spi::{exec as run, fail as spi_fail, get};

fn bad_arg(msg: impl Into<String>, hint: &str) -> ! {
    fail(ERRCODE_INVALID_PARAMETER_VALUE, msg, None, hint)
}

/// Whether the table holds any non-NULL value in `col` (at `path`, for jsonb); with
/// `encrypted_only`, any value that is a pg_credcrypt ciphertext. Reads every row (as the
/// table's owner, through the maintenance path) — and refuses (`55000`), like every maintenance
/// routine, a table whose row-level security hides rows from its owner or whose partitions
/// belong to another role: an answer from part of the rows could drop the designation of
/// ciphertexts it did not see (they could then never be decrypted), or leave plaintext behind.
fn has_values(t: &Table, col: &str, path: &[String], encrypted_only: bool) -> bool {
    crate::postgres::relation::leaves(t.oid);
    let expr = value_expr("t", col, path);
    let filter =
        if encrypted_only { format!("pg_catalog.starts_with({expr}, 'cc1:')") } else { format!("{expr} IS NOT NULL") };
    let sql = format!("SELECT EXISTS (SELECT 1 FROM {} t WHERE {filter})", t.sql_name);
    maintain(t.oid, || get::<bool>(&sql, &[])).unwrap_or(false)
}

/// Refuses the designation if the table's protection has a problem (see
/// `credcrypt._protection_problems`): a trigger that would fire after the protection trigger,
/// a rule, an inheritance child, a bind column whose type changed…
pub(crate) fn refuse_problems(t: &Table) {
    let problem = spi::two::<String, String>(
        "SELECT finding, fix FROM credcrypt._protection_problems($1::pg_catalog.regclass) LIMIT 1",
        &[t.oid.into()],
    )
    .unwrap_or_else(|e| spi_fail(e));
    if let (Some(finding), fix) = problem {
        fail(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("table {} cannot be protected: {finding}", t.sql_name),
            None,
            &fix.unwrap_or_default(),
        );
    }
}

/// What `protect_column` did.
pub(crate) struct Protected {
    pub binding_id: String,
    pub key: String,
    pub trigger_created: bool,
}

#[allow(clippy::too_many_arguments)] // mirrors the SQL signature
pub(crate) fn protect(
    tbl: pg_sys::Oid,
    col: &str,
    key_name: Option<&str>,
    bind_columns: Option<Vec<Option<String>>>,
    mask_column: Option<&str>,
    mask_prefix: i32,
    mask_suffix: i32,
    json_path: Option<Vec<Option<String>>>,
    existing_values: &str,
    blind_index_column: Option<&str>,
) -> Protected {
    crate::postgres::catalog::require_current_sql();
    let t = table(tbl);
    let migrate = match existing_values {
        "refuse" => false,
        "migrate" => true,
        _ => bad_arg(
            "existing_values must be 'refuse' or 'migrate'",
            "'migrate' designates a column that holds values; then CALL credcrypt.reencrypt_column to encrypt them.",
        ),
    };
    lock_against_writers(&t);
    let c = require_column(&t, col);
    if c.generated {
        bad_arg(format!("column \"{col}\" is a generated column"), "Protect an ordinary column.");
    }
    let path: Vec<String> = match json_path {
        None => Vec::new(),
        Some(p) if p.is_empty() => Vec::new(),
        Some(p) => p
            .into_iter()
            .map(|e| match e {
                Some(s) if !s.is_empty() => s,
                _ => bad_arg(
                    "json_path elements must be non-empty keys",
                    "Pass object keys, e.g. ARRAY['apiKey'] or ARRAY['openai','apiKey'].",
                ),
            })
            .collect(),
    };
    let typ = c.base_type.as_str();
    match (path.is_empty(), typ) {
        (true, "text") => {}
        (true, "varchar") if c.typmod < 0 => {}
        (true, "varchar") => bad_arg(
            format!("column \"{col}\" is varchar(n); ciphertexts are longer than their plaintexts"),
            "Change the column to text (ALTER TABLE … ALTER COLUMN … TYPE text) before protecting it.",
        ),
        (true, "jsonb") => bad_arg(
            format!("column \"{col}\" is jsonb: name the key to encrypt"),
            "Pass json_path => ARRAY['apiKey'] (the path of object keys to the credential).",
        ),
        (false, "jsonb") => {}
        (false, _) => {
            bad_arg(format!("json_path needs a jsonb column; \"{col}\" is {typ}"), "Omit json_path for a text column.")
        }
        (true, _) => bad_arg(
            format!("column \"{col}\" is {typ}; protected columns are text, varchar or jsonb (with json_path)"),
            "Store credentials in a text column.",
        ),
    }
    if mask_prefix < 0 || mask_suffix < 0 {
        bad_arg("mask_prefix and mask_suffix must not be negative", "Use e.g. mask_prefix => 3, mask_suffix => 4.");
    }
    let key = match key_name {
        Some(k) => ColumnKey::parse(k).or_raise(),
        None => ColumnKey::Fixed(crate::providers::key_ref(None).or_raise()),
    };
    if matches!(key, ColumnKey::Fixed(KeyRef::Kv(_))) && !path.is_empty() {
        crate::errors::raise(crate::providers::kv_not_served().with_detail(
            "a key inside a jsonb column cannot be kept in OpenBao KV yet: protect a text column with kv:<mount>",
        ));
    }
    if matches!(key, ColumnKey::Fixed(KeyRef::Kv(_))) && blind_index_column.is_some() {
        crate::errors::raise(
            crate::providers::kv_not_served()
                .with_detail("a column whose secrets live in OpenBao KV has no blind index yet"),
        );
    }
    if key == ColumnKey::Fixed(KeyRef::Local) {
        // Fail now rather than on the first INSERT.
        crate::providers::local::with_keyring(|r| r.current_key().map(|_| ())).or_raise();
    }
    let binds: Vec<String> = bind_columns
        .unwrap_or_default()
        .into_iter()
        .map(|b| b.unwrap_or_else(|| bad_arg("bind_columns must not contain NULL", "List column names.")))
        .collect();
    for (i, b) in binds.iter().enumerate() {
        let bc = require_column(&t, b);
        if b == col {
            bad_arg(
                "a protected column cannot be one of its own bind columns",
                "Bind to the row's key, e.g. ARRAY['id'].",
            );
        }
        if binds[..i].contains(b) {
            bad_arg(format!("bind column \"{b}\" is listed twice"), "List each bind column once.");
        }
        if bc.generated {
            bad_arg(
                format!("bind column \"{b}\" is a generated column"),
                "Generated columns are computed after BEFORE triggers run; bind to the primary key instead.",
            );
        }
        if !BINDABLE_TYPES.contains(&bc.base_type.as_str()) {
            fail(
                ERRCODE_DATATYPE_MISMATCH,
                format!("bind column \"{b}\" has type {}, whose text form is not stable", bc.base_type),
                Some(format!("bindable types: {}", BINDABLE_TYPES.join(", "))),
                "Bind to an integer, uuid or text key (typically the primary key).",
            );
        }
    }
    if let Some(m) = mask_column {
        if m == col || binds.iter().any(|b| b == m) {
            bad_arg("the mask column must be a column of its own", "Name a new column, e.g. api_key_mask.");
        }
        match column(&t, m) {
            Some(mc) if mc.base_type == "text" || (mc.base_type == "varchar" && mc.typmod < 0) => {}
            Some(mc) => bad_arg(
                format!("mask column \"{m}\" is {}; it must be text", mc.base_type),
                "Name a new column; protect_column creates it as text.",
            ),
            None => run(&format!("ALTER TABLE {} ADD COLUMN {} pg_catalog.text", t.sql_name, qi(m)), &[]),
        }
        let other = get::<String>(
            "SELECT column_name::pg_catalog.text FROM credcrypt.protected_columns \
              WHERE relid OPERATOR(pg_catalog.=) $1 AND mask_column OPERATOR(pg_catalog.=) $2::pg_catalog.name",
            &[t.oid.into(), m.into()],
        );
        if let Some(other) = other {
            bad_arg(
                format!("mask column \"{m}\" already holds the mask of \"{other}\""),
                "Give each protected column its own mask column.",
            );
        }
    }
    let existing = get::<bool>(
        "SELECT true FROM credcrypt.protected_columns WHERE relid OPERATOR(pg_catalog.=) $1 \
            AND column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name \
            AND (json_path OPERATOR(pg_catalog.=) $3 \
                 OR json_path[1:pg_catalog.cardinality($3)] OPERATOR(pg_catalog.=) $3 \
                 OR $3[1:pg_catalog.cardinality(json_path)] OPERATOR(pg_catalog.=) json_path)",
        &[t.oid.into(), col.into(), path.clone().into()],
    );
    if existing.is_some() {
        fail(
            ERRCODE_DUPLICATE_OBJECT,
            format!(
                "column \"{col}\" of table {} is already protected{}",
                t.sql_name,
                if path.is_empty() { String::new() } else { " at this path or an overlapping one".into() }
            ),
            None,
            "SELECT * FROM credcrypt.protected_columns_info shows the designation; unprotect_column removes it.",
        );
    }
    // A bind column's text form is associated data: it must be the row's own, stable value. A
    // protected column (its stored form is a ciphertext that changes on every write, and its
    // plaintext would become associated data) or a mask column cannot be one; nor can this
    // column be a bind column of another designation.
    let clash = get::<String>(
        "SELECT pg_catalog.format('%s \"%s\"', CASE WHEN column_name OPERATOR(pg_catalog.=) ANY ($2) THEN 'protected column' \
                                  WHEN mask_column OPERATOR(pg_catalog.=) ANY ($2) THEN 'mask column' ELSE 'blind index column' END, \
                                  CASE WHEN column_name OPERATOR(pg_catalog.=) ANY ($2) THEN column_name \
                                       WHEN mask_column OPERATOR(pg_catalog.=) ANY ($2) THEN mask_column ELSE blind_index_column END) \
           FROM credcrypt.protected_columns WHERE relid OPERATOR(pg_catalog.=) $1 \
            AND (column_name OPERATOR(pg_catalog.=) ANY ($2) OR mask_column OPERATOR(pg_catalog.=) ANY ($2) \
                 OR blind_index_column OPERATOR(pg_catalog.=) ANY ($2)) \
         UNION ALL \
         SELECT pg_catalog.format('bind column of protected column \"%s\"', column_name) \
           FROM credcrypt.protected_columns WHERE relid OPERATOR(pg_catalog.=) $1 \
            AND ($3::pg_catalog.name OPERATOR(pg_catalog.=) ANY (bind_columns) \
                 OR $4::pg_catalog.name OPERATOR(pg_catalog.=) ANY (bind_columns)) \
         LIMIT 1",
        &[t.oid.into(), binds.clone().into(), col.into(), mask_column.into()],
    );
    if let Some(clash) = clash {
        bad_arg(
            format!("a bind column cannot be protected or masked, and a protected or mask column cannot be bound to: {clash} is in the way"),
            "Bind every protected column of the table to its key columns (e.g. ARRAY['id']), which are neither protected nor masks.",
        );
    }
    if let ColumnKey::PerRow(t) = &key {
        if !binds.contains(&t.column) {
            bad_arg(
                format!("the per-row key names column \"{}\", which is not a bind column", t.column),
                "List the column that chooses the key among bind_columns (e.g. bind_columns => ARRAY['id', 'org_id']): a value moved to another tenant's row must fail to decrypt.",
            );
        }
        if blind_index_column.is_some() {
            bad_arg(
                "a column with per-row keys cannot have a blind index",
                "A blind index is one keyed hash over the whole column: it would still link the values of a tenant whose key was destroyed. Use a single key for a column you look values up in.",
            );
        }
    }
    if let Some(ix) = blind_index_column {
        if !super::blind::available() {
            fail(
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "blind indexes need the extension's current SQL",
                None,
                "Run ALTER EXTENSION pg_credcrypt UPDATE.",
            );
        }
        super::blind::prepare_column(&t, col, ix, &binds, mask_column);
    }
    if !migrate && has_values(&t, col, &path, false) {
        fail(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("column \"{col}\" of table {} already holds values", t.sql_name),
            Some("protect_column only designates empty columns, so that no plaintext stays behind unnoticed".into()),
            "To encrypt the existing values: protect_column(…, existing_values => 'migrate'), then CALL credcrypt.reencrypt_column(tbl, col) (docs/migrations.md).",
        );
    }
    let binding_id = new_binding_id().or_raise();
    // SAFETY: reads the current user's name (an existing role).
    let caller = unsafe { std::ffi::CStr::from_ptr(pg_sys::GetUserNameFromId(pg_sys::GetUserId(), false)) }
        .to_string_lossy()
        .into_owned();
    let key_text = key.to_string();
    as_catalog_owner(|| {
        run(
            "INSERT INTO credcrypt.protected_columns \
               (relid, column_name, json_path, key_name, bind_columns, mask_column, mask_prefix, mask_suffix, binding_id, created_by) \
             VALUES ($1, $2, $3, $4, $5::pg_catalog.name[], $6, $7, $8, $9, $10)",
            &[
                t.oid.into(),
                col.into(),
                path.clone().into(),
                key_text.as_str().into(),
                binds.clone().into(),
                mask_column.into(),
                mask_prefix.into(),
                mask_suffix.into(),
                binding_id.as_str().into(),
                caller.as_str().into(),
            ],
        );
        if let Some(ix) = blind_index_column {
            run(
                "UPDATE credcrypt.protected_columns SET blind_index_column = $2 WHERE binding_id OPERATOR(pg_catalog.=) $1",
                &[binding_id.as_str().into(), ix.into()],
            );
        }
    });
    if let (Some(_), ColumnKey::Fixed(k)) = (blind_index_column, &key) {
        super::blind::new_version(&binding_id, k);
    }
    let has_trigger = get::<bool>(
        "SELECT true FROM pg_catalog.pg_trigger WHERE tgrelid OPERATOR(pg_catalog.=) $1 \
            AND tgname OPERATOR(pg_catalog.=) $2::pg_catalog.name AND NOT tgisinternal",
        &[t.oid.into(), TRIGGER_NAME.into()],
    );
    if has_trigger.is_none() {
        // The trigger is cloned to every partition: the DDL check must not take that for
        // partitions being attached (which must hold only ciphertexts) while protect_column
        // itself creates it — with existing_values => 'migrate' they hold plaintext by design.
        crate::postgres::scope::protecting(t.oid, || {
            run(
                &format!(
                    "CREATE TRIGGER {TRIGGER_NAME} BEFORE INSERT OR UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION credcrypt.protect_trigger()",
                    t.sql_name
                ),
                &[],
            );
        });
    }
    if matches!(key, ColumnKey::Fixed(KeyRef::Kv(_))) {
        ensure_kv_triggers(&t);
    }
    refuse_problems(&t);
    Protected { binding_id, key: key_text, trigger_created: has_trigger.is_none() }
}

/// The triggers of a table with a `kv:` designation (see `protect::trigger::fire_kv`): the
/// KV secrets of deleted rows, and old paths of updated ones, are destroyed after COMMIT;
/// TRUNCATE is refused. Kept while the table has protected columns (a migration away from
/// `kv:` needs them until its last value has moved).
pub(crate) fn ensure_kv_triggers(t: &Table) {
    for (name, def) in [
        ("zz_credcrypt_kv", "AFTER UPDATE OR DELETE ON {t} FOR EACH ROW"),
        ("zz_credcrypt_kv_truncate", "BEFORE TRUNCATE ON {t} FOR EACH STATEMENT"),
    ] {
        let exists = get::<bool>(
            "SELECT true FROM pg_catalog.pg_trigger WHERE tgrelid OPERATOR(pg_catalog.=) $1 \
                AND tgname OPERATOR(pg_catalog.=) $2::pg_catalog.name AND NOT tgisinternal",
            &[t.oid.into(), name.into()],
        );
        if exists.is_none() {
            let def = def.replace("{t}", &t.sql_name);
            crate::postgres::scope::protecting(t.oid, || {
                run(&format!("CREATE TRIGGER {name} {def} EXECUTE FUNCTION credcrypt.kv_trigger()"), &[]);
            });
        }
    }
}

pub(crate) fn designations(t: &Table, only_column: Option<&str>) -> Vec<Desig> {
    spi::rows(
        "SELECT column_name::pg_catalog.text, json_path, binding_id, bind_columns::pg_catalog.text[] \
           FROM credcrypt.protected_columns \
          WHERE relid OPERATOR(pg_catalog.=) $1 \
            AND ($2::pg_catalog.text IS NULL OR column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name) \
          ORDER BY column_name, json_path",
        &[t.oid.into(), only_column.into()],
        |r| {
            Ok(Desig {
                column: r.get::<String>(1)?.unwrap_or_default(),
                path: r.get::<Vec<String>>(2)?.unwrap_or_default(),
                binding_id: r.get::<String>(3)?.unwrap_or_default(),
                binds: r.get::<Vec<String>>(4)?.unwrap_or_default(),
            })
        },
    )
    .unwrap_or_else(|e| spi_fail(e))
}

pub(crate) fn unprotect(tbl: pg_sys::Oid, col: &str, decrypt_existing: bool) -> (i32, i64, bool) {
    crate::postgres::catalog::require_current_sql();
    let t = table(tbl);
    lock_against_writers(&t);
    let ds = designations(&t, Some(col));
    if ds.is_empty() {
        crate::errors::undefined(
            format!("column \"{col}\" of table {} is not protected", t.sql_name),
            "SELECT * FROM credcrypt.protected_columns_info lists the protected columns.",
        );
    }
    let encrypted = ds.iter().any(|d| has_values(&t, &d.column, &d.path, true));
    if encrypted && !decrypt_existing {
        fail(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("column \"{col}\" of table {} still holds encrypted values", t.sql_name),
            Some("they are bound to this designation; without it they could never be decrypted again".into()),
            "Pass decrypt_existing => true to write the plaintext back (it will then be stored unencrypted), or empty the column first.",
        );
    }
    let mut decrypted = 0i64;
    if encrypted {
        // While the designation still exists (the trigger is bypassed for these writes only).
        for d in &ds {
            decrypted += crate::migrate::decrypt_in_place(&t, &d.binding_id);
        }
    }
    as_catalog_owner(|| {
        run(
            "DELETE FROM credcrypt.protected_columns WHERE relid OPERATOR(pg_catalog.=) $1 \
                AND column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name",
            &[t.oid.into(), col.into()],
        )
    });
    let remaining = get::<bool>(
        "SELECT true FROM credcrypt.protected_columns WHERE relid OPERATOR(pg_catalog.=) $1 LIMIT 1",
        &[t.oid.into()],
    );
    if remaining.is_none() {
        run(&format!("DROP TRIGGER IF EXISTS {TRIGGER_NAME} ON {}", t.sql_name), &[]);
        run(&format!("DROP TRIGGER IF EXISTS zz_credcrypt_kv ON {}", t.sql_name), &[]);
        run(&format!("DROP TRIGGER IF EXISTS zz_credcrypt_kv_truncate ON {}", t.sql_name), &[]);
    }
    (i32::try_from(ds.len()).unwrap_or(i32::MAX), decrypted, remaining.is_none())
}
