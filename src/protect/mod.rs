//! Protected columns: the catalog cache, the trigger and the administrative functions.
//! The catalog table, its upkeep triggers and the event triggers are in sql/protect.sql.

pub mod admin;
pub mod catalog;
pub mod trigger;
