//! Reliability under stress, with the real daemon: a burst that overflows deliberately tiny
//! rings is accounted for exactly (counted + lost = made, per cgroup) and the daemon
//! recovers; many concurrent scrapes neither lose events nor stall the event path.
//!
//! Run by `cargo xtask test` as root, one test at a time.

#![expect(
    clippy::cast_precision_loss,
    reason = "counts in these tests are far below 2^52"
)]

pub mod common;

use std::process::Command;
use std::time::Duration;

use common::traffic::{delay_server, parse_calls, run_client, start_client};
use common::{Daemon, Metrics, TestCgroup, role, role_output};

/// Request/response client ([`common::traffic::client`]).
#[test]
#[ignore = "worker role, run by the reliability tests"]
fn role_client() {
    if role().as_deref() == Some("role_client") {
        common::traffic::client();
    }
}

/// Calls counted (every result) and events lost for one cgroup.
fn counted_and_lost(m: &Metrics, cg: &TestCgroup) -> (f64, f64) {
    let mut counted = 0.0;
    for call in ["sendmsg", "recvmsg"] {
        for result in ["ok", "eagain", "interrupted", "untimed", "error"] {
            counted += m
                .get(
                    "socklat_tcp_calls_total",
                    &[
                        ("cgroup", cg.label.as_str()),
                        ("call", call),
                        ("result", result),
                    ],
                )
                .unwrap_or(0.0);
        }
    }
    let lost = m
        .get(
            "socklat_ringbuf_lost_events_total",
            &[("cgroup", cg.label.as_str())],
        )
        .unwrap_or(0.0);
    (counted, lost)
}

fn signal(daemon: &Daemon, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(i32::try_from(daemon.child.id()).unwrap(), sig) };
    assert_eq!(rc, 0);
}

/// Rings of 4 KiB (128 events) and the shared ring at its 1 MiB minimum; the daemon is
/// stopped (SIGSTOP) while a client makes 60 000 socket calls, so the rings overflow. Per
/// cgroup, calls counted + events lost equals the calls the client made, exactly, and some
/// were lost. After SIGCONT the daemon drains, keeps counting exactly, and loses nothing
/// more.
#[test]
fn a_burst_into_tiny_rings_is_accounted_for_exactly_and_the_daemon_recovers() {
    if role().is_some() {
        return;
    }
    let daemon = Daemon::start(&[
        "--probe-mode",
        &common::mode(),
        "--ring-size",
        "4K",
        "--signals",
        "sendmsg,recvmsg",
    ]);
    let server = delay_server();
    let cg = TestCgroup::new("burst");
    let client = |n: usize| {
        let m = run_client(&cg, server, &vec![0; n]);
        (m.send.len() + m.recv.len()) as f64
    };
    // Warm up: the cgroup is admitted and gets its ring.
    let mut made = client(20);
    std::thread::sleep(Duration::from_millis(300));

    signal(&daemon, libc::SIGSTOP);
    made += client(30_000);
    signal(&daemon, libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(500));
    let (counted, lost) = counted_and_lost(&daemon.scrape(), &cg);
    assert!(
        lost > 1000.0,
        "the burst did not overflow the rings: {lost} lost"
    );
    assert!(
        (counted + lost - made).abs() < 0.5,
        "{made} calls made, {counted} counted + {lost} lost"
    );

    // Recovered: new traffic is counted exactly, nothing more is lost.
    made += client(500);
    let (counted2, lost2) = counted_and_lost(&daemon.scrape(), &cg);
    assert!(
        (lost2 - lost).abs() < 0.5,
        "lost grew after the burst: {lost} -> {lost2}"
    );
    assert!(
        (counted2 + lost2 - made).abs() < 0.5,
        "after recovery: {made} made, {counted2} counted + {lost2} lost"
    );
}

/// wrk keeps 32 connections scraping /metrics for 4 s (bounded in time) while a client
/// makes calls: every call is counted, none lost, every scrape answered 200.
#[test]
fn concurrent_scrapes_lose_nothing_and_do_not_stall_the_event_path() {
    if role().is_some() {
        return;
    }
    if common::in_vm() {
        eprintln!("no wrk in the guest: this test runs on the host");
        return;
    }
    let daemon = Daemon::start(&["--probe-mode", &common::mode()]);
    let server = delay_server();
    let cg = TestCgroup::new("scraped");
    let c = start_client(&cg, server, &vec![300; 6000]);
    let wrk = Command::new("wrk")
        .args(["-t2", "-c32", "-d4s", "--timeout", "5s"])
        .arg(format!("http://{}/metrics", daemon.addr))
        .output()
        .expect("wrk (Debian package wrk) must be installed: .ci/run installs it");
    let report = String::from_utf8_lossy(&wrk.stdout);
    let m = parse_calls(&role_output(c));
    assert!(wrk.status.success(), "{report}");
    assert!(!report.contains("Non-2xx"), "{report}");
    // The daemon closes each connection after its (streamed, length-less) answer, which
    // wrk counts as a read error per request; anything else is a failure.
    if let Some(errors) = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors: "))
    {
        for kind in ["connect 0", "write 0", "timeout 0"] {
            assert!(errors.contains(kind), "{report}");
        }
    }
    let requests: f64 = report
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.to_string())
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no request count in: {report}"));
    assert!(requests >= 100.0, "only {requests} scrapes: {report}");
    eprintln!(
        "wrk: {requests} scrapes in 4 s alongside {} calls",
        m.send.len() + m.recv.len()
    );

    let scrape = daemon.scrape();
    let (counted, lost) = counted_and_lost(&scrape, &cg);
    assert!(lost < 0.5, "{lost} events lost under scrape load");
    let made = (m.send.len() + m.recv.len()) as f64;
    assert!(
        (counted - made).abs() < 0.5,
        "{made} calls made, {counted} counted"
    );
    let all_lost: f64 = scrape
        .0
        .iter()
        .filter(|s| s.name == "socklat_ringbuf_lost_events_total")
        .map(|s| s.value)
        .sum();
    assert!(
        all_lost < 0.5,
        "{all_lost} events lost in some cgroup under scrape load"
    );
}

