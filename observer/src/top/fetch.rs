//! The HTTP client of `socklat top`: one GET of the daemon's `/metrics` per refresh, over
//! plain HTTP or, for an `https://` URL, TLS verified against `--ca-file` (with a client
//! certificate for a daemon that requires one), with basic authentication when a user is
//! given.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;

use crate::http_client::{request, tls_config};

/// Why the metrics could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Neither an `http://` nor an `https://` URL.
    #[error("{0}: only http:// and https:// URLs are supported")]
    Scheme(String),
    /// An `https://` URL without the CA to verify the daemon with.
    #[error("{0}: an https:// URL needs --ca-file (the CA that signed the daemon's certificate)")]
    NoCa(String),
    /// A file given on the command line cannot be read.
    #[error("cannot read {}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TLS client cannot be set up from the given files.
    #[error("TLS client (--ca-file, --cert-file, --key-file)")]
    Tls(#[source] rustls::Error),
    /// The host does not resolve.
    #[error("{url}: no address")]
    NoAddress {
        url: String,
        #[source]
        source: Option<std::io::Error>,
    },
    /// The daemon cannot be reached.
    #[error("cannot reach the daemon at {url}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed midway (a TLS handshake refused included).
    #[error("{url}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered with another status than 200.
    #[error("{url}: HTTP {status}{}", if *status == 401 { " (give --user and SOCKLAT_TOP_PASSWORD or --password-file)" } else { "" })]
    Status { url: String, status: u16 },
}

/// How to reach the daemon.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// CA certificates (PEM) to verify an `https://` daemon with.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for a daemon that requires one.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Basic authentication user and password.
    pub user: Option<String>,
    pub password: Option<String>,
}

/// A client for one URL.
pub struct Client {
    url: String,
    hostport: String,
    host: String,
    path: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    authorization: Option<String>,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, FetchError> {
    std::fs::read(path).map_err(|source| FetchError::File {
        path: path.clone(),
        source,
    })
}

impl Client {
    /// Checks the URL and reads the TLS files.
    ///
    /// # Errors
    /// On another scheme, or a file that cannot be read or used.
    pub fn new(url: &str, o: &Options) -> Result<Self, FetchError> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(FetchError::Scheme(url.to_string()));
        };
        let (hostport, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/metrics" } else { path };
        let host = match hostport.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
            None => hostport,
        };
        let tls = if https {
            let ca = read(
                o.ca_file
                    .as_ref()
                    .ok_or_else(|| FetchError::NoCa(url.to_string()))?,
            )?;
            let client = match (&o.cert_file, &o.key_file) {
                (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                _ => None,
            };
            Some(
                tls_config(
                    &ca,
                    client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
                )
                .map_err(FetchError::Tls)?,
            )
        } else {
            None
        };
        let authorization = o.user.as_ref().map(|u| {
            let pair = format!("{u}:{}", o.password.as_deref().unwrap_or(""));
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        Ok(Self {
            url: url.to_string(),
            hostport: if hostport.contains(':') {
                hostport.to_string()
            } else {
                format!("{hostport}:{}", if https { 443 } else { 80 })
            },
            host: host.to_string(),
            path: path.to_string(),
            tls,
            authorization,
        })
    }

    /// The URL.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// GETs the URL and returns the body.
    ///
    /// # Errors
    /// Naming the URL and what failed.
    pub fn fetch(&self) -> Result<String, FetchError> {
        let url = || self.url.clone();
        let io = |source| FetchError::Io { url: url(), source };
        let addr = self
            .hostport
            .to_socket_addrs()
            .map_err(|e| FetchError::NoAddress {
                url: url(),
                source: Some(e),
            })?
            .next()
            .ok_or_else(|| FetchError::NoAddress {
                url: url(),
                source: None,
            })?;
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|source| FetchError::Connect { url: url(), source })?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io)?;
        let mut headers = vec![("Connection", "close")];
        if let Some(a) = &self.authorization {
            headers.push(("Authorization", a));
        }
        let resp = match &self.tls {
            None => {
                let mut tcp = tcp;
                request(&mut tcp, "GET", &self.hostport, &self.path, &headers)
            }
            Some(config) => {
                let name = rustls_pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| io(std::io::Error::other(e)))?;
                let conn = rustls::ClientConnection::new(Arc::clone(config), name)
                    .map_err(|e| io(std::io::Error::other(e)))?;
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                request(&mut tls, "GET", &self.hostport, &self.path, &headers)
            }
        }
        .map_err(io)?;
        if resp.status != 200 {
            return Err(FetchError::Status {
                url: url(),
                status: resp.status,
            });
        }
        Ok(String::from_utf8_lossy(&resp.body).into_owned())
    }
}

/// GETs a plain `http://` URL and returns the body.
///
/// # Errors
/// Naming the URL and what failed.
pub fn fetch(url: &str) -> Result<String, FetchError> {
    Client::new(url, &Options::default())?.fetch()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_names_the_problem() {
        let e = fetch("ftp://x/metrics").unwrap_err().to_string();
        assert!(e.contains("only http:// and https://"), "{e}");
        let e = fetch("https://x/metrics").unwrap_err().to_string();
        assert!(e.contains("needs --ca-file"), "{e}");
        let e = crate::report::chain(&fetch("http://127.0.0.1:1/metrics").unwrap_err());
        assert!(e.contains("cannot reach the daemon"), "{e}");
        let o = Options {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Options::default()
        };
        let e = crate::report::chain(&Client::new("https://h:1/", &o).err().unwrap());
        assert!(e.contains("cannot read /nonexistent/ca.pem"), "{e}");
    }
}
