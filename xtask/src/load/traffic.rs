//! Traffic and faults to measure under: a loopback echo server, its clients (request/response,
//! short connections, steady rate, the bench-client process) and the page-fault loop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::sys::{Mapping, pin_to_cpu0};

/// An echo server on loopback: answers every `len`-byte message with the same bytes, one
/// thread per connection.
pub struct EchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl EchoServer {
    /// Binds a loopback port and starts accepting.
    pub fn start(len: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = l.local_addr().expect("addr");
        let stopped = Arc::clone(&stop);
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut c) = conn else { continue };
                std::thread::spawn(move || {
                    let _ = c.set_nodelay(true);
                    let mut buf = vec![0u8; len];
                    while c.read_exact(&mut buf).is_ok() {
                        if c.write_all(&buf).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self { addr, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting; connections already accepted are served until their clients close.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Runs `conns` client threads against a fresh echo server of `len`-byte messages until
/// `secs` have passed; each thread's `client` returns the exchanges it completed. Returns
/// exchanges per second.
fn run_clients(
    conns: usize,
    secs: u64,
    len: usize,
    client: fn(SocketAddr, Instant, usize) -> u64,
) -> f64 {
    let server = EchoServer::start(len);
    let addr = server.addr();
    let total = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            let total = Arc::clone(&total);
            std::thread::spawn(move || {
                total.fetch_add(client(addr, deadline, len), Ordering::Relaxed);
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    server.stop();
    #[expect(clippy::cast_precision_loss, reason = "request counts")]
    let rate = total.load(Ordering::Relaxed) as f64 / secs as f64;
    rate
}

/// Request/response over loopback for `secs`; returns requests per second.
pub fn rr_load(conns: usize, secs: u64, len: usize) -> f64 {
    run_clients(conns, secs, len, |addr, deadline, len| {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let msg = vec![1u8; len];
        let mut buf = vec![0u8; len];
        let mut n = 0u64;
        while Instant::now() < deadline {
            s.write_all(&msg).expect("send");
            s.read_exact(&mut buf).expect("recv");
            n += 1;
        }
        n
    })
}

/// One connection's 64-byte ping-pong for `secs`, client and server threads both pinned to
/// CPU 0; returns round trips per second.
pub fn pinned_rr_load(secs: u64) -> f64 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = l.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        pin_to_cpu0();
        let (mut c, _) = l.accept().expect("accept");
        let _ = c.set_nodelay(true);
        let mut buf = [0u8; 64];
        while c.read_exact(&mut buf).is_ok() {
            if c.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let client = std::thread::spawn(move || {
        pin_to_cpu0();
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let mut buf = [1u8; 64];
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut n = 0u64;
        while Instant::now() < deadline {
            s.write_all(&buf).expect("send");
            s.read_exact(&mut buf).expect("recv");
            n += 1;
        }
        n
    });
    let n = client.join().expect("client thread");
    let _ = server.join();
    #[expect(clippy::cast_precision_loss, reason = "round trip counts")]
    let rate = n as f64 / secs as f64;
    rate
}

/// A new connection per request (connect, one exchange, close), for `secs`.
pub fn connect_load(conns: usize, secs: u64) -> f64 {
    run_clients(conns, secs, 32, |addr, deadline, len| {
        let mut buf = vec![0u8; len];
        let mut n = 0u64;
        while Instant::now() < deadline {
            let Ok(mut s) = TcpStream::connect(addr) else {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            };
            let _ = s.set_nodelay(true);
            if s.write_all(&buf).is_ok() && s.read_exact(&mut buf).is_ok() {
                n += 1;
            }
        }
        n
    })
}

/// Two connections making `rate` 64-byte request/responses per second in total until
/// `stop`.
pub fn steady_load(addr: SocketAddr, rate: u64, stop: &Arc<AtomicBool>) -> Vec<JoinHandle<()>> {
    (0..2)
        .map(|_| {
            let stop = Arc::clone(stop);
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(addr) else {
                    return;
                };
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; 64];
                let per_tick = (rate / 2 / 100).max(1);
                while !stop.load(Ordering::Relaxed) {
                    let tick = Instant::now();
                    for _ in 0..per_tick {
                        if s.write_all(&buf).is_err() || s.read_exact(&mut buf).is_err() {
                            return;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10).saturating_sub(tick.elapsed()));
                }
            })
        })
        .collect()
}

/// The bench-client process (`xtask bench-client ADDR N [--depth D]`, started inside a
/// cgroup): `n` 64-byte request/responses against `addr`, `depth` requests sent before
/// their responses are read.
pub fn client(addr: &str, n: usize, depth: usize) -> Result<()> {
    let mut s = TcpStream::connect(addr)?;
    let mut buf = [0u8; 64];
    let depth = depth.max(1);
    let mut done = 0;
    while done < n {
        let k = depth.min(n - done);
        for _ in 0..k {
            s.write_all(&buf)?;
        }
        for _ in 0..k {
            s.read_exact(&mut buf)?;
        }
        done += k;
    }
    Ok(())
}

/// Maps, touches and unmaps 16 MiB in a loop for `secs`; returns pages per second.
pub fn fault_load(secs: u64) -> f64 {
    const LEN: usize = 16 << 20;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut pages = 0u64;
    while Instant::now() < deadline {
        let mut mapping = Mapping::anonymous(LEN);
        for off in (0..LEN).step_by(4096) {
            mapping.touch(off);
            pages += 1;
        }
    }
    #[expect(clippy::cast_precision_loss, reason = "page counts")]
    let rate = pages as f64 / secs as f64;
    rate
}
