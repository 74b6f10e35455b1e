//! Privileged integration tests: the real daemon loads the real probes (tracepoint mode,
//! the one this machine's kernel allows), the tests make real traffic and page faults in
//! real cgroup v2 groups, and compare the daemon's numbers with their own measurements.
//!
//! Run by `cargo xtask test` as root, one test at a time (they share kernel state).

#![expect(
    clippy::cast_precision_loss,
    reason = "counts and durations in these tests are far below 2^52"
)]

pub mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::traffic::{Measured, delay_server, delays, parse_calls, run_client, start_client};
use common::{Daemon, TestCgroup, promtool_check, quantile, role, role_output, run_role};

// ------------------------------------------------------------------ worker roles
// These run only when re-executed by a test with SOCKLAT_TEST_ROLE set, inside a cgroup.

/// Request/response client ([`common::traffic::client`]).
#[test]
#[ignore = "worker role, run by the privileged tests"]
fn role_client() {
    if role().as_deref() == Some("role_client") {
        common::traffic::client();
    }
}

/// Maps `SOCKLAT_TEST_PAGES` fresh anonymous pages, touches each once, and prints the
/// kernel's own fault counters for this process (/proc/self/stat minflt, majflt).
#[test]
#[ignore = "worker role, run by the privileged tests"]
fn role_faulter() {
    if role().as_deref() != Some("role_faulter") {
        return;
    }
    let pages: usize = std::env::var("SOCKLAT_TEST_PAGES")
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap();
    let len = pages * page;
    // SAFETY: a fresh private anonymous mapping, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    // One fault per page: no transparent huge pages here.
    // SAFETY: the range is our mapping.
    unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
    for i in 0..pages {
        // SAFETY: inside the mapping.
        unsafe { std::ptr::write_volatile(p.cast::<u8>().add(i * page), 1) };
    }
    // SAFETY: our mapping.
    unsafe { libc::munmap(p, len) };
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which is in parentheses): minflt is field 10, majflt 12.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    println!("@faults {} {}", f[7], f[9]);
}

// ------------------------------------------------------------------ traffic helpers

// ------------------------------------------------------------------ tests

/// Issue 2's smoke test: probes load, loopback traffic in a cgroup of our own reaches the
/// daemon through the ring buffers, and /metrics shows it under that cgroup.
#[test]
fn events_arrive_through_the_ring_buffers() {
    if role().is_some() {
        return;
    }
    let daemon = Daemon::start(&["--probe-mode", &common::mode()]);
    let server = delay_server();
    let cg = TestCgroup::new("smoke");
    let m = run_client(&cg, server, &[100; 50]);
    let scrape = daemon.scrape();
    let l = [("cgroup", cg.label.as_str())];
    let sends = scrape.get(
        "socklat_tcp_calls_total",
        &[l[0], ("call", "sendmsg"), ("result", "ok")],
    );
    let recvs = scrape.get(
        "socklat_tcp_calls_total",
        &[l[0], ("call", "recvmsg"), ("result", "ok")],
    );
    assert_eq!(
        sends,
        Some(m.send.len() as f64),
        "sendmsg calls in {}",
        cg.label
    );
    assert_eq!(
        recvs,
        Some(m.recv.len() as f64),
        "recvmsg calls in {}",
        cg.label
    );
    assert!(
        scrape.get(
            "socklat_probe_info",
            &[("signal", "sendmsg"), ("mode", common::mode().as_str())]
        ) == Some(1.0)
    );
    assert!(
        scrape
            .get("socklat_events_total", &[("signal", "sendmsg")])
            .unwrap()
            >= 50.0
    );
}

/// How far below and above the test's own quantile the daemon's may be (see the test
/// below). In the kernel-matrix guests QEMU emulates the CPU (TCG) on a busy host: the
/// clock read after a call can come milliseconds late when the vCPU is descheduled, which
/// only makes the test's value larger; so there the daemon may be up to 20% + 4 ms below,
/// and still at most 2% + 0.5 ms above (its interval lies inside the test's).
fn tolerance(want: f64) -> (f64, f64) {
    if common::in_vm() {
        (want * 0.2 + 4e-3, want * 0.02 + 0.5e-3)
    } else {
        let t = want * 0.015 + 100e-6;
        (t, t)
    }
}

