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

/// The value of `setting` for this transaction, or None when unset or empty (see
/// [`crate::api::rls`]'s `_owner_setting`).
pub(crate) fn owner_setting(setting: &str) -> Option<String> {
    // Only names an owner setting can have: never a built-in setting (no dot) or one of
    // credcrypt's own, whatever the caller passes (the function is callable by everyone).
    if !valid_owner_setting(setting) {
        return None;
    }
    let name = std::ffi::CString::new(setting).ok()?;
    // SAFETY: reads a setting by name (missing_ok: an unset custom setting is NULL), with
    // PostgreSQL's own privilege check (restrict_privileged: a superuser-only setting of another
    // extension raises an error for a role that may not read it).
    let v = unsafe { pg_sys::GetConfigOption(name.as_ptr(), true, true) };
    if v.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated string owned by the GUC machinery; copied at once.
    let v = unsafe { std::ffi::CStr::from_ptr(v) }.to_string_lossy().into_owned();
    (!v.is_empty()).then_some(v)
}

/// Whether `setting` can be an owner setting: a custom `prefix.name` (two or more identifiers
/// joined by dots, at most 63 bytes), not in the reserved `credcrypt.` namespace.
fn valid_owner_setting(setting: &str) -> bool {
    let ident = |s: &str| {
        let mut c = s.chars();
        matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
    };
    let parts: Vec<&str> = setting.split('.').collect();
    setting.len() <= 63
        && parts.len() >= 2
        && parts.iter().all(|p| ident(p))
        && !parts[0].eq_ignore_ascii_case("credcrypt")
}

/// The policy that lets the owner of masked views (`credcrypt_masker`) read every row.
const MASKER_POLICY: &str = "credcrypt_masked_read";

/// Names of the policies `enable_owner_rls` creates.
pub(crate) const POLICIES: [(&str, &str); 5] = [
    ("credcrypt_owner_select", "SELECT"),
    ("credcrypt_owner_insert", "INSERT"),
    ("credcrypt_owner_update", "UPDATE"),
    ("credcrypt_owner_delete", "DELETE"),
    (MASKER_POLICY, "SELECT"),
];

/// Checks a setting name for `enable_owner_rls`/`set_owner`: a custom setting such as
/// `app.current_user_id` (two or more identifiers joined by dots), not one of credcrypt's.
pub(crate) fn check_setting(setting: &str) {
    if !valid_owner_setting(setting) {
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

pub(crate) fn enable(tbl: pg_sys::Oid, owner_column: &str, setting: &str) -> (bool, bool) {
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
    .unwrap_or_else(|e| fail(ERRCODE_INTERNAL_ERROR, format!("pg_credcrypt: {e}"), None, "Report this as a bug."));
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

pub(crate) fn disable(tbl: pg_sys::Oid) -> (i32, bool, bool) {
    crate::postgres::catalog::require_current_sql();
    let t = table(tbl);
    let flags = spi::two::<bool, bool>(
        "SELECT had_rls, had_force FROM credcrypt.owner_rls WHERE relid OPERATOR(pg_catalog.=) $1",
        &[t.oid.into()],
    );
    let (had_rls, had_force) = match flags {
        Ok((Some(a), Some(b))) => (a, b),
        _ => crate::errors::undefined(
            format!("table {} is not under credcrypt.enable_owner_rls", t.sql_name),
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

/// `set_owner`: sets the owner setting for the current transaction only
/// (`set_config(setting, value, true)`), warning outside a transaction block, where it would
/// last for one statement only. Returns the new value.
pub(crate) fn set_owner(value: Option<&str>, setting: &str) -> Option<String> {
    check_setting(setting);
    // SAFETY: reads the transaction state.
    if !unsafe { pg_sys::IsTransactionBlock() } {
        pgrx::warning!(
            "credcrypt.set_owner outside a transaction block only lasts for this statement; call it after BEGIN"
        );
    }
    spi::one::<String>("SELECT pg_catalog.set_config($1, coalesce($2, ''), true)", &[setting.into(), value.into()])
        .unwrap_or_else(|e| fail(ERRCODE_INTERNAL_ERROR, format!("pg_credcrypt: {e}"), None, "Report this as a bug."))
}
