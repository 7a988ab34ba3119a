//! The row-level-security helper (`enable_owner_rls`, `disable_owner_rls`, `set_owner`) and
//! the maintenance path through its policies.
//!
//! Policies created by `credcrypt.enable_owner_rls` let a row through when
//! `credcrypt._maintenance_active(<the table>)` is true. That function reads a backend-local
//! variable that only the extension's own maintenance statements set
//! ([`crate::postgres::scope::maintain`]), for one table and for the role those statements run
//! as (the table's owner). It is not a setting: no `SET`, `set_config`, `ALTER ROLE … SET` or
//! connection option can reach it, so a user cannot open the path.
//!
//! The generated policies name only schema-qualified functions, operators and types, resolved
//! with the search path pinned, so nothing on an administrator's `search_path` is baked into
//! them.

use pgrx::prelude::*;
use pgrx::spi::{quote_identifier as qi, quote_literal as ql};
use pgrx::PgSqlErrorCode::*;

use crate::errors::fail;
use crate::postgres::guard::as_catalog_owner;
use crate::postgres::relation::{require_column, table, Table};
use crate::postgres::spi;

/// True only while one of credcrypt's maintenance routines works on table `tbl` in this
/// backend, as the role it runs them as. Used by the policies of `enable_owner_rls` (each
/// passes its own table, so other tables stay closed even to code that runs during
/// maintenance); it cannot be switched on from SQL.
#[pg_extern(volatile, parallel_unsafe, strict, name = "_maintenance_active")]
fn maintenance_active(tbl: pg_sys::Oid) -> bool {
    crate::postgres::scope::maintenance_active(tbl)
}

/// The owner an `enable_owner_rls` policy compares with: the setting's value for this
/// transaction, or NULL when it is unset or empty (so that no row matches: fail closed).
#[pg_extern(stable, parallel_safe, strict, name = "_owner_setting")]
fn owner_setting(setting: &str) -> Option<String> {
    let name = std::ffi::CString::new(setting).ok()?;
    // SAFETY: reads a setting by name (missing_ok: an unset custom setting is NULL).
    let v = unsafe { pg_sys::GetConfigOption(name.as_ptr(), true, false) };
    if v.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated string owned by the GUC machinery; copied at once.
    let v = unsafe { std::ffi::CStr::from_ptr(v) }.to_string_lossy().into_owned();
    (!v.is_empty()).then_some(v)
}

/// The policy that lets the owner of masked views (`credcrypt_masker`) read every row.
const MASKER_POLICY: &str = "credcrypt_masked_read";

/// Names of the policies `enable_owner_rls` creates.
const POLICIES: [(&str, &str); 5] = [
    ("credcrypt_owner_select", "SELECT"),
    ("credcrypt_owner_insert", "INSERT"),
    ("credcrypt_owner_update", "UPDATE"),
    ("credcrypt_owner_delete", "DELETE"),
    (MASKER_POLICY, "SELECT"),
];

/// Checks a setting name for `enable_owner_rls`/`set_owner`: a custom setting such as
/// `app.current_user_id` (two or more identifiers joined by dots), not one of credcrypt's.
fn check_setting(setting: &str) {
    let ident = |s: &str| {
        let mut c = s.chars();
        matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
    };
    let parts: Vec<&str> = setting.split('.').collect();
    if setting.len() > 63
        || parts.len() < 2
        || !parts.iter().all(|p| ident(p))
        || parts[0].eq_ignore_ascii_case("credcrypt")
    {
        fail(
            ERRCODE_INVALID_PARAMETER_VALUE,
            "the owner setting must be a custom setting name such as app.current_user_id",
            None,
            "Use a prefix.name setting of your application (letters, digits, underscores); credcrypt.* names are reserved.",
        );
    }
}

fn run(sql: &str) {
    spi::run(sql, &[]).unwrap_or_else(|e| {
        fail(ERRCODE_INTERNAL_ERROR, format!("pg_credcrypt: statement failed: {e}"), None, "Report this as a bug.")
    });
}

fn drop_policy(t: &Table, policy: &str) -> bool {
    let exists = spi::one::<bool>(
        "SELECT true FROM pg_catalog.pg_policy WHERE polrelid OPERATOR(pg_catalog.=) $1 AND polname OPERATOR(pg_catalog.=) $2::pg_catalog.name",
        &[t.oid.into(), policy.into()],
    );
    let found = matches!(exists, Ok(Some(true)));
    if found {
        run(&format!("DROP POLICY {policy} ON {}", t.sql_name));
    }
    found
}

