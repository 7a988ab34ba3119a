//! The administrative functions of protected columns: `protect_column`, `unprotect_column`,
//! `create_decrypted_view`, `create_masked_view` (SQL wrappers in sql/protect.sql), and the
//! helpers `column_context` and `_invalidate_table`.
//!
//! The caller must own the table (as for ALTER TABLE). DDL runs as the caller; the catalog
//! rows are written as the catalog's owner (the role that created the extension), so
//! `credcrypt.protected_columns` needs no write grant to anyone.

use credcrypt_core::column::{column_context as context_of, new_binding_id};
use credcrypt_core::KeyRef;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier as qi, quote_literal as ql, Spi};
use pgrx::PgSqlErrorCode::*;

use crate::errors::{fail, OrRaise as _};

/// Name of the trigger `protect_column` installs. It sorts after ordinary trigger names, so
/// it fires last among BEFORE triggers: whatever other triggers do to the row, the value
/// stored is encrypted.
pub const TRIGGER_NAME: &str = "zz_credcrypt_protect";

/// Types whose text form is stable across sessions and servers (no DateStyle, TimeZone,
/// extra_float_digits or padding effects), so they can be bound into a context.
const BINDABLE_TYPES: &[&str] = &["int2", "int4", "int8", "numeric", "text", "varchar", "uuid", "name", "oid"];

fn spi_fail(e: pgrx::spi::SpiError) -> ! {
    fail(ERRCODE_INTERNAL_ERROR, format!("pg_credcrypt: catalog query failed: {e}"), None, "Report this as a bug.")
}

fn get<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid<'_>]) -> Option<T> {
    // Read-only (also on a hot standby); every caller passes a SELECT.
    crate::postgres::spi::one::<T>(sql, args).unwrap_or_else(|e| spi_fail(e))
}

fn run(sql: &str, args: &[DatumWithOid<'_>]) {
    Spi::run_with_args(sql, args).unwrap_or_else(|e| spi_fail(e));
}

/// Runs `f` as the owner of `credcrypt.protected_columns` (the role that created the extension),
/// the way PostgreSQL runs maintenance as a table owner: `search_path` pinned to
/// `pg_catalog, pg_temp` and SECURITY_RESTRICTED_OPERATION set, so no function, operator or
/// relation of the caller's choosing can run with the owner's rights. Restores the caller's
/// identity and settings afterwards (and PostgreSQL restores them on error).
pub(crate) fn as_catalog_owner<R>(f: impl FnOnce() -> R) -> R {
    let owner: pg_sys::Oid = get(
        "SELECT relowner FROM pg_catalog.pg_class WHERE oid = 'credcrypt.protected_columns'::pg_catalog.regclass",
        &[],
    )
    .unwrap_or(pg_sys::InvalidOid);
    struct Restore(pg_sys::Oid, std::ffi::c_int, std::ffi::c_int);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: pops the GUC nest level and restores the identity saved below, on the
            // main thread.
            unsafe {
                pg_sys::AtEOXact_GUC(true, self.2);
                pg_sys::SetUserIdAndSecContext(self.0, self.1);
            }
        }
    }
    let (mut user, mut ctx) = (pg_sys::InvalidOid, 0);
    // SAFETY: reads/sets the backend's current user and a nested GUC level; the guard restores both.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut ctx);
        let level = pg_sys::NewGUCNestLevel();
        let _restore = Restore(user, ctx, level);
        pg_sys::SetUserIdAndSecContext(
            owner,
            ctx | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION) as std::ffi::c_int,
        );
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        f()
    }
}

/// The table a designation function works on, checked: it exists, is a (partitioned) table
/// and the caller owns it.
pub(crate) struct Table {
    pub oid: pg_sys::Oid,
    /// Schema-qualified, quoted name for SQL text.
    pub sql_name: String,
    /// Quoted schema name.
    pub schema: String,
    /// Name for messages.
    pub display: String,
}

