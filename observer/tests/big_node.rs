//! Big busy nodes, with the real daemon: inside a memory cgroup limited like the
//! `DaemonSet` (192 MiB) while hundreds of cgroups burst traffic, the daemon stays up and
//! under its limit and every event is counted or counted lost; with more connections open
//! than `--max-connections`, evictions are counted and the connections that kept their state
//! are classified exactly.
//!
//! Run by `cargo xtask test` as root, one test at a time.

#![expect(
    clippy::cast_precision_loss,
    clippy::float_cmp,
    reason = "counts in these tests are far below 2^52, exact in f64"
)]

pub mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{
    Daemon, Metrics, TestCgroup, counted_and_lost, env, role, role_output, run_role, wait_for_line,
};
use observer::cgroups::memory::{Layout, memory_cgroups};

fn unix_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// A memory cgroup made by the test for the daemon: cgroup v2 where the unified hierarchy
/// has the memory controller, else a child of this process's cgroup in the v1 memory
/// controller (this project's machines). Removed on drop.
struct MemoryCgroup {
    dir: PathBuf,
    layout: Layout,
    limit: u64,
}

impl MemoryCgroup {
    /// A memory cgroup limited to `limit` bytes, or `None` when the machine has no memory
    /// controller to make one in.
    fn create(name: &str, limit: u64) -> Option<Self> {
        let leaf = format!("socklat-test-{}-{name}", std::process::id());
        let v2 = common::cgroup2_root();
        let has_memory = std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let (dir, layout) = if has_memory {
            // Children of the root get the controller once the root hands it down.
            let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+memory");
            (v2.join(&leaf), Layout::V2)
        } else {
            // The v1 memory controller: below this process's own memory cgroup, so that
            // the limits above it still apply.
            let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            let own = memory_cgroups(&proc_cgroup, &mountinfo, &|p: &Path| p.exists())
                .into_iter()
                .find(|c| c.layout == Layout::V1)?;
            (own.dir.join(&leaf), Layout::V1)
        };
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let c = Self { dir, layout, limit };
        std::fs::write(c.dir.join(layout.limit_file()), limit.to_string()).unwrap();
        // No swap to escape into: the limit is the memory the daemon has.
        let swap = match layout {
            Layout::V2 => "memory.swap.max",
            Layout::V1 => "memory.memsw.limit_in_bytes",
        };
        let _ = std::fs::write(c.dir.join(swap), limit.to_string());
        if layout == Layout::V2 {
            let _ = std::fs::write(c.dir.join(swap), "0");
        }
        Some(c)
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    fn number(&self, file: &str) -> Option<u64> {
        self.read(file).trim().parse().ok()
    }

    fn usage(&self) -> u64 {
        self.number(self.layout.usage_file()).unwrap_or(0)
    }

    /// The highest usage the kernel recorded (v2 before 5.19 has none: `None`).
    fn peak(&self) -> Option<u64> {
        self.number(self.layout.peak_file())
    }

    /// Processes the kernel's OOM killer killed in it.
    fn oom_kills(&self) -> u64 {
        let text = match self.layout {
            Layout::V2 => self.read("memory.events"),
            Layout::V1 => self.read("memory.oom_control"),
        };
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The wrapper that starts a program inside it (see [`Daemon::start_wrapped`]).
    fn wrapper(&self) -> Vec<String> {
        vec![
            "sh".into(),
            "-c".into(),
            "echo $$ > \"$0\" && exec \"$@\"".into(),
            self.dir.join("cgroup.procs").to_string_lossy().into_owned(),
        ]
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Ping-pong over loopback TCP in one process (both ends in its cgroup): from the wall
/// clock's `SOCKLAT_TEST_START_MS`, `SOCKLAT_TEST_BURSTS` bursts of
/// `SOCKLAT_TEST_PINGS` request/response rounds as fast as it can, each burst starting at a
/// random point (seeded by `SOCKLAT_TEST_SEED`) of its own `SOCKLAT_TEST_PERIOD_MS`.
/// Prints the socket calls both ends made (`@calls N`).
#[test]
#[ignore = "worker role, run by the big-node tests"]
fn role_burster() {
    if role().as_deref() != Some("role_burster") {
        return;
    }
    let start: u64 = env("SOCKLAT_TEST_START_MS").parse().unwrap();
    let bursts: u64 = env("SOCKLAT_TEST_BURSTS").parse().unwrap();
    let pings: u64 = env("SOCKLAT_TEST_PINGS").parse().unwrap();
    let period: u64 = env("SOCKLAT_TEST_PERIOD_MS").parse().unwrap();
    let mut seed: u64 = env("SOCKLAT_TEST_SEED").parse().unwrap();
    let mut random = move |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    // The lowest CPU priority (its threads inherit it): the daemon keeps its CPU, as its
    // request gives it on a node; the bursts take the rest.
    // SAFETY: setpriority(2) on this process.
    assert_eq!(unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) }, 0);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut answerer, _) = listener.accept().unwrap();
    client.set_nodelay(true).unwrap();
    answerer.set_nodelay(true).unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let server_calls = Arc::clone(&calls);
    // The answering end: reads 8 bytes, answers 8, until the other end closes.
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 8];
        loop {
            let mut got = 0;
            while got < buf.len() {
                let n = answerer.read(&mut buf[got..]).unwrap();
                server_calls.fetch_add(1, Ordering::Relaxed);
                if n == 0 {
                    return;
                }
                got += n;
            }
            answerer.write_all(&buf).unwrap();
            server_calls.fetch_add(1, Ordering::Relaxed);
        }
    });
    println!("@ready");
    std::io::stdout().flush().unwrap();
    let mut mine = 0u64;
    let mut buf = [0u8; 8];
    for i in 0..bursts {
        let at = start + i * period + random(period * 3 / 4);
        let now = unix_ms();
        if at > now {
            std::thread::sleep(Duration::from_millis(at - now));
        }
        for _ in 0..pings {
            client.write_all(&buf).unwrap();
            mine += 1;
            let mut got = 0;
            while got < buf.len() {
                let n = client.read(&mut buf[got..]).unwrap();
                mine += 1;
                assert!(n > 0, "the other end closed");
                got += n;
            }
        }
    }
    drop(client);
    server.join().unwrap();
    println!("@calls {}", mine + calls.load(Ordering::Relaxed));
}

