//! The administrative functions of protected columns: `protect_column`, `unprotect_column`,
//! `create_decrypted_view`, `create_masked_view` (SQL wrappers in sql/protect.sql), and the
//! helpers `column_context` and `_invalidate_table`.
//!
//! The caller must own the table (as for ALTER TABLE). Every function runs with
//! `search_path = pg_catalog, pg_temp`, and every SQL text it builds — including the view
//! definitions it creates, which outlive the call — names schema-qualified functions,
//! operators and types only. Changing designations locks the table against writers
//! (SHARE ROW EXCLUSIVE, as CREATE TRIGGER does). DDL runs as the caller; statements that read
//! or write the table's rows run as the table's owner in a security-restricted operation
//! ([`crate::postgres::scope::maintain`]); the catalog rows are written as the catalog's
//! owner, so `credcrypt.protected_columns` needs no write grant to anyone.

use credcrypt_core::column::{column_context as context_of, new_binding_id};
use credcrypt_core::KeyRef;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier as qi, quote_literal as ql};
use pgrx::PgSqlErrorCode::*;

use crate::errors::{fail, OrRaise as _};
use crate::postgres::guard::as_catalog_owner;
use crate::postgres::relation::{column, lock_against_writers, require_column, table, Table};
use crate::postgres::scope::maintain;
use crate::postgres::spi;

/// Name of the trigger `protect_column` installs. Triggers fire in name order; this one must
/// fire last among BEFORE ROW triggers — it checks so itself when it fires, and DDL that would
/// put another BEFORE ROW trigger after it is refused.
pub const TRIGGER_NAME: &str = "zz_credcrypt_protect";

/// Types whose text form is stable across sessions and servers (no DateStyle, TimeZone,
/// extra_float_digits or padding effects), so they can be bound into a context.
const BINDABLE_TYPES: &[&str] = &["int2", "int4", "int8", "numeric", "text", "varchar", "uuid", "name", "oid"];

fn spi_fail(e: pgrx::spi::SpiError) -> ! {
    fail(ERRCODE_INTERNAL_ERROR, format!("pg_credcrypt: catalog query failed: {e}"), None, "Report this as a bug.")
}

fn get<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid<'_>]) -> Option<T> {
    // Read-only (also on a hot standby); every caller passes a SELECT.
    spi::one::<T>(sql, args).unwrap_or_else(|e| spi_fail(e))
}

