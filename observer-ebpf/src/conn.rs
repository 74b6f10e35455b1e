//! TCP connection outcomes, attributed to the SOCKET's cgroup (its `sk_cgrp_data`), never
//! to the current task: state changes and resets often run in softirq.
//!
//! Raw tracepoints (args are the `TP_PROTO` arguments, no tracefs, no BTF needed to attach):
//! `inet_sock_set_state(sk, oldstate, newstate)`, `tcp_receive_reset(sk)`,
//! `tcp_send_reset(sk, skb, ...)`, `tcp_retransmit_skb(sk, skb, ...)`. Socket fields are read
//! at offsets the daemon takes from kernel BTF (Rust eBPF has no CO-RE relocations).

use aya_ebpf::{
    Global, helpers::bpf_probe_read_kernel, macros::raw_tracepoint, programs::RawTracePointContext,
};
use observer_common::{
    CONN_CALL_ERROR, CONN_RST_RECEIVED, CONN_RST_SENT, ConnState, Event, EventKind, Outcome,
};

use crate::maps::{CONN_UNTRACKED, CONNECTIONS, RETRANSMITS, atomic_add, bump, emit};

#[unsafe(no_mangle)]
static OFF_SK_FAMILY: Global<u64> = Global::new(16);
/// The first of `sock.sk_type` and `sk_protocol` (adjacent u16s since Linux 5.6, in an
/// order that differs between kernels): one 4-byte read gives both. 0 when unknown (no
/// BTF): the classic tracepoint programs then check the record's protocol only.
#[unsafe(no_mangle)]
static OFF_SK_TYPE_PROTOCOL: Global<u64> = Global::new(0);
/// What those 4 bytes hold for a TCP stream socket (set by the daemon from their order).
#[unsafe(no_mangle)]
static SK_TCP_STREAM: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_SK_ERR: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_SK_CGRP: Global<u64> = Global::new(0);
/// 1 before Linux 5.15, where `sock_cgroup_data` is a tagged `val` word (low bits set, or
/// zero, mean the root cgroup).
#[unsafe(no_mangle)]
static CGRP_TAGGED: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_CGROUP_KN: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_KN_ID: Global<u64> = Global::new(0);
/// 1 when the connections signal is enabled.
#[unsafe(no_mangle)]
pub static ENABLE_CONN: Global<u32> = Global::new(0);

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LISTEN: i32 = 10;
const ECONNREFUSED: i32 = 111;
const ETIMEDOUT: i32 = 110;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;
/// The root cgroup's id on cgroup v2.
const ROOT_CGROUP: u64 = 1;

#[inline(always)]
fn read<T>(base: u64, off: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copes with any address (it returns an error).
    unsafe { bpf_probe_read_kernel((base + off) as *const T).ok() }
}

/// The cgroup id of a socket: `sk->sk_cgrp_data` -> cgroup -> kernfs node -> id, the value
/// `bpf_sk_cgroup_id` would give.
#[inline(always)]
pub fn sk_cgroup(sk: u64) -> u64 {
    let Some(cgrp) = read::<u64>(sk, OFF_SK_CGRP.load()) else {
        return ROOT_CGROUP;
    };
    if cgrp == 0 || (CGRP_TAGGED.load() != 0 && cgrp & 3 != 0) {
        return ROOT_CGROUP;
    }
    let Some(kn) = read::<u64>(cgrp, OFF_CGROUP_KN.load()) else {
        return ROOT_CGROUP;
    };
    read::<u64>(kn, OFF_KN_ID.load()).unwrap_or(ROOT_CGROUP)
}

/// Whether `sk` is a TCP stream socket of IPv4 or IPv6 (a raw socket of protocol TCP is
/// not: its type is `SOCK_RAW`).
#[inline(always)]
pub fn is_tcp(sk: u64) -> bool {
    let family = read::<u16>(sk, OFF_SK_FAMILY.load()).unwrap_or(0);
    (family == AF_INET || family == AF_INET6) && is_stream_of_tcp(sk)
}

/// Whether `sk`'s type is `SOCK_STREAM` and its protocol TCP (one read of both).
#[inline(always)]
pub fn is_stream_of_tcp(sk: u64) -> bool {
    read::<u32>(sk, OFF_SK_TYPE_PROTOCOL.load()) == Some(SK_TCP_STREAM.load())
}

