//! Tests of TLS and basic authentication from the web configuration, with a fixed source
//! (no root): scrapes with and without credentials, another CA, client certificates,
//! certificates and users re-read when their files change, `socklat top`'s client, and
//! bad configurations refused with one line.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[path = "../../tests/common/certs.rs"]
mod certs;

use super::tests::start;
use super::{Settings, WebState};
use crate::exposition::Scrape;
use crate::histograms::Histograms;
use crate::http_client::{Response, request, tls_config};
use crate::testutil::http_fetch;

/// A scratch directory of the test's own.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("socklat-srv-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
    fn write(&self, name: &str, body: &str) -> PathBuf {
        let p = self.0.join(name);
        // Through a new file renamed over the old one, as a Secret update does.
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tls_get(
    addr: SocketAddr,
    ca: &str,
    client: Option<&certs::Leaf>,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    let config = tls_config(
        ca.as_bytes(),
        client.map(|c| (c.cert.as_bytes(), c.key.as_bytes())),
    )
    .map_err(std::io::Error::other)?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    request(&mut tls, "GET", "localhost", path, headers)
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn web_settings(config: &Path) -> Settings {
    Settings {
        web: Some(Arc::new(WebState::load(config).unwrap())),
        ..Settings::plain(Histograms::Both)
    }
}

#[test]
fn tls_and_basic_auth() {
    let dir = Dir::new("tls");
    let ca = certs::Ca::new("socklat test CA");
    let leaf = ca.server();
    dir.write("cert.pem", &leaf.cert);
    dir.write("key.pem", &leaf.key);
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let config = dir.write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n\
             http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n\
             basic_auth_users:\n  prom: {hash}\n"
        ),
    );
    let srv = start(web_settings(&config), Scrape::default());
    let auth = basic("prom", "s3cret");
    let ok = tls_get(
        srv.addr,
        &ca.pem(),
        None,
        "/metrics",
        &[("Authorization", &auth)],
    )
    .unwrap();
    assert_eq!(ok.status, 200);
    assert!(String::from_utf8_lossy(&ok.body).contains("socklat_build_info"));
    assert_eq!(ok.header("x-content-type-options"), Some("nosniff"));
    let none = tls_get(srv.addr, &ca.pem(), None, "/metrics", &[]).unwrap();
    assert_eq!(none.status, 401);
    assert!(
        none.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Basic"))
    );
    let wrong = basic("prom", "guess");
    let r = tls_get(
        srv.addr,
        &ca.pem(),
        None,
        "/metrics",
        &[("Authorization", &wrong)],
    )
    .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        tls_get(srv.addr, &ca.pem(), None, "/", &[]).unwrap().status,
        401
    );
    // /healthz needs no credentials (kubelet probes).
    assert_eq!(
        tls_get(srv.addr, &ca.pem(), None, "/healthz", &[])
            .unwrap()
            .status,
        200
    );
    // A client that does not trust the certificate: the handshake fails.
    let other = certs::Ca::new("another CA");
    let e = tls_get(srv.addr, &other.pem(), None, "/healthz", &[]).unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    // Plain HTTP to the TLS port gets no HTTP answer.
    assert!(http_fetch(srv.addr, "GET", "/healthz", &[]).is_err());
    // `socklat top`'s client, with the CA file and the user.
    let ca_file = dir.write("ca.pem", &ca.pem());
    let url = format!("https://localhost:{}/metrics", srv.addr.port());
    let mut options = crate::top::Options {
        ca_file: Some(ca_file),
        user: Some("prom".into()),
        password: Some("s3cret".into()),
        ..crate::top::Options::default()
    };
    let body = crate::top::Client::new(&url, &options)
        .unwrap()
        .fetch()
        .unwrap();
    assert!(body.contains("socklat_build_info"));
    options.password = None;
    let e = crate::report::chain(
        &crate::top::Client::new(&url, &options)
            .unwrap()
            .fetch()
            .unwrap_err(),
    );
    assert!(e.contains("HTTP 401"), "{e}");
}

#[test]
fn certificates_are_re_read_when_they_change() {
    let dir = Dir::new("reload");
    let first = certs::Ca::new("first CA");
    let leaf = first.server();
    dir.write("cert.pem", &leaf.cert);
    dir.write("key.pem", &leaf.key);
    let config = dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n",
    );
    let srv = start(web_settings(&config), Scrape::default());
    assert_eq!(
        tls_get(srv.addr, &first.pem(), None, "/healthz", &[])
            .unwrap()
            .status,
        200
    );
    let second = certs::Ca::new("second CA");
    let leaf = second.server();
    // A certificate without its key yet: the old pair stays in force.
    dir.write("cert.pem", &leaf.cert);
    assert_eq!(
        tls_get(srv.addr, &first.pem(), None, "/healthz", &[])
            .unwrap()
            .status,
        200
    );
    dir.write("key.pem", &leaf.key);
    assert_eq!(
        tls_get(srv.addr, &second.pem(), None, "/healthz", &[])
            .unwrap()
            .status,
        200
    );
    assert!(tls_get(srv.addr, &first.pem(), None, "/healthz", &[]).is_err());
    // Users added to the file take effect too.
    let hash = bcrypt::hash("pw", 4).unwrap();
    dir.write(
        "web.yml",
        &format!("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\nbasic_auth_users:\n  u: {hash}\n"),
    );
    assert_eq!(
        tls_get(srv.addr, &second.pem(), None, "/metrics", &[])
            .unwrap()
            .status,
        401
    );
    let auth = basic("u", "pw");
    let r = tls_get(
        srv.addr,
        &second.pem(),
        None,
        "/metrics",
        &[("Authorization", &auth)],
    );
    assert_eq!(r.unwrap().status, 200);
}

#[test]
fn client_certificates_are_required_and_verified() {
    let dir = Dir::new("mtls");
    let ca = certs::Ca::new("server CA");
    let clients = certs::Ca::new("client CA");
    let leaf = ca.server();
    dir.write("cert.pem", &leaf.cert);
    dir.write("key.pem", &leaf.key);
    dir.write("clients.pem", &clients.pem());
    let config = dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  client_ca_file: clients.pem\n  \
         client_auth_type: RequireAndVerifyClientCert\n  min_version: TLS13\n",
    );
    let srv = start(web_settings(&config), Scrape::default());
    let good = clients.client("prometheus");
    let r = tls_get(srv.addr, &ca.pem(), Some(&good), "/metrics", &[]).unwrap();
    assert_eq!(r.status, 200);
    assert!(
        tls_get(srv.addr, &ca.pem(), None, "/metrics", &[]).is_err(),
        "no client certificate"
    );
    let stranger = certs::Ca::new("stranger").client("intruder");
    assert!(
        tls_get(srv.addr, &ca.pem(), Some(&stranger), "/metrics", &[]).is_err(),
        "a client certificate of another CA"
    );
}

#[test]
fn a_bad_web_configuration_is_one_line_naming_the_key() {
    let dir = Dir::new("bad");
    let leaf = certs::Ca::new("ca").server();
    dir.write("cert.pem", &leaf.cert);
    let other = certs::Ca::new("ca2").server();
    dir.write("key.pem", &other.key);
    let config = dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n",
    );
    let e = crate::report::chain(&WebState::load(&config).err().unwrap());
    assert!(e.contains("web.yml: tls_server_config"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    let config = dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: missing.pem\n  key_file: key.pem\n",
    );
    let e = crate::report::chain(&WebState::load(&config).err().unwrap());
    assert!(
        e.contains("cannot read") && e.contains("missing.pem"),
        "{e}"
    );
}