fn run(sql: &str, args: &[DatumWithOid<'_>]) {
    spi::run(sql, args).unwrap_or_else(|e| spi_fail(e));
}

fn bad_arg(msg: impl Into<String>, hint: &str) -> ! {
    fail(ERRCODE_INVALID_PARAMETER_VALUE, msg, None, hint)
}

/// SQL for a protected value of row alias `alias`: the column, or the text at `path` inside it.
pub(crate) fn value_expr(alias: &str, col: &str, path: &[String]) -> String {
    if path.is_empty() {
        format!("{alias}.{}", qi(col))
    } else {
        format!("({alias}.{} OPERATOR(pg_catalog.#>>) {})", qi(col), path_literal(path))
    }
}

/// A `text[]` literal of a json path.
pub(crate) fn path_literal(path: &[String]) -> String {
    let elems: Vec<String> =
        path.iter().map(|p| format!("\"{}\"", p.replace('\\', "\\\\").replace('"', "\\\""))).collect();
    format!("{}::pg_catalog.text[]", ql(format!("{{{}}}", elems.join(","))))
}

/// SQL that replaces the string at `path` of jsonb column `col` (row alias `alias`) with the
/// text expression `value`.
pub(crate) fn json_set_expr(alias: &str, col: &str, path: &[String], value: &str) -> String {
    format!(
        "pg_catalog.jsonb_set({alias}.{c}, {p}, pg_catalog.to_jsonb(({value})::pg_catalog.text))",
        c = qi(col),
        p = path_literal(path)
    )
}

/// Whether the table holds any non-NULL value in `col` (at `path`, for jsonb); with
/// `encrypted_only`, any value that is a pg_credcrypt ciphertext. Reads every row (as the
/// table's owner, through the maintenance path).
fn has_values(t: &Table, col: &str, path: &[String], encrypted_only: bool) -> bool {
    let expr = value_expr("t", col, path);
    let filter =
        if encrypted_only { format!("pg_catalog.starts_with({expr}, 'cc1:')") } else { format!("{expr} IS NOT NULL") };
    let sql = format!("SELECT EXISTS (SELECT 1 FROM {} t WHERE {filter})", t.sql_name);
    maintain(t.oid, || get::<bool>(&sql, &[])).unwrap_or(false)
}

/// Refuses the designation if the table's protection has a problem (see
/// `credcrypt._protection_problems`): a trigger that would fire after the protection trigger,
/// a rule, an inheritance child, a bind column whose type changed…
fn refuse_problems(t: &Table) {
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
struct Protected {
    binding_id: String,
    key: String,
    trigger_created: bool,
}

/// `protect_column(tbl, col, key_name, bind_columns, mask_column, mask_prefix, mask_suffix,
/// json_path, existing_values)` of 0.1.0 (returns nothing).
#[pg_extern(volatile, name = "_protect_column")]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::too_many_arguments)] // mirrors the SQL signature
fn protect_column_impl(
    tbl: pg_sys::Oid,
    col: &str,
    key_name: Option<&str>,
    bind_columns: Option<Vec<Option<String>>>,
    mask_column: Option<&str>,
    mask_prefix: i32,
    mask_suffix: i32,
    json_path: Option<Vec<Option<String>>>,
    existing_values: &str,
) {
    protect(tbl, col, key_name, bind_columns, mask_column, mask_prefix, mask_suffix, json_path, existing_values);
}

/// `protect_column(…)` — see docs/protected-columns.md. SQL wrapper: `credcrypt.protect_column`.
/// Returns the designation's binding id, the key it resolved to, and whether it created the
/// table's trigger.
#[pg_extern(volatile, name = "_protect")]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::too_many_arguments, clippy::type_complexity)] // mirrors the SQL signature
fn protect_column_v2(
    tbl: pg_sys::Oid,
    col: &str,
    key_name: Option<&str>,
    bind_columns: Option<Vec<Option<String>>>,
    mask_column: Option<&str>,
    mask_prefix: i32,
    mask_suffix: i32,
    json_path: Option<Vec<Option<String>>>,
    existing_values: &str,
) -> TableIterator<'static, (name!(binding_id, String), name!(key_name, String), name!(trigger_created, bool))> {
    let p =
        protect(tbl, col, key_name, bind_columns, mask_column, mask_prefix, mask_suffix, json_path, existing_values);
    TableIterator::once((p.binding_id, p.key, p.trigger_created))
}

#[allow(clippy::too_many_arguments)] // mirrors the SQL signature
fn protect(
    tbl: pg_sys::Oid,
    col: &str,
    key_name: Option<&str>,
    bind_columns: Option<Vec<Option<String>>>,
    mask_column: Option<&str>,
    mask_prefix: i32,
    mask_suffix: i32,
    json_path: Option<Vec<Option<String>>>,
    existing_values: &str,
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
    let key = crate::api::crypto::key_ref(key_name).or_raise();
    if key == KeyRef::Local {
        // Fail now rather than on the first INSERT.
        crate::keys::with_keyring(|r| r.current_key().map(|_| ())).or_raise();
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
        )
    });
    let has_trigger = get::<bool>(
        "SELECT true FROM pg_catalog.pg_trigger WHERE tgrelid OPERATOR(pg_catalog.=) $1 \
            AND tgname OPERATOR(pg_catalog.=) $2::pg_catalog.name AND NOT tgisinternal",
        &[t.oid.into(), TRIGGER_NAME.into()],
    );
    if has_trigger.is_none() {
        run(
            &format!(
                "CREATE TRIGGER {TRIGGER_NAME} BEFORE INSERT OR UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION credcrypt.protect_trigger()",
                t.sql_name
            ),
            &[],
        );
    }
    refuse_problems(&t);
    Protected { binding_id, key: key_text, trigger_created: has_trigger.is_none() }
}

