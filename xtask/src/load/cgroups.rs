//! Traffic from many cgroups: where cgroup v2 is mounted, bench clients started inside a
//! new cgroup, a set of cgroups that each made traffic, and steady cgroup churn.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::sys::move_self;

/// Requests each cgroup's client makes.
const REQUESTS: &str = "20";

/// Where cgroup v2 is mounted: /sys/fs/cgroup if it is there, else the first cgroup2 mount.
pub fn cgroup2_root() -> Result<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mount = observer::cgroups::cgroup2_mount_from(&info).context("no cgroup v2 mount")?;
    Ok(mount.to_string_lossy().into_owned())
}

/// Starts `exe bench-client ADDR REQUESTS` (exe is this xtask) inside the existing cgroup
/// `dir`.
fn spawn_client(
    exe: &Path,
    dir: &Path,
    addr: SocketAddr,
    requests: &str,
    depth: &str,
) -> Result<Child> {
    let procs = std::ffi::CString::new(dir.join("cgroup.procs").to_string_lossy().as_bytes())?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "bench-client",
        &addr.to_string(),
        requests,
        "--depth",
        depth,
    ]);
    // SAFETY: between fork and exec the closure only calls `move_self` (open/write/close,
    // async-signal-safe) on a string made before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || move_self(&procs));
    }
    Ok(cmd.spawn()?)
}

/// `n` new cgroups under `root`, each of which has run a 20-request client against `addr`
/// (32 at a time). Returns their directories, for [`remove_all`].
pub fn make_active(root: &Path, n: usize, addr: SocketAddr) -> Result<Vec<PathBuf>> {
    make_busy(root, n, addr, REQUESTS.parse()?, 1)
}

/// `n` new cgroups under `root`, each of which has run a client of `requests` back-to-back
/// request/responses against `addr`, `depth` sent before their answers are read (32
/// clients at a time). Returns their directories.
pub fn make_busy(
    root: &Path,
    n: usize,
    addr: SocketAddr,
    requests: usize,
    depth: usize,
) -> Result<Vec<PathBuf>> {
    let me = std::env::current_exe()?;
    let (requests, depth) = (requests.to_string(), depth.to_string());
    let dirs: Vec<PathBuf> = (0..n)
        .map(|i| root.join(format!("socklat-bench-{}-{i}", std::process::id())))
        .collect();
    for chunk in dirs.chunks(32) {
        let mut kids = Vec::new();
        for d in chunk {
            std::fs::create_dir_all(d)?;
            kids.push(spawn_client(&me, d, addr, &requests, &depth)?);
        }
        for mut k in kids {
            let _ = k.wait();
        }
    }
    Ok(dirs)
}

/// Removes the (empty) cgroups [`make_active`] made, ignoring failures.
pub fn remove_all(dirs: &[PathBuf]) {
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
}

/// Every second until `stop`, `per_sec` new cgroups each run a 20-request client against
/// `addr` and are removed; `made` counts them.
pub fn churn(
    addr: SocketAddr,
    per_sec: usize,
    stop: &Arc<AtomicBool>,
    made: &Arc<AtomicU64>,
) -> Result<JoinHandle<()>> {
    let cg_root = PathBuf::from(cgroup2_root()?);
    let me = std::env::current_exe()?;
    let stop = Arc::clone(stop);
    let made = Arc::clone(made);
    Ok(std::thread::spawn(move || {
        let mut round = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let tick = Instant::now();
            let mut kids = Vec::new();
            for i in 0..per_sec {
                let d = cg_root.join(format!("socklat-soak-{}-{round}-{i}", std::process::id()));
                if std::fs::create_dir(&d).is_err() {
                    continue;
                }
                if let Ok(k) = spawn_client(&me, &d, addr, REQUESTS, "1") {
                    kids.push((k, d));
                }
            }
            for (mut k, d) in kids {
                let _ = k.wait();
                for _ in 0..50 {
                    if std::fs::remove_dir(&d).is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                made.fetch_add(1, Ordering::Relaxed);
            }
            round += 1;
            std::thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
        }
    }))
}
