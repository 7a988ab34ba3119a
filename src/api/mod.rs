//! The SQL functions of schema `credcrypt`.

pub mod crypto;
pub mod info;
pub mod report;
pub mod secret;
pub mod transit;
