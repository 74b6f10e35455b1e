//! Privileged test: both ends of a connection agree on who reset it. Every way a connection
//! closes that we know of (normal closes by either side; close with unread data or
//! `SO_LINGER` 0, before or after `shutdown(SHUT_WR)`; data arriving after `close()`, soon or
//! after the orphan became a timewait socket; the peer's reset arriving at our orphan or its
//! timewait socket), each client and each server in a cgroup of its own: the client's
//! `reset_sent` equals the server's `reset_received` and the other way round, each end's
//! outcome is the one the scenario makes, and (in a network namespace of the test's own)
//! every reset sent is one the kernel counted (`TcpOutRsts`).
//!
//! Run by `cargo xtask test` as root, one test at a time (and in the kernel matrix).

#![expect(
    clippy::cast_precision_loss,
    clippy::float_cmp,
    reason = "counts are small integers, exact in f64"
)]

pub mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::{Daemon, Metrics, TestCgroup, env, role, role_output, run_role_in};

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Reads until end of stream or an error (a reset).
fn drain(s: &mut TcpStream) {
    let mut b = [0u8; 4096];
    while matches!(s.read(&mut b), Ok(n) if n > 0) {}
}

/// Shuts the sending side down.
fn shut_wr(s: &TcpStream) {
    s.shutdown(std::net::Shutdown::Write).unwrap();
}

/// The scenarios: (name, client outcome, server outcome).
const SCENARIOS: [(&str, &str, &str); 15] = [
    ("normal_cli_first", "normal", "normal"),
    ("normal_srv_first", "normal", "normal"),
    ("normal_cli_first_tw", "normal", "normal"),
    ("cli_unread", "reset_sent", "reset_received"),
    ("cli_linger0", "reset_sent", "reset_received"),
    ("cli_shut_unread", "reset_sent", "reset_received"),
    ("cli_shut_linger0", "reset_sent", "reset_received"),
    ("data_after_close_fast", "reset_sent", "reset_received"),
    ("data_after_close_tw", "reset_sent", "reset_received"),
    ("peer_rst_in_fw2_tw", "reset_received", "reset_sent"),
    ("peer_rst_in_fw2_full", "reset_received", "reset_sent"),
    ("srv_closewait_unread", "reset_received", "reset_sent"),
    (
        "srv_closewait_unread_cli_orphan",
        "reset_received",
        "reset_sent",
    ),
    ("srv_linger0", "reset_received", "reset_sent"),
    ("srv_unread", "reset_received", "reset_sent"),
];

/// What the server does with one accepted connection of `scenario` (it closes when this
/// returns).
fn server_side(scenario: &str, c: &mut TcpStream) {
    let mut b = [0u8; 128];
    match scenario {
        "normal_cli_first" => {
            let _ = c.read(&mut b);
            c.write_all(&[b'r'; 100]).unwrap();
            drain(c);
        }
        "normal_cli_first_tw" => {
            let _ = c.read(&mut b);
            c.write_all(&[b'r'; 100]).unwrap();
            drain(c);
            sleep_ms(150);
        }
        "normal_srv_first" => {
            let _ = c.read(&mut b);
            c.write_all(&[b'r'; 100]).unwrap();
        }
        "cli_unread" => {
            c.write_all(&[b'r'; 1000]).unwrap();
            drain(c);
        }
        "cli_linger0" => drain(c),
        "cli_shut_unread" => {
            drain(c);
            c.write_all(&[b'r'; 1000]).unwrap();
            sleep_ms(200);
        }
        "cli_shut_linger0" => {
            drain(c);
            sleep_ms(200);
        }
        "data_after_close_fast" | "data_after_close_tw" => {
            let _ = c.read(&mut b);
            sleep_ms(if scenario.ends_with("fast") { 5 } else { 150 });
            let _ = c.write_all(&[b'r'; 100]);
            sleep_ms(100);
        }
        "peer_rst_in_fw2_tw" => {
            let _ = c.read(&mut b);
            sleep_ms(150);
            common::linger0(c);
        }
        "peer_rst_in_fw2_full" => {
            let _ = c.read(&mut b);
            sleep_ms(100);
            common::linger0(c);
        }
        "srv_closewait_unread" | "srv_unread" => sleep_ms(50),
        "srv_closewait_unread_cli_orphan" => sleep_ms(150),
        "srv_linger0" => {
            let _ = c.read(&mut b[..1]);
            common::linger0(c);
        }
        other => panic!("unknown scenario {other}"),
    }
}