const MIB: u64 = 1 << 20;
/// The `DaemonSet`'s memory limit.
const LIMIT: u64 = 192 * MIB;
/// Cgroups bursting.
const BURSTERS: usize = 400;
/// Bursts per cgroup, one per period (at a random point of its first three quarters).
const BURSTS: usize = 4;
const PERIOD_MS: u64 = 3000;
/// Request/response rounds per burst: 4 socket calls each, 2 000 events (64 KiB of ring
/// records) in some milliseconds, 8 times the first ring.
const PINGS: usize = 500;
/// Rings up to 1 MiB (`--ring-size`): 400 of them would take 420 MiB, more than twice the
/// limit, so that growth is bound by the budget.
const RING_SIZE: &str = "1M";

/// The daemon with `--ring-size 1M` (the budget is the default, from the limit) in a memory
/// cgroup of 192 MiB (v2 or v1, whichever has the memory controller) while 400 cgroups burst
/// ping-pong traffic at the lowest CPU priority (four bursts each of 2 000 socket calls as
/// fast as they go, at random points of 3-second periods), each burst far more than a ring
/// of the first size holds, so that rings fill, spill and ask to grow, beyond the budget
/// (400 rings at the largest size would not fit; growths are denied): the daemon stays up
/// with nothing OOM-killed, the memory cgroup's usage stays under the limit, the ring
/// memory it reports stays within its budget (set from the limit), and per cgroup every
/// call the test made is counted or counted lost, exactly; the cgroups that lost nothing
/// have exact counts.
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario, one run, one set of checks"
)]
fn hundreds_of_bursting_cgroups_keep_the_daemon_under_its_memory_limit() {
    if role().is_some() {
        return;
    }
    let Some(mem) = MemoryCgroup::create("daemon-mem", LIMIT) else {
        eprintln!("no memory controller (v2 or v1) on this machine: nothing to test");
        return;
    };
    let wrapper = mem.wrapper();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut daemon = Daemon::start_wrapped(
        &wrapper,
        &[
            "--probe-mode",
            &common::mode(),
            "--signals",
            "sendmsg,recvmsg",
            "--ring-size",
            RING_SIZE,
        ],
    );
    let settled = mem.usage();
    let m = daemon.scrape();
    let budget = m.get("socklat_ring_memory_budget_bytes", &[]).unwrap();
    eprintln!(
        "memory cgroup {} ({:?}): {} MiB in use after start-up, ring budget {:.1} MiB",
        mem.dir.display(),
        mem.layout,
        settled / MIB,
        budget / MIB as f64
    );
    assert!(
        budget < LIMIT as f64 && budget > 0.0,
        "the budget must come from the limit: {budget}"
    );

    let cgs: Vec<TestCgroup> = (0..BURSTERS)
        .map(|i| TestCgroup::new(&format!("burst{i}")))
        .collect();
    // Time for every worker to start (they wait for the same instant).
    let start = unix_ms() + 4000 + 10 * BURSTERS as u64;
    let mut workers: Vec<_> = cgs
        .iter()
        .enumerate()
        .map(|(i, cg)| {
            run_role(
                cg,
                "role_burster",
                &[
                    ("SOCKLAT_TEST_START_MS", start.to_string()),
                    ("SOCKLAT_TEST_BURSTS", BURSTS.to_string()),
                    ("SOCKLAT_TEST_PINGS", PINGS.to_string()),
                    ("SOCKLAT_TEST_PERIOD_MS", PERIOD_MS.to_string()),
                    ("SOCKLAT_TEST_SEED", i.to_string()),
                ],
            )
        })
        .collect();
    for w in &mut workers {
        wait_for_line(w, "@ready");
    }
    assert!(unix_ms() < start, "the workers took too long to start");

    // Watch the daemon while they burst: usage, ring memory and the budget.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = Arc::clone(&stop);
        let dir = mem.dir.clone();
        let usage_file = mem.layout.usage_file();
        let addr = daemon.addr;
        std::thread::spawn(move || {
            let mut highest_usage = 0u64;
            let mut highest_rings = 0f64;
            let mut scrapes = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Some(u) = std::fs::read_to_string(dir.join(usage_file))
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                {
                    highest_usage = highest_usage.max(u);
                }
                if let Ok((200, body)) = common::http_get(addr, "/metrics") {
                    scrapes += 1;
                    let m = Metrics::parse(&body);
                    highest_rings =
                        highest_rings.max(m.get("socklat_ring_memory_bytes", &[]).unwrap_or(0.0));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (highest_usage, highest_rings, scrapes)
        })
    };
    let outputs: Vec<Vec<String>> = workers.into_iter().map(role_output).collect();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (highest_usage, highest_rings, scrapes) = watcher.join().unwrap();

    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon died during the bursts"
    );
    assert_eq!(
        mem.oom_kills(),
        0,
        "the OOM killer killed in the daemon's cgroup"
    );
    let peak = mem.peak().unwrap_or(highest_usage).max(highest_usage);
    let m = daemon.scrape();
    let rings_now = m.get("socklat_ring_memory_bytes", &[]).unwrap();
    let denied = m.get("socklat_ring_growths_denied_total", &[]).unwrap();
    let mut made_all = 0.0;
    let mut exact = 0;
    let mut lost_all = 0.0;
    for (cg, out) in cgs.iter().zip(&outputs) {
        let made: f64 = out
            .iter()
            .find_map(|l| l.strip_prefix("calls "))
            .expect("the worker's count")
            .parse()
            .unwrap();
        let (counted, lost) = counted_and_lost(&m, cg);
        assert_eq!(
            counted + lost,
            made,
            "{}: {made} calls made, {counted} counted + {lost} lost",
            cg.label
        );
        made_all += made;
        lost_all += lost;
        if lost == 0.0 {
            exact += 1;
        }
    }
    eprintln!(
        "{BURSTERS} cgroups made {made_all} calls, {lost_all} lost; {exact} cgroups exact, \
         {} counted with losses; peak memory {:.1} MiB of {} MiB (watched {:.1} MiB, {scrapes} \
         scrapes); ring memory at most {:.1} MiB, now {:.1} MiB, of a {:.1} MiB budget; {denied} \
         growths denied",
        BURSTERS - exact,
        peak as f64 / MIB as f64,
        LIMIT / MIB,
        highest_usage as f64 / MIB as f64,
        highest_rings / MIB as f64,
        rings_now / MIB as f64,
        budget / MIB as f64,
    );
    assert!(
        peak < mem.limit,
        "the daemon's memory reached its limit: {peak} of {}",
        mem.limit
    );
    assert!(
        highest_rings <= budget,
        "ring memory {highest_rings} beyond the budget {budget}"
    );
    // The bursts grew rings: more ring memory than the shared ring and a first ring each.
    let first_rings = BURSTERS as f64
        * observer::ring_budget::ring_cost(observer::ring_plan::INITIAL_RING_SIZE) as f64;
    assert!(
        highest_rings > first_rings + 4.0 * MIB as f64,
        "no ring grew: at most {highest_rings} bytes of rings"
    );
    // The budget bound: it denied a growth, or rings were held within a tenth of it (they
    // take room from colder rings first, so a full budget need not deny anything) while
    // 400 rings of RING_SIZE would need five times as much.
    assert!(
        denied > 0.0 || highest_rings >= 0.9 * budget,
        "the budget never bound: 400 rings of {RING_SIZE} must not fit, yet at most \
         {highest_rings} bytes of rings of a {budget}-byte budget, no growth denied"
    );
    assert!(
        exact > 0,
        "every cgroup lost events: the budget starved them all"
    );
    assert!(daemon.terminate() < Duration::from_secs(10));
}