/// Whether the socket type can be checked (the offsets came from BTF).
#[inline(always)]
pub fn knows_sk_type() -> bool {
    OFF_SK_TYPE_PROTOCOL.load() != 0
}

/// Adds `flags` to the state of connection `sk`, creating it when first seen.
#[inline(always)]
pub fn mark(sk: u64, flags: u32) {
    if let Some(c) = CONNECTIONS.get_ptr_mut(&sk) {
        // SAFETY: a value of our own map; flags only ever gain bits.
        unsafe { (*c).flags |= flags };
    } else {
        let c = ConnState {
            cgroup_id: sk_cgroup(sk),
            flags,
            pad: 0,
        };
        let _ = CONNECTIONS.insert(&sk, &c, 0);
    }
}

#[inline(always)]
fn classify(old: i32, flags: u32, err: i32) -> Outcome {
    if old == TCP_SYN_SENT {
        if flags & CONN_RST_RECEIVED != 0 || err == ECONNREFUSED {
            Outcome::Refused
        } else {
            Outcome::ConnectTimeout
        }
    } else if flags & CONN_RST_RECEIVED != 0 {
        Outcome::ResetReceived
    } else if flags & CONN_RST_SENT != 0 {
        Outcome::ResetSent
    } else if err == ETIMEDOUT {
        Outcome::Timeout
    } else if err != 0 || flags & CONN_CALL_ERROR != 0 {
        Outcome::Error
    } else if old == TCP_ESTABLISHED || old == TCP_CLOSE_WAIT {
        // Straight to CLOSE with no RST received and no error: an abortive close by us
        // (unread data or SO_LINGER 0 in tcp_close, or tcp_disconnect), which sets CLOSE
        // before it sends the RST.
        Outcome::ResetSent
    } else {
        Outcome::Normal
    }
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn socklat_inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if sk == 0 || !is_tcp(sk) || old == TCP_LISTEN || new == TCP_LISTEN {
        return 0;
    }
    if new != TCP_CLOSE {
        // The first state change of a connection (SYN_SENT for active opens, SYN_RECV for
        // the child socket of an accepted one) records its cgroup.
        if old == TCP_CLOSE || CONNECTIONS.get_ptr(&sk).is_none() {
            mark(sk, 0);
        }
        return 0;
    }
    // SAFETY: a value of our own map, copied out at once.
    let state = unsafe { CONNECTIONS.get(&sk) }.copied();
    let _ = CONNECTIONS.remove(&sk);
    let (cgroup_id, flags) = if let Some(s) = state {
        (s.cgroup_id, s.flags)
    } else {
        if let Some(n) = CONN_UNTRACKED.get_ptr_mut(0) {
            atomic_add(n, 1);
        }
        (sk_cgroup(sk), 0)
    };
    let err = read::<i32>(sk, OFF_SK_ERR.load()).unwrap_or(0);
    let outcome = classify(old, flags, err);
    emit(
        &ctx,
        Event {
            cgroup_id,
            value: 0,
            kind: EventKind::ConnClose as u32,
            result: outcome as i32,
        },
    );
    0
}

#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn socklat_tcp_receive_reset(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    if sk != 0 {
        mark(sk, CONN_RST_RECEIVED);
    }
    0
}

#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn socklat_tcp_send_reset(ctx: RawTracePointContext) -> i32 {
    // A reset sent with no socket (to a closed port) belongs to no connection.
    let sk: u64 = ctx.arg(0);
    if sk != 0 && CONNECTIONS.get_ptr(&sk).is_some() {
        mark(sk, CONN_RST_SENT);
    }
    0
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn socklat_tcp_retransmit_skb(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    if sk != 0 {
        bump(&RETRANSMITS, sk_cgroup(sk));
    }
    0
}

/// Called by the socket call probes: a call on `sk` failed with an error of the connection
/// (not -EAGAIN, not interrupted by a signal).
#[inline(always)]
pub fn call_error(sk: u64) {
    if ENABLE_CONN.load() != 0 && sk != 0 && CONNECTIONS.get_ptr(&sk).is_some() {
        mark(sk, CONN_CALL_ERROR);
    }
}
