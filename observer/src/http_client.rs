//! The one small HTTP/1.1 client of the project, blocking: `socklat top` reads `/metrics`
//! with it (plain or over TLS), and the tests and xtask use it through `testutil`. One
//! request per call, on a stream the caller opened; the response's body is read by its
//! `Content-Length`, its chunked encoding or to the end of the stream, and is not
//! decompressed (ask for gzip only to measure it).

use std::io::{BufRead, BufReader, Read, Write};

/// An HTTP response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Header names in lowercase, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The value of header `name` (any case), if present.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A TLS client configuration (ring) that trusts the CA certificates of `ca_pem` and, when
/// given, presents a client certificate and key (PEM).
///
/// # Errors
/// When the PEM holds no usable certificate or key, or rustls refuses them.
pub fn tls_config(
    ca_pem: &[u8],
    client: Option<(&[u8], &[u8])>,
) -> Result<std::sync::Arc<rustls::ClientConfig>, rustls::Error> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let pem = |e: rustls_pki_types::pem::Error| rustls::Error::General(format!("PEM: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.map_err(pem)?)?;
    }
    if roots.is_empty() {
        return Err(rustls::Error::General(
            "no CA certificate in the PEM".into(),
        ));
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(pem)?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(pem)?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(config))
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// Largest response head and chunk-size line read, so that a hostile server cannot make
/// the client read forever into memory.
const MAX_LINE: u64 = 64 * 1024;

fn line<R: BufRead>(r: &mut R) -> std::io::Result<String> {
    let mut buf = Vec::new();
    r.take(MAX_LINE).read_until(b'\n', &mut buf)?;
    if !buf.ends_with(b"\n") {
        return Err(bad("response ended inside a line"));
    }
    String::from_utf8(buf)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
        .map_err(|_| bad("response head is not UTF-8"))
}

/// Appends exactly `n` bytes of `r` to `out`, growing it as they arrive (a length the
/// server claims is not allocated up front).
fn read_exactly<R: Read>(r: &mut R, n: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
    let want = u64::try_from(n).map_err(|_| bad("length too large"))?;
    let got = r.take(want).read_to_end(out)?;
    if got != n {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "response ended inside its body",
        ));
    }
    Ok(())
}

/// Reads one response; `head` when the request was `HEAD` (no body follows).
///
/// # Errors
/// When the stream fails or what it holds is not an HTTP/1.x response.
pub fn read_response<R: BufRead>(r: &mut R, head: bool) -> std::io::Result<Response> {
    let status_line = line(r)?;
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(bad("no status line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad("not an HTTP/1.x response"));
    }
    let status: u16 = code.parse().map_err(|_| bad("bad status code"))?;
    let mut resp = Response {
        status,
        ..Response::default()
    };
    loop {
        let l = line(r)?;
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').ok_or_else(|| bad("bad header line"))?;
        resp.headers
            .push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    if head || status / 100 == 1 || status == 204 || status == 304 {
        return Ok(resp);
    }
    if resp
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let size_line = line(r)?;
            let size = size_line.split(';').next().unwrap_or("").trim();
            let n = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
            if n == 0 {
                // Trailers, then the blank line.
                while !line(r)?.is_empty() {}
                break;
            }
            read_exactly(r, n, &mut resp.body)?;
            if !line(r)?.is_empty() {
                return Err(bad("chunk not followed by CRLF"));
            }
        }
    } else if let Some(len) = resp.header("content-length") {
        let n: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        read_exactly(r, n, &mut resp.body)?;
    } else {
        r.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

/// Sends one request on `stream` and reads its response. `headers` are added to `Host`.
///
/// # Errors
/// When the stream fails or the answer is not an HTTP/1.x response.
pub fn request<S: Read + Write>(
    stream: &mut S,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.flush()?;
    let mut r = BufReader::new(stream);
    let resp = read_response(&mut r, method == "HEAD")?;
    if !r.buffer().is_empty() {
        return Err(bad("bytes after the response"));
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_by_length_chunks_and_close() {
        let mut r: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc";
        let resp = read_response(&mut r, false).unwrap();
        assert_eq!((resp.status, resp.body.as_slice()), (200, &b"abc"[..]));
        assert_eq!(resp.header("x-a"), Some("b"));
        let mut r: &[u8] =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(read_response(&mut r, false).unwrap().body, b"abcde");
        let mut r: &[u8] = b"HTTP/1.0 404 Not Found\r\n\r\ngone";
        let resp = read_response(&mut r, false).unwrap();
        assert_eq!((resp.status, resp.body.as_slice()), (404, &b"gone"[..]));
        let mut r: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n";
        assert!(read_response(&mut r, true).unwrap().body.is_empty());
        for bad in [
            &b"SSH-2.0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc",
            b"HTTP/1.1 200",
        ] {
            let mut r = bad;
            assert!(read_response(&mut r, false).is_err(), "{bad:?}");
        }
    }
}
