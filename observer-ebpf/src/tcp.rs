//! Socket call duration: `tcp_sendmsg` / `tcp_recvmsg` in three probe modes.
//!
//! * fentry/fexit and kprobe/kretprobe time the kernel functions themselves.
//! * tracepoint mode times from the entry of a send/recv-family syscall (one raw
//!   `sys_enter` hook filtered by number) to `sock:sock_send_length` /
//!   `sock:sock_recv_length`, which fire when the socket call returns (Linux >= 6.3,
//!   commit 6e6eda44b939 "net: sock: introduce sock_{send,recv}_length tracepoints"), and
//!   only when the thread is still in the syscall whose entry was recorded.

use aya_ebpf::{
    EbpfContext, Global,
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, fentry, fexit, kprobe, kretprobe, raw_tracepoint, tracepoint},
    programs::{
        BtfTracePointContext, FEntryContext, FExitContext, ProbeContext, RawTracePointContext,
        RetProbeContext, TracePointContext,
    },
};
use observer_common::{CALL_UNTIMED, CallResult, CallStart, Event, EventKind, StartTable};

use crate::arch::nr;
use crate::conn;
use crate::current::Current;
use crate::maps::{CALL_START, SYSCALL_START, emit};
use crate::per_thread;
use crate::sock::{self, AF_INET, AF_INET6, IPPROTO_TCP};

/// 1 when the sendmsg signal is enabled (set by the daemon).
#[unsafe(no_mangle)]
static ENABLE_SEND: Global<u32> = Global::new(1);
/// 1 when the recvmsg signal is enabled (set by the daemon).
#[unsafe(no_mangle)]
static ENABLE_RECV: Global<u32> = Global::new(1);

/// Whether the tracepoint mode times syscall `id`: the send/recv family (numbers of the
/// architecture the object is built for, [`crate::arch::nr`]), whose entry
/// `socklat_sys_enter` records. Other syscalls that reach a socket (sendfile, splice,
/// `io_uring_enter`, a 32-bit process's syscalls) are not timed: their socket calls count as
/// untimed, because the syscall the thread is in is not the one whose entry was recorded.
#[inline(always)]
fn timed_syscall(id: i64) -> bool {
    matches!(
        id,
        nr::READ
            | nr::WRITE
            | nr::READV
            | nr::WRITEV
            | nr::SENDTO
            | nr::RECVFROM
            | nr::SENDMSG
            | nr::RECVMSG
            | nr::RECVMMSG
            | nr::SENDMMSG
            | nr::PREADV2
            | nr::PWRITEV2
    )
}

/// Whether syscall `id` sends or receives several messages, each timed from the end of the
/// one before.
#[inline(always)]
fn multi_message(id: i64) -> bool {
    id == nr::RECVMMSG || id == nr::SENDMMSG
}

// Record layout of sock:sock_send_length / sock_recv_length (checked by the daemon
// against the tracefs format file before attaching).
const TP_SK: usize = 8;
const TP_FAMILY: usize = 16;
const TP_PROTOCOL: usize = 18;
const TP_RET: usize = 20;

#[inline(always)]
fn now() -> u64 {
    if cfg!(feature = "no-clock") {
        return 1;
    }
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn send_event(ctx: &impl EbpfContext, cur: &Current, kind: EventKind, duration: u64, ret: i32) {
    emit(
        ctx,
        Event {
            cgroup_id: if cfg!(feature = "ablate-cgroup") {
                0
            } else {
                cur.cgroup()
            },
            value: duration,
            kind: kind as u32,
            result: ret,
        },
    );
}

// ---------------------------------------------------------------- tracepoint mode

/// Raw `sys_enter`: remembers when the current thread entered a syscall of the send/recv
/// family, and which one.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn socklat_sys_enter(ctx: RawTracePointContext) -> i32 {
    let id: i64 = ctx.arg(1);
    if !timed_syscall(id) {
        return 0;
    }
    let ts = now();
    if cfg!(feature = "no-start") {
        // The variant without the per-thread store keeps the clock read.
        core::hint::black_box(ts);
        return 0;
    }
    per_thread::store(&SYSCALL_START, StartTable::Syscall, &Current::get(), |s| {
        s.ts = ts;
        s.nr = id;
    });
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
    // The record has no socket type: a raw socket of protocol TCP looks the same there.
    if sock::knows_sk_type() && !sock::is_stream_of_tcp(sk) {
        return;
    }
    socket_call_returned(ctx, kind, sk, ret);
}

/// The same from the BTF-typed tracepoint (`struct sock *sk`, `int ret` as arguments): no
/// record is built for us, and the socket's family, type and protocol are direct loads.
/// Used where the daemon found the socket offsets and the tracepoint in BTF.
#[inline(always)]
fn btf_sock_length(ctx: &BtfTracePointContext, kind: EventKind) {
    let sk: *const u8 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    if cfg!(feature = "ablate-sk-check") || sock::is_tcp_btf(sk) {
        socket_call_returned(ctx, kind, sk as u64, ret);
    }
}

