//! Glue to PostgreSQL internals that everything above uses: privilege and search-path guards,
//! relation lookup, backend-local scopes, SPI helpers and the log hook.

pub mod catalog;
pub mod ddl;
pub mod guard;
pub mod log_redact;
pub mod relation;
pub mod restricted;
pub mod scope;
pub mod spi;
pub mod subxact;
pub mod xact;
