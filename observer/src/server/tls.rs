//! The rustls server configuration of a `tls_server_config`, on the ring provider (passed
//! explicitly: no process-wide default is installed or needed). HTTP/1.1 is the only ALPN
//! protocol offered.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::config_error::WebConfigError;
use super::tls_settings::{ClientAuth, Pem, TlsSettings, Version};

/// The ring provider restricted to the configured suites and curves.
fn provider(t: &TlsSettings) -> CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    if let Some(names) = &t.cipher_suites {
        // Go (and so the exporter-toolkit) configures TLS 1.2 suites only; TLS 1.3 keeps
        // all of its own. The listed order is the preference order.
        let (tls13, tls12): (Vec<_>, Vec<_>) = p
            .cipher_suites
            .iter()
            .partition(|s| s.version() == &rustls::version::TLS13);
        let mut suites: Vec<_> = tls13.into_iter().copied().collect();
        for n in names {
            suites.extend(
                tls12
                    .iter()
                    .copied()
                    .filter(|s| format!("{:?}", s.suite()) == *n),
            );
        }
        p.cipher_suites = suites;
    }
    if let Some(curves) = &t.curves {
        use rustls::crypto::ring::kx_group::{SECP256R1, SECP384R1, X25519};
        p.kx_groups = curves
            .iter()
            .filter_map(|c| match c.as_str() {
                "X25519" => Some(X25519),
                "CurveP256" => Some(SECP256R1),
                "CurveP384" => Some(SECP384R1),
                _ => None,
            })
            .collect();
    }
    p
}

fn versions(t: &TlsSettings) -> Vec<&'static SupportedProtocolVersion> {
    let mut v = Vec::new();
    if t.max_version >= Version::Tls13 {
        v.push(&rustls::version::TLS13);
    }
    if t.min_version <= Version::Tls12 {
        v.push(&rustls::version::TLS12);
    }
    v
}

fn pem_error(
    path: &std::path::Path,
    key: &'static str,
) -> impl FnOnce(rustls_pki_types::pem::Error) -> WebConfigError {
    let path = path.to_path_buf();
    move |source| WebConfigError::Pem { path, key, source }
}

/// The certificates of a PEM (at least one).
fn certs(
    pem: &Pem,
    path: &std::path::Path,
    key: &'static str,
) -> Result<Vec<CertificateDer<'static>>, WebConfigError> {
    let bytes = pem.bytes(path, key)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error(path, key))?;
    if certs.is_empty() {
        return Err(pem_error(path, key)(
            rustls_pki_types::pem::Error::NoItemsFound,
        ));
    }
    Ok(certs)
}

/// Builds the server configuration, reading the certificate, key and client CA now.
///
/// # Errors
/// When a file cannot be read, is not PEM of the expected kind, or rustls refuses it.
pub fn server_config(
    t: &TlsSettings,
    path: &std::path::Path,
) -> Result<Arc<ServerConfig>, WebConfigError> {
    let provider = Arc::new(provider(t));
    let chain = certs(&t.cert, path, "tls_server_config.cert_file")?;
    let key = PrivateKeyDer::from_pem_slice(&t.key.bytes(path, "tls_server_config.key_file")?)
        .map_err(pem_error(path, "tls_server_config.key_file"))?;
    let tls = |source| WebConfigError::Tls {
        path: path.to_path_buf(),
        source,
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions(t))
        .map_err(tls)?;
    let builder = match (t.client_auth, &t.client_ca) {
        (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca, path, "tls_server_config.client_ca_file")? {
                roots.add(c).map_err(tls)?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let verifier = if auth == ClientAuth::VerifyIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|source| WebConfigError::ClientCa {
                    path: path.to_path_buf(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(tls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ignore_client_order = t.prefer_server_order;
    Ok(Arc::new(config))
}