/// A designation as the view builders need it.
pub(crate) struct Desig {
    pub column: String,
    pub path: Vec<String>,
    pub binding_id: String,
    pub binds: Vec<String>,
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

/// SQL computing a designation's context for the row aliased `alias`.
fn context_expr(alias: &str, d: &Desig) -> String {
    let binds: Vec<String> = d.binds.iter().map(|b| format!("({alias}.{})::pg_catalog.text", qi(b))).collect();
    format!(
        "credcrypt.column_context({}::pg_catalog.text, ARRAY[{}]::pg_catalog.text[])",
        ql(&d.binding_id),
        binds.join(", ")
    )
}

/// SQL that decrypts the protected column `col` (all its designations) of row `alias`.
fn decrypted_expr(alias: &str, col: &str, ds: &[&Desig]) -> String {
    let mut expr = format!("{alias}.{}", qi(col));
    for d in ds {
        let ctx = context_expr(alias, d);
        if d.path.is_empty() {
            expr = format!("credcrypt.decrypt_credential({expr}, {ctx})");
        } else {
            let p = path_literal(&d.path);
            expr = format!(
                "CASE WHEN pg_catalog.jsonb_typeof({expr} OPERATOR(pg_catalog.#>) {p}) OPERATOR(pg_catalog.=) 'string'::pg_catalog.text \
                 THEN pg_catalog.jsonb_set({expr}, {p}, pg_catalog.to_jsonb(credcrypt.decrypt_credential({expr} OPERATOR(pg_catalog.#>>) {p}, {ctx}))) \
                 ELSE {expr} END"
            );
        }
    }
    expr
}

/// `unprotect_column(tbl, col, decrypt_existing)` — SQL wrapper `credcrypt.unprotect_column`.
///
/// A column that holds no pg_credcrypt ciphertext (empty, or still plaintext after
/// `existing_values => 'migrate'`) is unprotected as it is. One that does needs
/// `decrypt_existing => true`: every ciphertext is decrypted and written back as plaintext
/// (plaintext values are left as they are); a value that cannot be decrypted stops the call
/// and nothing changes.
#[pg_extern(volatile, name = "_unprotect_column")]
#[search_path(pg_catalog, pg_temp)]
fn unprotect_column_impl(tbl: pg_sys::Oid, col: &str, decrypt_existing: bool) {
    unprotect(tbl, col, decrypt_existing);
}

/// `unprotect_column(…)` — SQL wrapper `credcrypt.unprotect_column`. Returns how many
/// designations it removed, how many values it decrypted in place, and whether it dropped the
/// table's trigger (with the last designation).
#[pg_extern(volatile, name = "_unprotect")]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)] // the row type is spelled out for pgrx's SQL generation
fn unprotect_column_v2(
    tbl: pg_sys::Oid,
    col: &str,
    decrypt_existing: bool,
) -> TableIterator<
    'static,
    (name!(designations_removed, i32), name!(values_decrypted, i64), name!(trigger_dropped, bool)),
> {
    TableIterator::once(unprotect(tbl, col, decrypt_existing))
}

fn unprotect(tbl: pg_sys::Oid, col: &str, decrypt_existing: bool) -> (i32, i64, bool) {
    crate::postgres::catalog::require_current_sql();
    let t = table(tbl);
    lock_against_writers(&t);
    let ds = designations(&t, Some(col));
    if ds.is_empty() {
        fail(
            ERRCODE_UNDEFINED_OBJECT,
            format!("column \"{col}\" of table {} is not protected", t.sql_name),
            None,
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
    }
    (i32::try_from(ds.len()).unwrap_or(i32::MAX), decrypted, remaining.is_none())
}

fn view_columns(t: &Table) -> Vec<String> {
    spi::rows(
        "SELECT attname::pg_catalog.text FROM pg_catalog.pg_attribute \
          WHERE attrelid OPERATOR(pg_catalog.=) $1 AND attnum OPERATOR(pg_catalog.>) 0 AND NOT attisdropped ORDER BY attnum",
        &[t.oid.into()],
        |r| Ok(r.get::<String>(1)?.unwrap_or_default()),
    )
    .unwrap_or_else(|e| spi_fail(e))
}

/// The select list of a view over `t`: every column in order, each protected column given to
/// `protected` with its designations (None leaves it out).
fn view_select_list(t: &Table, protected: impl Fn(&str, &[&Desig]) -> Option<String>) -> Vec<String> {
    let ds = designations(t, None);
    if ds.is_empty() {
        fail(
            ERRCODE_UNDEFINED_OBJECT,
            format!("table {} has no protected columns", t.sql_name),
            None,
            "Protect a column first with credcrypt.protect_column().",
        )
    }
    view_columns(t)
        .iter()
        .filter_map(|c| {
            let mine: Vec<&Desig> = ds.iter().filter(|d| &d.column == c).collect();
            if mine.is_empty() {
                Some(format!("t.{}", qi(c)))
            } else {
                protected(c, &mine)
            }
        })
        .collect()
}

fn create_view(t: &Table, view_name: &str, options: &str, select_list: &[String]) -> String {
    let qualified = format!("{}.{}", t.schema, qi(view_name));
    let exists = get::<bool>(
        "SELECT true FROM pg_catalog.pg_class c WHERE c.relname OPERATOR(pg_catalog.=) $1::pg_catalog.name \
            AND c.relnamespace OPERATOR(pg_catalog.=) (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid OPERATOR(pg_catalog.=) $2)",
        &[view_name.into(), t.oid.into()],
    );
    if exists.is_some() {
        fail(
            ERRCODE_DUPLICATE_TABLE,
            format!("relation {qualified} already exists"),
            None,
            "Choose another view name, or DROP VIEW the old one first.",
        );
    }
    run(
        &format!("CREATE VIEW {qualified} WITH ({options}) AS SELECT {} FROM {} t", select_list.join(", "), t.sql_name),
        &[],
    );
    run(&format!("REVOKE ALL ON {qualified} FROM PUBLIC"), &[]);
    qualified
}

/// `create_decrypted_view(tbl, view_name)` — SQL wrapper `credcrypt.create_decrypted_view`.
#[pg_extern(volatile, name = "_create_decrypted_view")]
#[search_path(pg_catalog, pg_temp)]
fn create_decrypted_view_impl(tbl: pg_sys::Oid, view_name: &str) {
    decrypted_view(tbl, view_name);
}

/// `create_decrypted_view(tbl, view_name)` returning the view.
#[pg_extern(volatile, name = "_decrypted_view")]
#[search_path(pg_catalog, pg_temp)]
fn create_decrypted_view_v2(tbl: pg_sys::Oid, view_name: &str) -> pg_sys::Oid {
    decrypted_view(tbl, view_name)
}

fn decrypted_view(tbl: pg_sys::Oid, view_name: &str) -> pg_sys::Oid {
    crate::postgres::catalog::require_current_sql();
    let t = table(tbl);
    let list = view_select_list(&t, |c, mine| Some(format!("{} AS {}", decrypted_expr("t", c, mine), qi(c))));
    let v = create_view(&t, view_name, "security_invoker = true, security_barrier = true", &list);
    run(&format!("GRANT SELECT ON {v} TO credcrypt_decryptor"), &[]);
    run(
        &format!(
            "COMMENT ON VIEW {v} IS {}",
            ql(format!("pg_credcrypt: {} with protected columns decrypted (security_invoker)", t.sql_name))
        ),
        &[],
    );
    view_oid(&v)
}

fn view_oid(qualified: &str) -> pg_sys::Oid {
    get::<pg_sys::Oid>("SELECT $1::pg_catalog.regclass::pg_catalog.oid", &[qualified.into()])
        .unwrap_or(pg_sys::InvalidOid)
}

/// `create_masked_view(tbl, view_name)` — SQL wrapper `credcrypt.create_masked_view`.
#[pg_extern(volatile, name = "_create_masked_view")]
#[search_path(pg_catalog, pg_temp)]
fn create_masked_view_impl(tbl: pg_sys::Oid, view_name: &str) {
    masked_view(tbl, view_name);
}

/// `create_masked_view(tbl, view_name)` returning the view.
#[pg_extern(volatile, name = "_masked_view")]
#[search_path(pg_catalog, pg_temp)]
fn create_masked_view_v2(tbl: pg_sys::Oid, view_name: &str) -> pg_sys::Oid {
    masked_view(tbl, view_name)
}

/// The masked view is owned by `credcrypt_masker`, a NOLOGIN role without members that may
/// read the table (SELECT, and under `enable_owner_rls` a policy of its own that lets it read
/// every row): reporting roles granted the view see masks across owners, and nothing else —
/// not the table, not a ciphertext, no decrypt right. The creator gets SELECT on the view with
/// GRANT OPTION, to pass it on to reporting roles; `credcrypt.drop_masked_view` drops it.
fn masked_view(tbl: pg_sys::Oid, view_name: &str) -> pg_sys::Oid {
    crate::postgres::catalog::require_current_sql();
    let t = table(tbl);
    let list = view_select_list(&t, |c, mine| {
        if mine.iter().any(|d| d.path.is_empty()) {
            return None; // a whole protected column: left out
        }
        let mut expr = format!("t.{}", qi(c));
        for d in mine {
            expr = format!("({expr} OPERATOR(pg_catalog.#-) {})", path_literal(&d.path));
        }
        Some(format!("{expr} AS {}", qi(c)))
    });
    let v = create_view(&t, view_name, "security_barrier = true", &list);
    run(
        &format!(
            "COMMENT ON VIEW {v} IS {}",
            ql(format!("pg_credcrypt: {} without ciphertexts (masks only)", t.sql_name))
        ),
        &[],
    );
    run(&format!("GRANT SELECT ON {} TO credcrypt_masker", t.sql_name), &[]);
    // SAFETY: reads the current user's name (an existing role).
    let caller = unsafe { std::ffi::CStr::from_ptr(pg_sys::GetUserNameFromId(pg_sys::GetUserId(), false)) }
        .to_string_lossy()
        .into_owned();
    as_catalog_owner(|| {
        run(&format!("ALTER VIEW {v} OWNER TO credcrypt_masker"), &[]);
        run(&format!("GRANT SELECT ON {v} TO {} WITH GRANT OPTION", qi(&caller)), &[]);
    });
    view_oid(&v)
}

/// `drop_masked_view(view)`: drops a view made by `create_masked_view` (owned by
/// `credcrypt_masker`, so its creator cannot drop it directly); the caller must own the table
/// the view reads.
#[pg_extern(volatile, name = "_drop_masked_view")]
#[search_path(pg_catalog, pg_temp)]
fn drop_masked_view(view: pg_sys::Oid) {
    crate::postgres::catalog::require_current_sql();
    let (owner_is_masker, base) = spi::two::<bool, pg_sys::Oid>(
        "SELECT c.relowner OPERATOR(pg_catalog.=) (SELECT oid FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'credcrypt_masker'), \
                (SELECT d.refobjid FROM pg_catalog.pg_rewrite w JOIN pg_catalog.pg_depend d \
                     ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid OPERATOR(pg_catalog.=) w.oid \
                    AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid OPERATOR(pg_catalog.<>) c.oid \
                  WHERE w.ev_class OPERATOR(pg_catalog.=) c.oid LIMIT 1) \
           FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) $1 AND c.relkind OPERATOR(pg_catalog.=) 'v'",
        &[view.into()],
    )
    .unwrap_or_else(|e| spi_fail(e));
    let (Some(true), Some(base)) = (owner_is_masker, base) else {
        fail(
            ERRCODE_WRONG_OBJECT_TYPE,
            "not a view made by credcrypt.create_masked_view",
            None,
            "Drop other views with DROP VIEW.",
        )
    };
    table(base); // the caller must own the table the view reads
    let name = get::<String>("SELECT $1::pg_catalog.regclass::pg_catalog.text", &[view.into()]).unwrap_or_default();
    as_catalog_owner(|| run(&format!("DROP VIEW {name}"), &[]));
}

/// The context protected values of a designation are bound to (see docs/format.md): its
/// binding id and the text of its bind columns' values, in order. Used by the decrypted view.
#[pg_extern(immutable, parallel_safe)]
fn column_context(binding_id: &str, bind_values: default!(Option<Vec<Option<String>>>, "NULL")) -> String {
    let values = bind_values.unwrap_or_default();
    let refs: Vec<Option<&str>> = values.iter().map(|v| v.as_deref()).collect();
    context_of(binding_id, &refs).or_raise()
}

/// Invalidates the relcache entry of `relid` if the table exists (catalog trigger helper):
/// every backend then reloads the table's designations.
#[pg_extern(volatile, strict, name = "_invalidate_table")]
fn invalidate_table(relid: pg_sys::Oid) {
    // SAFETY: syscache existence check and invalidation of an existing relation.
    unsafe {
        if pg_sys::SearchSysCacheExists(
            pg_sys::SysCacheIdentifier::RELOID as std::ffi::c_int,
            relid.into(),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
        ) {
            pg_sys::CacheInvalidateRelcacheByRelid(relid);
        }
    }
}

/// Whether `xmin` (of a catalog row) was written by the current transaction or one of its
/// subtransactions: for the DDL checks, which look at what the statement just created.
#[pg_extern(volatile, strict, parallel_safe, name = "_xact_is_current")]
fn xact_is_current(xmin: pg_sys::TransactionId) -> bool {
    // SAFETY: a plain transaction-id check on the backend's own transaction state.
    unsafe { pg_sys::TransactionIdIsCurrentTransactionId(xmin) }
}
