//! Dropping capabilities once the probes are attached: afterwards the daemon only creates
//! ring buffers for new cgroups and reads and updates maps, which needs `CAP_BPF` alone.
//! Every other capability (`CAP_PERFMON`, and whatever root had) leaves the effective,
//! permitted, inheritable and bounding sets. Capabilities are per thread: this runs on the
//! main thread before any other thread is started, so every later thread inherits the
//! reduced sets.

use std::io;

/// `CAP_BPF` (Linux >= 5.8).
pub const CAP_BPF: u32 = 39;
/// `CAP_PERFMON` (Linux >= 5.8).
pub const CAP_PERFMON: u32 = 38;
const CAP_SETPCAP: u32 = 8;
const CAP_SYS_ADMIN: u32 = 21;
/// Above every capability a kernel has (40 on 6.x); unknown ones answer EINVAL.
const CAP_LAST: u32 = 64;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn get() -> io::Result<[Data; 2]> {
    let mut h = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget with a v3 header and room for its two data words.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &raw mut h, d.as_mut_ptr()) };
    if rc == 0 {
        Ok(d)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn has(d: &[Data; 2], cap: u32, f: impl Fn(&Data) -> u32) -> bool {
    f(&d[(cap / 32) as usize]) & (1 << (cap % 32)) != 0
}

/// Whether this thread may use `cap` (it is effective, or `CAP_SYS_ADMIN`, which implies
/// `CAP_BPF` and `CAP_PERFMON`, is); `None` when the kernel does not say.
#[must_use]
pub fn effective(cap: u32) -> Option<bool> {
    let d = get().ok()?;
    Some(has(&d, cap, |d| d.effective) || has(&d, CAP_SYS_ADMIN, |d| d.effective))
}

/// Keeps only `keep` (which must be held now): clears the bounding set of every other
/// capability where `CAP_SETPCAP` allows, then sets effective = permitted = `keep` and
/// inheritable = none for this thread.
///
/// # Errors
/// When the kernel refuses the change.
pub fn keep_only(keep: &[u32]) -> io::Result<()> {
    let now = get()?;
    if has(&now, CAP_SETPCAP, |d| d.effective) {
        for cap in (0..CAP_LAST).filter(|c| !keep.contains(c)) {
            // SAFETY: prctl with plain integer arguments.
            let rc =
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
            if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                return Err(io::Error::last_os_error());
            }
        }
    }
    let mut d = [Data::default(); 2];
    for &cap in keep {
        if has(&now, cap, |d| d.permitted) {
            let w = &mut d[(cap / 32) as usize];
            w.effective |= 1 << (cap % 32);
            w.permitted |= 1 << (cap % 32);
        }
    }
    let mut h = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset with a v3 header and its two data words.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut h, d.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
