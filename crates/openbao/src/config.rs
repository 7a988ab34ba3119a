//! What the worker configures: addresses, mount, timeouts, authentication; and the items of a
//! batch.

use std::path::PathBuf;
use std::time::Duration;

use zeroize::Zeroizing;

/// Client configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Base addresses, e.g. `http://127.0.0.1:8200`, tried in order.
    pub addrs: Vec<String>,
    /// Transit mount path (`transit`).
    pub mount: String,
    /// `X-Vault-Namespace`, if any.
    pub namespace: Option<String>,
    /// PEM CA bundle for `https` addresses.
    pub ca_file: Option<PathBuf>,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Budget for one call, failover and retries included.
    pub request_timeout: Duration,
    /// How to obtain a token.
    pub auth: Auth,
}

/// How the client obtains its token.
#[derive(Clone)]
pub enum Auth {
    /// A file holding the token.
    TokenFile(PathBuf),
    /// AppRole login.
    AppRole {
        /// Auth mount (`approle`).
        mount: String,
        /// Role id.
        role_id: String,
        /// File holding the secret id.
        secret_id_file: PathBuf,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::TokenFile(p) => f.debug_tuple("TokenFile").field(p).finish(),
            Auth::AppRole { mount, secret_id_file, .. } => f
                .debug_struct("AppRole")
                .field("mount", mount)
                .field("role_id", &"<hidden>")
                .field("secret_id_file", secret_id_file)
                .finish(),
        }
    }
}

/// One value of a batch.
pub struct Item {
    /// Plaintext (encrypt) or `vault:vN:…` (decrypt).
    pub data: Zeroizing<Vec<u8>>,
    /// Associated data, if any.
    pub associated_data: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_role_id() {
        let a = Auth::AppRole { mount: "approle".into(), role_id: "ROLE-SECRET".into(), secret_id_file: "/x".into() };
        assert!(!format!("{a:?}").contains("ROLE-SECRET"));
    }
}
