//! Test harness for the privileged tests: the real daemon as a child process, real cgroup
//! v2 groups, worker processes placed in them, and the daemon's numbers read with its own
//! exposition parser.
#![expect(
    clippy::must_use_candidate,
    reason = "test helpers whose results their callers use; a mark on each adds nothing"
)]

pub mod certs;
pub mod traffic;

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use observer::exposition::parse::{Sample, parse};
pub use observer::testutil::{free_port, http_get, quantile};

/// The worker role this process was started for (`SOCKLAT_TEST_ROLE`), if any: every test
/// binary re-executes itself as worker processes inside cgroups.
pub fn role() -> Option<String> {
    std::env::var("SOCKLAT_TEST_ROLE").ok()
}

/// A variable of the worker role's environment, which its test set.
pub fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"))
}

/// Sets `SO_LINGER` 0 on `s`: closing it then sends a reset (an abortive close).
pub fn linger0(s: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a valid linger struct of the right size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            u32::try_from(size_of::<libc::linger>()).unwrap(),
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
}

/// The probe mode under test: `SOCKLAT_TEST_MODE` (set by `cargo xtask vm-test` in the
/// kernel matrix), else tracepoint, the only mode this project's machines allow.
pub fn mode() -> String {
    std::env::var("SOCKLAT_TEST_MODE").unwrap_or_else(|_| "tracepoint".into())
}

/// Whether we run inside a kernel-matrix guest (busybox only: no promtool, bpftool or
/// `ip netns`; the tests that need them say so and skip).
pub fn in_vm() -> bool {
    std::env::var_os("SOCKLAT_VM").is_some()
}

/// The daemon binary built by cargo for these tests.
pub const SOCKLAT: &str = env!("CARGO_BIN_EXE_socklat");

/// Where cgroup v2 is mounted on this machine.
pub fn cgroup2_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    observer::cgroups::cgroup2_mount_from(&info).expect("cgroup v2 must be mounted for these tests")
}