/// What the client does with its connection of `scenario` (it closes when this returns).
fn client_side(scenario: &str, c: &mut TcpStream) {
    let mut b = [0u8; 128];
    match scenario {
        "normal_cli_first" | "normal_cli_first_tw" => {
            c.write_all(b"q").unwrap();
            let _ = c.read(&mut b);
        }
        "normal_srv_first" => {
            c.write_all(b"q").unwrap();
            drain(c);
        }
        "cli_unread" => sleep_ms(50),
        "cli_linger0" => common::linger0(c),
        "cli_shut_unread" => {
            shut_wr(c);
            // Close only once the server's data is here: the close has unread data (a
            // fixed sleep is not enough on a loaded machine, where the orphan then closes
            // normally and its timewait socket sends the reset).
            let mut b = [0u8; 1];
            assert_eq!(c.peek(&mut b).unwrap(), 1, "the server's data");
        }
        "cli_shut_linger0" => {
            shut_wr(c);
            sleep_ms(100);
            common::linger0(c);
        }
        "data_after_close_fast" | "data_after_close_tw" => c.write_all(b"q").unwrap(),
        "peer_rst_in_fw2_tw" => {}
        "peer_rst_in_fw2_full" => {
            shut_wr(c);
            sleep_ms(200);
        }
        "srv_closewait_unread" => {
            c.write_all(&[b'q'; 100]).unwrap();
            shut_wr(c);
            sleep_ms(200);
        }
        "srv_closewait_unread_cli_orphan" => c.write_all(&[b'q'; 100]).unwrap(),
        "srv_linger0" => {
            c.write_all(b"q").unwrap();
            sleep_ms(50);
        }
        "srv_unread" => {
            c.write_all(&[b'q'; 100]).unwrap();
            sleep_ms(100);
        }
        other => panic!("unknown scenario {other}"),
    }
}

/// The server of one scenario: accepts `SOCKLAT_TEST_COUNT` connections on
/// `SOCKLAT_TEST_PORT`, one after the other.
#[test]
#[ignore = "worker role, run by the resets test"]
fn role_reset_server() {
    if role().as_deref() != Some("role_reset_server") {
        return;
    }
    let scenario = env("SOCKLAT_TEST_SCENARIO");
    let l = TcpListener::bind(format!("127.0.0.1:{}", env("SOCKLAT_TEST_PORT"))).unwrap();
    println!("@listening");
    std::io::stdout().flush().unwrap();
    let count: usize = env("SOCKLAT_TEST_COUNT").parse().unwrap();
    for _ in 0..count {
        let (mut c, _) = l.accept().unwrap();
        server_side(&scenario, &mut c);
    }
}

/// The client of one scenario: `SOCKLAT_TEST_COUNT` connections, one after the other.
#[test]
#[ignore = "worker role, run by the resets test"]
fn role_reset_client() {
    if role().as_deref() != Some("role_reset_client") {
        return;
    }
    let scenario = env("SOCKLAT_TEST_SCENARIO");
    let addr: SocketAddr = env("SOCKLAT_TEST_ADDR").parse().unwrap();
    let count: usize = env("SOCKLAT_TEST_COUNT").parse().unwrap();
    for _ in 0..count {
        let mut c = TcpStream::connect(addr).unwrap();
        client_side(&scenario, &mut c);
        drop(c);
        sleep_ms(20);
    }
    println!("@done");
}

/// Whether the kernel traces the resets of timewait sockets (`tcp_send_reset` for non-full
/// sockets, Linux 6.10).
fn traces_timewait_resets() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 10)
}

/// Connections per scenario.
const N: usize = 5;

