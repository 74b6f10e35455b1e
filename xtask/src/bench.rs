//! `cargo xtask bench`: overhead and capacity figures, each a ratio of runs made side by
//! side in one invocation (conditions interleaved round by round, medians reported).
//! Loads go to loopback only and stop by themselves.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::build::build_daemon;
use crate::toolchain::apt_install;
use crate::util::{is_root, root, step};

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Seconds each measured run lasts.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Rounds of interleaved runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Client connections of the request/response load.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Extra daemon flags for the socklat runs (e.g. "--ring-size 64K").
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub daemon_args: String,
    /// Parts to run: throughput, conntrack, connect, faults, pipeline, memory (comma separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "throughput,conntrack,connect,faults,pipeline,memory"
    )]
    pub only: Vec<String>,
}

const BPFTRACE_SCRIPT: &str = r"
tracepoint:raw_syscalls:sys_enter
/args->id == 0 || args->id == 1 || args->id == 19 || args->id == 20 || args->id == 44 ||
 args->id == 45 || args->id == 46 || args->id == 47 || args->id == 299 || args->id == 307/
{ @start[tid] = nsecs; }
tracepoint:sock:sock_send_length /args->protocol == 6 && @start[tid]/
{ @send[cgroup] = hist(nsecs - @start[tid]); @start[tid] = nsecs; }
tracepoint:sock:sock_recv_length /args->protocol == 6 && @start[tid]/
{ @recv[cgroup] = hist(nsecs - @start[tid]); @start[tid] = nsecs; }
";

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// An echo server on loopback: answers every `len`-byte message with the same bytes.
pub(crate) fn echo_server(len: usize, stop: Arc<AtomicBool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in l.incoming() {
            if stop.load(Ordering::Relaxed) {
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
    addr
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
    let stop = Arc::new(AtomicBool::new(false));
    let addr = echo_server(len, Arc::clone(&stop));
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
    stop.store(true, Ordering::Relaxed);
    // Wakes the accept loop so that it sees `stop`.
    let _ = TcpStream::connect(addr);
    #[expect(clippy::cast_precision_loss, reason = "request counts")]
    let rate = total.load(Ordering::Relaxed) as f64 / secs as f64;
    rate
}

/// Request/response over loopback for `secs`; returns requests per second.
fn rr_load(conns: usize, secs: u64, len: usize) -> f64 {
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

/// A new connection per request (connect, one exchange, close), for `secs`.
fn connect_load(conns: usize, secs: u64) -> f64 {
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

/// Maps, touches and unmaps 16 MiB in a loop for `secs`; returns pages per second.
fn fault_load(secs: u64) -> f64 {
    const LEN: usize = 16 << 20;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut pages = 0u64;
    while Instant::now() < deadline {
        // SAFETY: a fresh private anonymous mapping, unmapped below.
        let p = unsafe { libc_mmap(LEN) };
        for off in (0..LEN).step_by(4096) {
            // SAFETY: inside the mapping.
            unsafe { std::ptr::write_volatile(p.add(off), 1) };
            pages += 1;
        }
        // SAFETY: our mapping.
        unsafe { libc_munmap(p, LEN) };
    }
    #[expect(clippy::cast_precision_loss, reason = "page counts")]
    let rate = pages as f64 / secs as f64;
    rate
}

// Minimal mmap/munmap/madvise bindings (xtask keeps to std + anyhow + clap).
unsafe extern "C" {
    fn mmap(addr: *mut u8, len: usize, prot: i32, flags: i32, fd: i32, off: i64) -> *mut u8;
    fn munmap(addr: *mut u8, len: usize) -> i32;
    fn madvise(addr: *mut u8, len: usize, advice: i32) -> i32;
    fn open(path: *const std::ffi::c_char, flags: i32, ...) -> i32;
    fn write(fd: i32, buf: *const u8, len: usize) -> isize;
    fn close(fd: i32) -> i32;
}

/// # Safety
/// Returns a fresh mapping of `len` bytes the caller must unmap.
unsafe fn libc_mmap(len: usize) -> *mut u8 {
    const PROT_RW: i32 = 0x1 | 0x2;
    const MAP_PRIVATE_ANON: i32 = 0x02 | 0x20;
    const MADV_NOHUGEPAGE: i32 = 15;
    // SAFETY: anonymous mapping, no fd.
    let p = unsafe { mmap(std::ptr::null_mut(), len, PROT_RW, MAP_PRIVATE_ANON, -1, 0) };
    assert!(!p.is_null() && p as isize != -1, "mmap failed");
    // SAFETY: our mapping.
    unsafe { madvise(p, len, MADV_NOHUGEPAGE) };
    p
}

/// # Safety
/// `p` must come from [`libc_mmap`] with the same `len`.
unsafe fn libc_munmap(p: *mut u8, len: usize) {
    // SAFETY: the caller's contract.
    unsafe { munmap(p, len) };
}

/// An observer running for one measured condition.
pub(crate) enum Observer {
    None,
    Socklat(Child, SocketAddr),
    Bpftrace(Child),
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or(19640, |a| a.port())
}

pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200").then_some(out)
}

pub(crate) fn start_socklat(bin: &Path, extra: &[&str]) -> Result<Observer> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let user_args = std::env::var("SOCKLAT_BENCH_DAEMON_ARGS").unwrap_or_default();
    let child = Command::new(bin)
        .arg("--listen")
        .arg(addr.to_string())
        .args(extra)
        .args(user_args.split_whitespace())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("start socklat")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(addr, "/healthz").is_none() {
        if Instant::now() > deadline {
            bail!("socklat did not become healthy");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Observer::Socklat(child, addr))
}

fn start_bpftrace() -> Result<Observer> {
    let mut child = Command::new("bpftrace")
        .args(["-e", BPFTRACE_SCRIPT])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start bpftrace")?;
    // bpftrace prints "Attaching N probes..." once attached.
    let mut out = child.stdout.take().context("bpftrace stdout")?;
    let mut buf = [0u8; 256];
    let n = out.read(&mut buf).unwrap_or(0);
    if !String::from_utf8_lossy(&buf[..n]).contains("Attaching") {
        bail!(
            "bpftrace did not attach: {}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = [0u8; 4096];
        while out.read(&mut sink).is_ok_and(|n| n > 0) {}
    });
    Ok(Observer::Bpftrace(child))
}

fn signal(child: &Child, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status();
}

pub(crate) fn stop(obs: Observer) {
    match obs {
        Observer::None => {}
        Observer::Socklat(mut c, _) | Observer::Bpftrace(mut c) => {
            signal(&c, 15);
            let _ = c.wait();
        }
    }
}

/// (events received, lost) from a daemon's /metrics.
fn daemon_counts(addr: SocketAddr) -> (f64, f64) {
    let text = http_get(addr, "/metrics").unwrap_or_default();
    (
        metric_sum(&text, "socklat_events_total{"),
        metric_sum(&text, "socklat_ringbuf_lost_events_total{"),
    )
}

/// The sum of the samples whose line starts with `prefix` in an exposition text.
pub(crate) fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// KiB to MiB for the report.
#[expect(
    clippy::cast_precision_loss,
    reason = "memory sizes far below 2^52 KiB"
)]
pub(crate) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub(crate) fn rss_kib(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (
        get("VmRSS:"),
        get("RssAnon:"),
        get("RssFile:") + get("RssShmem:"),
    )
}

struct Row {
    name: String,
    value: String,
}

fn throughput(o: &Opts, bin: &Path, rows: &mut Vec<Row>) -> Result<()> {
    let have_bpftrace = Command::new("bpftrace")
        .arg("--version")
        .output()
        .is_ok_and(|x| x.status.success());
    if !have_bpftrace && is_root() {
        apt_install(&["bpftrace"], "the peer the throughput bench compares with")?;
    }
    let conds = ["none", "socklat", "bpftrace"];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); conds.len()];
    let mut event_rate = Vec::new();
    let mut lost_total = 0.0;
    for round in 0..o.rounds {
        for (i, c) in conds.iter().enumerate() {
            let obs = match *c {
                "socklat" => start_socklat(bin, &["--probe-mode", "tracepoint"])?,
                "bpftrace" => start_bpftrace()?,
                _ => Observer::None,
            };
            let before = match &obs {
                Observer::Socklat(_, a) => Some(daemon_counts(*a)),
                _ => None,
            };
            let r = rr_load(o.connections, o.seconds, 64);
            if let (Observer::Socklat(_, a), Some((e0, l0))) = (&obs, before) {
                let (e1, l1) = daemon_counts(*a);
                #[expect(clippy::cast_precision_loss, reason = "seconds")]
                event_rate.push((e1 - e0) / o.seconds as f64);
                lost_total += l1 - l0;
            }
            stop(obs);
            step(&format!("round {} {c}: {r:.0} requests/s", round + 1));
            rates[i].push(r);
        }
    }
    let m: Vec<f64> = rates.into_iter().map(median).collect();
    rows.push(Row {
        name: "loopback request/response, no observer".into(),
        value: format!("{:.0} req/s", m[0]),
    });
    rows.push(Row {
        name: "  with socklat (tracepoint mode) / without".into(),
        value: format!("{:.3}", m[1] / m[0]),
    });
    rows.push(Row {
        name: "  with bpftrace histogram script / without".into(),
        value: format!("{:.3}", m[2] / m[0]),
    });
    rows.push(Row {
        name: "  socklat events received per second (median)".into(),
        value: format!("{:.0}", median(event_rate)),
    });
    rows.push(Row {
        name: "  socklat lost events over all socklat runs".into(),
        value: format!("{lost_total:.0}"),
    });
    Ok(())
}

