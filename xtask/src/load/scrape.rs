//! Scrapes as a Prometheus makes them, measured: the body's bytes on the wire, the series
//! it holds (sample lines of the text format; for protobuf, the series Prometheus stores
//! from it with native histograms on) and the time from connecting to the last byte.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use observer::exposition::parse::parse;
use observer::exposition::protobuf;
use observer::http_client::read_response;

/// What Prometheus 2.42 sends with `--enable-feature=native-histograms`.
pub const ACCEPT_PROTOBUF: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
/// What it sends without.
pub const ACCEPT_TEXT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// One measured scrape.
pub struct Measured {
    /// Body bytes as sent (compressed when gzip).
    pub wire: usize,
    /// Body bytes after decompression.
    pub plain: usize,
    pub series: usize,
    pub ms: f64,
}

/// Scrapes `addr` once with the given `Accept`, with or without gzip. The time is the
/// exchange's alone (request written, every byte read to the close, by std's optimised
/// `read_to_end`); the response is taken apart afterwards, untimed, so that this debug-built
/// client does not weigh on the figures.
pub fn measure(addr: SocketAddr, accept: &str, gzip: bool) -> Result<Measured> {
    use std::io::Write;
    let mut head = format!(
        "GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nAccept: {accept}\r\n"
    );
    if gzip {
        head.push_str("Accept-Encoding: gzip\r\n");
    }
    head.push_str("\r\n");
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).context("connect")?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).context("scrape")?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let r = read_response(&mut raw.as_slice(), false)?;
    if r.status != 200 {
        bail!("scrape answered {}", r.status);
    }
    let body = if r.header("content-encoding") == Some("gzip") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(r.body.as_slice()).read_to_end(&mut out)?;
        out
    } else {
        r.body.clone()
    };
    let series = if r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/vnd.google.protobuf"))
    {
        protobuf::series(&protobuf::decode(&body)?)
    } else {
        parse(&String::from_utf8_lossy(&body))?.len()
    };
    Ok(Measured {
        wire: r.body.len(),
        plain: body.len(),
        series,
        ms,
    })
}
