//! Thin glue to PostgreSQL internals that is not a SQL function.

pub mod log_redact;
pub mod spi;