/// Holds `SOCKLAT_TEST_COUNT` connections open to a listener of its own (both ends here),
/// each with a failed receive (`MSG_OOB` with no urgent data: EINVAL, so that its state
/// says `error`); prints `@open`, closes them all once the file `SOCKLAT_TEST_RELEASE`
/// exists, prints `@closed`.
#[test]
#[ignore = "worker role, run by the big-node tests"]
fn role_holder() {
    if role().as_deref() != Some("role_holder") {
        return;
    }
    let count: usize = env("SOCKLAT_TEST_COUNT").parse().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut held = Vec::with_capacity(2 * count);
    for _ in 0..count {
        let c = TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        oob_error(&c);
        held.push(c);
        held.push(s);
    }
    println!("@open");
    std::io::stdout().flush().unwrap();
    let release = PathBuf::from(env("SOCKLAT_TEST_RELEASE"));
    while !release.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(&release);
    drop(held);
    println!("@closed");
}

/// A receive that fails with EINVAL (no urgent data), which marks the connection `error`.
fn oob_error(s: &TcpStream) {
    let mut b = [0u8; 1];
    // SAFETY: a valid socket and buffer.
    let n = unsafe { libc::recv(s.as_raw_fd(), b.as_mut_ptr().cast(), 1, libc::MSG_OOB) };
    assert_eq!(n, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EINVAL)
    );
}

