//! What each request gets: `GET`/`HEAD` only (405 otherwise), `/healthz` without
//! authentication (so that kubelet probes need no credentials; it tells only whether the
//! probes are attached), everything else behind basic authentication when users are
//! configured (401 with `WWW-Authenticate`), `/metrics` in the negotiated format, `/` a
//! page of links, 404 for the rest. The configured headers go on every response.

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::body::Body;
use super::limits::{Conn, Request as Busy};
use super::negotiate::{self, Format};
use super::watch::Active;
use super::{Routes, SCRAPE_TIMEOUT, Shared};
use crate::exposition::protobuf;

const TEXT: &str = "text/plain; charset=utf-8";
/// The text exposition format's content type.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
const INDEX: &str = "<html><body>socklat: <a href=\"/metrics\">/metrics</a> <a href=\"/healthz\">/healthz</a></body></html>\n";

fn plain(status: StatusCode, content_type: &'static str, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The response to one request.
pub async fn handle(
    req: Request<Incoming>,
    shared: &Shared,
    conn: &Conn,
    active: Option<&Active>,
) -> Response<Body> {
    let busy = conn.begin();
    let mut resp = route(&req, shared, &busy, active).await;
    if let Some(a) = active {
        for (k, v) in &a.headers {
            resp.headers_mut().insert(k.clone(), v.clone());
        }
    }
    // The connection counts as busy until the body has gone out.
    resp.map(|b| b.holding(busy))
}

async fn route(
    req: &Request<Incoming>,
    shared: &Shared,
    busy: &Busy,
    active: Option<&Active>,
) -> Response<Body> {
    let head_only = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head_only {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let path = req.uri().path();
    if path == "/healthz" {
        return if shared.source.ready() {
            plain(StatusCode::OK, TEXT, "ok\n")
        } else {
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                "probes not attached\n",
            )
        };
    }
    if shared.settings.routes == Routes::HealthOnly {
        return plain(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found (this listener serves /healthz only)\n",
        );
    }
    if let Some(users) = active.and_then(|a| a.users.as_ref()) {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        if !users.check(given).await {
            let mut r = plain(StatusCode::UNAUTHORIZED, TEXT, "Unauthorized\n");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"socklat\""),
            );
            return r;
        }
    }
    match path {
        "/metrics" => metrics(req, shared, busy, head_only).await,
        "/" => plain(StatusCode::OK, "text/html; charset=utf-8", INDEX),
        _ => plain(StatusCode::NOT_FOUND, TEXT, "not found\n"),
    }
}

async fn metrics(
    req: &Request<Incoming>,
    shared: &Shared,
    busy: &Busy,
    head_only: bool,
) -> Response<Body> {
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let format = negotiate::format(header(header::ACCEPT));
    let gzip = negotiate::gzip(header(header::ACCEPT_ENCODING));
    if !busy.begin_scrape().await {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "too many scrapes in progress\n",
        );
    }
    let Ok(Ok(scrape)) = tokio::time::timeout(SCRAPE_TIMEOUT, shared.source.request()).await else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "collector not answering\n",
        );
    };
    let body = if head_only {
        Body::empty()
    } else {
        Body::scrape(scrape, format, shared.settings.histograms, gzip)
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(match format {
            Format::Text => TEXT_FORMAT,
            Format::Protobuf => protobuf::CONTENT_TYPE,
        }),
    );
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    h.insert(
        header::VARY,
        HeaderValue::from_static("Accept, Accept-Encoding"),
    );
    r
}
