//! What a DDL command collected for event triggers did, read from its `CollectedCommand`
//! (the `pg_ddl_command` of `pg_event_trigger_ddl_commands()`), as PostgreSQL's own
//! `test_ddl_deparse` module reads it.

use pgrx::pg_sys;

/// One subcommand of an `ALTER TABLE` that the protection checks look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subcommand {
    /// `ALTER COLUMN … TYPE` of (relation, attribute number), also on partitions it recursed to.
    Retype(pg_sys::Oid, i16),
    /// `ATTACH PARTITION` to the table (the command's relation) of the partition named
    /// (schema as written, or None; relation name). PostgreSQL 15 reports no address for it.
    Attach(pg_sys::Oid, Option<String>, String),
}

/// A C string of the parse tree, if set.
unsafe fn text(p: *const std::ffi::c_char) -> Option<String> {
    // SAFETY: parse-tree strings are NUL-terminated or NULL (caller's contract).
    (!p.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// The column type changes and partition attachments of an `ALTER TABLE` command; empty for
/// any other command.
///
/// # Safety
/// `cmd` must be the `pg_ddl_command` datum of a row of `pg_event_trigger_ddl_commands()`,
/// read inside the event trigger that received it.
pub unsafe fn subcommands(cmd: pg_sys::Datum) -> Vec<Subcommand> {
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
            match (*at).subtype {
                pg_sys::AlterTableType::AT_AlterColumnType if address.classId == pg_sys::RelationRelationId => {
                    if let Ok(attnum) = i16::try_from(address.objectSubId) {
                        out.push(Subcommand::Retype(address.objectId, attnum));
                    }
                }
                pg_sys::AlterTableType::AT_AttachPartition => {
                    let def = (*at).def;
                    if def.is_null() || (*def).type_ != pg_sys::NodeTag::T_PartitionCmd {
                        continue;
                    }
                    let name = (*def.cast::<pg_sys::PartitionCmd>()).name;
                    if name.is_null() {
                        continue;
                    }
                    if let Some(rel) = text((*name).relname) {
                        out.push(Subcommand::Attach((*cmd).d.alterTable.objectId, text((*name).schemaname), rel));
                    }
                }
                _ => {}
            }
        }
    }
    out
}
