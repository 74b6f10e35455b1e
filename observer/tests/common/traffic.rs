//! Traffic of known shape for the privileged tests: a server answering after the delay each
//! request names, and the client role that times every call it makes.
#![expect(
    clippy::must_use_candidate,
    reason = "test helpers whose results their callers use; a mark on each adds nothing"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Child;
use std::time::{Duration, Instant};

use super::{TestCgroup, role_output, run_role};

/// Bytes of each answer.
pub const RESPONSE_LEN: usize = 32;

/// Request/response client (run as a role inside a cgroup): for each delay in
/// `SOCKLAT_TEST_DELAYS_US`, sends one 8-byte request to `SOCKLAT_TEST_ADDR` asking the
/// server to wait that long, and reads the 32-byte answer. Prints the duration of every send
/// and recv call it made, measured around the call (`@send NS`, `@recv NS`).
pub fn client() {
    use std::fmt::Write as _;

    let addr: SocketAddr = std::env::var("SOCKLAT_TEST_ADDR").unwrap().parse().unwrap();
    let delays: Vec<u32> = std::env::var("SOCKLAT_TEST_DELAYS_US")
        .unwrap()
        .split(',')
        .map(|d| d.parse().unwrap())
        .collect();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut out = String::new();
    let mut buf = [0u8; 256];
    for (seq, d) in delays.iter().enumerate() {
        let mut req = [0u8; 8];
        req[..4].copy_from_slice(&d.to_le_bytes());
        req[4..].copy_from_slice(&u32::try_from(seq).unwrap().to_le_bytes());
        let t = Instant::now();
        let n = s.write(&req).unwrap();
        writeln!(out, "@send {}", t.elapsed().as_nanos()).unwrap();
        assert_eq!(n, req.len(), "short send");
        let mut got = 0;
        while got < RESPONSE_LEN {
            let t = Instant::now();
            let n = s.read(&mut buf).unwrap();
            writeln!(out, "@recv {}", t.elapsed().as_nanos()).unwrap();
            assert!(n > 0, "server closed early");
            got += n;
        }
    }
    print!("{out}");
}

/// A server in the test's own cgroup that answers each 8-byte request after the delay it
/// names, with 32 bytes.
pub fn delay_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                c.set_nodelay(true).unwrap();
                let mut req = [0u8; 8];
                while c.read_exact(&mut req).is_ok() {
                    let d = u32::from_le_bytes(req[..4].try_into().unwrap());
                    std::thread::sleep(Duration::from_micros(u64::from(d)));
                    if c.write_all(&[7u8; RESPONSE_LEN]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Deterministic delays spread uniformly over [lo, hi] microseconds.
pub fn delays(n: usize, lo: u32, hi: u32, seed: u64) -> Vec<u32> {
    let mut rng = observer::testutil::Rng(seed);
    (0..n)
        .map(|_| lo + u32::try_from(rng.next_u64() % u64::from(hi - lo + 1)).unwrap())
        .collect()
}

pub struct Measured {
    pub send: Vec<u64>,
    pub recv: Vec<u64>,
}

pub fn parse_calls(lines: &[String]) -> Measured {
    let mut m = Measured {
        send: Vec::new(),
        recv: Vec::new(),
    };
    for l in lines {
        let (kind, ns) = l.split_once(' ').unwrap();
        let ns: u64 = ns.parse().unwrap();
        match kind {
            "send" => m.send.push(ns),
            "recv" => m.recv.push(ns),
            _ => {}
        }
    }
    m.send.sort_unstable();
    m.recv.sort_unstable();
    m
}

pub fn join(d: &[u32]) -> String {
    d.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// Starts the client role in `cg` against `server`, one request per delay (microseconds);
/// several can run at once. [`parse_calls`] of its [`role_output`] gives what it measured.
pub fn start_client(cg: &TestCgroup, server: SocketAddr, delays: &[u32]) -> Child {
    run_role(
        cg,
        "role_client",
        &[
            ("SOCKLAT_TEST_ADDR", server.to_string()),
            ("SOCKLAT_TEST_DELAYS_US", join(delays)),
        ],
    )
}

/// Runs the client role to its end; the calls it made, as it timed them.
pub fn run_client(cg: &TestCgroup, server: SocketAddr, delays: &[u32]) -> Measured {
    parse_calls(&role_output(start_client(cg, server, delays)))
}