/// A cgroup v2 group made by the test; removed on drop.
pub struct TestCgroup {
    pub path: PathBuf,
    /// Path relative to the cgroup v2 mount: the daemon's `cgroup` label.
    pub label: String,
    procs: CString,
    /// Directories this test made, innermost first (removed in that order).
    made: Vec<PathBuf>,
}

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        Self::at(&format!("socklat-test-{}-{name}", std::process::id()))
    }

    /// A group at `rel` under the cgroup v2 mount, with any missing parents (removed too).
    pub fn at(rel: &str) -> Self {
        let root = cgroup2_root();
        let path = root.join(rel);
        let _ = std::fs::remove_dir(&path);
        let mut made = Vec::new();
        let mut p = path.clone();
        while !p.exists() {
            made.push(p.clone());
            p.pop();
        }
        for dir in made.iter().rev() {
            std::fs::create_dir(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        }
        let procs = CString::new(path.join("cgroup.procs").to_string_lossy().as_bytes()).unwrap();
        Self {
            path,
            label: format!("/{rel}"),
            procs,
            made,
        }
    }

    /// The cgroup id (inode number of its directory), as `bpf_get_current_cgroup_id` sees it.
    pub fn id(&self) -> u64 {
        std::fs::metadata(&self.path).unwrap().ino()
    }

    /// A command that runs in this cgroup from its first instruction after exec.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let procs = self.procs.clone();
        // SAFETY: only async-signal-safe calls (open, write, close) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0\n".as_ptr().cast(), 2);
                libc::close(fd);
                if n != 2 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Moves an already running process into this cgroup.
    pub fn adopt(&self, pid: u32) {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .expect("move pid into cgroup");
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in &self.made {
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A running daemon, stopped with SIGTERM on drop.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Daemon {
    /// Starts `socklat` on a free loopback port with the given extra flags and waits until
    /// /healthz says the probes are attached.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_wrapped(&[], extra)
    }

    /// Like [`Daemon::start`], run through `wrapper` (e.g. setpriv with its options).
    pub fn start_wrapped(wrapper: &[&str], extra: &[&str]) -> Self {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(SOCKLAT);
                c
            }
            None => Command::new(SOCKLAT),
        };
        let child = cmd
            .arg("--listen")
            .arg(addr.to_string())
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start socklat");
        let mut d = Daemon { child, addr };
        // With TLS on the main listener, health is asked on the plain healthz listener.
        let health: SocketAddr = extra
            .iter()
            .position(|a| *a == "--web.healthz-listen")
            .map_or(addr, |i| extra[i + 1].parse().unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = d.child.try_wait().unwrap() {
                panic!("socklat exited early: {status}");
            }
            if let Ok((code, _)) = http_get(health, "/healthz")
                && code == 200
            {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "socklat did not become healthy in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn scrape(&self) -> Metrics {
        let (code, body) = http_get(self.addr, "/metrics").expect("scrape");
        assert_eq!(code, 200, "scrape failed: {body}");
        Metrics::parse(&body)
    }

    /// A scrape once every connection closed so far is counted: a close that a reset may
    /// still follow is held by the daemon for up to `TIMEWAIT_HOLD_MS` before it counts it.
    pub fn scrape_settled(&self) -> Metrics {
        std::thread::sleep(Duration::from_millis(
            observer::aggregate::TIMEWAIT_HOLD_MS + 300,
        ));
        self.scrape()
    }

    pub fn scrape_text(&self) -> String {
        http_get(self.addr, "/metrics").expect("scrape").1
    }

    /// SIGTERM, and the time it took to exit.
    pub fn terminate(&mut self) -> Duration {
        let t = Instant::now();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(i32::try_from(self.child.id()).unwrap(), libc::SIGTERM) };
        let deadline = t + Duration::from_secs(10);
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return t.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "socklat did not stop within 10 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(i32::try_from(self.child.id()).unwrap_or(0), libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

/// Per thread of `pid`: (tid, `CapEff`, `CapPrm`, `CapBnd`) as /proc prints them.
pub fn thread_caps(pid: u32) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(e.path().join("status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap()
                .trim()
                .to_string()
        };
        out.push((
            e.file_name().to_string_lossy().into_owned(),
            field("CapEff:"),
            field("CapPrm:"),
            field("CapBnd:"),
        ));
    }
    out
}

/// Samples of one scrape, read with the daemon's own exposition parser; no two samples
/// may share name and labels (promtool does not catch that).
pub struct Metrics(pub Vec<Sample>);

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let samples = parse(text).unwrap_or_else(|e| panic!("exposition: {e}"));
        let mut seen = std::collections::BTreeSet::new();
        for s in &samples {
            assert!(
                seen.insert((&s.name, &s.labels)),
                "duplicate series {} {:?}",
                s.name,
                s.labels
            );
        }
        Metrics(samples)
    }

    /// The value of the one sample with this name whose labels include all of `want`.
    pub fn get(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .0
            .iter()
            .filter(|s| s.name == name && s.matches(want))
            .map(|s| s.value)
            .collect();
        assert!(
            found.len() <= 1,
            "{name} {want:?} matches {} samples",
            found.len()
        );
        found.first().copied()
    }
}

