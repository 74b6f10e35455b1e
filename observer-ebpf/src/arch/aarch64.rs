//! arm64: the syscall table and the saved registers (`arch/arm64/include/asm/ptrace.h`).

use aya_ebpf::bindings::bpf_user_pt_regs_t;
use aya_ebpf::cty::c_long;

/// Syscall numbers of the send/recv family: arm64 uses the generic table
/// (include/uapi/asm-generic/unistd.h, generated from scripts/syscall.tbl since 6.11), which
/// has one number per call and no `send`/`recv`.
pub mod nr {
    pub const READ: i64 = 63;
    pub const WRITE: i64 = 64;
    pub const READV: i64 = 65;
    pub const WRITEV: i64 = 66;
    pub const SENDTO: i64 = 206;
    pub const RECVFROM: i64 = 207;
    pub const SENDMSG: i64 = 211;
    pub const RECVMSG: i64 = 212;
    pub const RECVMMSG: i64 = 243;
    pub const SENDMMSG: i64 = 269;
    // With offset -1 they read or write at the current position, which on a socket is a
    // receive or a send.
    pub const PREADV2: i64 = 286;
    pub const PWRITEV2: i64 = 287;
}

/// The head of the kernel's `struct pt_regs` on arm64 (the user registers, then
/// `orig_x0` and `syscallno`): the same offsets from 5.10 to 7.3, and the daemon checks
/// them against the running kernel's BTF before it uses the tracepoint mode.
#[repr(C)]
struct KernelPtRegs {
    regs: [u64; 31],
    sp: u64,
    pc: u64,
    pstate: u64,
    orig_x0: u64,
    syscallno: i32,
}

/// `PSR_MODE32_BIT`: the task runs `AArch32` code (a compat task; its syscall numbers are
/// arm32's, arch/arm64/include/asm/unistd32.h).
const PSR_MODE32_BIT: u64 = 0x10;
/// `PSR_MODE_MASK` of `pstate`; `PSR_MODE_EL0t` (0) is user mode.
const PSR_MODE_MASK: u64 = 0xf;

/// The number of the syscall a task is in, from its saved user registers, or -1 when it is
/// in none. arm64 has no `-ENOSYS` marker: `el0_svc_common` (arch/arm64/kernel/syscall.c)
/// stores the number in `syscallno` and copies `x0` to `orig_x0`; the syscall's return
/// value then replaces `x0` (`syscall_set_return_value`), while `syscallno` stays until the
/// next entry from user mode, which stores `NO_SYSCALL` (-1) for anything but a syscall
/// (`el0_*` entry code), or until signal handling forgets it (`forget_syscall` in
/// `do_signal`, before `get_signal` runs pending task work). So the task is in syscall
/// `syscallno` while `x0` still equals `orig_x0`. What remains: work run on the way out of
/// a syscall without a signal pass (`TWA_RESUME` task work) after a syscall whose return
/// value equals its first argument; a tracer that rewrote `x0` at syscall entry makes the
/// call untimed. A compat (`AArch32`) task's numbers are arm32's: it is in none of ours.
///
/// # Safety
/// `regs` is the BTF pointer to a task's `struct pt_regs` that `bpf_task_pt_regs` returned.
#[inline(always)]
pub unsafe fn syscall_in(regs: c_long) -> i64 {
    let regs = regs as *const KernelPtRegs;
    // SAFETY: as the caller promises; the verifier makes the loads fault-safe and checks them
    // against the kernel's BTF (members at their offsets in `struct pt_regs`).
    unsafe {
        if (*regs).pstate & PSR_MODE32_BIT == 0 && (*regs).regs[0] == (*regs).orig_x0 {
            i64::from((*regs).syscallno)
        } else {
            -1
        }
    }
}

/// Whether registers sampled by a perf event were taken in user mode (EL0).
#[inline(always)]
pub fn user_mode(regs: &bpf_user_pt_regs_t) -> bool {
    regs.pstate & PSR_MODE_MASK == 0
}
