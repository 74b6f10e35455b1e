//! What the kernel says about one of our loaded programs (`BPF_OBJ_GET_INFO_BY_FD`).

/// How often the kernel skipped a program instead of running it
/// (`bpf_prog_info.recursion_misses`, Linux >= 5.12; 0 before). A fentry/fexit program is
/// skipped when it is already running on the CPU, e.g. preempted inside it: the call it
/// would have timed is then missing, and this makes that visible.
#[must_use]
pub fn recursion_misses(prog: std::os::fd::BorrowedFd<'_>) -> u64 {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // SAFETY: a plain C struct of integers and arrays, for which all-zero is valid (and what
    // the kernel expects in the fields it does not fill).
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoByFd {
        bpf_fd: u32::try_from(prog.as_raw_fd()).unwrap_or(u32::MAX),
        info_len: u32::try_from(size_of_val(&info)).unwrap_or(0),
        info: (&raw mut info) as u64,
    };
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD writes at most `info_len` bytes into `info`, which
    // lives until the call returns; `attr` is the command's documented layout.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw mut attr,
            size_of::<InfoByFd>(),
        )
    };
    if rc == 0 { info.recursion_misses } else { 0 }
}