/// Issue 3: two cgroups whose clients see different server delays (about 2 ms and about
/// 20 ms, each with spread) at the same time. For each cgroup and call the daemon's count
/// equals the calls the client made, and its window quantiles agree with the client's own
/// measurements.
///
/// Tolerance (host): |daemon - test| <= 1.5% of the test's value + 100 us. The daemon's interval
/// (syscall entry to sock_*_length) lies inside the test's (`Instant::now()` around the
/// call), shorter by the syscall's entry/exit and the clock reads, a few microseconds;
/// `HdrHistogram` at 2 significant figures answers with the highest value of the exact
/// value's bucket, at most 1% above; the rest covers a preemption between the tracepoint
/// and the user-space clock read on this 2-core machine.
#[test]
fn per_cgroup_counts_and_quantiles_match_the_clients_measurements() {
    if role().is_some() {
        return;
    }
    let daemon = Daemon::start(&["--probe-mode", &common::mode()]);
    let server = delay_server();
    let fast = TestCgroup::new("fast");
    let slow = TestCgroup::new("slow");
    let fast_delays = delays(400, 1_000, 3_000, 0x1234_5678);
    let slow_delays = delays(120, 10_000, 30_000, 0x9abc_def0);
    let c1 = start_client(&fast, server, &fast_delays);
    let c2 = start_client(&slow, server, &slow_delays);
    let measured = [
        (&fast, parse_calls(&role_output(c1))),
        (&slow, parse_calls(&role_output(c2))),
    ];
    let text = daemon.scrape_text();
    promtool_check(&text);
    let scrape = common::Metrics::parse(&text);

    for (cg, m) in &measured {
        for (call, samples) in [("sendmsg", &m.send), ("recvmsg", &m.recv)] {
            let base = [("cgroup", cg.label.as_str()), ("call", call)];
            let ok = scrape.get(
                "socklat_tcp_calls_total",
                &[base[0], base[1], ("result", "ok")],
            );
            // Every call is either counted or, where a ring could not take its event,
            // counted as lost (never silently missing). On this machine nothing is lost; in
            // the TCG guests a ring lock held by a descheduled vCPU can make a reserve fail.
            let lost = scrape
                .get("socklat_ringbuf_lost_events_total", &[base[0]])
                .unwrap_or(0.0);
            if !common::in_vm() {
                assert!(lost < 0.5, "{lost} lost events in {}", cg.label);
            }
            // A probe run the kernel skipped is counted too (all programs together).
            let skipped = scrape.get("socklat_probe_misses_total", &[]).unwrap_or(0.0);
            // In the serial log of every guest run, to tell skipped runs from other misses.
            eprintln!("@@probe_misses {} {call} {skipped}", cg.label);
            if !common::in_vm() {
                assert!(skipped < 0.5, "{skipped} probe runs skipped");
            }
            let ok = ok.unwrap_or(0.0);
            assert!(
                ok <= samples.len() as f64 && ok + lost + skipped >= samples.len() as f64,
                "{call} count in {}: {ok} counted + {lost} lost + {skipped} skipped runs for {} calls",
                cg.label,
                samples.len()
            );
            for other in ["eagain", "interrupted", "untimed", "error"] {
                let n = scrape.get(
                    "socklat_tcp_calls_total",
                    &[base[0], base[1], ("result", other)],
                );
                assert_eq!(n, Some(0.0), "{call} {other} in {}", cg.label);
            }
            // The histogram holds exactly the calls counted ok (on this machine: all).
            let hcount = scrape.get("socklat_tcp_call_duration_seconds_count", &base);
            assert_eq!(hcount, Some(ok), "histogram count {call} {}", cg.label);
            for q in ["0.5", "0.9", "0.99"] {
                let got = scrape
                    .get(
                        "socklat_tcp_call_latency_seconds",
                        &[base[0], base[1], ("quantile", q)],
                    )
                    .unwrap_or_else(|| panic!("no {call} q{q} for {}", cg.label));
                let want = quantile(samples, q.parse().unwrap()) as f64 / 1e9;
                let (below, above) = tolerance(want);
                assert!(
                    got >= want - below && got <= want + above,
                    "{} {call} q{q}: daemon {got:.6}s vs test {want:.6}s (allowed -{below:.6}s/+{above:.6}s)",
                    cg.label
                );
            }
        }
        eprintln!(
            "{}: {} sends, {} recvs, recv p50 {:.3} ms p99 {:.3} ms",
            cg.label,
            m.send.len(),
            m.recv.len(),
            quantile(&m.recv, 0.5) as f64 / 1e6,
            quantile(&m.recv, 0.99) as f64 / 1e6
        );
    }
    // The two groups really are told apart: the slow group's median recv is ~10x the fast one's
    // on this machine. In the TCG guests emulated timers stretch the short delays by
    // milliseconds (measured in an arm64 guest: fast p50 6.0 ms for 2 ms asked, slow 25 ms for
    // 20 ms, and the daemon agreed with both), so there 3x.
    let apart = if common::in_vm() { 3.0 } else { 5.0 };
    let p50 = |cg: &TestCgroup| {
        scrape
            .get(
                "socklat_tcp_call_latency_seconds",
                &[
                    ("cgroup", cg.label.as_str()),
                    ("call", "recvmsg"),
                    ("quantile", "0.5"),
                ],
            )
            .unwrap()
    };
    assert!(
        p50(&slow) > apart * p50(&fast),
        "recv p50: slow {} vs fast {}",
        p50(&slow),
        p50(&fast)
    );
}