pub(crate) fn table(oid: pg_sys::Oid) -> Table {
    let row = crate::postgres::spi::three::<String, String, bool>(
        "SELECT c.relkind::text, quote_ident(n.nspname) || '.' || quote_ident(c.relname), \
                pg_catalog.pg_has_role(c.relowner, 'USAGE') \
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[oid.into()],
    );
    let (kind, name, owner) = match row {
        Ok((Some(k), Some(n), Some(o))) => (k, n, o),
        _ => fail(
            ERRCODE_UNDEFINED_TABLE,
            "table does not exist",
            None,
            "Pass an existing table, e.g. 'public.accounts'.",
        ),
    };
    if kind != "r" && kind != "p" {
        fail(
            ERRCODE_WRONG_OBJECT_TYPE,
            format!("{name} is not a table"),
            None,
            "Protect the columns of the underlying table; views and foreign tables cannot be protected.",
        );
    }
    if !owner {
        fail(
            ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must be owner of table {name}"),
            None,
            "Run this as the table's owner (or a member of the owning role) who is also a member of credcrypt_admin.",
        );
    }
    let schema = get::<String>(
        "SELECT quote_ident(n.nspname) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[oid.into()],
    )
    .unwrap_or_default();
    Table { oid, display: name.clone(), sql_name: name, schema }
}

/// A column of the table: (attnum, type name of its base type, type modifier, generated).
fn column(t: &Table, name: &str) -> Option<(i16, String, i32, bool)> {
    Spi::connect(|c| {
        let mut rows = c.select(
            "SELECT a.attnum, bt.typname::text, a.atttypmod, a.attgenerated <> '' \
               FROM pg_catalog.pg_attribute a \
               JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid \
               JOIN pg_catalog.pg_type bt ON bt.oid = CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END \
              WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            None,
            &[t.oid.into(), name.into()],
        )?;
        match rows.next() {
            None => Ok::<_, pgrx::spi::SpiError>(None),
            Some(r) => Ok(Some((
                r.get::<i16>(1)?.unwrap_or(0),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<i32>(3)?.unwrap_or(-1),
                r.get::<bool>(4)?.unwrap_or(false),
            ))),
        }
    })
    .unwrap_or_else(|e| spi_fail(e))
}

pub(crate) fn require_column(t: &Table, name: &str) -> (i16, String, i32, bool) {
    column(t, name).unwrap_or_else(|| {
        fail(
            ERRCODE_UNDEFINED_COLUMN,
            format!("column \"{name}\" of table {} does not exist", t.display),
            None,
            "Check the column name (names are case-sensitive when quoted).",
        )
    })
}

fn bad_arg(msg: impl Into<String>, hint: &str) -> ! {
    fail(ERRCODE_INVALID_PARAMETER_VALUE, msg, None, hint)
}

/// Whether the table holds any non-NULL value in `col` (at `path`, for jsonb). Runs as the
/// caller, through the maintenance path when the table is under `enable_owner_rls`.
fn has_values(t: &Table, col: &str, path: &[String]) -> bool {
    let expr = value_expr("t", col, path);
    let sql = format!("SELECT EXISTS (SELECT 1 FROM {} t WHERE {expr} IS NOT NULL)", t.sql_name);
    crate::rls::maintenance(t.oid, || get::<bool>(&sql, &[])).unwrap_or(false)
}

/// SQL for a protected value: the column, or the text at `path` inside it.
pub(crate) fn value_expr(alias: &str, col: &str, path: &[String]) -> String {
    if path.is_empty() {
        format!("{alias}.{}", qi(col))
    } else {
        format!("({alias}.{} #>> {})", qi(col), path_literal(path))
    }
}

