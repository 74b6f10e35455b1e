//! The observers a run is measured under: socklat itself (started on a free port and
//! waited for until healthy) and a bpftrace script of similar reach, and stopping them.

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::toolchain::apt_install;
use crate::util::{is_root, succeeds};
use observer::testutil::{free_port, http_get};

/// Extra daemon flags for every socklat an observer starts (`bench --daemon-args`).
pub const DAEMON_ARGS_ENV: &str = "SOCKLAT_BENCH_DAEMON_ARGS";

/// Per-cgroup send and receive duration histograms, as a bpftrace user would write them:
/// the peer the throughput bench compares socklat with.
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

/// An observer running for one measured condition.
pub enum Observer {
    None,
    Socklat(Socklat),
    Bpftrace(Child),
}

impl Observer {
    /// Stops the observer and waits for it to exit.
    pub fn stop(self) {
        match self {
            Observer::None => {}
            Observer::Socklat(d) => d.stop(),
            Observer::Bpftrace(c) => terminate(c),
        }
    }
}

/// A running daemon and the address of its endpoints.
pub struct Socklat {
    child: Child,
    addr: SocketAddr,
}

impl Socklat {
    /// Starts `bin` on a free loopback port with `extra` flags (and those of
    /// [`DAEMON_ARGS_ENV`]); returns once it answers /healthz.
    pub fn start(bin: &Path, extra: &[&str]) -> Result<Self> {
        Self::start_in(bin, extra, None)
    }

    /// Like [`Socklat::start`], inside the cgroup whose `cgroup.procs` is `procs` from its
    /// first instruction (a memory cgroup, to measure what is charged to it).
    pub fn start_in(bin: &Path, extra: &[&str], procs: Option<&Path>) -> Result<Self> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let user_args = std::env::var(DAEMON_ARGS_ENV).unwrap_or_default();
        let mut cmd = Command::new(bin);
        if let Some(p) = procs {
            let procs = std::ffi::CString::new(p.to_string_lossy().as_bytes())?;
            // SAFETY: between fork and exec the closure only calls `move_self`
            // (open/write/close, async-signal-safe) on a string made before the fork.
            unsafe {
                cmd.pre_exec(move || super::sys::move_self(&procs));
            }
        }
        let child = cmd
            .arg("--listen")
            .arg(addr.to_string())
            .args(extra)
            .args(user_args.split_whitespace())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("start socklat")?;
        let mut daemon = Self { child, addr };
        // Loading takes well under a second on a host, but tens of seconds in a TCG guest
        // whose host is busy (the verifier and BTF parsing are emulated).
        let deadline = Instant::now() + Duration::from_mins(3);
        while !daemon.healthy() {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                bail!("socklat exited before it became healthy ({status}; its stderr is above)");
            }
            if Instant::now() > deadline {
                bail!("socklat did not become healthy within 3 minutes");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(daemon)
    }

    /// Whether it answers /healthz.
    pub fn healthy(&self) -> bool {
        http_get(self.addr, "/healthz").is_ok_and(|(code, _)| code == 200)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the daemon ended, if it has (for a run that finds it gone).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Stops the daemon (SIGTERM) and waits for it to exit.
    pub fn stop(self) {
        terminate(self.child);
    }
}

/// Installs bpftrace (as root) if it is missing; without root a missing bpftrace fails
/// the run when it starts.
pub fn ensure_bpftrace() -> Result<()> {
    if !succeeds(Command::new("bpftrace").arg("--version")) && is_root() {
        apt_install(&["bpftrace"], "the peer the throughput bench compares with")?;
    }
    Ok(())
}

/// Starts [`BPFTRACE_SCRIPT`]; returns once its probes are attached.
pub fn start_bpftrace() -> Result<Child> {
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
    Ok(child)
}

/// SIGTERM, then wait.
fn terminate(mut child: Child) {
    signal(&child, 15);
    let _ = child.wait();
}

fn signal(child: &Child, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status();
}
