//! The maintenance path through row-level security.
//!
//! Policies created by `credcrypt.enable_owner_rls` let a row through when
//! `credcrypt._maintenance_active(<the table>)` is true. That function reads a backend-local Rust variable
//! which only [`maintenance`] sets, around the extension's own statements (the empty-column
//! check of `protect_column`, `unprotect_column … decrypt_existing`, the re-encryption
//! procedure). It is not a GUC: no `SET`, `set_config`, `ALTER ROLE … SET` or connection
//! option can reach it, so a user cannot open the path. The administrative functions that use
//! it are executable by `credcrypt_admin` only and require ownership of the table.

use std::cell::Cell;

use pgrx::prelude::*;
use pgrx::spi::{quote_identifier as qi, quote_literal as ql, Spi};
use pgrx::PgSqlErrorCode::*;

use crate::errors::fail;
use crate::protect::admin::{as_catalog_owner, require_column, table};

thread_local! {
    /// The table under maintenance (its OID), or 0.
    static ACTIVE: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f` with the maintenance path open for table `relid` only, in this backend; closes it
/// afterwards, also when `f` raises an error. The callers have checked that the current user
/// owns the table.
pub(crate) fn maintenance<R>(relid: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    struct Reset(u32);
    impl Drop for Reset {
        fn drop(&mut self) {
            ACTIVE.with(|a| a.set(self.0));
        }
    }
    let _reset = Reset(ACTIVE.with(|a| a.replace(relid.to_u32())));
    f()
}

/// True only while one of credcrypt's maintenance routines works on table `tbl` in this
/// backend. Used by the policies of `enable_owner_rls` (each passes its own table, so other
/// tables stay closed even to code that runs during maintenance, such as a trigger); it cannot
/// be switched on from SQL.
#[pg_extern(volatile, parallel_unsafe, strict, name = "_maintenance_active")]
fn maintenance_active(tbl: pg_sys::Oid) -> bool {
    let active = ACTIVE.with(Cell::get);
    active != 0 && active == tbl.to_u32()
}

/// Names of the four policies `enable_owner_rls` creates.
const POLICIES: [(&str, &str); 4] = [
    ("credcrypt_owner_select", "SELECT"),
    ("credcrypt_owner_insert", "INSERT"),
    ("credcrypt_owner_update", "UPDATE"),
    ("credcrypt_owner_delete", "DELETE"),
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
    Spi::run(sql).unwrap_or_else(|e| {
        fail(ERRCODE_INTERNAL_ERROR, format!("pg_credcrypt: statement failed: {e}"), None, "Report this as a bug.")
    });
}

fn drop_policy(t: &crate::protect::admin::Table, policy: &str) {
    let exists = crate::postgres::spi::one::<bool>(
        "SELECT true FROM pg_catalog.pg_policy WHERE polrelid = $1 AND polname = $2",
        &[t.oid.into(), policy.into()],
    );
    if matches!(exists, Ok(Some(true))) {
        run(&format!("DROP POLICY {policy} ON {}", t.sql_name));
    }
}

/// `enable_owner_rls(tbl, owner_column, setting)` — SQL wrapper `credcrypt.enable_owner_rls`.
#[pg_extern(volatile, name = "_enable_owner_rls")]
fn enable_owner_rls_impl(tbl: pg_sys::Oid, owner_column: &str, setting: &str) {
    let t = table(tbl);
    require_column(&t, owner_column);
    check_setting(setting);
    let typ: String = crate::postgres::spi::one(
        "SELECT format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attname = $2",
        &[t.oid.into(), owner_column.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| "text".into());
    let (had_rls, had_force) = crate::postgres::spi::two::<bool, bool>(
        "SELECT relrowsecurity, relforcerowsecurity FROM pg_catalog.pg_class WHERE oid = $1",
        &[t.oid.into()],
    )
    .map(|(a, b)| (a.unwrap_or(false), b.unwrap_or(false)))
    .unwrap_or((false, false));
    as_catalog_owner(|| {
        // The first enable records what to restore; later calls only change column and setting.
        Spi::run_with_args(
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
        "credcrypt._maintenance_active({}::regclass) OR {} = nullif(current_setting({}, true), '')::{typ}",
        ql(name),
        qi(owner_column),
        ql(setting)
    );
    for (policy, command) in POLICIES {
        drop_policy(&t, policy);
        let clauses = match command {
            "INSERT" => format!("WITH CHECK ({owner_matches})"),
            "UPDATE" => format!("USING ({owner_matches}) WITH CHECK ({owner_matches})"),
            _ => format!("USING ({owner_matches})"),
        };
        run(&format!("CREATE POLICY {policy} ON {name} AS PERMISSIVE FOR {command} TO PUBLIC {clauses}"));
    }
}

/// `disable_owner_rls(tbl)` — SQL wrapper `credcrypt.disable_owner_rls`. Undoes exactly what
/// `enable_owner_rls` did: drops its policies and restores the table's previous RLS flags.
#[pg_extern(volatile, name = "_disable_owner_rls")]
fn disable_owner_rls_impl(tbl: pg_sys::Oid) {
    let t = table(tbl);
    let flags = crate::postgres::spi::two::<bool, bool>(
        "SELECT had_rls, had_force FROM credcrypt.owner_rls WHERE relid = $1",
        &[t.oid.into()],
    );
    let (had_rls, had_force) = match flags {
        Ok((Some(a), Some(b))) => (a, b),
        _ => fail(
            ERRCODE_UNDEFINED_OBJECT,
            format!("table {} is not under credcrypt.enable_owner_rls", t.display),
            None,
            "SELECT * FROM credcrypt.owner_rls lists the tables it manages.",
        ),
    };
    let name = &t.sql_name;
    for (policy, _) in POLICIES {
        drop_policy(&t, policy);
    }
    if !had_force {
        run(&format!("ALTER TABLE {name} NO FORCE ROW LEVEL SECURITY"));
    }
    if !had_rls {
        run(&format!("ALTER TABLE {name} DISABLE ROW LEVEL SECURITY"));
    }
    as_catalog_owner(|| Spi::run_with_args("DELETE FROM credcrypt.owner_rls WHERE relid = $1", &[t.oid.into()]))
        .unwrap_or_else(|e| fail(ERRCODE_INTERNAL_ERROR, format!("pg_credcrypt: {e}"), None, "Report this as a bug."));
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
    crate::postgres::spi::one::<String>(
        "SELECT pg_catalog.set_config($1, coalesce($2, ''), true)",
        &[setting.into(), value.into()],
    )
    .ok()
    .flatten()
}