/// A network namespace of the test's own with only loopback up; removed on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create() -> Self {
        let name = format!("socklat-ns-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        for args in [
            vec!["netns", "add", &name],
            vec!["-n", &name, "link", "set", "lo", "up"],
        ] {
            let st = Command::new("ip")
                .args(&args)
                .status()
                .expect("ip (iproute2)");
            assert!(st.success(), "ip {args:?} failed");
        }
        Self { name }
    }

    /// Path of the namespace file, for setns(2).
    pub fn path(&self) -> CString {
        CString::new(format!("/run/netns/{}", self.name)).unwrap()
    }

    /// A `Tcp:` counter of the namespace's /proc/net/snmp (the kernel's own count).
    pub fn tcp_stat(&self, field: &str) -> f64 {
        snmp_tcp(&self.name, field)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Two network namespaces of the test's own: a client's (10.9.0.1) and a router's
/// (10.9.0.2, forwarding), joined by a veth. From the client, 10.9.9.0/24 is reached
/// through the router, which has an `unreachable` route for it (it answers ICMP host
/// unreachable); 10.9.8.0/24 too, for which the router has no route (ICMP net
/// unreachable); 10.9.7.0/24 too, which the router drops silently (`blackhole`). The
/// router's ICMP is not rate-limited. Removed on drop.
pub struct RouterNetns {
    pub client: Netns,
    /// Kept for its drop.
    _router: Netns,
}

impl RouterNetns {
    pub fn create() -> Self {
        let client = Netns {
            name: format!("socklat-cli-{}", std::process::id()),
        };
        let router = Netns {
            name: format!("socklat-rtr-{}", std::process::id()),
        };
        let (c, r) = (client.name.as_str(), router.name.as_str());
        for ns in [c, r] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        let steps: [&[&str]; 16] = [
            &["netns", "add", c],
            &["netns", "add", r],
            &[
                "link", "add", "slrt0", "netns", c, "type", "veth", "peer", "name", "slrt1",
                "netns", r,
            ],
            &["-n", c, "link", "set", "lo", "up"],
            &["-n", r, "link", "set", "lo", "up"],
            &["-n", c, "link", "set", "slrt0", "up"],
            &["-n", r, "link", "set", "slrt1", "up"],
            &["-n", c, "addr", "add", "10.9.0.1/24", "dev", "slrt0"],
            &["-n", r, "addr", "add", "10.9.0.2/24", "dev", "slrt1"],
            &["-n", c, "route", "add", "10.9.9.0/24", "via", "10.9.0.2"],
            &["-n", c, "route", "add", "10.9.8.0/24", "via", "10.9.0.2"],
            &["-n", c, "route", "add", "10.9.7.0/24", "via", "10.9.0.2"],
            &["-n", r, "route", "add", "unreachable", "10.9.9.0/24"],
            &["-n", r, "route", "add", "blackhole", "10.9.7.0/24"],
            &["netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
            &[
                "netns",
                "exec",
                r,
                "sysctl",
                "-qw",
                "net.ipv4.icmp_ratelimit=0",
            ],
        ];
        for args in steps {
            let st = Command::new("ip")
                .args(args)
                .status()
                .expect("ip (iproute2)");
            assert!(st.success(), "ip {args:?} failed");
        }
        Self {
            client,
            _router: router,
        }
    }
}

/// A `Tcp:` counter of /proc/net/snmp in network namespace `ns`.
fn snmp_tcp(ns: &str, field: &str) -> f64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/snmp"])
        .output()
        .expect("ip netns exec cat");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == field)
        .unwrap_or_else(|| panic!("no {field} in /proc/net/snmp"));
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// A network namespace of the test's own whose only route leads to a veth whose peer
/// answers nothing: connects to 192.0.2.2 there time out. The retry counts are lowered in
/// that namespace only (`tcp_syn_retries` 1: a connect gives up after about 3 s;
/// `tcp_retries2` 1: an established connection whose peer went silent times out in about
/// a second). Removed on drop.
pub struct DropNetns {
    pub name: String,
    peer: String,
}

impl DropNetns {
    pub fn create() -> Self {
        let name = format!("socklat-drop-{}", std::process::id());
        let peer = format!("socklat-peer-{}", std::process::id());
        let ip = |args: &[&str]| {
            let st = Command::new("ip")
                .args(args)
                .status()
                .expect("ip (iproute2)");
            assert!(st.success(), "ip {args:?} failed");
        };
        for ns in [&name, &peer] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        ip(&["netns", "add", &name]);
        ip(&["netns", "add", &peer]);
        ip(&[
            "link", "add", "sldrop0", "netns", &name, "type", "veth", "peer", "name", "sldrop1",
            "netns", &peer,
        ]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&["-n", &name, "link", "set", "sldrop0", "up"]);
        ip(&["-n", &peer, "link", "set", "sldrop1", "up"]);
        ip(&["-n", &name, "addr", "add", "192.0.2.1/24", "dev", "sldrop0"]);
        for knob in ["net.ipv4.tcp_syn_retries=1", "net.ipv4.tcp_retries2=1"] {
            let st = Command::new("ip")
                .args(["netns", "exec", &name, "sysctl", "-qw", knob])
                .status()
                .expect("sysctl");
            assert!(st.success(), "cannot set {knob} in the test namespace");
        }
        Self { name, peer }
    }

    /// Gives the peer namespace the address 192.0.2.2 (or takes it away again, after which
    /// the peer silently drops what it receives).
    pub fn peer_address(&self, present: bool) {
        let verb = if present { "add" } else { "del" };
        let st = Command::new("ip")
            .args([
                "-n",
                &self.peer,
                "addr",
                verb,
                "192.0.2.2/24",
                "dev",
                "sldrop1",
            ])
            .status()
            .expect("ip");
        assert!(st.success(), "ip addr {verb} in the peer namespace");
    }

    /// Path of the peer namespace file, for setns(2).
    pub fn peer_path(&self) -> CString {
        CString::new(format!("/run/netns/{}", self.peer)).unwrap()
    }

    /// TCP segments retransmitted in the first namespace (`RetransSegs` of its
    /// /proc/net/snmp), the kernel's own count.
    pub fn retrans_segs(&self) -> u64 {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a counter read as f64 from its decimal text"
        )]
        let n = snmp_tcp(&self.name, "RetransSegs") as u64;
        n
    }

    /// Path of the namespace file, for setns(2).
    pub fn path(&self) -> CString {
        CString::new(format!("/run/netns/{}", self.name)).unwrap()
    }
}