/// The type an owner column is compared as: its base type, which must be one of
/// PostgreSQL's own (in `pg_catalog`) with an equality operator in `pg_catalog` — so that the
/// policy calls no function of anybody's choosing. Returns the qualified type name and the
/// qualified operator.
fn owner_type(t: &Table, owner_column: &str) -> (String, String) {
    let row = spi::three::<String, bool, pg_sys::Oid>(
        "SELECT bt.typname::pg_catalog.text, bt.typnamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace, bt.oid \
           FROM pg_catalog.pg_attribute a \
           JOIN pg_catalog.pg_type ty ON ty.oid OPERATOR(pg_catalog.=) a.atttypid \
           JOIN pg_catalog.pg_type bt ON bt.oid OPERATOR(pg_catalog.=) \
                CASE WHEN ty.typtype OPERATOR(pg_catalog.=) 'd' THEN ty.typbasetype ELSE ty.oid END \
          WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attname OPERATOR(pg_catalog.=) $2::pg_catalog.name",
        &[t.oid.into(), owner_column.into()],
    );
    let Ok((Some(name), Some(true), Some(base))) = row else {
        fail(
            ERRCODE_DATATYPE_MISMATCH,
            format!("owner column \"{owner_column}\" must have a built-in type"),
            None,
            "Use text, varchar, uuid or an integer type for the owner column.",
        )
    };
    // SAFETY: type cache lookup of an existing type.
    let eq = unsafe { (*pg_sys::lookup_type_cache(base, pg_sys::TYPECACHE_EQ_OPR as i32)).eq_opr };
    let in_catalog = spi::one::<bool>(
        "SELECT oprnamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace FROM pg_catalog.pg_operator \
          WHERE oid OPERATOR(pg_catalog.=) $1",
        &[eq.into()],
    );
    if eq == pg_sys::InvalidOid || !matches!(in_catalog, Ok(Some(true))) {
        fail(
            ERRCODE_DATATYPE_MISMATCH,
            format!("owner column \"{owner_column}\" has a type without a built-in equality operator"),
            None,
            "Use text, varchar, uuid or an integer type for the owner column.",
        );
    }
    (format!("pg_catalog.{}", qi(name)), "OPERATOR(pg_catalog.=)".into())
}

/// `enable_owner_rls(tbl, owner_column, setting)` of 0.1.0 (returns nothing).
#[pg_extern(volatile, name = "_enable_owner_rls")]
#[search_path(pg_catalog, pg_temp)]
fn enable_owner_rls_impl(tbl: pg_sys::Oid, owner_column: &str, setting: &str) {
    enable(tbl, owner_column, setting);
}

/// `enable_owner_rls(tbl, owner_column, setting)` — SQL wrapper `credcrypt.enable_owner_rls`.
/// Returns the policies it (re)created and whether row-level security was already enabled and
/// forced before this call.
#[pg_extern(volatile, name = "_owner_rls_on")]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)] // the row type is spelled out for pgrx's SQL generation
fn enable_owner_rls_v2(
    tbl: pg_sys::Oid,
    owner_column: &str,
    setting: &str,
) -> TableIterator<'static, (name!(policies, Vec<String>), name!(was_enabled, bool), name!(was_forced, bool))> {
    let (had_rls, had_force) = enable(tbl, owner_column, setting);
    TableIterator::once((POLICIES.iter().map(|(p, _)| (*p).to_owned()).collect(), had_rls, had_force))
}

fn enable(tbl: pg_sys::Oid, owner_column: &str, setting: &str) -> (bool, bool) {
    crate::postgres::catalog::require_current_sql();
    let t = table(tbl);
    require_column(&t, owner_column);
    check_setting(setting);
    let (typ, eq) = owner_type(&t, owner_column);
    let (had_rls, had_force) = spi::two::<bool, bool>(
        "SELECT relrowsecurity, relforcerowsecurity FROM pg_catalog.pg_class WHERE oid OPERATOR(pg_catalog.=) $1",
        &[t.oid.into()],
    )
    .map(|(a, b)| (a.unwrap_or(false), b.unwrap_or(false)))
    .unwrap_or((false, false));
    as_catalog_owner(|| {
        // The first enable records what to restore; later calls only change column and setting.
        spi::run(
            "INSERT INTO credcrypt.owner_rls (relid, owner_column, setting, had_rls, had_force) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (relid) DO UPDATE SET owner_column = EXCLUDED.owner_column, setting = EXCLUDED.setting",
            &[t.oid.into(), owner_column.into(), setting.into(), had_rls.into(), had_force.into()],
        )
    })
    .unwrap_or_else(|e| fail(ERRCODE_INTERNAL_ERROR, format!("pg_credcrypt: {e}"), None, "Report this as a bug."));
    let name = &t.sql_name;
    run(&format!("ALTER TABLE {name} ENABLE ROW LEVEL SECURITY"));
    run(&format!("ALTER TABLE {name} FORCE ROW LEVEL SECURITY"));
    let owner_matches = format!(
        "credcrypt._maintenance_active({}::pg_catalog.regclass) OR {} {eq} (credcrypt._owner_setting({}::pg_catalog.text))::{typ}",
        ql(name),
        qi(owner_column),
        ql(setting)
    );
    for (policy, command) in POLICIES {
        drop_policy(&t, policy);
        let (to, clauses) = match (policy, command) {
            // The masked views' owner reads every row (and only through those views: it has no
            // login and no members).
            (MASKER_POLICY, _) => ("credcrypt_masker", "USING (true)".to_owned()),
            (_, "INSERT") => ("PUBLIC", format!("WITH CHECK ({owner_matches})")),
            (_, "UPDATE") => ("PUBLIC", format!("USING ({owner_matches}) WITH CHECK ({owner_matches})")),
            _ => ("PUBLIC", format!("USING ({owner_matches})")),
        };
        run(&format!("CREATE POLICY {policy} ON {name} AS PERMISSIVE FOR {command} TO {to} {clauses}"));
    }
    (had_rls, had_force)
}

