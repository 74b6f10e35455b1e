//! `--web.config.file`: the web configuration file Prometheus exporters share
//! (prometheus/exporter-toolkit's format), read strictly: an unknown key, a value socklat
//! does not support or a bad bcrypt hash is an error naming the key, never ignored.
//!
//! Supported: `tls_server_config` (`cert_file`/`cert`, `key_file`/`key`, `client_ca_file`/
//! `client_ca`, `client_auth_type` `NoClientCert`, `VerifyClientCertIfGiven` or
//! `RequireAndVerifyClientCert`, `min_version`/`max_version` (TLS 1.2 and 1.3: rustls has
//! no older versions, so a minimum of TLS10/TLS11 means TLS12), `cipher_suites` (the TLS 1.2
//! AEAD suites rustls has; TLS 1.3 suites are not configurable, as in Go),
//! `curve_preferences` (`X25519`, `CurveP256`, `CurveP384`), `prefer_server_cipher_suites`),
//! `http_server_config` (`headers`; `http2` is accepted and HTTP/1.1 is served),
//! `basic_auth_users`. Not supported, refused: the client auth types that take an
//! unverified certificate (`RequestClientCert`, `RequireAnyClientCert`),
//! `client_allowed_sans`, `CurveP521`, CBC cipher suites, `rate_limit`.
//! Relative paths are relative to the file's directory, as in the exporter-toolkit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<HttpFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    rate_limit: Option<serde_norway::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TlsFile {
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
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

/// A web configuration, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebConfig {
    /// The file it came from.
    pub path: PathBuf,
    /// TLS, when any TLS key is set.
    pub tls: Option<TlsSettings>,
    /// User name -> bcrypt hash; empty: no authentication.
    pub users: BTreeMap<String, String>,
    /// Headers added to every response.
    pub headers: Vec<(String, String)>,
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

