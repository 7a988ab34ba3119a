//! What the client suites against a real OpenBao share.

use std::time::Duration;

use credcrypt_openbao::{Auth, Client, Config};

/// A client of `addrs` (Transit at `transit/`) authenticated by the token in file `token`, with
/// short timeouts.
pub fn client(addrs: Vec<String>, token: std::path::PathBuf) -> Client {
    Client::new(Config {
        addrs,
        mount: "transit".into(),
        namespace: None,
        ca_file: None,
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(5),
        auth: Auth::TokenFile(token),
    })
    .unwrap()
}