/// Issue 5: page fault counts per cgroup agree with the kernel's own per-process counters,
/// and a cgroup whose process does not fault stays near zero.
///
/// Tolerance: the daemon counts every page fault exception of the cgroup's processes
/// (`exceptions:page_fault_user/kernel`); /proc/PID/stat counts faults accounted by the mm
/// (`mm_account_fault`). The exception count may be higher by spurious faults and retried
/// ones, and by the few faults of the process's exit after it read its counters: we allow
/// +2% + 64. It may never be lower.
#[test]
fn page_fault_counts_match_the_kernels_per_process_counters() {
    if role().is_some() {
        return;
    }
    let daemon = Daemon::start(&["--probe-mode", &common::mode()]);
    let busy = TestCgroup::new("faulty");
    let idle = TestCgroup::new("idle");
    // A process started outside, then moved into `idle`, where it only sleeps.
    let mut sleeper = std::process::Command::new("sleep")
        .arg("3")
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    idle.adopt(sleeper.id());
    let pages = 20_000;
    let f = run_role(
        &busy,
        "role_faulter",
        &[("SOCKLAT_TEST_PAGES", pages.to_string())],
    );
    let out = role_output(f);
    let line = out
        .iter()
        .find(|l| l.starts_with("faults "))
        .expect("fault line");
    let mut it = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse::<u64>().unwrap());
    let (minflt, majflt) = (it.next().unwrap(), it.next().unwrap());
    let _ = sleeper.wait();
    let scrape = daemon.scrape();
    let get = |cg: &TestCgroup, mode| {
        scrape
            .get(
                "socklat_page_faults_total",
                &[("cgroup", cg.label.as_str()), ("mode", mode)],
            )
            .unwrap_or(0.0)
    };
    let daemon_total = get(&busy, "user") + get(&busy, "kernel");
    let kernel_total = (minflt + majflt) as f64;
    eprintln!(
        "faults: daemon {daemon_total}, /proc/PID/stat {kernel_total} (min {minflt} maj {majflt}), touched {pages}"
    );
    assert!(
        daemon_total >= f64::from(pages),
        "fewer faults than pages touched"
    );
    assert!(
        daemon_total >= kernel_total - 64.0,
        "daemon {daemon_total} < kernel {kernel_total}"
    );
    assert!(
        daemon_total <= kernel_total * 1.02 + 64.0,
        "daemon {daemon_total} >> kernel {kernel_total}"
    );
    // Where the mode times the fault handler, the faulting cgroup has durations too.
    if matches!(common::mode().as_str(), "fentry" | "kprobe") {
        let n = scrape
            .get(
                "socklat_page_fault_duration_seconds_count",
                &[("cgroup", busy.label.as_str()), ("fault", "minor")],
            )
            .unwrap_or(0.0);
        assert!(
            n >= f64::from(pages),
            "{n} fault durations for {pages} pages touched"
        );
    }
    let idle_total = get(&idle, "user") + get(&idle, "kernel");
    assert!(idle_total <= 50.0, "idle cgroup faulted {idle_total} times");
}

