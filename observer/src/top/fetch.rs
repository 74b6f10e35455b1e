//! The HTTP client of `socklat top`: one GET of the daemon's `/metrics`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Why the metrics could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Not an `http://` URL.
    #[error("{0}: only http:// URLs are supported")]
    Scheme(String),
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
    /// The exchange failed midway.
    #[error("{url}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    /// The answer is not an HTTP response.
    #[error("{0}: not an HTTP response")]
    NotHttp(String),
    /// The daemon answered with another status than 200.
    #[error("{url}: {status}")]
    Status { url: String, status: String },
}

/// GETs `url` (plain `http://host:port/path`) and returns the body.
///
/// # Errors
/// Naming the URL and what failed.
pub fn fetch(url: &str) -> Result<String, FetchError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| FetchError::Scheme(url.to_string()))?;
    let (hostport, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/metrics" } else { path };
    let io = |source| FetchError::Io {
        url: url.to_string(),
        source,
    };
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| FetchError::NoAddress {
            url: url.to_string(),
            source: Some(e),
        })?
        .next()
        .ok_or_else(|| FetchError::NoAddress {
            url: url.to_string(),
            source: None,
        })?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|source| {
        FetchError::Connect {
            url: url.to_string(),
            source,
        }
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).map_err(io)?;
    let text = String::from_utf8_lossy(&body);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| FetchError::NotHttp(url.to_string()))?;
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200") {
        return Err(FetchError::Status {
            url: url.to_string(),
            status: status.to_string(),
        });
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_names_the_problem() {
        let e = fetch("https://x/metrics").unwrap_err().to_string();
        assert!(e.contains("only http://"), "{e}");
        let e = crate::report::chain(&fetch("http://127.0.0.1:1/metrics").unwrap_err());
        assert!(e.contains("cannot reach the daemon"), "{e}");
    }
}