/// `disable_owner_rls(tbl)` — SQL wrapper `credcrypt.disable_owner_rls`. Undoes exactly what
/// `enable_owner_rls` did: drops its policies and restores the table's previous RLS flags.
#[pg_extern(volatile, name = "_disable_owner_rls")]
#[search_path(pg_catalog, pg_temp)]
fn disable_owner_rls_impl(tbl: pg_sys::Oid) {
    disable(tbl);
}

/// `disable_owner_rls(tbl)` returning how many policies it dropped and the table's row-level
/// security flags afterwards (as they were before the first `enable_owner_rls`).
#[pg_extern(volatile, name = "_owner_rls_off")]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)] // the row type is spelled out for pgrx's SQL generation
fn disable_owner_rls_v2(
    tbl: pg_sys::Oid,
) -> TableIterator<'static, (name!(policies_dropped, i32), name!(row_security, bool), name!(forced, bool))> {
    TableIterator::once(disable(tbl))
}

fn disable(tbl: pg_sys::Oid) -> (i32, bool, bool) {
    crate::postgres::catalog::require_current_sql();
    let t = table(tbl);
    let flags = spi::two::<bool, bool>(
        "SELECT had_rls, had_force FROM credcrypt.owner_rls WHERE relid OPERATOR(pg_catalog.=) $1",
        &[t.oid.into()],
    );
    let (had_rls, had_force) = match flags {
        Ok((Some(a), Some(b))) => (a, b),
        _ => fail(
            ERRCODE_UNDEFINED_OBJECT,
            format!("table {} is not under credcrypt.enable_owner_rls", t.sql_name),
            None,
            "SELECT * FROM credcrypt.owner_rls lists the tables it manages.",
        ),
    };
    let name = &t.sql_name;
    let mut dropped = 0;
    for (policy, _) in POLICIES {
        dropped += i32::from(drop_policy(&t, policy));
    }
    if !had_force {
        run(&format!("ALTER TABLE {name} NO FORCE ROW LEVEL SECURITY"));
    }
    if !had_rls {
        run(&format!("ALTER TABLE {name} DISABLE ROW LEVEL SECURITY"));
    }
    as_catalog_owner(|| {
        spi::run("DELETE FROM credcrypt.owner_rls WHERE relid OPERATOR(pg_catalog.=) $1", &[t.oid.into()])
    })
    .unwrap_or_else(|e| fail(ERRCODE_INTERNAL_ERROR, format!("pg_credcrypt: {e}"), None, "Report this as a bug."));
    (dropped, had_rls, had_force)
}

/// Sets the owner setting for the current transaction only (`set_config(setting, value, true)`):
/// what a NestJS interceptor or a Prisma `$transaction` calls first. Outside a transaction
/// block it would last for this one statement only, so it warns.
#[pg_extern(volatile)]
fn set_owner(value: Option<&str>, setting: default!(&str, "'app.current_user_id'")) -> Option<String> {
    check_setting(setting);
    // SAFETY: reads the transaction state.
    if !unsafe { pg_sys::IsTransactionBlock() } {
        pgrx::warning!(
            "credcrypt.set_owner outside a transaction block only lasts for this statement; call it after BEGIN"
        );
    }
    spi::one::<String>("SELECT pg_catalog.set_config($1, coalesce($2, ''), true)", &[setting.into(), value.into()])
        .ok()
        .flatten()
}