/// Maps `SOCKLAT_TEST_PAGES` pages registered with a userfaultfd and touches each once; a
/// thread of its own answers every fault with a zero page. Each such fault is one fault to
/// the process, but `handle_mm_fault` runs twice for it: the first call waits for the
/// userfaultfd's answer and returns `VM_FAULT_RETRY`, the retry maps the page. Prints the
/// kernel's fault counters of the process (`@faults MINFLT MAJFLT`) and the faults it
/// answered (`@answered N`).
#[test]
#[ignore = "worker role, run by the privileged tests"]
fn role_uffd_faulter() {
    // include/uapi/linux/userfaultfd.h: UFFD_API 0xAA; the ioctls are _IOWR(0xAA, nr, T).
    const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
    const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
    const UFFDIO_ZEROPAGE: libc::c_ulong = 0xc020_aa04;
    const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
    if role().as_deref() != Some("role_uffd_faulter") {
        return;
    }
    let pages: usize = std::env::var("SOCKLAT_TEST_PAGES")
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap();
    let len = pages * page;
    // SAFETY: userfaultfd(2), its API handshake and registration of a fresh private mapping,
    // with structs laid out as the UAPI header has them.
    let (uffd, p) = unsafe {
        let uffd = i32::try_from(libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC)).unwrap();
        assert!(
            uffd >= 0,
            "userfaultfd: {}",
            std::io::Error::last_os_error()
        );
        let mut api = [0xAAu64, 0, 0];
        assert_eq!(
            libc::ioctl(uffd, UFFDIO_API, api.as_mut_ptr()),
            0,
            "UFFDIO_API"
        );
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        libc::madvise(p, len, libc::MADV_NOHUGEPAGE);
        // struct uffdio_register { range { start, len }, mode, ioctls }: mode MISSING = 1.
        let mut reg = [p as u64, len as u64, 1, 0];
        assert_eq!(
            libc::ioctl(uffd, UFFDIO_REGISTER, reg.as_mut_ptr()),
            0,
            "UFFDIO_REGISTER: {}",
            std::io::Error::last_os_error()
        );
        (uffd, p as usize)
    };
    let answering = std::thread::spawn(move || {
        let mut answered = 0;
        while answered < pages {
            // struct uffd_msg: event (u8) at 0, the fault address (u64) at 16; 32 bytes.
            let mut msg = [0u64; 4];
            // SAFETY: reads one 32-byte message into a buffer of that size.
            let n = unsafe { libc::read(uffd, msg.as_mut_ptr().cast(), 32) };
            assert_eq!(n, 32, "uffd read: {}", std::io::Error::last_os_error());
            if msg[0].to_le_bytes()[0] != UFFD_EVENT_PAGEFAULT {
                continue;
            }
            let at = msg[2] & !(page as u64 - 1);
            // struct uffdio_zeropage { range { start, len }, mode, zeropage (out) }.
            let mut zero = [at, page as u64, 0, 0];
            // SAFETY: answers the fault at `at` inside the registered range.
            let rc = unsafe { libc::ioctl(uffd, UFFDIO_ZEROPAGE, zero.as_mut_ptr()) };
            assert_eq!(
                rc,
                0,
                "UFFDIO_ZEROPAGE: {}",
                std::io::Error::last_os_error()
            );
            answered += 1;
        }
        answered
    });
    for i in 0..pages {
        // SAFETY: inside the mapping; a read faults in the zero page the thread provides.
        unsafe { std::ptr::read_volatile((p + i * page) as *const u8) };
    }
    let answered = answering.join().unwrap();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    println!("@faults {} {}", f[7], f[9]);
    println!("@answered {answered}");
}

