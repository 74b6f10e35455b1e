//! `tls_server_config` of the web configuration file, checked: which certificate, key and
//! client CA, which client certificates are asked for, the protocol versions, suites and
//! curves (see `web_config` for what is supported and what is refused). `tls` builds the
//! rustls configuration from it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::config_error::WebConfigError;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsFile {
    cert_file: Option<String>,
    key_file: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    client_ca_file: Option<String>,
    client_ca: Option<String>,
    client_auth_type: Option<String>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Vec<String>>,
}

/// PEM from a file or inline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pem {
    File(PathBuf),
    Inline(String),
}

impl Pem {
    /// The PEM text's bytes; `config` and `key` name where it was configured.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn bytes(&self, config: &Path, key: &'static str) -> Result<Vec<u8>, WebConfigError> {
        match self {
            Pem::File(p) => std::fs::read(p).map_err(|source| WebConfigError::Named {
                path: config.to_path_buf(),
                key,
                file: p.clone(),
                source,
            }),
            Pem::Inline(s) => Ok(s.as_bytes().to_vec()),
        }
    }
}

/// Which client certificates the TLS server asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// None.
    None,
    /// Verified against the client CA when given.
    VerifyIfGiven,
    /// Required and verified against the client CA.
    RequireAndVerify,
}

/// TLS protocol versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    Tls12,
    Tls13,
}

/// The `tls_server_config`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: Pem,
    pub key: Pem,
    pub client_ca: Option<Pem>,
    pub client_auth: ClientAuth,
    pub min_version: Version,
    pub max_version: Version,
    /// TLS 1.2 suites by IANA name, in preference order (`None`: rustls's).
    pub cipher_suites: Option<Vec<String>>,
    /// Key exchange groups in preference order (`None`: rustls's).
    pub curves: Option<Vec<String>>,
    /// The server's suite order wins (`prefer_server_cipher_suites`, default true).
    pub prefer_server_order: bool,
}

/// The TLS 1.2 suites rustls (ring) has, by the names Go's `tls.CipherSuiteName` gives.
pub const TLS12_SUITES: [&str; 6] = [
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// The curves of `curve_preferences` socklat has (ring has no P-521).
pub const CURVES: [&str; 3] = ["X25519", "CurveP256", "CurveP384"];

fn version(
    path: &Path,
    key: &'static str,
    v: Option<&str>,
    default: Version,
) -> Result<Version, WebConfigError> {
    match v {
        None => Ok(default),
        Some("TLS13") => Ok(Version::Tls13),
        Some("TLS12") => Ok(Version::Tls12),
        Some("TLS10" | "TLS11") if key == "tls_server_config.min_version" => {
            log::info!(
                "{}: {key}: rustls has no TLS 1.0 or 1.1: TLS 1.2 is the minimum",
                path.display()
            );
            Ok(Version::Tls12)
        }
        Some(other) => Err(WebConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            why: format!("unsupported TLS version {other} (TLS12 or TLS13)"),
        }),
    }
}

fn pem(
    path: &Path,
    dir: &Path,
    file_key: &'static str,
    file: Option<String>,
    inline: Option<String>,
) -> Result<Option<Pem>, WebConfigError> {
    match (file, inline) {
        (Some(_), Some(_)) => Err(WebConfigError::Invalid {
            path: path.to_path_buf(),
            key: file_key,
            why: "set either the file or the inline PEM, not both".into(),
        }),
        (Some(f), None) => Ok(Some(Pem::File(dir.join(f)))),
        (None, Some(s)) => Ok(Some(Pem::Inline(s))),
        (None, None) => Ok(None),
    }
}

