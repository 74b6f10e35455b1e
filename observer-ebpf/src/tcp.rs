//! Socket call duration: `tcp_sendmsg` / `tcp_recvmsg` in three probe modes.
//!
//! * fentry/fexit and kprobe/kretprobe time the kernel functions themselves.
//! * tracepoint mode times from the entry of a send/recv-family syscall (one raw
//!   `sys_enter` hook filtered by number) to `sock:sock_send_length` /
//!   `sock:sock_recv_length`, which fire when the socket call returns (Linux >= 6.3,
//!   commit 6e6eda44b939 "net: sock: introduce sock_{send,recv}_length tracepoints").

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{fentry, fexit, kprobe, kretprobe, raw_tracepoint, tracepoint},
    programs::{
        FEntryContext, FExitContext, ProbeContext, RawTracePointContext, RetProbeContext,
        TracePointContext,
    },
};
use observer_common::{CallStart, EAGAIN, Event, EventKind};

use crate::conn::{self, AF_INET, AF_INET6, IPPROTO_TCP};
use crate::maps::{CALL_START, SYSCALL_START, current_cgroup, emit};

/// 1 when the sendmsg signal is enabled (set by the daemon).
#[unsafe(no_mangle)]
static ENABLE_SEND: Global<u32> = Global::new(1);
/// 1 when the recvmsg signal is enabled (set by the daemon).
#[unsafe(no_mangle)]
static ENABLE_RECV: Global<u32> = Global::new(1);

// x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
const NR_READ: i64 = 0;
const NR_WRITE: i64 = 1;
const NR_READV: i64 = 19;
const NR_WRITEV: i64 = 20;
const NR_SENDFILE: i64 = 40;
const NR_SENDTO: i64 = 44;
const NR_RECVFROM: i64 = 45;
const NR_SENDMSG: i64 = 46;
const NR_RECVMSG: i64 = 47;
const NR_SPLICE: i64 = 275;
const NR_RECVMMSG: i64 = 299;
const NR_SENDMMSG: i64 = 307;
const NR_IO_URING_ENTER: i64 = 426;

// Record layout of sock:sock_send_length / sock_recv_length (checked by the daemon
// against the tracefs format file before attaching).
const TP_SK: usize = 8;
const TP_FAMILY: usize = 16;
const TP_PROTOCOL: usize = 18;
const TP_RET: usize = 20;

#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn send_event(ctx: &impl EbpfContext, kind: EventKind, duration: u64, ret: i32) {
    emit(
        ctx,
        Event {
            cgroup_id: current_cgroup(),
            value: duration,
            kind: kind as u32,
            result: ret,
        },
    );
}

// ---------------------------------------------------------------- tracepoint mode

/// Raw `sys_enter`: remembers when the current thread entered a syscall that can reach
/// `sock_sendmsg` / `sock_recvmsg`. Syscalls that reach them without being one plain
/// send or receive (`sendfile`, `splice`, `io_uring_enter`) are marked untimed, so that a
/// stale entry never times them.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn socklat_sys_enter(ctx: RawTracePointContext) -> i32 {
    let id: i64 = ctx.arg(1);
    let ts = match id {
        NR_READ | NR_WRITE | NR_READV | NR_WRITEV | NR_SENDTO | NR_RECVFROM | NR_SENDMSG
        | NR_RECVMSG | NR_RECVMMSG | NR_SENDMMSG => now(),
        NR_SENDFILE | NR_SPLICE | NR_IO_URING_ENTER => 0,
        _ => return 0,
    };
    let key = bpf_get_current_pid_tgid();
    // Update in place when the thread has an entry: an LRU map update would allocate a new
    // element and unlink the old one, several times the cost of a lookup.
    if let Some(start) = SYSCALL_START.get_ptr_mut(&key) {
        // SAFETY: a value of our own map; only this thread writes its own entry.
        unsafe { (*start).ts = ts };
    } else {
        let _ = SYSCALL_START.insert(&key, &CallStart { ts, sk: 0 }, 0);
    }
    0
}

#[inline(always)]
#[expect(
    clippy::cast_ptr_alignment,
    reason = "the record is 8-aligned and the fields are at their natural alignment"
)]
fn sock_length(ctx: &TracePointContext, kind: EventKind) {
    let rec = ctx.as_ptr().cast::<u8>();
    // SAFETY: direct loads from the tracepoint record (the verifier checks them against its
    // size); offsets verified against the format file by the daemon. Cheaper than
    // `read_at`, which goes through bpf_probe_read.
    let (family, protocol, ret) = unsafe {
        (
            rec.add(TP_FAMILY).cast::<u16>().read(),
            rec.add(TP_PROTOCOL).cast::<u16>().read(),
            rec.add(TP_RET).cast::<i32>().read(),
        )
    };
    if protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) {
        return;
    }
    // SAFETY: the record's `sk` field (offset 8, checked with the others).
    let sk = unsafe { rec.add(TP_SK).cast::<u64>().read() };
    socket_call_returned(ctx, kind, sk, ret);
}

/// A TCP socket call of the current thread returned `ret`: times it from the entry of its
/// syscall (recorded by `socklat_sys_enter`) and marks the connection of a failed call.
#[inline(always)]
fn socket_call_returned(ctx: &impl EbpfContext, kind: EventKind, sk: u64, ret: i32) {
    let Some(start) = SYSCALL_START.get_ptr_mut(&bpf_get_current_pid_tgid()) else {
        return;
    };
    // SAFETY: a value of our own map; only this thread writes its own entry.
    let start = unsafe { &mut *start };
    if start.ts == 0 {
        return;
    }
    if ret < 0 && ret != -EAGAIN {
        conn::call_error(sk);
    }
    let t = now();
    let duration = t.saturating_sub(start.ts);
    // A syscall that sends several messages (sendmmsg) times each from the end of the last.
    start.ts = t;
    send_event(ctx, kind, duration, ret);
}