/// The cost of connection tracking: request/response with socklat with and without the
/// connections signal, both against no observer, interleaved.
fn conntrack(o: &Opts, bin: &Path, rows: &mut Vec<Row>) -> Result<()> {
    let mut none = Vec::new();
    let mut without = Vec::new();
    let mut with = Vec::new();
    for round in 0..o.rounds {
        none.push(rr_load(o.connections, o.seconds, 64));
        let obs = start_socklat(
            bin,
            &[
                "--probe-mode",
                "tracepoint",
                "--signals",
                "sendmsg,recvmsg,pagefaults",
            ],
        )?;
        without.push(rr_load(o.connections, o.seconds, 64));
        stop(obs);
        let obs = start_socklat(bin, &["--probe-mode", "tracepoint"])?;
        with.push(rr_load(o.connections, o.seconds, 64));
        stop(obs);
        step(&format!(
            "round {}: {:.0} req/s none, {:.0} without connections, {:.0} with",
            round + 1,
            none[round],
            without[round],
            with[round]
        ));
    }
    let n = median(none);
    let (a, b) = (median(without) / n, median(with) / n);
    rows.push(Row {
        name: "request/response ratio, socklat without the connections signal".into(),
        value: format!("{a:.3}"),
    });
    rows.push(Row {
        name: "  with it (difference in percentage points)".into(),
        value: format!("{b:.3} ({:+.1} pp)", (b - a) * 100.0),
    });
    Ok(())
}