/// Issue 14.7: a page fault that the kernel retries (`handle_mm_fault` returning
/// `VM_FAULT_RETRY`, here while a userfaultfd answers it) is one fault: its cgroup's fault
/// durations number the faults the kernel counted for the process (/proc/PID/stat), not
/// twice the retried ones. Durations exist in the fentry and kprobe modes (kernel matrix);
/// in the tracepoint mode this checks the counts only.
///
/// Tolerance as in the fault count test (+2% + 64 for the process's exit, -64).
#[test]
fn retried_page_faults_are_counted_once() {
    if role().is_some() {
        return;
    }
    let daemon = Daemon::start(&["--probe-mode", &common::mode()]);
    let cg = TestCgroup::new("uffd");
    let pages = 2000;
    let out = role_output(run_role(
        &cg,
        "role_uffd_faulter",
        &[("SOCKLAT_TEST_PAGES", pages.to_string())],
    ));
    let field = |name: &str| -> Vec<f64> {
        out.iter()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no @{name} in {out:?}"))
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect()
    };
    assert_eq!(field("answered"), [f64::from(pages)]);
    let kernel = field("faults").iter().sum::<f64>();
    let m = daemon.scrape();
    let label = cg.label.as_str();
    let counted = ["user", "kernel"]
        .iter()
        .map(|mode| {
            m.get(
                "socklat_page_faults_total",
                &[("cgroup", label), ("mode", mode)],
            )
            .unwrap_or(0.0)
        })
        .sum::<f64>();
    let within = |n: f64| n >= kernel - 64.0 && n <= kernel * 1.02 + 64.0;
    assert!(
        within(counted),
        "{counted} faults counted, the kernel counted {kernel}"
    );
    if matches!(common::mode().as_str(), "fentry" | "kprobe") {
        let durations = ["minor", "major"]
            .iter()
            .map(|fault| {
                m.get(
                    "socklat_page_fault_duration_seconds_count",
                    &[("cgroup", label), ("fault", fault)],
                )
                .unwrap_or(0.0)
            })
            .sum::<f64>();
        assert!(
            within(durations),
            "{durations} fault durations, the kernel counted {kernel} faults ({pages} retried)"
        );
    }
}

