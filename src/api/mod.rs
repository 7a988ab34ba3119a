//! The SQL functions of schema `credcrypt`: every `#[pg_extern]` and `#[pg_trigger]` entry
//! point, thin over the features below.

pub mod blind;
pub mod crypto;
pub mod info;
pub mod migrate;
pub mod protect;
pub mod report;
pub mod rls;
pub mod secret;
pub mod transit;