/// A TCP socket call of the current thread returned `ret`: times it from the entry of its
/// syscall (recorded by `socklat_sys_enter`) if that is the syscall the thread is in now,
/// else counts it untimed; marks the connection of a failed call.
#[inline(always)]
fn socket_call_returned(ctx: &impl EbpfContext, kind: EventKind, sk: u64, ret: i32) {
    if CallResult::marks_connection(ret) {
        conn::call_error(sk);
    }
    let cur = Current::get();
    if cfg!(feature = "no-start") {
        send_event(ctx, &cur, kind, now(), ret);
        return;
    }
    let start = per_thread::get(&SYSCALL_START, &cur);
    if start.is_none() {
        // Evicted while the syscall ran, if the thread is in one whose entry we record.
        per_thread::missing(StartTable::Syscall, &cur, || timed_syscall(cur.syscall()));
    }
    // SAFETY: a value of our own map; only this thread writes its own entry.
    let start = start.map(|s| unsafe { &mut *s });
    let in_syscall = |s: &&mut CallStart| {
        s.ts != 0 && (cfg!(feature = "ablate-syscall-check") || s.nr == cur.syscall())
    };
    let Some(start) = start.filter(in_syscall) else {
        send_event(ctx, &cur, kind, 0, CALL_UNTIMED);
        return;
    };
    let t = now();
    let duration = t.saturating_sub(start.ts);
    // A syscall that sends several messages (sendmmsg) times each from the end of the last;
    // any other has one socket call, and a second one in the same syscall (io_uring task
    // work run at its exit) is not timed from its entry.
    start.ts = if multi_message(start.nr) { t } else { 0 };
    send_event(ctx, &cur, kind, duration, ret);
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn socklat_btf_sock_send_length(ctx: BtfTracePointContext) -> i32 {
    if ENABLE_SEND.load() != 0 {
        btf_sock_length(&ctx, EventKind::SendMsg);
    }
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn socklat_btf_sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    if ENABLE_RECV.load() != 0 {
        btf_sock_length(&ctx, EventKind::RecvMsg);
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
    let ts = now();
    if cfg!(feature = "no-start") {
        // The variant without the per-thread store keeps the clock read.
        core::hint::black_box(ts);
        return;
    }
    per_thread::store(&CALL_START, StartTable::Call, &Current::get(), |s| {
        s.ts = ts;
        s.sk = sk;
    });
}

/// A `tcp_sendmsg`/`tcp_recvmsg` call returned `ret`: times it from its entry, or counts it
/// untimed when the entry is not there (evicted from the table, or the call began before
/// the probes were attached).
#[inline(always)]
fn call_exit(ctx: &impl EbpfContext, kind: EventKind, ret: i32) {
    let cur = Current::get();
    if cfg!(feature = "no-start") {
        send_event(ctx, &cur, kind, now(), ret);
        return;
    }
    // SAFETY: a value of our own map; only this thread writes its own entry.
    let Some(start) = per_thread::get(&CALL_START, &cur).map(|s| unsafe { &mut *s }) else {
        per_thread::missing(StartTable::Call, &cur, || true);
        send_event(ctx, &cur, kind, 0, CALL_UNTIMED);
        return;
    };
    if start.ts == 0 {
        send_event(ctx, &cur, kind, 0, CALL_UNTIMED);
        return;
    }
    // Used: the entry stays for the thread's next call (updated in place).
    let start = core::mem::take(start);
    if CallResult::marks_connection(ret) {
        conn::call_error(start.sk);
    }
    send_event(ctx, &cur, kind, now().saturating_sub(start.ts), ret);
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

// Before Linux 6.5 (commit "splice, net: Use sendmsg(MSG_SPLICE_PAGES)" removed
// `->sendpage`) sendfile and splice to a TCP socket send by `tcp_sendpage`, one call per
// page, not by `tcp_sendmsg`: the daemon attaches these where the kernel has it, and counts
// each call as a send.
#[fentry(function = "tcp_sendpage")]
pub fn socklat_fentry_tcp_sendpage(ctx: FEntryContext) -> i32 {
    call_entry(ctx.arg(0));
    0
}

#[fexit(function = "tcp_sendpage")]
pub fn socklat_fexit_tcp_sendpage(ctx: FExitContext) -> i32 {
    // int tcp_sendpage(struct sock *sk, struct page *page, int offset, size_t size, int flags)
    let ret: i32 = ctx.arg(5);
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
pub fn socklat_kprobe_tcp_sendpage(ctx: ProbeContext) -> u32 {
    call_entry(ctx.arg(0).unwrap_or(0));
    0
}

#[kretprobe]
pub fn socklat_kretprobe_tcp_sendpage(ctx: RetProbeContext) -> u32 {
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