fn interleaved(
    o: &Opts,
    bin: &Path,
    name: &str,
    unit: &str,
    load: &dyn Fn() -> f64,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let mut without = Vec::new();
    let mut with = Vec::new();
    for round in 0..o.rounds {
        without.push(load());
        let obs = start_socklat(bin, &["--probe-mode", "tracepoint"])?;
        with.push(load());
        stop(obs);
        step(&format!(
            "round {} {name}: {:.0} {unit} without, {:.0} with socklat",
            round + 1,
            without[round],
            with[round]
        ));
    }
    let (a, b) = (median(without), median(with));
    rows.push(Row {
        name: format!("{name}, no observer"),
        value: format!("{a:.0} {unit}"),
    });
    rows.push(Row {
        name: "  with socklat / without".into(),
        value: format!("{:.3}", b / a),
    });
    Ok(())
}

fn pipeline(rows: &mut Vec<Row>) -> Result<()> {
    step("userspace pipeline (decode + aggregation, synthetic events, one core)");
    let out = Command::new("cargo")
        .current_dir(root())
        .args(["bench", "-q", "-p", "observer", "--bench", "pipeline"])
        .output()
        .context("cargo bench")?;
    if !out.status.success() {
        bail!(
            "pipeline bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((k, v)) = l.strip_prefix('@').and_then(|l| l.split_once(' '))
            && k.ends_with("per_sec")
        {
            let v: f64 = v.parse().unwrap_or(0.0);
            rows.push(Row {
                name: k.replace('_', " "),
                value: format!("{:.1} M events/s", v / 1e6),
            });
        }
    }
    Ok(())
}

/// Resident memory of a daemon at default settings with N cgroups that each made traffic.
fn memory(bin: &Path, rows: &mut Vec<Row>) -> Result<()> {
    let cg_root = PathBuf::from(cgroup2_root()?);
    let stop_flag = Arc::new(AtomicBool::new(false));
    let addr = echo_server(64, Arc::clone(&stop_flag));
    let me = std::env::current_exe()?;
    for n in [1usize, 100, 1000] {
        let obs = start_socklat(bin, &[])?;
        let Observer::Socklat(child, daddr) = &obs else {
            unreachable!()
        };
        let pid = child.id();
        let dirs: Vec<PathBuf> = (0..n)
            .map(|i| cg_root.join(format!("socklat-bench-{}-{i}", std::process::id())))
            .collect();
        for chunk in dirs.chunks(32) {
            let mut kids = Vec::new();
            for d in chunk {
                std::fs::create_dir_all(d)?;
                let procs = d.join("cgroup.procs");
                let mut cmd = Command::new(&me);
                cmd.args(["bench-client", &addr.to_string(), "20"]);
                let procs_c = std::ffi::CString::new(procs.to_string_lossy().as_bytes())?;
                // SAFETY: only open/write/close between fork and exec.
                unsafe {
                    cmd.pre_exec(move || move_self(&procs_c));
                }
                kids.push(cmd.spawn()?);
            }
            for mut k in kids {
                let _ = k.wait();
            }
        }
        let text = http_get(*daddr, "/metrics").unwrap_or_default();
        let tracked = text
            .lines()
            .find(|l| l.starts_with("socklat_cgroups_tracked "))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        let (rss, anon, file) = rss_kib(pid);
        stop(obs);
        for d in &dirs {
            let _ = std::fs::remove_dir(d);
        }
        step(&format!(
            "{n} cgroups: tracked {tracked}, VmRSS {rss} KiB (anon {anon}, ring mappings {file})"
        ));
        rows.push(Row {
            name: format!("resident memory, {n} active cgroups (tracked {tracked})"),
            value: format!(
                "{:.1} MiB (heap {:.1}, ring mappings {:.1})",
                mib(rss),
                mib(anon),
                mib(file)
            ),
        });
    }
    stop_flag.store(true, Ordering::Relaxed);
    Ok(())
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `procs`. Runs between
/// fork and exec, so only async-signal-safe calls.
pub(crate) fn move_self(procs: &std::ffi::CStr) -> std::io::Result<()> {
    const O_WRONLY: i32 = 1;
    // SAFETY: a valid C string; the fd is closed below.
    let fd = unsafe { open(procs.as_ptr(), O_WRONLY) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: writes two bytes from a static buffer.
    let n = unsafe { write(fd, b"0\n".as_ptr(), 2) };
    // SAFETY: our fd.
    unsafe { close(fd) };
    if n == 2 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub(crate) fn cgroup2_root() -> Result<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut found = None;
    for line in info.lines() {
        if let Some((left, right)) = line.split_once(" - ")
            && right.starts_with("cgroup2 ")
        {
            let mp = left.split_whitespace().nth(4).unwrap_or("").to_string();
            if mp == "/sys/fs/cgroup" {
                return Ok(mp);
            }
            found.get_or_insert(mp);
        }
    }
    found.context("no cgroup v2 mount")
}

/// The helper of the memory bench: a few request/responses against `addr`.
pub fn client(addr: &str, n: usize) -> Result<()> {
    let mut s = TcpStream::connect(addr)?;
    let mut buf = [0u8; 64];
    for _ in 0..n {
        s.write_all(&buf)?;
        s.read_exact(&mut buf)?;
    }
    Ok(())
}

/// Runs the benchmarks and prints a table.
pub fn bench(o: &Opts) -> Result<()> {
    if !is_root() {
        bail!("the benchmarks load BPF programs and need root");
    }
    let bin = build_daemon()?;
    // SAFETY: set before any thread of ours starts.
    unsafe { std::env::set_var("SOCKLAT_BENCH_DAEMON_ARGS", &o.daemon_args) };
    let mut rows = Vec::new();
    let want = |p: &str| o.only.iter().any(|x| x == p);
    if want("throughput") {
        throughput(o, &bin, &mut rows)?;
    }
    if want("conntrack") {
        conntrack(o, &bin, &mut rows)?;
    }
    if want("connect") {
        let conns = o.connections;
        let secs = o.seconds;
        interleaved(
            o,
            &bin,
            "short connections (connect, 1 request, close)",
            "conn/s",
            &move || connect_load(conns, secs),
            &mut rows,
        )?;
    }
    if want("faults") {
        let secs = o.seconds;
        interleaved(
            o,
            &bin,
            "page faults (map, touch, unmap 16 MiB)",
            "pages/s",
            &move || fault_load(secs),
            &mut rows,
        )?;
    }
    if want("pipeline") {
        pipeline(&mut rows)?;
    }
    if want("memory") {
        memory(&bin, &mut rows)?;
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "\nsocklat bench: {} rounds x {} s, {} connections, kernel {}",
        o.rounds,
        o.seconds,
        o.connections,
        kernel.trim()
    );
    println!("| measurement | value |\n|---|---|");
    for r in rows {
        println!("| {} | {} |", r.name, r.value);
    }
    Ok(())
}
