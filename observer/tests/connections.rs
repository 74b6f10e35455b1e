//! Privileged tests of connection outcomes: each scenario's client runs in a cgroup of its
//! own, the server in another, and the daemon's counts per cgroup and outcome must equal
//! what the traffic generator did, exactly, on both sides. Resets and state changes run in
//! softirq here, so these also test that events go to the socket's cgroup, not the current
//! task's.

#![expect(
    clippy::cast_precision_loss,
    clippy::float_cmp,
    reason = "counts are small integers, exact in f64"
)]

pub mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::{
    Daemon, DropNetns, TestCgroup, env, free_port, promtool_check, role, role_output, run_role,
    run_role_in,
};

/// Closes with `SO_LINGER` 0: an abortive close that sends RST.
fn reset(s: TcpStream) {
    common::linger0(&s);
    drop(s);
}

/// The server: accepts `SOCKLAT_TEST_COUNT` connections on `SOCKLAT_TEST_PORT` and treats each
/// by its first byte: `n` answer then wait for the client's close, `r` reset at once,
/// `k` wait until the client resets.
#[test]
#[ignore = "worker role, run by the privileged tests"]
fn role_server() {
    if role().as_deref() != Some("role_server") {
        return;
    }
    let host = std::env::var("SOCKLAT_TEST_BIND").unwrap_or_else(|_| "127.0.0.1".into());
    let l = TcpListener::bind(format!("{host}:{}", env("SOCKLAT_TEST_PORT"))).unwrap();
    println!("@listening");
    let count: usize = env("SOCKLAT_TEST_COUNT").parse().unwrap();
    let mut handlers = Vec::new();
    for _ in 0..count {
        let (mut c, _) = l.accept().unwrap();
        handlers.push(std::thread::spawn(move || {
            let mut cmd = [0u8; 1];
            c.read_exact(&mut cmd).unwrap();
            let mut rest = [0u8; 64];
            match cmd[0] {
                b'r' => reset(c),
                b'k' => while matches!(c.read(&mut rest), Ok(n) if n > 0) {},
                _ => {
                    c.write_all(b"y").unwrap();
                    while matches!(c.read(&mut rest), Ok(n) if n > 0) {}
                }
            }
        }));
    }
    for h in handlers {
        h.join().unwrap();
    }
}

/// One client scenario, `SOCKLAT_TEST_COUNT` times; prints `@ok` per connection done.
#[test]
#[ignore = "worker role, run by the privileged tests"]
fn role_conn() {
    if role().as_deref() != Some("role_conn") {
        return;
    }
    let addr: SocketAddr = env("SOCKLAT_TEST_ADDR").parse().unwrap();
    let count: usize = env("SOCKLAT_TEST_COUNT").parse().unwrap();
    let mut b = [0u8; 16];
    for _ in 0..count {
        match env("SOCKLAT_TEST_SCENARIO").as_str() {
            "normal" => {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"n").unwrap();
                s.read_exact(&mut b[..1]).unwrap();
            }
            "refused" => {
                let e = TcpStream::connect(addr).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
            }
            "timeout" => {
                let e = TcpStream::connect(addr).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
            }
            "reset_received" => {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"r").unwrap();
                let e = s.read(&mut b).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
            }
            "reset_sent" => {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"k").unwrap();
                std::thread::sleep(Duration::from_millis(20));
                reset(s);
            }
            "error" => {
                // A receive error that is not EAGAIN on a connection that then closes
                // normally: MSG_OOB with no urgent data is EINVAL.
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"n").unwrap();
                s.read_exact(&mut b[..1]).unwrap();
                // SAFETY: a valid socket and buffer.
                let n =
                    unsafe { libc::recv(s.as_raw_fd(), b.as_mut_ptr().cast(), 1, libc::MSG_OOB) };
                assert_eq!(n, -1);
                assert_eq!(
                    std::io::Error::last_os_error().raw_os_error(),
                    Some(libc::EINVAL)
                );
            }
            "established_timeout" => {
                // Connected and acknowledged; then the peer goes silent (the test takes its
                // address away) and our data is retransmitted until ETIMEDOUT.
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"n").unwrap();
                s.read_exact(&mut b[..1]).unwrap();
                std::fs::write(env("SOCKLAT_TEST_FLAG"), b"connected").unwrap();
                while std::fs::read(env("SOCKLAT_TEST_FLAG")).unwrap() != b"go" {
                    std::thread::sleep(Duration::from_millis(10));
                }
                s.write_all(b"data nobody acknowledges").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let e = s.read(&mut b).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
            }
            "send_after_reset" => {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"r").unwrap();
                std::thread::sleep(Duration::from_millis(100));
                // The peer's RST has arrived: this send fails (ECONNRESET).
                let e = s.write(b"late").unwrap_err();
                assert!(
                    matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
                    "{e}"
                );
            }
            other => panic!("unknown scenario {other}"),
        }
        println!("@ok");
    }
}

