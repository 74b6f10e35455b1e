//! What the kernel says about loaded BPF programs (`BPF_OBJ_GET_INFO_BY_FD`): their names,
//! how often they ran and for how long (with `kernel.bpf_stats_enabled`), and how often the
//! kernel skipped them. Plain system calls, no aya: the benchmarks read every program's
//! figures with it, the daemon its own programs' skipped runs.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

// Offsets in `struct bpf_prog_info` (include/uapi/linux/bpf.h); the kernel fills what it
// has of the buffer (fields it does not have stay 0).
const INFO_LEN: usize = 256;
const OFF_ID: usize = 4;
const OFF_NAME: usize = 64;
const NAME_LEN: usize = 16;
const OFF_RUN_TIME_NS: usize = 192;
const OFF_RUN_CNT: usize = 200;
const OFF_RECURSION_MISSES: usize = 208;

/// What the kernel says about one program.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgInfo {
    pub id: u32,
    /// The object name (at most 15 bytes: longer names are cut).
    pub name: String,
    /// Total run time, ns (counted while `kernel.bpf_stats_enabled` is 1).
    pub run_time_ns: u64,
    /// Runs (counted while `kernel.bpf_stats_enabled` is 1).
    pub run_cnt: u64,
    /// Runs the kernel skipped (its recursion guard, Linux >= 5.12).
    pub recursion_misses: u64,
}

fn u64_at(b: &[u8; INFO_LEN], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(w)
}

/// The info of the program `prog`.
///
/// # Errors
/// When the kernel refuses (not a BPF program).
pub fn of_fd(prog: BorrowedFd<'_>) -> std::io::Result<ProgInfo> {
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut buf = [0u8; INFO_LEN];
    let mut attr = InfoByFd {
        bpf_fd: u32::try_from(prog.as_raw_fd()).unwrap_or(u32::MAX),
        info_len: u32::try_from(INFO_LEN).unwrap_or(0),
        info: buf.as_mut_ptr() as u64,
    };
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD writes at most `info_len` bytes into `buf`, which
    // lives until the call returns; `attr` is the command's documented layout.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw mut attr,
            size_of::<InfoByFd>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let name = &buf[OFF_NAME..OFF_NAME + NAME_LEN];
    let end = name.iter().position(|&c| c == 0).unwrap_or(NAME_LEN);
    let mut id = [0u8; 4];
    id.copy_from_slice(&buf[OFF_ID..OFF_ID + 4]);
    Ok(ProgInfo {
        id: u32::from_ne_bytes(id),
        name: String::from_utf8_lossy(&name[..end]).into_owned(),
        run_time_ns: u64_at(&buf, OFF_RUN_TIME_NS),
        run_cnt: u64_at(&buf, OFF_RUN_CNT),
        recursion_misses: u64_at(&buf, OFF_RECURSION_MISSES),
    })
}

/// How often the kernel skipped a program instead of running it
/// (`bpf_prog_info.recursion_misses`, Linux >= 5.12; 0 before). A fentry/fexit program is
/// skipped when it is already running on the CPU, e.g. preempted inside it: the call it
/// would have timed is then missing, and this makes that visible.
#[must_use]
pub fn recursion_misses(prog: BorrowedFd<'_>) -> u64 {
    of_fd(prog).map_or(0, |i| i.recursion_misses)
}

/// Every BPF program loaded on the machine (needs `CAP_SYS_ADMIN`).
///
/// # Errors
/// When the programs cannot be listed.
pub fn all() -> std::io::Result<Vec<ProgInfo>> {
    #[repr(C)]
    struct IdAttr {
        start_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let mut out = Vec::new();
    let mut id = 0u32;
    loop {
        let mut attr = IdAttr {
            start_id: id,
            next_id: 0,
            open_flags: 0,
        };
        // SAFETY: BPF_PROG_GET_NEXT_ID reads `start_id` and writes `next_id` of `attr`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_GET_NEXT_ID,
                &raw mut attr,
                size_of::<IdAttr>(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Ok(out);
            }
            return Err(e);
        }
        id = attr.next_id;
        let mut by_id = IdAttr {
            start_id: id,
            next_id: 0,
            open_flags: 0,
        };
        // SAFETY: BPF_PROG_GET_FD_BY_ID reads the id (the first field) and returns a new fd.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_GET_FD_BY_ID,
                &raw mut by_id,
                size_of::<IdAttr>(),
            )
        };
        let Ok(fd) = i32::try_from(fd) else { continue };
        if fd < 0 {
            // Unloaded meanwhile.
            continue;
        }
        // SAFETY: a fresh descriptor the kernel just gave us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if let Ok(info) = of_fd(std::os::fd::AsFd::as_fd(&fd)) {
            out.push(info);
        }
    }
}
