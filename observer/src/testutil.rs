//! Helpers shared by the unit tests, the hostile-input tests and the privileged tests:
//! deterministic pseudo-random numbers and the exact quantile the daemon's must match.
//! Not part of the daemon's interface.

/// xorshift64*: deterministic pseudo-random numbers, so that a failure reproduces.
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (> 0).
    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next_u64() % (n as u64)).unwrap_or(0)
    }

    /// One of `from`.
    pub fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }

    /// Up to `max` random bytes.
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next_u64().to_le_bytes()[0]).collect()
    }

    /// Log-uniform durations (ns) from 1 us to ~1 s, with a few very short and very long.
    pub fn duration(&mut self) -> u64 {
        let exp = self.next_u64() % 20;
        1000 + (self.next_u64() % (1u64 << exp)) * (1 + self.next_u64() % 1000)
    }
}

/// The exact q-quantile of sorted samples (rank ceil(q*n)), as `HdrHistogram` defines it.
///
/// # Panics
/// On an empty slice.
#[must_use]
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "ranks of test samples, far below 2^52"
    )]
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1]
}

/// A loopback port that was free a moment ago.
///
/// # Panics
/// When no port can be bound on loopback.
#[must_use]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// A minimal HTTP GET with `Connection: close`; returns (status, body).
///
/// # Errors
/// When the server cannot be reached or the exchange fails.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let r = http_fetch(addr, "GET", path, &[])?;
    Ok((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

/// One request with `Connection: close` and `headers`; the whole response.
///
/// # Errors
/// When the server cannot be reached or the exchange fails.
pub fn http_fetch(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<crate::http_client::Response> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))?;
    let mut all = vec![("Connection", "close")];
    all.extend_from_slice(headers);
    crate::http_client::request(&mut s, method, "test", path, &all)
}

/// `promtool check metrics` on an exposition: `None` when promtool is not installed, else
/// its verdict (its output when it fails).
#[must_use]
pub fn promtool_check(text: &str) -> Option<Result<(), String>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(text.as_bytes()));
    let out = match child.wait_with_output() {
        Ok(out) => out,
        Err(e) => return Some(Err(format!("promtool: {e}"))),
    };
    if let Some(Err(e)) = written {
        return Some(Err(format!("writing to promtool: {e}")));
    }
    if out.status.success() {
        Some(Ok(()))
    } else {
        Some(Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// A slow client of the scrape endpoint, `i` of many: it starts `7 * i % 2000` ms late (so
/// that many spread their bytes over the interval), connects, sends a request head one byte
/// every two seconds until the daemon closes the connection (counted in `closed`), and
/// starts again, until `stop`.
pub async fn slow_client(
    addr: std::net::SocketAddr,
    i: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    closed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    tokio::time::sleep(Duration::from_millis(i * 7 % 2000)).await;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        for b in b"GET /metrics HTTP/1.1\r\nHost: slow\r\n".iter().cycle() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if s.write_all(&[*b]).await.is_err() {
                // Closed by the daemon (its head timeout, or to make room).
                closed.fetch_add(1, Ordering::Relaxed);
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
