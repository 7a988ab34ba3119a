//! What a DDL command collected for event triggers did, read from its `CollectedCommand`
//! (the `pg_ddl_command` of `pg_event_trigger_ddl_commands()`), as PostgreSQL's own
//! `test_ddl_deparse` module reads it.

use pgrx::pg_sys;

/// The columns (relation, attribute number) whose type an `ALTER TABLE` command changed
/// (`ALTER COLUMN … TYPE`, also on partitions it recursed to); empty for any other command.
///
/// # Safety
/// `cmd` must be the `pg_ddl_command` datum of a row of `pg_event_trigger_ddl_commands()`,
/// read inside the event trigger that received it.
pub unsafe fn retyped_columns(cmd: pg_sys::Datum) -> Vec<(pg_sys::Oid, i16)> {
    let cmd = cmd.cast_mut_ptr::<pg_sys::CollectedCommand>();
    let mut out = Vec::new();
    // SAFETY: per the contract, `cmd` is a live CollectedCommand; an ALTER TABLE's subcommand
    // list holds CollectedATSubcmd entries whose parse trees are nodes (checked by tag).
    unsafe {
        if cmd.is_null() || (*cmd).type_ != pg_sys::CollectedCommandType::SCT_AlterTable {
            return out;
        }
        for sub in pgrx::PgList::<pg_sys::CollectedATSubcmd>::from_pg((*cmd).d.alterTable.subcmds).iter_ptr() {
            if sub.is_null()
                || (*sub).parsetree.is_null()
                || (*(*sub).parsetree).type_ != pg_sys::NodeTag::T_AlterTableCmd
            {
                continue;
            }
            let at = (*sub).parsetree.cast::<pg_sys::AlterTableCmd>();
            let address = (*sub).address;
            if (*at).subtype == pg_sys::AlterTableType::AT_AlterColumnType
                && address.classId == pg_sys::RelationRelationId
            {
                if let Ok(attnum) = i16::try_from(address.objectSubId) {
                    out.push((address.objectId, attnum));
                }
            }
        }
    }
    out
}
