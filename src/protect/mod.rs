//! Protected columns: designating them ([`designations`]), the catalog cache ([`catalog`]),
//! the row trigger ([`trigger`]), tables rewritten by DDL ([`rewrites`]), the SQL texts ([`sqlgen`]) and the views ([`views`]). The
//! catalog table, its upkeep triggers and the event triggers are in sql/protect.sql; the SQL
//! entry points in [`crate::api::protect`].

pub mod blind;
pub mod catalog;
pub mod designations;
pub mod rewrites;
pub mod sqlgen;
pub mod trigger;
pub mod views;
