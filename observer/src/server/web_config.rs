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

pub use super::config_error::WebConfigError;
use super::tls_settings::{Pem, TlsFile, TlsSettings, tls_settings};

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
struct HttpFile {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
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

/// The headers `http_server_config.headers` may set, with their allowed values (empty:
/// any).
const HEADERS: [(&str, &[&str]); 5] = [
    ("Content-Security-Policy", &[]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-XSS-Protection", &[]),
    ("Strict-Transport-Security", &[]),
];

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
    use crate::server::tls_settings::{ClientAuth, Version};

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
