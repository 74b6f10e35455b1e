//! The HTTP server of `/metrics`, `/healthz` and `/`: hyper's HTTP/1.1 (keep-alive, one
//! task per connection), optionally TLS and basic authentication from `--web.config.file`,
//! bounded by [`limits`] so that idle or slow clients cannot lock a scraper out.
//!
//! - [`http`]: what each request gets (routes, methods, authentication, negotiation);
//! - [`body`]: response bodies, scrapes streamed from a rendering thread (gzip'd there);
//! - [`negotiate`]: format from `Accept`, gzip from `Accept-Encoding`;
//! - [`limits`]: the connection table and its bounds;
//! - [`web_config`], [`tls_settings`], [`tls`], [`auth`], [`watch`]: the web configuration
//!   file, its TLS settings and rustls configuration, basic authentication, and re-reading
//!   it when its files change.
//!
//! A scrape asks the collector for a snapshot through a channel and renders it here, so
//! rendering never runs on the event path and no lock is shared with it.

pub mod auth;
pub mod body;
pub mod config_error;
pub mod http;
pub mod limits;
pub mod negotiate;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod tls_settings;
#[cfg(test)]
mod tls_tests;
pub mod watch;
pub mod web_config;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::exposition::Scrape;
use crate::histograms::Histograms;
pub use limits::Limits;
use limits::{Conn, Registry};
pub use watch::WebState;

/// Largest request head accepted (hyper's read buffer); a larger one gets 431.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Time the collector has to answer a scrape.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the server gets its data.
pub trait Source: Send + Sync + 'static {
    /// Asks for a snapshot; the answer arrives on the receiver.
    fn request(&self) -> oneshot::Receiver<Scrape>;
    /// Whether the probes are attached (`/healthz`).
    fn ready(&self) -> bool;
}

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routes {
    /// `/metrics`, `/healthz` and `/`.
    All,
    /// `/healthz` only, plain HTTP, no authentication (`--web.healthz-listen`).
    HealthOnly,
}

/// How a listener serves.
pub struct Settings {
    pub routes: Routes,
    /// The buckets histograms carry (`--histograms`).
    pub histograms: Histograms,
    /// TLS and basic authentication (`--web.config.file`).
    pub web: Option<Arc<WebState>>,
    pub limits: Limits,
}

impl Settings {
    /// Every route, plain HTTP, default limits.
    #[must_use]
    pub fn plain(histograms: Histograms) -> Self {
        Self {
            routes: Routes::All,
            histograms,
            web: None,
            limits: Limits::default(),
        }
    }
}

/// What every connection of a listener shares.
pub struct Shared {
    pub source: Arc<dyn Source>,
    pub settings: Settings,
    http: http1::Builder,
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, source: Arc<dyn Source>, settings: Settings) {
    let registry = Arc::new(Registry::new(settings.limits));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Also the keep-alive idle time and a slowly dripped head (hyper starts this timer
        // whenever it waits for a head and closes the connection when it fires).
        .header_read_timeout(settings.limits.header_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_REQUEST_BYTES);
    let shared = Arc::new(Shared {
        source,
        settings,
        http: builder,
    });
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    // Full of connections in requests: this one is closed unanswered.
                    if let Some(conn) = registry.admit() {
                        tokio::spawn(connection(tcp, conn, Arc::clone(&shared)));
                    }
                }
                // EMFILE and friends: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            _ = tick.tick() => registry.reap(),
        }
    }
}

/// One connection: the TLS handshake (bounded by the header timeout), then HTTP until the
/// client or hyper closes it, or the connection table tells it to go.
async fn connection(tcp: TcpStream, conn: Conn, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    let entry = conn.entry();
    let active = shared.settings.web.as_ref().map(|w| w.active());
    let tls = active.as_ref().and_then(|a| a.tls.clone());
    let conn = Arc::new(conn);
    match tls {
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(shared.settings.limits.header_timeout, acceptor.accept(tcp));
            let stream = tokio::select! {
                r = handshake => match r {
                    Ok(Ok(s)) => s,
                    // A failed handshake (a wrong certificate, not TLS) or a slow one.
                    _ => return,
                },
                () = entry.closed() => return,
            };
            serve_http(stream, conn, active, shared, &entry).await;
        }
        None => serve_http(tcp, conn, active, shared, &entry).await,
    }
}

async fn serve_http<I>(
    io: I,
    conn: Arc<Conn>,
    active: Option<Arc<watch::Active>>,
    shared: Arc<Shared>,
    entry: &limits::Entry,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc_shared = Arc::clone(&shared);
    let svc = hyper::service::service_fn(move |req| {
        let (shared, conn, active) = (Arc::clone(&svc_shared), Arc::clone(&conn), active.clone());
        async move { Ok::<_, Infallible>(http::handle(req, &shared, &conn, active.as_deref()).await) }
    });
    let served = shared.http.serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        _ = served => {}
        () = entry.closed() => {}
    }
}
