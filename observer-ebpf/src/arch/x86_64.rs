//! `x86_64`: the syscall table and the saved registers (`arch/x86/include/asm/ptrace.h`).

use aya_ebpf::bindings::{bpf_user_pt_regs_t, pt_regs};
use aya_ebpf::cty::c_long;

/// Syscall numbers of the send/recv family (`arch/x86/entry/syscalls/syscall_64.tbl`).
pub mod nr {
    pub const READ: i64 = 0;
    pub const WRITE: i64 = 1;
    pub const READV: i64 = 19;
    pub const WRITEV: i64 = 20;
    pub const SENDTO: i64 = 44;
    pub const RECVFROM: i64 = 45;
    pub const SENDMSG: i64 = 46;
    pub const RECVMSG: i64 = 47;
    pub const RECVMMSG: i64 = 299;
    pub const SENDMMSG: i64 = 307;
    // With offset -1 they read or write at the current position, which on a socket is a
    // receive or a send.
    pub const PREADV2: i64 = 327;
    pub const PWRITEV2: i64 = 328;
}

/// `-ENOSYS`: what `ax` holds from syscall entry until the syscall returns its value.
const ENOSYS: u64 = (-38i64).cast_unsigned();

/// The number of the syscall a task is in, from its saved user registers, or -1 when it is
/// in none: the entry code saves the number in `orig_ax` and sets `ax` to `-ENOSYS`, which
/// the syscall's return value replaces (`do_syscall_64`); `orig_ax` alone would also hold
/// an exception's error code or an interrupt's vector.
///
/// # Safety
/// `regs` is the BTF pointer to a task's `struct pt_regs` that `bpf_task_pt_regs` returned.
#[inline(always)]
pub unsafe fn syscall_in(regs: c_long) -> i64 {
    let regs = regs as *const pt_regs;
    // SAFETY: as the caller promises; the verifier makes the loads fault-safe and checks them
    // against the kernel's BTF.
    unsafe {
        if (*regs).rax == ENOSYS {
            (*regs).orig_rax.cast_signed()
        } else {
            -1
        }
    }
}

/// Whether registers sampled by a perf event were taken in user mode (ring 3 in `cs`).
#[inline(always)]
pub fn user_mode(regs: &bpf_user_pt_regs_t) -> bool {
    regs.cs & 3 == 3
}
