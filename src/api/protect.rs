//! The SQL entry points of protected columns (wrappers in sql/protect.sql): argument shapes
//! and results only; the work is in [`crate::protect`]. The `_protect_column`,
//! `_unprotect_column`, `_create_*_view` functions keep the 0.1.0 signatures (void) for the
//! 0.1.0 SQL (docs/architecture.md, library compatibility).

use credcrypt_core::column::column_context as context_of;
use pgrx::prelude::*;

use crate::errors::OrRaise as _;
use crate::protect::designations::{protect, unprotect};
use crate::protect::views::{decrypted_view, drop_masked_view as drop_view, masked_view};

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
    protect(tbl, col, key_name, bind_columns, mask_column, mask_prefix, mask_suffix, json_path, existing_values, None);
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
    let p = protect(
        tbl,
        col,
        key_name,
        bind_columns,
        mask_column,
        mask_prefix,
        mask_suffix,
        json_path,
        existing_values,
        None,
    );
    TableIterator::once((p.binding_id, p.key, p.trigger_created))
}

/// `protect_column(…, blind_index_column)` — see docs/protected-columns.md. SQL wrapper:
/// `credcrypt.protect_column`. Returns the designation's binding id, the key it resolved to,
/// and whether it created the table's trigger.
#[pg_extern(volatile, name = "_protect_designation")]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::too_many_arguments, clippy::type_complexity)] // mirrors the SQL signature
fn protect_column_v3(
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
) -> TableIterator<'static, (name!(binding_id, String), name!(key_name, String), name!(trigger_created, bool))> {
    let p = protect(
        tbl,
        col,
        key_name,
        bind_columns,
        mask_column,
        mask_prefix,
        mask_suffix,
        json_path,
        existing_values,
        blind_index_column,
    );
    TableIterator::once((p.binding_id, p.key, p.trigger_created))
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

/// `drop_masked_view(view)`: drops a view made by `create_masked_view` (owned by
/// `credcrypt_masker`, so its creator cannot drop it directly); the caller must own the table
/// the view reads.
#[pg_extern(volatile, name = "_drop_masked_view")]
#[search_path(pg_catalog, pg_temp)]
fn drop_masked_view(view: pg_sys::Oid) {
    drop_view(view);
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

/// Whether `protect_column` is creating the protection trigger of `tbl` right now (for the DDL
/// check, which then does not take the trigger's clones for partitions being attached).
#[pg_extern(volatile, strict, parallel_safe, name = "_protect_in_progress")]
fn protect_in_progress(tbl: pg_sys::Oid) -> bool {
    crate::postgres::scope::protect_in_progress(tbl)
}

/// Records that a table is being rewritten (called by the `table_rewrite` event trigger).
#[pg_extern(volatile, strict, name = "_note_rewrite")]
fn note_rewrite(tbl: pg_sys::Oid) {
    crate::protect::rewrites::note(tbl);
}

/// Whether a table was rewritten in this transaction (for the DDL check at its end).
#[pg_extern(volatile, strict, name = "_rewritten")]
fn was_rewritten(tbl: pg_sys::Oid) -> bool {
    crate::protect::rewrites::rewritten(tbl)
}

/// The column type changes (`retype`, with the attribute) and partition attachments (`attach`)
/// of an `ALTER TABLE` command, for the DDL check at its end: the blind index and mask columns
/// are the protection trigger's alone, and `ALTER COLUMN … TYPE … USING` or a partition attached
/// with values in them would write them without the trigger.
#[pg_extern(
    volatile,
    strict,
    sql = "CREATE FUNCTION credcrypt._ddl_subcommands(cmd pg_catalog.pg_ddl_command) RETURNS TABLE (action pg_catalog.text, relid pg_catalog.oid, attnum pg_catalog.int2, schema_name pg_catalog.text, rel_name pg_catalog.text) STRICT VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';"
)]
#[allow(clippy::type_complexity)] // the row type is spelled out for pgrx's SQL generation
fn ddl_subcommands(
    cmd: pgrx::datum::Internal,
) -> TableIterator<
    'static,
    (
        name!(action, String),
        name!(relid, pg_sys::Oid),
        name!(attnum, Option<i16>),
        name!(schema_name, Option<String>),
        name!(rel_name, Option<String>),
    ),
> {
    use crate::postgres::ddl::{subcommands, Subcommand};
    let subs = match cmd.unwrap() {
        // SAFETY: the SQL declaration takes a pg_ddl_command, which only
        // pg_event_trigger_ddl_commands() produces, inside the event trigger that reads it.
        Some(d) => unsafe { subcommands(d) },
        None => Vec::new(),
    };
    TableIterator::new(subs.into_iter().map(|s| match s {
        Subcommand::Retype(rel, att) => ("retype".to_owned(), rel, Some(att), None, None),
        Subcommand::Attach(parent, schema, name) => ("attach".to_owned(), parent, None, schema, Some(name)),
    }))
}

/// The trigger function installed by `protect_column` (see [`crate::protect::trigger`]).
#[pg_trigger]
fn protect_trigger<'a>(
    t: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
    // pgrx would report a returned `Err` as an internal error: raise it with its own SQLSTATE.
    Ok(crate::protect::trigger::fire(t).unwrap_or_else(|e| e.raise()))
}

/// The trigger function of tables with a `kv:` designation (see
/// [`crate::protect::trigger::fire_kv`]).
#[pg_trigger]
fn kv_trigger<'a>(
    t: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
    Ok(crate::protect::trigger::fire_kv(t).unwrap_or_else(|e| e.raise()))
}

/// Destroys, once the transaction commits, every KV secret of designation `binding_id` under
/// `key_name` (a `kv:` key; anything else is ignored) — for `credcrypt_on_sql_drop`.
#[pg_extern(volatile, name = "_kv_forget_binding")]
#[search_path(pg_catalog, pg_temp)]
fn kv_forget_binding(binding_id: &str, key_name: &str) {
    if let Ok(credcrypt_core::KeyRef::Kv(mount)) = credcrypt_core::KeyRef::parse(key_name) {
        crate::providers::kv::binding_target(binding_id)
            .and_then(|t| crate::providers::kv::forget(&mount, &[t]))
            .or_raise();
    }
}

/// SQL form of [`crate::protect::catalog::type_class`], for the catalog's upkeep triggers and
/// checks.
#[pg_extern(immutable, strict, parallel_safe, name = "_type_class")]
fn type_class_sql(typ: pg_sys::Oid, typmod: i32) -> String {
    crate::protect::catalog::type_class(typ, typmod)
}