/// Issue 14.9: both ends agree on resets, scenario by scenario, exactly; see the module
/// doc. On kernels before 6.10 a timewait socket's reset is not traced, so the client of
/// `data_after_close_tw` (whose reset its timewait socket sends) is `normal` there, and
/// that of `data_after_close_fast` `reset_sent` or `normal` depending on which of its
/// sockets the data met.
#[test]
fn both_ends_agree_on_who_reset_the_connection() {
    if role().is_some() {
        return;
    }
    let daemon = Daemon::start(&["--probe-mode", &common::mode()]);
    // The guests of the kernel matrix have no `ip netns`: there the test runs in the
    // machine's namespace, without the kernel's reset count.
    let netns = (!common::in_vm()).then(common::Netns::create);
    let ns_path = || netns.as_ref().map(common::Netns::path);
    let resets_before = netns.as_ref().map(|n| n.tcp_stat("OutRsts"));
    let mut runs = Vec::new();
    for (i, (name, _, _)) in SCENARIOS.iter().enumerate() {
        // Below the ephemeral range (32768..60999 by default): a client of an earlier
        // scenario cannot hold the port when this scenario's server binds it.
        let port = 22_000 + u16::try_from(i).unwrap();
        let cli = TestCgroup::new(&format!("rst-c{i}"));
        let srv = TestCgroup::new(&format!("rst-s{i}"));
        let env = |addr: bool| {
            let mut e = vec![
                ("SOCKLAT_TEST_SCENARIO", (*name).to_string()),
                ("SOCKLAT_TEST_COUNT", N.to_string()),
                ("SOCKLAT_TEST_PORT", port.to_string()),
            ];
            if addr {
                e.push(("SOCKLAT_TEST_ADDR", format!("127.0.0.1:{port}")));
            }
            e
        };
        let mut server = run_role_in(&srv, ns_path(), "role_reset_server", &env(false));
        common::wait_for_line(&mut server, "@listening");
        let client = run_role_in(&cli, ns_path(), "role_reset_client", &env(true));
        runs.push((cli, srv, client, server));
    }
    let mut cgroups = Vec::new();
    for (cli, srv, client, server) in runs {
        assert_eq!(role_output(client), ["done"]);
        let out = server.wait_with_output().unwrap();
        assert!(out.status.success(), "server: {}", out.status);
        cgroups.push((cli, srv));
    }
    let m = daemon.scrape_settled();
    let outcome = |m: &Metrics, cg: &TestCgroup, o: &str| {
        m.get(
            "socklat_tcp_connections_closed_total",
            &[("cgroup", cg.label.as_str()), ("outcome", o)],
        )
        .unwrap_or(0.0)
    };
    let mut resets_counted = 0.0;
    let tw_traced = traces_timewait_resets();
    let mut failures = Vec::new();
    for ((name, want_cli, want_srv), (cli, srv)) in SCENARIOS.iter().zip(&cgroups) {
        let got = |cg: &TestCgroup| -> Vec<(String, f64)> {
            observer_common::Outcome::ALL
                .iter()
                .map(|o| (o.name().to_string(), outcome(&m, cg, o.name())))
                .filter(|(_, n)| *n > 0.0)
                .collect()
        };
        let (c, s) = (got(cli), got(srv));
        // Before 6.10 the reset of a timewait socket is not traced: data arriving after
        // close() is answered by the full socket (traced, reset_sent) if it comes before our
        // FIN is acked, else by its timewait socket (not traced: normal). `_tw` waits long
        // enough for the second; `_fast` may see either.
        let untraced_tw_reset = !tw_traced && name.starts_with("data_after_close");
        let client_ok = if untraced_tw_reset {
            c.iter().all(|(o, _)| o == "reset_sent" || o == "normal")
                && c.iter().map(|(_, n)| n).sum::<f64>() == N as f64
                && (*name != "data_after_close_tw" || c == [("normal".to_string(), N as f64)])
        } else {
            c == [(want_cli.to_string(), N as f64)]
        };
        if !client_ok || s != [(want_srv.to_string(), N as f64)] {
            failures.push(format!(
                "{name}: client {c:?} (want {N} {want_cli}), server {s:?} (want {N} {want_srv})"
            ));
        }
        if !untraced_tw_reset {
            for (a, b) in [
                ("reset_sent", "reset_received"),
                ("reset_received", "reset_sent"),
            ] {
                if outcome(&m, cli, a) != outcome(&m, srv, b) {
                    failures.push(format!("{name}: client {a} != server {b}"));
                }
            }
        }
        resets_counted += outcome(&m, cli, "reset_sent") + outcome(&m, srv, "reset_sent");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    if let (Some(netns), Some(before)) = (&netns, resets_before) {
        // Every reset was sent by one of our connection ends: the kernel's count of resets
        // sent in the namespace is the number of ends classified reset_sent.
        let sent = netns.tcp_stat("OutRsts") - before;
        assert_eq!(
            sent, resets_counted,
            "resets the kernel sent vs ends reset_sent"
        );
    }
}