/// A cgroup removed and made again at the same path is a new cgroup (a new id): its
/// series count only its own calls, the old one's series (kept until `--cgroup-ttl`) are
/// not merged into it nor duplicated under the same labels (the old one's `cgroup` label
/// becomes `<path> (removed, id N)`), and the exposition stays valid.
#[test]
fn a_cgroup_made_again_at_the_same_path_is_not_confused_with_the_old_one() {
    if role().is_some() {
        return;
    }
    let daemon = Daemon::start(&["--probe-mode", &common::mode()]);
    let server = delay_server();
    let calls = |cg: &TestCgroup, n: usize| run_client(cg, server, &vec![50; n]).send.len() as f64;
    let old = TestCgroup::new("reused");
    let (old_id, label) = (old.id(), old.label.clone());
    let first = calls(&old, 10);
    // Long enough for the daemon to have seen it and resolved its path (a cgroup that is
    // gone before the daemon's next 50 ms tick is labelled `unknown:<id>`).
    std::thread::sleep(Duration::from_millis(300));
    drop(old);
    let new = TestCgroup::new("reused");
    assert_ne!(new.id(), old_id, "the kernel gave the same id");
    let second = calls(&new, 25);
    let text = daemon.scrape_text();
    common::promtool_check(&text);
    let m = Metrics::parse(&text);
    let sends: Vec<(String, f64)> =
        m.0.iter()
            .filter(|s| {
                s.name == "socklat_tcp_calls_total"
                    && s.matches(&[("call", "sendmsg"), ("result", "ok")])
                    && s.label("cgroup").is_some_and(|c| c.starts_with(&label))
            })
            .map(|s| (s.labels["cgroup"].clone(), s.value))
            .collect();
    let live: Vec<&(String, f64)> = sends.iter().filter(|(c, _)| *c == label).collect();
    assert_eq!(live.len(), 1, "{sends:?}");
    assert!(
        (live[0].1 - second).abs() < 0.5,
        "new cgroup: {sends:?}, made {second}"
    );
    let removed: Vec<&(String, f64)> = sends.iter().filter(|(c, _)| *c != label).collect();
    assert_eq!(removed.len(), 1, "{sends:?}");
    assert_eq!(removed[0].0, format!("{label} (removed, id {old_id})"));
    assert!(
        (removed[0].1 - first).abs() < 0.5,
        "old cgroup: {sends:?}, made {first}"
    );
}

/// Cardinality: with `--max-cgroups 3` and five busy client cgroups, at most three cgroups
/// have series of their own (plus `_other`); a client cgroup with its own series has exact
/// counts, and the calls of the others are counted under `cgroup="_other"`, not dropped.
#[test]
fn cgroups_past_the_limit_are_counted_under_other() {
    if role().is_some() {
        return;
    }
    let daemon = Daemon::start(&["--probe-mode", &common::mode(), "--max-cgroups", "3"]);
    let server = delay_server();
    let cgs: Vec<TestCgroup> = (0..5)
        .map(|i| TestCgroup::new(&format!("card{i}")))
        .collect();
    let clients: Vec<_> = cgs
        .iter()
        .map(|cg| start_client(cg, server, &[50; 40]))
        .collect();
    let made: Vec<f64> = clients
        .into_iter()
        .map(|c| parse_calls(&role_output(c)).send.len() as f64)
        .collect();
    let m = daemon.scrape();
    let series: std::collections::BTreeSet<&str> =
        m.0.iter().filter_map(|s| s.label("cgroup")).collect();
    assert!(
        series.len() <= 4,
        "more than 3 cgroups + _other: {series:?}"
    );
    let tracked = m.get("socklat_cgroups_tracked", &[]).unwrap();
    assert!(tracked <= 3.0, "{tracked} tracked");
    let sends = |cgroup: &str| {
        m.get(
            "socklat_tcp_calls_total",
            &[("cgroup", cgroup), ("call", "sendmsg"), ("result", "ok")],
        )
    };
    let mut unseen = 0.0;
    for (cg, n) in cgs.iter().zip(&made) {
        match sends(&cg.label) {
            Some(got) => assert!((got - n).abs() < 0.5, "{}: {got} of {n}", cg.label),
            None => unseen += n,
        }
    }
    assert!(unseen > 0.0, "every client cgroup got series: {series:?}");
    let other = sends("_other").unwrap_or(0.0);
    assert!(
        other >= unseen,
        "_other counts {other} sends, the clients without series made {unseen}"
    );
}
