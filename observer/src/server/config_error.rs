//! The error of the web configuration (`--web.config.file`): shared by the reader of the
//! file, the TLS settings and the rustls configuration built from them.

use std::path::PathBuf;

/// Why the web configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    /// A file cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file the configuration names cannot be read.
    #[error("{}: {key}: cannot read {}", path.display(), file.display())]
    Named {
        path: PathBuf,
        key: &'static str,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not parse or has unknown keys.
    #[error("{}: not a valid web configuration", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_norway::Error,
    },
    /// A key has a value socklat does not accept.
    #[error("{}: {key}: {why}", path.display())]
    Invalid {
        path: PathBuf,
        key: &'static str,
        why: String,
    },
    /// A certificate or key is not PEM of the expected kind.
    #[error("{}: {key}: no usable PEM", path.display())]
    Pem {
        path: PathBuf,
        key: &'static str,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// rustls refuses the certificate, key or CA (e.g. key and certificate do not match).
    #[error("{}: tls_server_config", path.display())]
    Tls {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// The client CA cannot verify client certificates.
    #[error("{}: tls_server_config.client_ca_file", path.display())]
    ClientCa {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// A `basic_auth_users` entry is not a bcrypt hash.
    #[error("{}: basic_auth_users.{user}: not a bcrypt hash", path.display())]
    Hash {
        path: PathBuf,
        user: String,
        #[source]
        source: bcrypt::BcryptError,
    },
}