/// `SOCKLAT_TEST_COUNT` connections one after another to a listener of its own, each with
/// a failed receive before both ends close normally: `error` on the connecting end,
/// `normal` on the accepted one.
#[test]
#[ignore = "worker role, run by the big-node tests"]
fn role_errors() {
    if role().as_deref() != Some("role_errors") {
        return;
    }
    let count: usize = env("SOCKLAT_TEST_COUNT").parse().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    for _ in 0..count {
        let mut client = TcpStream::connect(addr).unwrap();
        let (mut accepted, _) = listener.accept().unwrap();
        accepted.write_all(b"y").unwrap();
        let mut buf = [0u8; 1];
        client.read_exact(&mut buf).unwrap();
        oob_error(&client);
        drop(client);
        let mut rest = [0u8; 8];
        while matches!(accepted.read(&mut rest), Ok(n) if n > 0) {}
        drop(accepted);
    }
    println!("@done");
}

fn outcome(m: &Metrics, cg: &TestCgroup, outcome: &str) -> f64 {
    m.get(
        "socklat_tcp_connections_closed_total",
        &[("cgroup", cg.label.as_str()), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

fn closes(m: &Metrics, cg: &TestCgroup) -> f64 {
    m.0.iter()
        .filter(|s| {
            s.name == "socklat_tcp_connections_closed_total"
                && s.matches(&[("cgroup", cg.label.as_str())])
        })
        .map(|s| s.value)
        .sum()
}

fn untracked(m: &Metrics, cg: &TestCgroup) -> f64 {
    m.get(
        "socklat_tcp_connections_untracked_total",
        &[("cgroup", cg.label.as_str())],
    )
    .unwrap_or(0.0)
}

/// The file that tells the holder role to close its connections, made when dropped: on a
/// failed assertion too, so that the holder never outlives the test.
struct Release(PathBuf);

impl Drop for Release {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, "");
    }
}

/// Connections held open by one cgroup, and made one after another by another.
const HELD: usize = 2000;
const KEPT: usize = 300;

/// With `--max-connections 1024`, one cgroup holds 2 000 connections open (4 000 sockets,
/// each a table entry), each marked `error` by a failed receive, so the table evicts; then
/// another cgroup makes 300 connections one after another while those are held. Evictions
/// are counted (`socklat_tcp_connections_evicted_total`, at least the entries beyond the
/// table); the 300 kept their state and are exact: 300 `error` (the connecting ends) and
/// 300 `normal` (the accepted ends), none untracked. The held ones, closed, are every one
/// counted: the connecting ends that kept their state as `error`, those that lost it as
/// untracked closes.
#[test]
fn connections_beyond_the_table_are_counted_evicted_and_the_rest_stay_exact() {
    if role().is_some() {
        return;
    }
    let daemon = Daemon::start(&["--probe-mode", &common::mode(), "--max-connections", "1024"]);
    let m = daemon.scrape();
    assert_eq!(
        m.get("socklat_kernel_table_capacity", &[("table", "connections")]),
        Some(1024.0)
    );
    let held_cg = TestCgroup::new("held");
    let release =
        Release(std::env::temp_dir().join(format!("socklat-test-{}-release", std::process::id())));
    let _ = std::fs::remove_file(&release.0);
    let mut holder = run_role(
        &held_cg,
        "role_holder",
        &[
            ("SOCKLAT_TEST_COUNT", HELD.to_string()),
            (
                "SOCKLAT_TEST_RELEASE",
                release.0.to_string_lossy().into_owned(),
            ),
        ],
    );
    wait_for_line(&mut holder, "@open");
    std::thread::sleep(Duration::from_millis(300));
    let evicted = daemon
        .scrape()
        .get("socklat_tcp_connections_evicted_total", &[])
        .unwrap();
    assert!(
        evicted >= (2 * HELD - 1024) as f64,
        "{} entries for a table of 1024, {evicted} counted evicted",
        2 * HELD
    );

    let kept_cg = TestCgroup::new("kept");
    let out = role_output(run_role(
        &kept_cg,
        "role_errors",
        &[("SOCKLAT_TEST_COUNT", KEPT.to_string())],
    ));
    assert_eq!(out, ["done"]);
    let m = daemon.scrape_settled();
    assert_eq!(outcome(&m, &kept_cg, "error"), KEPT as f64);
    assert_eq!(outcome(&m, &kept_cg, "normal"), KEPT as f64);
    assert_eq!(closes(&m, &kept_cg), 2.0 * KEPT as f64);
    assert_eq!(untracked(&m, &kept_cg), 0.0);

    // Close the held connections.
    drop(release);
    let out = role_output(holder);
    assert!(out.iter().any(|l| l == "closed"), "{out:?}");
    let m = daemon.scrape_settled();
    let errors = outcome(&m, &held_cg, "error");
    let lost_state = untracked(&m, &held_cg);
    let evicted = m.get("socklat_tcp_connections_evicted_total", &[]).unwrap();
    eprintln!(
        "{HELD} held: {errors} error, {lost_state} untracked of {} closes; {evicted} evicted",
        closes(&m, &held_cg)
    );
    assert_eq!(
        closes(&m, &held_cg),
        2.0 * HELD as f64,
        "every close counted"
    );
    assert!(
        errors <= HELD as f64 && errors + lost_state >= HELD as f64,
        "each connecting end is error (state kept) or untracked (state evicted): {errors} error, \
         {lost_state} untracked"
    );
    assert!(lost_state >= (2 * HELD - 1024) as f64 - 2.0 * KEPT as f64);
    assert!(
        m.get("socklat_ringbuf_lost_events_total", &[])
            .is_none_or(|l| l == 0.0)
    );
}
