//! Reports for administrators: what every protected value is encrypted with ([`usage`]:
//! `key_usage`, `safe_to_retire`) and the file-system and server-state part of
//! `security_report` ([`environment`]; the catalog checks are SQL, in sql/rls.sql). The SQL
//! entry points are in [`crate::api::report`].

pub(crate) mod environment;
pub(crate) mod usage;