/// The same from the raw tracepoint (`sk`, `ret` as arguments): no record is built for
/// us, so it costs less than the classic one; family and protocol come from the socket at
/// BTF offsets. Used where the daemon found those offsets and the tracepoint in BTF.
#[inline(always)]
fn raw_sock_length(ctx: &RawTracePointContext, kind: EventKind) {
    let sk: u64 = ctx.arg(0);
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the int argument, sign-extended"
    )]
    let ret = ctx.arg::<u64>(1) as i32;
    if conn::is_tcp(sk) {
        socket_call_returned(ctx, kind, sk, ret);
    }
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn socklat_raw_sock_send_length(ctx: RawTracePointContext) -> i32 {
    if ENABLE_SEND.load() != 0 {
        raw_sock_length(&ctx, EventKind::SendMsg);
    }
    0
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn socklat_raw_sock_recv_length(ctx: RawTracePointContext) -> i32 {
    if ENABLE_RECV.load() != 0 {
        raw_sock_length(&ctx, EventKind::RecvMsg);
    }
    0
}

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn socklat_sock_send_length(ctx: TracePointContext) -> u32 {
    if ENABLE_SEND.load() != 0 {
        sock_length(&ctx, EventKind::SendMsg);
    }
    0
}

#[tracepoint(category = "sock", name = "sock_recv_length")]
pub fn socklat_sock_recv_length(ctx: TracePointContext) -> u32 {
    if ENABLE_RECV.load() != 0 {
        sock_length(&ctx, EventKind::RecvMsg);
    }
    0
}

// ---------------------------------------------------------------- fentry and kprobe modes

#[inline(always)]
fn call_entry(sk: u64) {
    let _ = CALL_START.insert(&bpf_get_current_pid_tgid(), &CallStart { ts: now(), sk }, 0);
}

#[inline(always)]
fn call_exit(ctx: &impl EbpfContext, kind: EventKind, ret: i32) {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: a value of our own map, copied out at once.
    let Some(start) = (unsafe { CALL_START.get(&key) }).copied() else {
        return;
    };
    let _ = CALL_START.remove(&key);
    if ret < 0 && ret != -EAGAIN {
        conn::call_error(start.sk);
    }
    send_event(ctx, kind, now().saturating_sub(start.ts), ret);
}

#[fentry(function = "tcp_sendmsg")]
pub fn socklat_fentry_tcp_sendmsg(ctx: FEntryContext) -> i32 {
    call_entry(ctx.arg(0));
    0
}

#[fexit(function = "tcp_sendmsg")]
pub fn socklat_fexit_tcp_sendmsg(ctx: FExitContext) -> i32 {
    // int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)
    let ret: i32 = ctx.arg(3);
    call_exit(&ctx, EventKind::SendMsg, ret);
    0
}

#[fentry(function = "tcp_recvmsg")]
pub fn socklat_fentry_tcp_recvmsg(ctx: FEntryContext) -> i32 {
    call_entry(ctx.arg(0));
    0
}

// fexit reads the return value after the last parameter, at a constant context offset (the
// verifier refuses a variable one). `tcp_recvmsg` had 6 parameters before Linux 5.19
// (commit ec095263a965 removed `nonblock`), 5 since, and 4 once `addr_len` went too (seen
// on 7.3): one program per shape, and the daemon loads the one the kernel's BTF asks for.
#[fexit(function = "tcp_recvmsg")]
pub fn socklat_fexit_tcp_recvmsg4(ctx: FExitContext) -> i32 {
    let ret: i32 = ctx.arg(4);
    call_exit(&ctx, EventKind::RecvMsg, ret);
    0
}

#[fexit(function = "tcp_recvmsg")]
pub fn socklat_fexit_tcp_recvmsg5(ctx: FExitContext) -> i32 {
    let ret: i32 = ctx.arg(5);
    call_exit(&ctx, EventKind::RecvMsg, ret);
    0
}

#[fexit(function = "tcp_recvmsg")]
pub fn socklat_fexit_tcp_recvmsg6(ctx: FExitContext) -> i32 {
    let ret: i32 = ctx.arg(6);
    call_exit(&ctx, EventKind::RecvMsg, ret);
    0
}

#[kprobe]
pub fn socklat_kprobe_tcp_sendmsg(ctx: ProbeContext) -> u32 {
    call_entry(ctx.arg(0).unwrap_or(0));
    0
}

#[kretprobe]
pub fn socklat_kretprobe_tcp_sendmsg(ctx: RetProbeContext) -> u32 {
    let ret: i32 = ctx.ret();
    call_exit(&ctx, EventKind::SendMsg, ret);
    0
}

#[kprobe]
pub fn socklat_kprobe_tcp_recvmsg(ctx: ProbeContext) -> u32 {
    call_entry(ctx.arg(0).unwrap_or(0));
    0
}

#[kretprobe]
pub fn socklat_kretprobe_tcp_recvmsg(ctx: RetProbeContext) -> u32 {
    let ret: i32 = ctx.ret();
    call_exit(&ctx, EventKind::RecvMsg, ret);
    0
}
