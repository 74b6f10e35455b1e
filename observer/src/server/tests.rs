//! Tests of the server with a fixed source (no collector, no root): endpoints, HTTP/1.1
//! details, keep-alive, negotiation, gzip, the slow-client flood (TLS and basic
//! authentication are in `tls_tests`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Limits, MAX_REQUEST_BYTES, Routes, Settings, Source, serve};
use crate::exposition::reference::scrape_with_traffic;
use crate::exposition::{Scrape, parse::parse, protobuf};
use crate::histograms::Histograms;
use crate::http_client::{Response, request};
use crate::testutil::http_fetch;

pub(super) struct Fixed {
    ready: AtomicBool,
    scrape: Scrape,
}

impl Source for Fixed {
    fn request(&self) -> oneshot::Receiver<Scrape> {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(self.scrape.clone());
        rx
    }
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// A server on a loopback port, on a runtime of its own (dropped with it).
pub(super) struct Server {
    pub(super) rt: tokio::runtime::Runtime,
    pub(super) addr: SocketAddr,
    pub(super) src: Arc<Fixed>,
}

pub(super) fn start(settings: Settings, scrape: Scrape) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let src = Arc::new(Fixed {
        ready: AtomicBool::new(true),
        scrape,
    });
    rt.spawn(serve(
        listener,
        Arc::clone(&src) as Arc<dyn Source>,
        settings,
    ));
    Server { rt, addr, src }
}

fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    http_fetch(addr, "GET", path, headers).unwrap()
}