/// `client_auth_type`, checked against the presence of a client CA.
fn client_auth(
    path: &Path,
    kind: Option<&str>,
    client_ca: Option<&Pem>,
) -> Result<ClientAuth, WebConfigError> {
    let invalid = |key: &'static str, why: String| WebConfigError::Invalid {
        path: path.to_path_buf(),
        key,
        why,
    };
    let client_auth = match kind.unwrap_or("NoClientCert") {
        "NoClientCert" => ClientAuth::None,
        "VerifyClientCertIfGiven" => ClientAuth::VerifyIfGiven,
        "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerify,
        other @ ("RequestClientCert" | "RequireAnyClientCert" | "RequireClientCert") => {
            return Err(invalid(
                "tls_server_config.client_auth_type",
                format!(
                    "{other} (an unverified client certificate) is not supported: use \
                     VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file"
                ),
            ));
        }
        other => {
            return Err(invalid(
                "tls_server_config.client_auth_type",
                format!("invalid ClientAuth: {other}"),
            ));
        }
    };
    match (client_auth, client_ca) {
        (ClientAuth::None, Some(_)) => {
            return Err(invalid(
                "tls_server_config.client_ca_file",
                "client CA's have been configured without a Client Auth Policy".into(),
            ));
        }
        (ClientAuth::VerifyIfGiven | ClientAuth::RequireAndVerify, None) => {
            return Err(invalid(
                "tls_server_config.client_ca_file",
                "client certificates are verified against client_ca_file (or client_ca), which is missing".into(),
            ));
        }
        _ => {}
    }
    Ok(client_auth)
}

/// `cipher_suites` and `curve_preferences` name only what socklat has.
fn check_names(
    path: &Path,
    suites: Option<&[String]>,
    curves: Option<&[String]>,
) -> Result<(), WebConfigError> {
    let invalid = |key: &'static str, why: String| WebConfigError::Invalid {
        path: path.to_path_buf(),
        key,
        why,
    };
    if let Some(suites) = suites {
        for s in suites {
            if !TLS12_SUITES.contains(&s.as_str()) {
                return Err(invalid(
                    "tls_server_config.cipher_suites",
                    format!(
                        "unknown or unsupported cipher: {s} (supported: {})",
                        TLS12_SUITES.join(", ")
                    ),
                ));
            }
        }
    }
    if let Some(curves) = curves {
        for c in curves {
            if !CURVES.contains(&c.as_str()) {
                return Err(invalid(
                    "tls_server_config.curve_preferences",
                    format!(
                        "unknown or unsupported curve: {c} (supported: {})",
                        CURVES.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

pub(super) fn tls_settings(
    path: &Path,
    dir: &Path,
    t: TlsFile,
) -> Result<Option<TlsSettings>, WebConfigError> {
    let invalid = |key: &'static str, why: String| WebConfigError::Invalid {
        path: path.to_path_buf(),
        key,
        why,
    };
    let enabled = t.cert_file.is_some()
        || t.cert.is_some()
        || t.key_file.is_some()
        || t.key.is_some()
        || t.client_ca_file.is_some()
        || t.client_ca.is_some()
        || t.client_auth_type.is_some();
    if !enabled {
        return Ok(None);
    }
    let cert = pem(
        path,
        dir,
        "tls_server_config.cert_file",
        t.cert_file,
        t.cert,
    )?
    .ok_or_else(|| {
        invalid(
            "tls_server_config.cert_file",
            "missing one of cert or cert_file".into(),
        )
    })?;
    let key =
        pem(path, dir, "tls_server_config.key_file", t.key_file, t.key)?.ok_or_else(|| {
            invalid(
                "tls_server_config.key_file",
                "missing one of key or key_file".into(),
            )
        })?;
    let client_ca = pem(
        path,
        dir,
        "tls_server_config.client_ca_file",
        t.client_ca_file,
        t.client_ca,
    )?;
    let client_auth = client_auth(path, t.client_auth_type.as_deref(), client_ca.as_ref())?;
    if t.client_allowed_sans.is_some_and(|s| !s.is_empty()) {
        return Err(invalid(
            "tls_server_config.client_allowed_sans",
            "not supported by socklat".into(),
        ));
    }
    let min_version = version(
        path,
        "tls_server_config.min_version",
        t.min_version.as_deref(),
        Version::Tls12,
    )?;
    let max_version = version(
        path,
        "tls_server_config.max_version",
        t.max_version.as_deref(),
        Version::Tls13,
    )?;
    if min_version > max_version {
        return Err(invalid(
            "tls_server_config.max_version",
            "lower than min_version".into(),
        ));
    }
    check_names(
        path,
        t.cipher_suites.as_deref(),
        t.curve_preferences.as_deref(),
    )?;
    Ok(Some(TlsSettings {
        cert,
        key,
        client_ca,
        client_auth,
        min_version,
        max_version,
        cipher_suites: t.cipher_suites.filter(|s| !s.is_empty()),
        curves: t.curve_preferences.filter(|c| !c.is_empty()),
        prefer_server_order: t.prefer_server_cipher_suites.unwrap_or(true),
    }))
}