/// A `text[]` literal of a json path.
pub(crate) fn path_literal(path: &[String]) -> String {
    let elems: Vec<String> =
        path.iter().map(|p| format!("\"{}\"", p.replace('\\', "\\\\").replace('"', "\\\""))).collect();
    format!("{}::text[]", ql(format!("{{{}}}", elems.join(","))))
}

/// `protect_column(tbl, col, key_name, bind_columns, mask_column, mask_prefix, mask_suffix,
/// json_path)` — see docs/protected-columns.md. SQL wrapper: `credcrypt.protect_column`.
#[pg_extern(volatile, name = "_protect_column")]
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
    let t = table(tbl);
    let migrate = match existing_values {
        "refuse" => false,
        "migrate" => true,
        _ => bad_arg(
            "existing_values must be 'refuse' or 'migrate'",
            "'migrate' designates a column that holds values; then CALL credcrypt.reencrypt_column to encrypt them.",
        ),
    };
    let (attnum, typ, typmod, generated) = require_column(&t, col);
    let _ = attnum;
    if generated {
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
    match (path.is_empty(), typ.as_str()) {
        (true, "text") => {}
        (true, "varchar") if typmod < 0 => {}
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
        let (_, btyp, _, bgen) = require_column(&t, b);
        if b == col {
            bad_arg(
                "a protected column cannot be one of its own bind columns",
                "Bind to the row's key, e.g. ARRAY['id'].",
            );
        }
        if binds[..i].contains(b) {
            bad_arg(format!("bind column \"{b}\" is listed twice"), "List each bind column once.");
        }
        if bgen {
            bad_arg(
                format!("bind column \"{b}\" is a generated column"),
                "Generated columns are computed after BEFORE triggers run; bind to the primary key instead.",
            );
        }
        if !BINDABLE_TYPES.contains(&btyp.as_str()) {
            fail(
                ERRCODE_DATATYPE_MISMATCH,
                format!("bind column \"{b}\" has type {btyp}, whose text form is not stable"),
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
            Some((_, mtyp, mmod, _)) if mtyp == "text" || (mtyp == "varchar" && mmod < 0) => {}
            Some((_, mtyp, _, _)) => bad_arg(
                format!("mask column \"{m}\" is {mtyp}; it must be text"),
                "Name a new column; protect_column creates it as text.",
            ),
            None => run(&format!("ALTER TABLE {} ADD COLUMN {} text", t.sql_name, qi(m)), &[]),
        }
        let other = get::<String>(
            "SELECT column_name::text FROM credcrypt.protected_columns WHERE relid = $1 AND mask_column = $2",
            &[t.oid.into(), m.into()],
        );
        if let Some(other) = other {
            bad_arg(
                format!("mask column \"{m}\" already holds the mask of \"{other}\""),
                "Give each protected column its own mask column.",
            );
        }
    }
    let path_arr: Vec<String> = path.clone();
    let existing = get::<bool>(
        "SELECT true FROM credcrypt.protected_columns WHERE relid = $1 AND column_name = $2 \
            AND (json_path = $3 OR json_path[1:cardinality($3)] = $3 OR $3[1:cardinality(json_path)] = json_path)",
        &[t.oid.into(), col.into(), path_arr.clone().into()],
    );
    if existing.is_some() {
        fail(
            ERRCODE_DUPLICATE_OBJECT,
            format!(
                "column \"{col}\" of table {} is already protected{}",
                t.display,
                if path.is_empty() { String::new() } else { " at this path or an overlapping one".into() }
            ),
            None,
            "SELECT * FROM credcrypt.protected_columns_info shows the designation; unprotect_column removes it.",
        );
    }
    if !migrate && has_values(&t, col, &path) {
        fail(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("column \"{col}\" of table {} already holds values", t.display),
            Some("protect_column only designates empty columns, so that no plaintext stays behind unnoticed".into()),
            "To encrypt the existing values: protect_column(…, existing_values => 'migrate'), then CALL credcrypt.reencrypt_column(tbl, col) (docs/migrations.md).",
        );
    }
    let binding_id = new_binding_id().or_raise();
    let caller = get::<String>("SELECT current_user::text", &[]).unwrap_or_default();
    let key_text = key.to_string();
    as_catalog_owner(|| {
        run(
            "INSERT INTO credcrypt.protected_columns \
               (relid, column_name, json_path, key_name, bind_columns, mask_column, mask_prefix, mask_suffix, binding_id, created_by) \
             VALUES ($1, $2, $3, $4, $5::name[], $6, $7, $8, $9, $10)",
            &[
                t.oid.into(),
                col.into(),
                path_arr.into(),
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
        "SELECT true FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND tgname = $2 AND NOT tgisinternal",
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
}

/// A designation as the view builders need it.
struct Desig {
    column: String,
    path: Vec<String>,
    binding_id: String,
    binds: Vec<String>,
}

fn designations(t: &Table, only_column: Option<&str>) -> Vec<Desig> {
    Spi::connect(|c| {
        let rows = c.select(
            "SELECT column_name::text, json_path, binding_id, bind_columns::text[] FROM credcrypt.protected_columns \
              WHERE relid = $1 AND ($2::text IS NULL OR column_name = $2) ORDER BY column_name, json_path",
            None,
            &[t.oid.into(), only_column.into()],
        )?;
        let mut out = Vec::new();
        for r in rows {
            out.push(Desig {
                column: r.get::<String>(1)?.unwrap_or_default(),
                path: r.get::<Vec<String>>(2)?.unwrap_or_default(),
                binding_id: r.get::<String>(3)?.unwrap_or_default(),
                binds: r.get::<Vec<String>>(4)?.unwrap_or_default(),
            });
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .unwrap_or_else(|e| spi_fail(e))
}

/// SQL computing a designation's context for the row aliased `alias`.
fn context_expr(alias: &str, d: &Desig) -> String {
    let binds: Vec<String> = d.binds.iter().map(|b| format!("{alias}.{}::text", qi(b))).collect();
    format!("credcrypt.column_context({}, ARRAY[{}]::text[])", ql(&d.binding_id), binds.join(", "))
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
                "CASE WHEN jsonb_typeof({expr} #> {p}) = 'string' \
                 THEN jsonb_set({expr}, {p}, to_jsonb(credcrypt.decrypt_credential({expr} #>> {p}, {ctx}))) \
                 ELSE {expr} END"
            );
        }
    }
    expr
}

/// `unprotect_column(tbl, col, decrypt_existing)` — SQL wrapper `credcrypt.unprotect_column`.
#[pg_extern(volatile, name = "_unprotect_column")]
fn unprotect_column_impl(tbl: pg_sys::Oid, col: &str, decrypt_existing: bool) {
    let t = table(tbl);
    let ds = designations(&t, Some(col));
    if ds.is_empty() {
        fail(
            ERRCODE_UNDEFINED_OBJECT,
            format!("column \"{col}\" of table {} is not protected", t.display),
            None,
            "SELECT * FROM credcrypt.protected_columns_info lists the protected columns.",
        );
    }
    let holds = ds.iter().any(|d| has_values(&t, &d.column, &d.path));
    if holds && !decrypt_existing {
        fail(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("column \"{col}\" of table {} still holds encrypted values", t.display),
            Some("they are bound to this designation; without it they could never be decrypted again".into()),
            "Pass decrypt_existing => true to write the plaintext back (it will then be stored unencrypted), or empty the column first.",
        );
    }
    let refs: Vec<&Desig> = ds.iter().collect();
    let expr = decrypted_expr("t", col, &refs);
    as_catalog_owner(|| {
        run(
            "DELETE FROM credcrypt.protected_columns WHERE relid = $1 AND column_name = $2",
            &[t.oid.into(), col.into()],
        )
    });
    if holds {
        let sql = format!("UPDATE {} t SET {} = {expr} WHERE t.{} IS NOT NULL", t.sql_name, qi(col), qi(col));
        crate::rls::maintenance(t.oid, || super::trigger::with_bypass(t.oid, || run(&sql, &[])));
    }
    let remaining =
        get::<bool>("SELECT true FROM credcrypt.protected_columns WHERE relid = $1 LIMIT 1", &[t.oid.into()]);
    if remaining.is_none() {
        run(&format!("DROP TRIGGER IF EXISTS {TRIGGER_NAME} ON {}", t.sql_name), &[]);
    }
}

fn view_columns(t: &Table) -> Vec<String> {
    Spi::connect(|c| {
        let rows = c.select(
            "SELECT attname::text FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            None,
            &[t.oid.into()],
        )?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r.get::<String>(1)?.unwrap_or_default());
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .unwrap_or_else(|e| spi_fail(e))
}

fn create_view(t: &Table, view_name: &str, options: &str, select_list: &[String]) -> String {
    let qualified = format!("{}.{}", t.schema, qi(view_name));
    let exists = get::<bool>(
        "SELECT true FROM pg_catalog.pg_class c WHERE c.relname = $1 AND c.relnamespace = (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid = $2)",
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

fn no_designations(t: &Table) -> ! {
    fail(
        ERRCODE_UNDEFINED_OBJECT,
        format!("table {} has no protected columns", t.display),
        None,
        "Protect a column first with credcrypt.protect_column().",
    )
}

/// `create_decrypted_view(tbl, view_name)` — SQL wrapper `credcrypt.create_decrypted_view`.
#[pg_extern(volatile, name = "_create_decrypted_view")]
fn create_decrypted_view_impl(tbl: pg_sys::Oid, view_name: &str) {
    let t = table(tbl);
    let ds = designations(&t, None);
    if ds.is_empty() {
        no_designations(&t);
    }
    let list: Vec<String> = view_columns(&t)
        .iter()
        .map(|c| {
            let mine: Vec<&Desig> = ds.iter().filter(|d| &d.column == c).collect();
            if mine.is_empty() {
                format!("t.{}", qi(c))
            } else {
                format!("{} AS {}", decrypted_expr("t", c, &mine), qi(c))
            }
        })
        .collect();
    let v = create_view(&t, view_name, "security_invoker = true, security_barrier = true", &list);
    run(&format!("GRANT SELECT ON {v} TO credcrypt_decryptor"), &[]);
    run(
        &format!(
            "COMMENT ON VIEW {v} IS {}",
            ql(format!("pg_credcrypt: {} with protected columns decrypted (security_invoker)", t.display))
        ),
        &[],
    );
}

/// `create_masked_view(tbl, view_name)` — SQL wrapper `credcrypt.create_masked_view`.
#[pg_extern(volatile, name = "_create_masked_view")]
fn create_masked_view_impl(tbl: pg_sys::Oid, view_name: &str) {
    let t = table(tbl);
    let ds = designations(&t, None);
    if ds.is_empty() {
        no_designations(&t);
    }
    let list: Vec<String> = view_columns(&t)
        .iter()
        .filter_map(|c| {
            let mine: Vec<&Desig> = ds.iter().filter(|d| &d.column == c).collect();
            if mine.is_empty() {
                return Some(format!("t.{}", qi(c)));
            }
            if mine.iter().any(|d| d.path.is_empty()) {
                return None; // a whole protected column: left out
            }
            let mut expr = format!("t.{}", qi(c));
            for d in mine {
                expr = format!("({expr} #- {})", path_literal(&d.path));
            }
            Some(format!("{expr} AS {}", qi(c)))
        })
        .collect();
    let v = create_view(&t, view_name, "security_barrier = true", &list);
    run(
        &format!(
            "COMMENT ON VIEW {v} IS {}",
            ql(format!("pg_credcrypt: {} without ciphertexts (masks only)", t.display))
        ),
        &[],
    );
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