/// Auto mode picks the best mode that attaches, per signal, and says why it skipped the
/// others; on this machine's kernel (no kprobes, no fentry) that is the tracepoint mode.
#[test]
fn check_reports_the_choice_per_signal_and_exits_zero() {
    if role().is_some() {
        return;
    }
    let out = std::process::Command::new(common::SOCKLAT)
        .args(["--check", "--signals", "sendmsg,recvmsg,pagefaults"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "--check failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for sig in ["sendmsg", "recvmsg", "pagefaults"] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(sig))
            .unwrap_or_else(|| panic!("{sig} line in {text}"));
        assert!(!line.contains("NOT ATTACHED"), "{line}");
        let mode = line.split_whitespace().nth(1).unwrap();
        assert!(["fentry", "kprobe", "tracepoint"].contains(&mode), "{line}");
        if mode != "fentry" {
            assert!(
                text.contains("fentry unavailable:"),
                "auto mode must say why fentry was skipped: {line}"
            );
        }
    }
}

/// A forced mode that cannot attach is a clear error and a non-zero exit.
#[test]
fn bad_input_and_unavailable_modes_fail_with_one_clear_line() {
    if role().is_some() {
        return;
    }
    let run = |args: &[&str]| {
        let out = std::process::Command::new(common::SOCKLAT)
            .args(args)
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--ring-size", "100000"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("power of two"), "{err}");
    let (code, err) = run(&["--probe-mode", "sometimes"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--probe-mode"), "{err}");
    // A port in use.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let (code, err) = run(&["--listen", &addr]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot listen on") && err.contains("--listen"),
        "{err}"
    );
    {
        let (_, e) = (code, &err);
        assert!(
            !e.contains("panicked") && !e.contains("RUST_BACKTRACE"),
            "{e}"
        );
    }
    // A mode this kernel may not have: forced, it either attaches or fails clearly.
    let (code, err) = run(&["--check", "--probe-mode", "kprobe", "--signals", "sendmsg"]);
    if code != Some(0) {
        assert_eq!(code, Some(1), "{err}");
    }
}

/// The ids of the BPF objects (`prog_id` or `map_id` lines of /proc/PID/fdinfo) that the
/// process `pid` holds: what identifies its programs and maps among those of other socklat
/// instances on the same host.
fn bpf_ids_of(pid: u32, key: &str) -> Vec<u32> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    let mut ids: Vec<u32> = fds
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Which of `ids` are still loaded programs.
fn loaded(ids: &[u32]) -> Vec<u32> {
    let all = observer::kernel::prog_info::all().expect("list BPF programs");
    ids.iter()
        .copied()
        .filter(|id| all.iter().any(|p| p.id == *id))
        .collect()
}

/// Waits up to `secs` for the programs `ids` to be gone (the kernel frees programs shortly
/// after their last reference closes).
fn programs_gone_within(ids: &[u32], secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if loaded(ids).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The programs a running daemon holds (at least the attached probes).
fn programs_of(d: &Daemon) -> Vec<u32> {
    let ids = bpf_ids_of(d.child.id(), "prog_id:");
    assert!(ids.len() >= 5, "probes not loaded: {ids:?}");
    ids
}

/// SIGTERM and SIGINT stop the daemon within a second with every probe detached; after
/// SIGKILL the kernel drops the probes too (links belong to the process); a restart right
/// after works.
#[test]
fn shutdown_leaves_no_probe_behind_and_restart_works() {
    if role().is_some() {
        return;
    }
    if common::in_vm() {
        eprintln!("skipped in the kernel-matrix guest: needs bpftool");
        return;
    }
    let mut d = Daemon::start(&["--probe-mode", &common::mode()]);
    let progs = programs_of(&d);
    let took = d.terminate();
    assert!(took < Duration::from_secs(1), "SIGTERM took {took:?}");
    assert!(
        programs_gone_within(&progs, 2),
        "programs left after SIGTERM"
    );

    let d = Daemon::start(&["--probe-mode", &common::mode()]);
    let progs = programs_of(&d);
    let t = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(i32::try_from(d.child.id()).unwrap(), libc::SIGINT) };
    let mut d = d;
    let status = d.child.wait().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "SIGINT took {:?}",
        t.elapsed()
    );
    assert!(status.success(), "exit after SIGINT: {status}");
    assert!(
        programs_gone_within(&progs, 2),
        "programs left after SIGINT"
    );

    let mut d = Daemon::start(&["--probe-mode", &common::mode()]);
    let progs = programs_of(&d);
    d.child.kill().unwrap();
    let _ = d.child.wait();
    assert!(
        programs_gone_within(&progs, 5),
        "programs left after SIGKILL"
    );

    let d = Daemon::start(&["--probe-mode", &common::mode()]);
    let m = d.scrape();
    assert_eq!(
        m.get("socklat_probe_info", &[("signal", "recvmsg")]),
        Some(1.0)
    );
}

/// Cgroup ids that have a ring in the `CGROUP_RINGS` map of the daemon `d`.
fn kernel_ring_keys(d: &Daemon) -> Vec<u64> {
    let show = |id: u32| {
        let out = std::process::Command::new("bpftool")
            .args(["map", "show", "id", &id.to_string()])
            .output()
            .expect("bpftool (installed by .ci/run)");
        String::from_utf8_lossy(&out.stdout).contains(" name CGROUP_RINGS ")
    };
    let Some(id) = bpf_ids_of(d.child.id(), "map_id:")
        .into_iter()
        .find(|id| show(*id))
    else {
        panic!("the daemon holds no CGROUP_RINGS map");
    };
    let out = std::process::Command::new("bpftool")
        .args(["map", "dump", "id", &id.to_string(), "-j"])
        .output()
        .expect("bpftool");
    let text = String::from_utf8_lossy(&out.stdout);
    // [{"key":["0x01","0x00",...],"value":[...]}, ...]: eight little-endian key bytes.
    text.split("\"key\":[")
        .skip(1)
        .map(|rest| {
            let bytes: Vec<u8> = rest
                .split(']')
                .next()
                .unwrap()
                .split(',')
                .map(|b| {
                    u8::from_str_radix(b.trim().trim_matches('"').trim_start_matches("0x"), 16)
                        .unwrap()
                })
                .collect();
            u64::from_le_bytes(bytes.try_into().unwrap())
        })
        .collect()
}

/// Churn: removed cgroups lose their series, their ring and their kernel map entries once
/// `--cgroup-ttl` has passed without events, so dead cgroups never use up `--max-cgroups`:
/// three rounds of six short-lived cgroups, with room for eight, all get series of their
/// own with exact counts and nothing goes to `_other`.
#[test]
fn dead_cgroups_are_dropped_after_the_ttl() {
    if role().is_some() {
        return;
    }
    if common::in_vm() {
        eprintln!("skipped in the kernel-matrix guest: needs bpftool");
        return;
    }
    let daemon = Daemon::start(&[
        "--probe-mode",
        &common::mode(),
        "--cgroup-ttl",
        "1s",
        "--max-cgroups",
        "8",
    ]);
    let server = delay_server();
    for round in 0..3 {
        let cgs: Vec<TestCgroup> = (0..6)
            .map(|i| TestCgroup::new(&format!("churn{round}-{i}")))
            .collect();
        let clients: Vec<_> = cgs
            .iter()
            .map(|cg| start_client(cg, server, &[50; 10]))
            .collect();
        let made: Vec<Measured> = clients
            .into_iter()
            .map(|c| parse_calls(&role_output(c)))
            .collect();
        let m = daemon.scrape();
        for (cg, calls) in cgs.iter().zip(&made) {
            let got = m.get(
                "socklat_tcp_calls_total",
                &[
                    ("cgroup", cg.label.as_str()),
                    ("call", "sendmsg"),
                    ("result", "ok"),
                ],
            );
            assert_eq!(
                got,
                Some(calls.send.len() as f64),
                "round {round}: {}",
                cg.label
            );
        }
        let ids: Vec<u64> = cgs.iter().map(TestCgroup::id).collect();
        // Rings are installed off the event path, shortly after a cgroup's first events.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ids.iter().all(|id| kernel_ring_keys(&daemon).contains(id)) {
            assert!(
                Instant::now() < deadline,
                "round {round}: rings not installed"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let labels: Vec<String> = cgs.iter().map(|c| c.label.clone()).collect();
        drop(cgs);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = daemon.scrape_text();
            let gone = labels
                .iter()
                .all(|l| !text.contains(&format!("cgroup=\"{l}\"")));
            let keys = kernel_ring_keys(&daemon);
            if gone && ids.iter().all(|id| !keys.contains(id)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: dead cgroups still shown after 10 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let m = daemon.scrape();
    let other = m.get(
        "socklat_tcp_calls_total",
        &[("cgroup", "_other"), ("call", "sendmsg"), ("result", "ok")],
    );
    assert_eq!(
        other, None,
        "events went to _other: dead cgroups used up the limit"
    );
    assert!(m.get("socklat_cgroups_tracked", &[]).unwrap() <= 2.0);
}

/// A capability set of `CAP_BPF` alone, as /proc/PID/status prints it.
const CAP_BPF_ONLY: &str = "0000008000000000";

/// Started as root with every capability, the daemon keeps only `CAP_BPF` once attached, in
/// every thread and in the bounding set; a cgroup that appears afterwards still gets its
/// own ring (created with `CAP_BPF` alone) and exact counts.
#[test]
fn drops_every_capability_but_cap_bpf_after_attaching() {
    if role().is_some() {
        return;
    }
    let daemon = Daemon::start(&["--probe-mode", &common::mode()]);
    let threads = common::thread_caps(daemon.child.id());
    assert!(threads.len() >= 3, "{threads:?}");
    for (tid, eff, prm, bnd) in threads {
        assert_eq!(
            (eff.as_str(), prm.as_str(), bnd.as_str()),
            (CAP_BPF_ONLY, CAP_BPF_ONLY, CAP_BPF_ONLY),
            "thread {tid}"
        );
    }
    let server = delay_server();
    let cg = TestCgroup::new("after-drop");
    let m = run_client(&cg, server, &[100; 300]);
    let scrape = daemon.scrape();
    for (call, n) in [("sendmsg", m.send.len()), ("recvmsg", m.recv.len())] {
        let got = scrape.get(
            "socklat_tcp_calls_total",
            &[
                ("cgroup", cg.label.as_str()),
                ("call", call),
                ("result", "ok"),
            ],
        );
        assert_eq!(got, Some(n as f64), "{call}");
    }
    if common::in_vm() {
        eprintln!("no bpftool in the guest: ring creation after the drop checked on the host");
    } else {
        assert!(
            kernel_ring_keys(&daemon).contains(&cg.id()),
            "the new cgroup got no ring of its own"
        );
    }
}

/// setpriv options that leave the process only the given capabilities (root's uid stays).
fn only_caps(caps: &str) -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--bounding-set=-all,{caps}"),
        format!("--inh-caps=-all,{caps}"),
        format!("--ambient-caps=-all,{caps}"),
        "--".into(),
    ]
}

/// The daemon runs with `CAP_BPF` and `CAP_PERFMON` and nothing else (every other capability
/// dropped from its bounding set), and still counts a cgroup's calls exactly; without
/// `CAP_BPF` it stops with one clear line.
#[test]
fn runs_with_only_cap_bpf_and_cap_perfmon() {
    if role().is_some() {
        return;
    }
    if common::in_vm() {
        eprintln!("skipped in the kernel-matrix guest: needs setpriv");
        return;
    }
    let wrapper = only_caps("+bpf,+perfmon");
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let daemon = Daemon::start_wrapped(&wrapper, &["--probe-mode", &common::mode()]);
    // It started with CAP_BPF (39) and CAP_PERFMON (38) only, and once attached every
    // thread keeps CAP_BPF alone.
    for (tid, eff, prm, _) in common::thread_caps(daemon.child.id()) {
        assert_eq!(
            (eff.as_str(), prm.as_str()),
            (CAP_BPF_ONLY, CAP_BPF_ONLY),
            "thread {tid}"
        );
    }
    let server = delay_server();
    let cg = TestCgroup::new("lowpriv");
    let m = run_client(&cg, server, &[100; 20]);
    let scrape = daemon.scrape();
    let sends = scrape.get(
        "socklat_tcp_calls_total",
        &[
            ("cgroup", cg.label.as_str()),
            ("call", "sendmsg"),
            ("result", "ok"),
        ],
    );
    assert_eq!(sends, Some(m.send.len() as f64));

    let wrapper = only_caps("+perfmon");
    let out = std::process::Command::new(&wrapper[0])
        .args(&wrapper[1..])
        .arg(common::SOCKLAT)
        .arg("--check")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("permission denied using BPF") && err.contains("lacks CAP_BPF"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// Two containers in Kubernetes-shaped cgroups (cgroupfs driver with containerd; systemd
/// driver with CRI-O): the one whose kubelet logs exist gets namespace, pod and container
/// names; the other carries pod UID and container id until its logs appear, then is named
/// too (within seconds, with its counts intact).
#[test]
fn kubernetes_cgroups_are_named_from_the_kubelet_logs() {
    if role().is_some() {
        return;
    }
    let pid = std::process::id();
    let (uid_a, id_a) = ("0b6c3d2a-4e5f-4a1b-9c8d-7e6f5a4b3c2d", "a".repeat(64));
    let (uid_b, id_b) = ("5e1d2c3b-0a9f-4e8d-8c7b-6a5f4e3d2c1b", "b".repeat(64));
    let logs = std::env::temp_dir().join(format!("socklat-kubelet-{pid}"));
    let _ = std::fs::remove_dir_all(&logs);
    observer::kube::write_fake_kubelet_logs(&logs, "shop", "web-0", uid_a, "app", &id_a).unwrap();
    std::fs::create_dir_all(logs.join("pods")).unwrap();

    let top = format!("socklat-test-{pid}-k8s");
    let a = TestCgroup::at(&format!("{top}/kubepods/burstable/pod{uid_a}/{id_a}"));
    let b = TestCgroup::at(&format!(
        "{top}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-{id_b}.scope",
        uid_b.replace('-', "_")
    ));
    let daemon = Daemon::start(&[
        "--probe-mode",
        &common::mode(),
        "--kubelet-log-dir",
        logs.to_str().unwrap(),
    ]);
    let server = delay_server();
    let mut calls = Vec::new();
    for cg in [&a, &b] {
        calls.push(run_client(cg, server, &[50; 20]).send.len() as f64);
    }
    let sends = |m: &common::Metrics, cg: &TestCgroup, ns: &str, pod: &str, container: &str| {
        m.get(
            "socklat_tcp_calls_total",
            &[
                ("cgroup", cg.label.as_str()),
                ("namespace", ns),
                ("pod", pod),
                ("container", container),
                ("call", "sendmsg"),
                ("result", "ok"),
            ],
        )
    };
    let m = daemon.scrape();
    assert_eq!(sends(&m, &a, "shop", "web-0", "app"), Some(calls[0]));
    assert_eq!(sends(&m, &b, "", uid_b, &id_b), Some(calls[1]), "b by ids");

    // B's logs appear (the kubelet writes them after the runtime made the cgroup).
    observer::kube::write_fake_kubelet_logs(&logs, "batch", "job-x", uid_b, "worker", &id_b)
        .unwrap();
    let t = Instant::now();
    let named = loop {
        let m = daemon.scrape();
        if let Some(v) = sends(&m, &b, "batch", "job-x", "worker") {
            break v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "b not named 15 s after its kubelet logs appeared"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(Some(named), Some(calls[1]), "b's count after naming");
    assert_eq!(sends(&daemon.scrape(), &b, "", uid_b, &id_b), None);
    drop((a, b));
    std::fs::remove_dir_all(&logs).unwrap();
}
