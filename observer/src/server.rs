//! A small HTTP/1.1 server for `/metrics` and `/healthz`, with limits: bounded concurrent
//! connections, bounded request head, a read timeout, `Connection: close` after each answer.
//! A scrape asks the collector for a snapshot through a channel and renders it here, so
//! rendering never runs on the event path and no lock is shared with it.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};

use crate::exposition::{Scrape, stream};

/// Largest request head accepted.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Connections served at once; further ones get 503 and are closed.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time the collector has to answer a scrape.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the server gets its data.
pub trait Source: Send + Sync + 'static {
    /// Asks for a snapshot; the answer arrives on the receiver.
    fn request(&self) -> oneshot::Receiver<Scrape>;
    /// Whether the probes are attached (`/healthz`).
    fn ready(&self) -> bool;
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, source: Arc<dyn Source>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = respond(
                    &mut stream,
                    503,
                    "text/plain",
                    b"too many connections\n",
                    false,
                )
                .await;
            });
            continue;
        };
        let source = Arc::clone(&source);
        tokio::spawn(async move {
            let _ = handle(stream, source.as_ref()).await;
            drop(permit);
        });
    }
}

enum Head {
    Ok { method: String, path: String },
    Bad(u16, &'static str),
}

async fn read_head(stream: &mut TcpStream) -> Head {
    let mut buf = vec![0u8; MAX_REQUEST_BYTES];
    let mut len = 0;
    let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
    loop {
        if len == buf.len() {
            return Head::Bad(431, "request head too large\n");
        }
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buf[len..])).await;
        match read {
            Err(_) => return Head::Bad(408, "request timeout\n"),
            Ok(Err(_) | Ok(0)) => return Head::Bad(400, "incomplete request\n"),
            Ok(Ok(n)) => len += n,
        }
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n")
            || buf[..len].windows(2).any(|w| w == b"\n\n")
        {
            break;
        }
    }
    let Ok(text) = std::str::from_utf8(&buf[..len]) else {
        return Head::Bad(400, "request is not UTF-8\n");
    };
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(p), Some(v), None) if v.starts_with("HTTP/1.") && p.starts_with('/') => {
            Head::Ok {
                method: m.to_string(),
                path: p.split('?').next().unwrap_or(p).to_string(),
            }
        }
        _ => Head::Bad(400, "malformed request line\n"),
    }
}

async fn handle(mut stream: TcpStream, source: &dyn Source) -> std::io::Result<()> {
    let (method, path) = match read_head(&mut stream).await {
        Head::Ok { method, path } => (method, path),
        Head::Bad(code, msg) => {
            return respond(&mut stream, code, "text/plain", msg.as_bytes(), true).await;
        }
    };
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(
            &mut stream,
            405,
            "text/plain",
            b"only GET and HEAD\n",
            head_only,
        )
        .await;
    }
    match path.as_str() {
        "/metrics" => {
            let rx = source.request();
            match tokio::time::timeout(SCRAPE_TIMEOUT, rx).await {
                Ok(Ok(scrape)) => stream_metrics(&mut stream, scrape, head_only).await,
                _ => respond(&mut stream, 503, "text/plain", b"collector not answering\n", head_only).await,
            }
        }
        "/healthz" => {
            if source.ready() {
                respond(&mut stream, 200, "text/plain", b"ok\n", head_only).await
            } else {
                respond(&mut stream, 503, "text/plain", b"probes not attached\n", head_only).await
            }
        }
        "/" => {
            respond(
                &mut stream,
                200,
                "text/html",
                b"<html><body>socklat: <a href=\"/metrics\">/metrics</a> <a href=\"/healthz\">/healthz</a></body></html>\n",
                head_only,
            )
            .await
        }
        _ => respond(&mut stream, 404, "text/plain", b"not found\n", head_only).await,
    }
}

/// Bytes rendered before they are written to the socket; a scrape of any size streams
/// through a few of these.
const CHUNK: usize = 64 * 1024;

/// Streams the exposition: rendered on a blocking thread in chunks handed over through a
/// bounded channel, so memory stays bounded whatever the number of series. The body ends
/// when the connection closes (no Content-Length).
async fn stream_metrics(
    sock: &mut TcpStream,
    scrape: Scrape,
    head_only: bool,
) -> std::io::Result<()> {
    sock.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nConnection: close\r\n\r\n",
    )
    .await?;
    if !head_only {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(4);
        let render = tokio::task::spawn_blocking(move || {
            stream(
                &scrape,
                crate::histograms::Histograms::Both,
                CHUNK,
                |piece| {
                    // The receiver is gone only when the client went away: stop quietly.
                    let _ = tx.blocking_send(piece.to_string());
                },
            );
        });
        while let Some(piece) = rx.recv().await {
            sock.write_all(piece.as_bytes()).await?;
        }
        let _ = render.await;
    }
    sock.shutdown().await
}

async fn respond(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Fixed(AtomicBool);
    impl Source for Fixed {
        fn request(&self) -> oneshot::Receiver<Scrape> {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Scrape::default());
            rx
        }
        fn ready(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }

    async fn exchange(addr: std::net::SocketAddr, req: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn endpoints_and_bad_requests() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let src = Arc::new(Fixed(AtomicBool::new(false)));
        let server = tokio::spawn(serve(listener, src.clone()));

        let r = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("socklat_build_info"));
        let r = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        src.0.store(true, Ordering::Relaxed);
        let r = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let r = exchange(addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        let r = exchange(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        let r = exchange(addr, b"garbage\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_REQUEST_BYTES * 2));
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(&huge).await;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        assert!(out.starts_with("HTTP/1.1 431"), "{out}");
        let r = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(
            r.ends_with("socklat_build_info{version=\"0.1.0\"} 1\n"),
            "{r}"
        );
        let r = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(
            r.starts_with("HTTP/1.1 200") && !r.contains("socklat_build_info"),
            "{r}"
        );
        server.abort();
    }
}