/// Connections per scenario.
const N: usize = 3;

/// Seven scenarios, each client in its own cgroup, the server in another: the daemon's
/// count per cgroup and outcome equals what the clients and the server did, exactly, and
/// the ratio equals abnormal / closed. The refused, reset and timeout closes run in softirq
/// (or a timer), so a wrong attribution (to the current task) would show up as counts in
/// the wrong cgroup. A send after the peer's reset is counted as a failed call; the
/// connection itself was already classified `reset_received` when the RST closed it
/// (design.md: one outcome per connection, the first that applies, at CLOSE).
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario table, one run, one set of checks"
)]
fn outcomes_are_exact_per_cgroup_on_both_sides() {
    if role().is_some() {
        return;
    }
    let daemon = Daemon::start(&["--probe-mode", &common::mode()]);
    let port = free_port();
    let server_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let closed_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // The guests of the kernel matrix have no `ip netns`: the timeout scenario runs on the
    // host only.
    let netns = (!common::in_vm()).then(DropNetns::create);

    // (scenario, client outcome, server outcome or None when no server is involved)
    let scenarios: [(&str, &str, Option<&str>); 7] = [
        ("normal", "normal", Some("normal")),
        ("refused", "refused", None),
        ("timeout", "connect_timeout", None),
        ("reset_received", "reset_received", Some("reset_sent")),
        ("reset_sent", "reset_sent", Some("reset_received")),
        ("error", "error", Some("normal")),
        ("send_after_reset", "reset_received", Some("reset_sent")),
    ];
    let scenarios: Vec<(&str, &str, Option<&str>)> = scenarios
        .into_iter()
        .filter(|s| netns.is_some() || s.0 != "timeout")
        .collect();
    let served = scenarios.iter().filter(|s| s.2.is_some()).count() * N;
    let server_cg = TestCgroup::new("server");
    let server_proc = run_role(
        &server_cg,
        "role_server",
        &[
            ("SOCKLAT_TEST_PORT", port.to_string()),
            ("SOCKLAT_TEST_COUNT", served.to_string()),
        ],
    );
    // Wait for the server to listen.
    for _ in 0..200 {
        if TcpStream::connect_timeout(&closed_addr, Duration::from_millis(1)).is_err()
            && std::fs::read_to_string("/proc/net/tcp")
                .unwrap()
                .contains(&format!(":{port:04X} 00000000:0000 0A"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let cgs: Vec<TestCgroup> = scenarios
        .iter()
        .map(|(s, _, _)| TestCgroup::new(s))
        .collect();
    let mut clients = Vec::new();
    for ((scenario, _, _), cg) in scenarios.iter().zip(&cgs) {
        let (addr, ns) = match *scenario {
            "refused" => (closed_addr.to_string(), None),
            "timeout" => (
                "192.0.2.2:80".to_string(),
                netns.as_ref().map(DropNetns::path),
            ),
            _ => (server_addr.to_string(), None),
        };
        clients.push(run_role_in(
            cg,
            ns,
            "role_conn",
            &[
                ("SOCKLAT_TEST_ADDR", addr),
                ("SOCKLAT_TEST_COUNT", N.to_string()),
                ("SOCKLAT_TEST_SCENARIO", (*scenario).to_string()),
            ],
        ));
    }
    for (c, (scenario, _, _)) in clients.into_iter().zip(&scenarios) {
        let out = role_output(c);
        assert_eq!(
            out.iter().filter(|l| *l == "ok").count(),
            N,
            "{scenario} client"
        );
    }
    role_output(server_proc);
    // Last ACKs and TIME_WAIT entries settle within milliseconds on loopback.
    // Every close counted: the daemon holds a close that a reset may still follow.
    std::thread::sleep(Duration::from_millis(
        observer::aggregate::TIMEWAIT_HOLD_MS + 300,
    ));

    let text = daemon.scrape_text();
    promtool_check(&text);
    let m = common::Metrics::parse(&text);
    let closed = |cg: &TestCgroup, outcome: &str| {
        m.get(
            "socklat_tcp_connections_closed_total",
            &[("cgroup", cg.label.as_str()), ("outcome", outcome)],
        )
        .unwrap_or(0.0)
    };
    let all = [
        "refused",
        "connect_timeout",
        "reset_received",
        "reset_sent",
        "timeout",
        "error",
        "normal",
    ];
    // Program runs the kernel skipped (its recursion guard: seen on 7.3, where tracing
    // programs can be preempted) are counted in socklat_probe_misses_total; on this machine
    // there must be none. A skipped run can miss one failed call, and so classify its
    // connection `normal`: below, exactly as many such shortfalls as counted skips are
    // allowed, and no more.
    let misses = m.get("socklat_probe_misses_total", &[]).unwrap_or(0.0);
    eprintln!("@@probe_misses connections {misses}");
    if !common::in_vm() {
        assert!(misses < 0.5, "{misses} probe runs skipped");
    }
    let mut budget = misses;
    let mut server_want = std::collections::BTreeMap::new();
    for ((scenario, client_outcome, server_outcome), cg) in scenarios.iter().zip(&cgs) {
        let got = closed(cg, client_outcome);
        let normal = if *client_outcome == "normal" {
            0.0
        } else {
            closed(cg, "normal")
        };
        // Short: connections missed entirely, or (a failed call missed) closed `normal`.
        let short = N as f64 - got;
        assert!(
            short >= 0.0 && short <= budget && normal <= short,
            "{scenario}: {got} of {N} {client_outcome} and {normal} normal in {}, {misses} probe runs skipped",
            cg.label
        );
        budget -= short;
        for o in all {
            if o != *client_outcome && o != "normal" {
                assert_eq!(
                    closed(cg, o),
                    0.0,
                    "{scenario}: client cgroup {} outcome {o}",
                    cg.label
                );
            }
        }
        let ratio = m.get(
            "socklat_tcp_abnormal_connection_ratio",
            &[("cgroup", cg.label.as_str())],
        );
        let abnormal = if *client_outcome == "normal" {
            0.0
        } else {
            got
        };
        let total = got + normal;
        if total > 0.0 {
            assert_eq!(ratio, Some(abnormal / total), "{scenario}: ratio");
        }
        if let Some(so) = server_outcome {
            *server_want.entry(*so).or_insert(0.0) += N as f64;
        }
    }
    let mut server_got = (0.0, 0.0);
    for o in all {
        let want = server_want.get(o).copied().unwrap_or(0.0);
        let got = closed(&server_cg, o);
        let short = want - got;
        assert!(
            short >= 0.0 && short <= budget,
            "server cgroup outcome {o}: {got} of {want}, {misses} probe runs skipped"
        );
        budget -= short;
        server_got.1 += got;
        if o != "normal" {
            server_got.0 += got;
        }
    }
    let ratio = m
        .get(
            "socklat_tcp_abnormal_connection_ratio",
            &[("cgroup", server_cg.label.as_str())],
        )
        .unwrap();
    assert!(
        (ratio - server_got.0 / server_got.1).abs() < 1e-9,
        "server ratio {ratio}"
    );
    // The failed calls themselves are counted as call errors.
    let by_name = |name: &str| &cgs[scenarios.iter().position(|s| s.0 == name).unwrap()];
    let send_after = by_name("send_after_reset");
    let send_errors = m
        .get(
            "socklat_tcp_calls_total",
            &[
                ("cgroup", send_after.label.as_str()),
                ("call", "sendmsg"),
                ("result", "error"),
            ],
        )
        .unwrap_or(0.0);
    // One skipped run misses both a failed call and the mark it leaves on its connection:
    // the failed calls have a budget of their own.
    let mut call_budget = misses;
    let mut within_budget = |got: f64, what: &str| {
        let short = N as f64 - got;
        assert!(
            short >= 0.0 && short <= call_budget,
            "{what}: {got} of {N}, {misses} probe runs skipped"
        );
        call_budget -= short;
    };
    within_budget(send_errors, "failed sends after the peer's reset");
    let recv_errors = m
        .get(
            "socklat_tcp_calls_total",
            &[
                ("cgroup", by_name("error").label.as_str()),
                ("call", "recvmsg"),
                ("result", "error"),
            ],
        )
        .unwrap_or(0.0);
    within_budget(recv_errors, "MSG_OOB receive errors");
}

/// An established connection whose peer goes silent ends in `timeout`, in the client's
/// cgroup, closed by the retransmission timer (not in the client's context); its
/// retransmissions are counted in the client's cgroup and equal the kernel's own count for
/// the client's network namespace (`RetransSegs`).
#[test]
fn established_timeout_and_retransmits() {
    if role().is_some() {
        return;
    }
    if common::in_vm() {
        eprintln!("skipped in the kernel-matrix guest: needs ip netns");
        return;
    }
    let daemon = Daemon::start(&["--probe-mode", &common::mode()]);
    let netns = DropNetns::create();
    netns.peer_address(true);
    let port = free_port();
    let server_cg = TestCgroup::new("silent-server");
    let server = run_role_in(
        &server_cg,
        Some(netns.peer_path()),
        "role_server",
        &[
            ("SOCKLAT_TEST_PORT", port.to_string()),
            ("SOCKLAT_TEST_COUNT", "1".into()),
            ("SOCKLAT_TEST_BIND", "192.0.2.2".into()),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let client_cg = TestCgroup::new("timeout");
    let flag = std::env::temp_dir().join(format!("socklat-flag-{}", std::process::id()));
    std::fs::write(&flag, b"").unwrap();
    let before = netns.retrans_segs();
    let client = run_role_in(
        &client_cg,
        Some(netns.path()),
        "role_conn",
        &[
            ("SOCKLAT_TEST_ADDR", format!("192.0.2.2:{port}")),
            ("SOCKLAT_TEST_COUNT", "1".into()),
            ("SOCKLAT_TEST_SCENARIO", "established_timeout".into()),
            ("SOCKLAT_TEST_FLAG", flag.to_string_lossy().into_owned()),
        ],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read(&flag).unwrap() != b"connected" {
        assert!(
            std::time::Instant::now() < deadline,
            "client did not connect"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    netns.peer_address(false);
    std::fs::write(&flag, b"go").unwrap();
    let out = role_output(client);
    assert_eq!(out, ["ok"]);
    let retransmitted = netns.retrans_segs() - before;
    let _ = std::fs::remove_file(&flag);
    let m = daemon.scrape();
    let label = client_cg.label.as_str();
    assert_eq!(
        m.get(
            "socklat_tcp_connections_closed_total",
            &[("cgroup", label), ("outcome", "timeout")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.get(
            "socklat_tcp_abnormal_connection_ratio",
            &[("cgroup", label)]
        ),
        Some(1.0)
    );
    assert!(retransmitted >= 1, "no retransmission in the namespace");
    assert_eq!(
        m.get("socklat_tcp_retransmits_total", &[("cgroup", label)]),
        Some(retransmitted as f64),
        "retransmits in {label} vs RetransSegs of its namespace"
    );
    // The silent server is left with a connection that will never finish: end it.
    let mut server = server;
    let _ = server.kill();
    let _ = server.wait();
}

/// Connect failures, each `SOCKLAT_TEST_COUNT` times (in the client namespace of
/// [`common::RouterNetns`]): `host` and `net` connect to a destination the router answers
/// with ICMP host / net unreachable; `abandoned` starts a non-blocking connect to a silent
/// destination and closes the socket 300 ms later; `exhaust` (once) takes the two local
/// ports the namespace's range allows with two connections to a listener of its own, then
/// a third connect fails with EADDRNOTAVAIL before any SYN is sent, then all close.
#[test]
#[ignore = "worker role, run by the privileged tests"]
fn role_connect_failure() {
    if role().as_deref() != Some("role_connect_failure") {
        return;
    }
    let count: usize = env("SOCKLAT_TEST_COUNT").parse().unwrap();
    match env("SOCKLAT_TEST_SCENARIO").as_str() {
        "host" | "net" => {
            let to = if env("SOCKLAT_TEST_SCENARIO") == "host" {
                "10.9.9.1:80"
            } else {
                "10.9.8.1:80"
            };
            for _ in 0..count {
                let e = TcpStream::connect(to).unwrap_err();
                let want = if to.starts_with("10.9.9") {
                    libc::EHOSTUNREACH
                } else {
                    libc::ENETUNREACH
                };
                assert_eq!(e.raw_os_error(), Some(want), "{to}: {e}");
            }
        }
        "abandoned" => {
            for _ in 0..count {
                // SAFETY: plain socket(2), connect(2) and close(2) on our own descriptor.
                unsafe {
                    let fd =
                        libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
                    assert!(fd >= 0);
                    let to = libc::sockaddr_in {
                        sin_family: u16::try_from(libc::AF_INET).unwrap(),
                        sin_port: 80u16.to_be(),
                        sin_addr: libc::in_addr {
                            s_addr: u32::from_ne_bytes([10, 9, 7, 1]),
                        },
                        sin_zero: [0; 8],
                    };
                    let rc = libc::connect(
                        fd,
                        (&raw const to).cast(),
                        u32::try_from(size_of::<libc::sockaddr_in>()).unwrap(),
                    );
                    assert_eq!(rc, -1);
                    assert_eq!(
                        std::io::Error::last_os_error().raw_os_error(),
                        Some(libc::EINPROGRESS)
                    );
                    std::thread::sleep(Duration::from_millis(300));
                    libc::close(fd);
                }
            }
        }
        "exhaust" => {
            let l = TcpListener::bind("10.9.0.1:8080").unwrap();
            let a = TcpStream::connect("10.9.0.1:8080").unwrap();
            let b = TcpStream::connect("10.9.0.1:8080").unwrap();
            let (sa, _) = l.accept().unwrap();
            let (sb, _) = l.accept().unwrap();
            let e = TcpStream::connect("10.9.0.1:8080").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL), "{e}");
            drop((a, b));
            std::thread::sleep(Duration::from_millis(50));
            drop((sa, sb));
        }
        other => panic!("unknown scenario {other}"),
    }
    println!("@ok");
}

/// A connect failure scenario: name, connects, the outcomes it must produce.
type ConnectCase = (&'static str, usize, &'static [(&'static str, f64)]);

/// Issue 14.4: a connect that fails for another reason than a timeout is not called a
/// timeout. ICMP host and net unreachable are `unreachable`; a pending connect the
/// application gives up on is `connect_timeout`; a connect that fails locally before any
/// SYN was sent (no free port) is `error`. Each kind in a cgroup of its own, in a network
/// namespace of the test's own (host only: the guests have no `ip netns`).
#[test]
fn connect_failures_are_classified_by_their_cause() {
    if role().is_some() {
        return;
    }
    if common::in_vm() {
        eprintln!("skipped in the kernel-matrix guest: needs ip netns");
        return;
    }
    let daemon = Daemon::start(&["--probe-mode", &common::mode()]);
    let ns = common::RouterNetns::create();
    let st = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.client.name,
            "sysctl",
            "-qw",
            "net.ipv4.ip_local_port_range=40000 40001",
        ])
        .status()
        .unwrap();
    assert!(st.success(), "ip_local_port_range");
    // (scenario, connects, outcomes wanted)
    let cases: [ConnectCase; 4] = [
        ("host", 3, &[("unreachable", 3.0)]),
        ("net", 3, &[("unreachable", 3.0)]),
        ("abandoned", 3, &[("connect_timeout", 3.0)]),
        // Two connections and their accepted ends close normally; the third connect fails.
        ("exhaust", 1, &[("error", 1.0), ("normal", 4.0)]),
    ];
    let cgs: Vec<TestCgroup> = cases
        .iter()
        .map(|(s, _, _)| TestCgroup::new(&format!("connect-{s}")))
        .collect();
    let running: Vec<_> = cases
        .iter()
        .zip(&cgs)
        .map(|((s, n, _), cg)| {
            run_role_in(
                cg,
                Some(ns.client.path()),
                "role_connect_failure",
                &[
                    ("SOCKLAT_TEST_SCENARIO", (*s).to_string()),
                    ("SOCKLAT_TEST_COUNT", n.to_string()),
                ],
            )
        })
        .collect();
    for r in running {
        assert_eq!(role_output(r), ["ok"]);
    }
    let m = daemon.scrape_settled();
    for ((s, _, want), cg) in cases.iter().zip(&cgs) {
        let got: Vec<(&str, f64)> = observer_common::Outcome::ALL
            .iter()
            .map(|o| {
                let n = m
                    .get(
                        "socklat_tcp_connections_closed_total",
                        &[("cgroup", cg.label.as_str()), ("outcome", o.name())],
                    )
                    .unwrap_or(0.0);
                (o.name(), n)
            })
            .filter(|(_, n)| *n > 0.0)
            .collect();
        assert_eq!(&got, want, "{s}");
    }
}
