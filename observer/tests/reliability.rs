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
use common::{Daemon, Metrics, TestCgroup, counted_and_lost, role, role_output};

/// Request/response client ([`common::traffic::client`]).
#[test]
#[ignore = "worker role, run by the reliability tests"]
fn role_client() {
    if role().as_deref() == Some("role_client") {
        common::traffic::client();
    }
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
    // Keep-alive: wrk's 32 connections stay open and every answer is complete (chunked),
    // so no socket error of any kind.
    if let Some(errors) = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors: "))
    {
        for kind in ["connect 0", "read 0", "write 0", "timeout 0"] {
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

/// Touches fresh pages for `SOCKLAT_TEST_SECONDS`: 64 pages mapped, written and unmapped
/// every 10 ms (page faults the kernel counts per cgroup, with no event per fault).
#[test]
#[ignore = "worker role, run by the reliability tests"]
fn role_steady_faulter() {
    if role().as_deref() != Some("role_steady_faulter") {
        return;
    }
    let secs: u64 = std::env::var("SOCKLAT_TEST_SECONDS")
        .unwrap()
        .parse()
        .unwrap();
    let len = 64 * 4096;
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        // SAFETY: a fresh private anonymous mapping, written inside and unmapped below.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            for i in 0..64 {
                std::ptr::write_volatile(p.cast::<u8>().add(i * 4096), 1);
            }
            libc::munmap(p, len);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Issue 14.6: counters never go down. With `--max-cgroups 2`, the test's and a client's
/// cgroups hold the series while faulting cgroups are counted under `_other`; then the
/// clients' cgroups are removed and dropped after `--cgroup-ttl`, so cgroups counted under
/// `_other` are admitted and get series of their own. Every counter sample (`_total`, `_count`, `_sum`, `_bucket`) that two
/// consecutive scrapes both show is never lower in the later one: `_other` keeps what it
/// showed of a cgroup that left it.
#[test]
fn counters_never_go_down_across_admissions_and_expiry() {
    if role().is_some() {
        return;
    }
    let daemon = Daemon::start(&[
        "--probe-mode",
        &common::mode(),
        "--max-cgroups",
        "2",
        "--cgroup-ttl",
        "1s",
    ]);
    let server = delay_server();
    let addr = daemon.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&stop);
    let scraping = std::thread::spawn(move || {
        let mut scrapes = Vec::new();
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let (code, body) = common::http_get(addr, "/metrics").unwrap();
            assert_eq!(code, 200);
            scrapes.push(Metrics::parse(&body));
            std::thread::sleep(Duration::from_millis(150));
        }
        scrapes
    });
    let clients: Vec<TestCgroup> = (0..2)
        .map(|i| TestCgroup::new(&format!("mono-client{i}")))
        .collect();
    for cg in &clients {
        role_output(start_client(cg, server, &[100; 20]));
    }
    let faulters: Vec<TestCgroup> = (0..2)
        .map(|i| TestCgroup::new(&format!("mono-faulter{i}")))
        .collect();
    let running: Vec<_> = faulters
        .iter()
        .map(|cg| {
            common::run_role(
                cg,
                "role_steady_faulter",
                &[("SOCKLAT_TEST_SECONDS", "6".into())],
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    // The clients' cgroups go; after the TTL their series are dropped and the faulters'
    // cgroups are admitted.
    drop(clients);
    for r in running {
        role_output(r);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scrapes = scraping.join().unwrap();
    assert!(scrapes.len() > 20, "{} scrapes", scrapes.len());
    // Some cgroup whose faults were counted under `_other` got series of its own during the
    // run (which ones get the freed places depends on what else faults on the machine).
    let with_faults = |m: &Metrics| -> std::collections::BTreeSet<String> {
        m.0.iter()
            .filter(|s| s.name == "socklat_page_faults_total")
            .filter_map(|s| s.label("cgroup").map(str::to_string))
            .collect()
    };
    let first = with_faults(&scrapes[0]);
    let admitted_later = scrapes
        .iter()
        .flat_map(|m| with_faults(m).into_iter())
        .any(|c| !first.contains(&c) && c != "_other");
    assert!(admitted_later, "no cgroup was admitted during the run");
    assert!(
        scrapes.iter().any(|m| m
            .get(
                "socklat_page_faults_total",
                &[("cgroup", "_other"), ("mode", "user")]
            )
            .is_some_and(|v| v > 0.0)),
        "nothing was counted under _other"
    );
    let compared = assert_counters_never_go_down(&scrapes);
    assert!(compared > 1000, "only {compared} samples compared");
}

/// Checks that every counter sample two consecutive scrapes both show never goes down;
/// returns how many samples were compared.
fn assert_counters_never_go_down(scrapes: &[Metrics]) -> usize {
    let counter = |name: &str| {
        ["_total", "_count", "_sum", "_bucket"]
            .iter()
            .any(|s| name.ends_with(s))
    };
    let mut compared = 0;
    for pair in scrapes.windows(2) {
        let before: std::collections::BTreeMap<_, _> = pair[0]
            .0
            .iter()
            .filter(|s| counter(&s.name))
            .map(|s| ((&s.name, &s.labels), s.value))
            .collect();
        for s in pair[1].0.iter().filter(|s| counter(&s.name)) {
            if let Some(&v) = before.get(&(&s.name, &s.labels)) {
                assert!(
                    s.value >= v,
                    "{} {:?} went down from {v} to {}",
                    s.name,
                    s.labels,
                    s.value
                );
                compared += 1;
            }
        }
    }
    compared
}

/// Issue 16: 300 clients open connections to the real daemon and send one byte of a request
/// head every 2 s (reconnecting when the daemon closes them, which its 10 s head timeout
/// does); meanwhile scrapes every 100 ms for 13 s, alternately on one keep-alive connection
/// and on new ones, all succeed and are complete.
#[test]
fn three_hundred_slow_clients_do_not_stop_scrapes_of_the_daemon() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    if role().is_some() {
        return;
    }
    let daemon = Daemon::start(&["--probe-mode", &common::mode()]);
    let addr = daemon.addr;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicUsize::new(0));
    for i in 0..300u64 {
        let (stop, closed) = (Arc::clone(&stop), Arc::clone(&closed));
        rt.spawn(observer::testutil::slow_client(addr, i, stop, closed));
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut keep = std::net::TcpStream::connect(addr).unwrap();
    keep.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = std::time::Instant::now();
    let mut scrapes = 0;
    let mut slowest = Duration::ZERO;
    while t.elapsed() < Duration::from_secs(13) {
        let s = std::time::Instant::now();
        let r = if scrapes % 2 == 0 {
            observer::http_client::request(&mut keep, "GET", "prom", "/metrics", &[])
        } else {
            observer::testutil::http_fetch(addr, "GET", "/metrics", &[])
        }
        .unwrap_or_else(|e| panic!("scrape {scrapes} failed: {e}"));
        assert_eq!(r.status, 200, "scrape {scrapes}");
        let m = Metrics::parse(&String::from_utf8_lossy(&r.body));
        assert!(
            m.get("socklat_build_info", &[]).is_some(),
            "scrape {scrapes} complete"
        );
        slowest = slowest.max(s.elapsed());
        scrapes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every slow client writes once more (finding out whether it was closed) before the end.
    std::thread::sleep(Duration::from_millis(2500));
    stop.store(true, Ordering::Relaxed);
    let closed = closed.load(Ordering::Relaxed);
    eprintln!(
        "300 slow clients: {scrapes} scrapes of the daemon, all 200; slowest {slowest:?}; {closed} slow connections closed"
    );
    assert!(scrapes >= 60, "{scrapes} scrapes");
    assert!(
        closed >= 300,
        "{closed} slow connections closed by the head timeout"
    );
}