/// Writes raw bytes and reads until the server closes.
fn raw(addr: SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(req);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn endpoints_and_bad_requests() {
    let srv = start(Settings::plain(Histograms::Both), Scrape::default());
    let addr = srv.addr;
    let r = get(addr, "/metrics", &[]);
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("socklat_build_info"));
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    srv.src.ready.store(false, Ordering::Relaxed);
    assert_eq!(get(addr, "/healthz", &[]).status, 503);
    srv.src.ready.store(true, Ordering::Relaxed);
    let r = get(addr, "/healthz", &[]);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]));
    assert_eq!(get(addr, "/nope", &[]).status, 404);
    assert!(get(addr, "/", &[]).body.starts_with(b"<html>"));
    let r = http_fetch(addr, "POST", "/metrics", &[("Content-Length", "0")]).unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = raw(addr, b"garbage\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', MAX_REQUEST_BYTES * 2));
    let r = raw(addr, &huge);
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    let r = get(addr, "/metrics?x=1", &[]);
    assert!(
        String::from_utf8_lossy(&r.body).ends_with("socklat_build_info{version=\"0.1.0\"} 1\n"),
        "the query is ignored and the body complete"
    );
    let r = http_fetch(addr, "HEAD", "/metrics", &[]).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert!(r.header("content-type").is_some());
    let r = http_fetch(addr, "HEAD", "/healthz", &[]).unwrap();
    assert_eq!((r.status, r.header("content-length")), (200, Some("3")));
    // HTTP/1.0: answered, then closed.
    let r = raw(addr, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert!(r.starts_with("HTTP/1.0 200") && r.ends_with("ok\n"), "{r}");
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let srv = start(Settings::plain(Histograms::Both), scrape_with_traffic());
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for i in 0..20 {
        let path = if i % 2 == 0 { "/metrics" } else { "/healthz" };
        let r = request(&mut s, "GET", "test", path, &[]).unwrap();
        assert_eq!(r.status, 200, "request {i}");
        if i % 2 == 0 {
            assert_eq!(r.header("transfer-encoding"), Some("chunked"));
            parse(&String::from_utf8_lossy(&r.body)).unwrap();
        }
    }
    // Pipelined: both answered, in order.
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut r = std::io::BufReader::new(&mut s);
    assert_eq!(
        crate::http_client::read_response(&mut r, false)
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        crate::http_client::read_response(&mut r, false)
            .unwrap()
            .status,
        404
    );
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

const PROTOBUF: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=1,text/plain;q=0.5";

#[test]
fn formats_gzip_and_histogram_settings() {
    for hist in [Histograms::Classic, Histograms::Native, Histograms::Both] {
        let scrape = scrape_with_traffic();
        let srv = start(Settings::plain(hist), scrape.clone());
        let text = get(srv.addr, "/metrics", &[]);
        assert_eq!(
            text.body,
            crate::exposition::render_with(&scrape, hist).into_bytes()
        );
        assert_eq!(
            String::from_utf8_lossy(&text.body).contains("_bucket{"),
            hist.classic()
        );
        let gz = get(srv.addr, "/metrics", &[("Accept-Encoding", "gzip")]);
        assert_eq!(gz.header("content-encoding"), Some("gzip"));
        assert_eq!(gunzip(&gz.body), text.body);
        assert!(gz.body.len() < text.body.len() / 3, "gzip shrinks the text");
        let pb = get(
            srv.addr,
            "/metrics",
            &[("Accept", PROTOBUF), ("Accept-Encoding", "gzip")],
        );
        assert_eq!(pb.header("content-type"), Some(protobuf::CONTENT_TYPE));
        let bytes = gunzip(&pb.body);
        assert_eq!(bytes, protobuf::render(&scrape, hist));
        let families = protobuf::decode(&bytes).unwrap();
        let h = families
            .iter()
            .find(|f| f.name.as_deref() == Some("socklat_tcp_call_duration_seconds"))
            .and_then(|f| f.metric[0].histogram.clone())
            .unwrap();
        assert_eq!(h.bucket.is_empty(), !hist.classic(), "{}", hist.name());
        assert_eq!(h.schema.is_some(), hist.native(), "{}", hist.name());
    }
}

/// Clients that open connections and drip one byte of a request head every two seconds,
/// reconnecting when the server closes them: the head timeout closes each after 10 s
/// (`closed` counts it), and all the while scrapes every 100 ms, on one keep-alive
/// connection and on new ones, all succeed.
fn slow_client_flood(limits: Limits, clients: usize, seconds: u64) -> (usize, usize, Duration) {
    let srv = start(
        Settings {
            limits,
            ..Settings::plain(Histograms::Both)
        },
        scrape_with_traffic(),
    );
    let addr = srv.addr;
    let closed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    for i in 0..clients {
        let (closed, stop) = (Arc::clone(&closed), Arc::clone(&stop));
        srv.rt.spawn(crate::testutil::slow_client(
            addr,
            u64::try_from(i).unwrap(),
            stop,
            closed,
        ));
    }
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let mut keep = TcpStream::connect(addr).unwrap();
    keep.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut scrapes = 0;
    let mut slowest = Duration::ZERO;
    while t.elapsed() < Duration::from_secs(seconds) {
        let s = Instant::now();
        let r = if scrapes % 2 == 0 {
            request(
                &mut keep,
                "GET",
                "prom",
                "/metrics",
                &[("Accept-Encoding", "gzip")],
            )
        } else {
            http_fetch(addr, "GET", "/metrics", &[("Accept-Encoding", "gzip")])
        };
        let r = r.unwrap_or_else(|e| panic!("scrape {scrapes} failed: {e}"));
        assert_eq!(r.status, 200, "scrape {scrapes}");
        assert!(
            gunzip(&r.body).ends_with(b"} 1\n"),
            "scrape {scrapes} complete"
        );
        slowest = slowest.max(s.elapsed());
        scrapes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every slow client writes once more (finding out whether it was closed) before the end.
    std::thread::sleep(Duration::from_millis(2500));
    stop.store(true, Ordering::Relaxed);
    (scrapes, closed.load(Ordering::Relaxed), slowest)
}

#[test]
fn three_hundred_slow_clients_do_not_stop_scrapes() {
    let (scrapes, closed, slowest) = slow_client_flood(Limits::default(), 300, 13);
    eprintln!(
        "300 slow clients: {scrapes} scrapes, all 200; slowest {slowest:?}; {closed} slow connections closed by the head timeout"
    );
    assert!(scrapes >= 60, "{scrapes} scrapes");
    // Each slow client was cut off by the head timeout at least once.
    assert!(closed >= 300, "{closed} slow connections closed");
}

#[test]
fn slow_clients_beyond_the_connection_limit_do_not_stop_scrapes() {
    let limits = Limits {
        max_connections: 64,
        ..Limits::default()
    };
    let (scrapes, closed, slowest) = slow_client_flood(limits, 300, 5);
    eprintln!(
        "300 slow clients, 64 connections at most: {scrapes} scrapes, all 200; slowest {slowest:?}; {closed} slow connections closed"
    );
    assert!(scrapes >= 25, "{scrapes} scrapes");
    // Most slow clients were closed to make room long before their head timeout.
    assert!(closed >= 236, "{closed} closed");
}

#[test]
fn a_health_only_listener_serves_healthz_alone() {
    let srv = start(
        Settings {
            routes: Routes::HealthOnly,
            ..Settings::plain(Histograms::Both)
        },
        Scrape::default(),
    );
    assert_eq!(get(srv.addr, "/healthz", &[]).status, 200);
    assert_eq!(get(srv.addr, "/metrics", &[]).status, 404);
    assert_eq!(get(srv.addr, "/", &[]).status, 404);
}