impl Drop for DropNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.peer])
            .status();
    }
}

/// Runs this test binary's `#[ignore]`d role test `role` in `cgroup` with the given
/// environment, and returns its output lines that start with `@`.
pub fn run_role(cgroup: &TestCgroup, role: &str, env: &[(&str, String)]) -> Child {
    run_role_in(cgroup, None, role, env)
}

/// Like [`run_role`], and in the network namespace `netns` when given.
pub fn run_role_in(
    cgroup: &TestCgroup,
    netns: Option<CString>,
    role: &str,
    env: &[(&str, String)],
) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = cgroup.command(exe.to_str().unwrap());
    if let Some(ns) = netns {
        // SAFETY: only async-signal-safe calls (open, setns, close) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(ns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let rc = libc::setns(fd, libc::CLONE_NEWNET);
                libc::close(fd);
                if rc != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.args([
        "--exact",
        role,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env("SOCKLAT_TEST_ROLE", role)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn role")
}

/// Reads a role's output until the line `want` (e.g. a server saying it listens).
///
/// # Panics
/// When the role ends first.
pub fn wait_for_line(child: &mut Child, want: &str) {
    let out = child.stdout.as_mut().expect("piped stdout");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        // One byte at a time: nothing after the line is taken from the role's output.
        let n = out.read(&mut byte).expect("role output");
        assert!(n == 1, "the role ended before it printed {want}");
        if byte[0] == b'\n' {
            if line == want.as_bytes() {
                return;
            }
            line.clear();
        } else {
            line.push(byte[0]);
        }
    }
}

/// Waits for a role process and returns its `@` lines.
pub fn role_output(child: Child) -> Vec<String> {
    let out = child.wait_with_output().expect("role output");
    assert!(out.status.success(), "role process failed: {}", out.status);
    BufReader::new(&out.stdout[..])
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| l.strip_prefix('@').map(str::to_string))
        .collect()
}

/// Checks text exposition with promtool (installed by .ci/run).
pub fn promtool_check(text: &str) {
    if in_vm() {
        eprintln!("promtool is not in the guest: exposition checked on the host run");
        return;
    }
    match observer::testutil::promtool_check(text) {
        None => panic!(
            "promtool (Debian package prometheus) must be installed for the privileged tests"
        ),
        Some(Err(e)) => panic!("promtool check metrics failed:\n{e}"),
        Some(Ok(())) => {}
    }
}

/// Calls counted (every call, every result) and events lost for one cgroup: together they
/// are every call its processes made, when nothing was skipped.
pub fn counted_and_lost(m: &Metrics, cg: &TestCgroup) -> (f64, f64) {
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