/// The headers `http_server_config.headers` may set, with their allowed values (empty:
/// any).
const HEADERS: [(&str, &[&str]); 5] = [
    ("Content-Security-Policy", &[]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-XSS-Protection", &[]),
    ("Strict-Transport-Security", &[]),
];

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

/// Reads and checks a web configuration file.
///
/// # Errors
/// Naming the file and the key that is wrong.
pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    // An empty file is an empty configuration (plain HTTP, no authentication).
    let file: FileConfig = if text.trim().is_empty() {
        FileConfig::default()
    } else {
        serde_norway::from_str(&text).map_err(|source| WebConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?
    };
    let invalid = |key: &'static str, why: String| WebConfigError::Invalid {
        path: path.to_path_buf(),
        key,
        why,
    };
    if file.rate_limit.is_some() {
        return Err(invalid(
            "rate_limit",
            "not supported by socklat (its connection limits are built in)".into(),
        ));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let tls = match file.tls_server_config {
        Some(t) => tls_settings(path, dir, t)?,
        None => None,
    };
    let mut headers = Vec::new();
    if let Some(h) = file.http_server_config {
        for (name, value) in h.headers.unwrap_or_default() {
            let Some((canonical, allowed)) =
                HEADERS.iter().find(|(n, _)| n.eq_ignore_ascii_case(&name))
            else {
                return Err(invalid(
                    "http_server_config.headers",
                    format!("HTTP header {name:?} can not be configured"),
                ));
            };
            if !allowed.is_empty() && !allowed.iter().any(|a| a.eq_ignore_ascii_case(&value)) {
                return Err(invalid(
                    "http_server_config.headers",
                    format!(
                        "invalid value for {canonical}: expected one of {allowed:?}, got {value:?}"
                    ),
                ));
            }
            if http::HeaderValue::from_str(&value).is_err() {
                return Err(invalid(
                    "http_server_config.headers",
                    format!("{canonical}: not a valid header value"),
                ));
            }
            headers.push(((*canonical).to_string(), value));
        }
        // `http2` (default true) is accepted: socklat serves HTTP/1.1 (ALPN "http/1.1"),
        // which every scraper speaks.
        let _ = h.http2;
    }
    let users = file.basic_auth_users.unwrap_or_default();
    for (user, hash) in &users {
        hash.parse::<bcrypt::HashParts>()
            .map_err(|source| WebConfigError::Hash {
                path: path.to_path_buf(),
                user: user.clone(),
                source,
            })?;
    }
    Ok(WebConfig {
        path: path.to_path_buf(),
        tls,
        users,
        headers,
    })
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

fn tls_settings(
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

impl WebConfig {
    /// The files the configuration depends on (itself included), to notice changes.
    #[must_use]
    pub fn files(&self) -> Vec<PathBuf> {
        let mut out = vec![self.path.clone()];
        if let Some(t) = &self.tls {
            for p in [Some(&t.cert), Some(&t.key), t.client_ca.as_ref()]
                .into_iter()
                .flatten()
            {
                if let Pem::File(f) = p {
                    out.push(f.clone());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(yaml: &str) -> Result<WebConfig, WebConfigError> {
        let dir = std::env::temp_dir().join(format!(
            "socklat-webcfg-{}-{}",
            std::process::id(),
            yaml.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("web.yml");
        std::fs::write(&p, yaml).unwrap();
        let r = load(&p);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    fn err(yaml: &str) -> String {
        crate::report::chain(&with(yaml).unwrap_err())
    }

    #[test]
    fn a_full_configuration_reads() {
        let c = with(
            "tls_server_config:\n  cert_file: c.pem\n  key_file: /k.pem\n  client_ca_file: ca.pem\n  \
             client_auth_type: RequireAndVerifyClientCert\n  min_version: TLS13\n  \
             cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\n  curve_preferences: [X25519]\n  \
             prefer_server_cipher_suites: false\n\
             http_server_config:\n  http2: true\n  headers:\n    X-Frame-Options: deny\n\
             basic_auth_users:\n  prom: $2y$04$fm3hQuDW/KvSfGXVY6QVp.zfYDYoGGZK2dAGH/Cvy3e79dUOV1Jx2\n",
        )
        .unwrap();
        let t = c.tls.as_ref().unwrap();
        assert_eq!(t.cert, Pem::File(c.path.parent().unwrap().join("c.pem")));
        assert_eq!(t.key, Pem::File("/k.pem".into()), "absolute paths stay");
        assert_eq!(t.client_auth, ClientAuth::RequireAndVerify);
        assert_eq!(
            (t.min_version, t.max_version),
            (Version::Tls13, Version::Tls13)
        );
        assert!(!t.prefer_server_order);
        assert_eq!(c.users.len(), 1);
        assert_eq!(c.headers, vec![("X-Frame-Options".into(), "deny".into())]);
        assert_eq!(c.files().len(), 4);
    }

    #[test]
    fn auth_without_tls_and_empty_files() {
        let c = with("basic_auth_users:\n  u: $2b$04$fm3hQuDW/KvSfGXVY6QVp.zfYDYoGGZK2dAGH/Cvy3e79dUOV1Jx2\n").unwrap();
        assert!(c.tls.is_none());
        assert_eq!(c.users.len(), 1);
        assert_eq!(with("").unwrap().tls, None);
        assert_eq!(with("tls_server_config: {}\n").unwrap().tls, None);
    }

    #[test]
    fn every_problem_names_its_key() {
        for (yaml, want) in [
            ("bogus: 1\n", "unknown field `bogus`"),
            (
                "tls_server_config:\n  cert_file: a\n",
                "tls_server_config.key_file: missing one of key or key_file",
            ),
            (
                "tls_server_config:\n  key_file: a\n",
                "missing one of cert or cert_file",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  cert: x\n  key_file: b\n",
                "not both",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert\n",
                "RequireAnyClientCert (an unverified client certificate) is not supported",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Maybe\n",
                "invalid ClientAuth: Maybe",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c\n",
                "without a Client Auth Policy",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n",
                "client_ca_file",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  max_version: TLS11\n",
                "unsupported TLS version TLS11",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n  max_version: TLS12\n",
                "lower than min_version",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n",
                "tls_server_config.cipher_suites: unknown or unsupported cipher: TLS_RSA_WITH_AES_128_CBC_SHA",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  curve_preferences: [CurveP521]\n",
                "unsupported curve: CurveP521",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_allowed_sans: [x]\n",
                "client_allowed_sans",
            ),
            (
                "http_server_config:\n  headers:\n    Server: x\n",
                "HTTP header \"Server\" can not be configured",
            ),
            (
                "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
                "invalid value for X-Frame-Options",
            ),
            (
                "basic_auth_users:\n  u: plain\n",
                "basic_auth_users.u: not a bcrypt hash",
            ),
            (
                "rate_limit:\n  interval: 1s\n  burst: 2\n",
                "rate_limit: not supported",
            ),
        ] {
            let e = err(yaml);
            assert!(e.contains(want), "{yaml:?}: {e}");
            assert!(e.contains("web.yml"), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        let missing = crate::report::chain(&load(Path::new("/nonexistent/web.yml")).unwrap_err());
        assert!(
            missing.contains("cannot read /nonexistent/web.yml"),
            "{missing}"
        );
    }
}
