//! TCP connection outcomes, attributed to the SOCKET's cgroup (its `sk_cgrp_data`), never
//! to the current task: state changes and resets often run in softirq.
//!
//! Raw tracepoints (args are the `TP_PROTO` arguments, no tracefs, no BTF needed to attach):
//! `inet_sock_set_state(sk, oldstate, newstate)`, `tcp_receive_reset(sk)`,
//! `tcp_send_reset(sk, skb, ...)`, `tcp_retransmit_skb(sk, skb, ...)`.
//!
//! A connection end is classified when it reaches CLOSE (`observer_common::classify`). Where
//! a reset our socket sends may still follow (the kernel sends the reset of an abort after
//! it set CLOSE: data arriving at an orphan, `close()` with unread data after
//! `shutdown(SHUT_WR)`; or the timewait socket an orphan left answers later data with a
//! reset), the close is reported held, with the connection's key, and the reset, when it
//! comes, is reported as a `ConnReset` event with the same key; the daemon settles the
//! close with it. A reset our socket sends to a timewait socket of this node settles that
//! end too (its timewait socket is killed without a tracepoint).

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use observer_common::{
    CLOSE_UNTRACKED, CONN_CALL_ERROR, CONN_RST_RECEIVED, CONN_RST_SENT, CONN_SEEN_LATE, Closing,
    ConnHook, ConnState, Event, EventKind, Hold, Outcome, classify, close_result, tcp,
};

use crate::maps::{BPF_NOEXIST, CONNECTIONS, RETRANSMITS, bump, count_conn, emit};
use crate::nested;
use crate::sock::{self, Kind};

/// 1 when the connections signal is enabled.
#[unsafe(no_mangle)]
pub static ENABLE_CONN: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);

/// A connection starts (an active open, or the child socket of a listener): fresh state,
/// never the flags or cgroup of an entry a skipped CLOSE run left at the same address. Or
/// (`late`) a connection is seen with no state at a later change: its state was evicted,
/// or it was open before we were attached.
#[inline(always)]
fn start(sk: u64, late: bool) {
    let c = ConnState {
        cgroup_id: sock::cgroup(sk),
        flags: if late { CONN_SEEN_LATE } else { 0 },
        pad: 0,
    };
    // A new entry is counted (the daemon derives evictions from the entries made and
    // removed); one left at this address (a CLOSE the kernel skipped us for) is replaced.
    if CONNECTIONS.insert(&sk, &c, BPF_NOEXIST).is_ok() {
        count_conn(false);
    } else {
        let _ = CONNECTIONS.insert(&sk, &c, 0);
    }
}

/// Adds `flags` to the state of a connection we track.
#[inline(always)]
fn mark(sk: u64, flags: u32) {
    if let Some(c) = CONNECTIONS.get_ptr_mut(&sk) {
        // SAFETY: a value of our own map; flags only ever gain bits.
        unsafe { (*c).flags |= flags };
    }
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn socklat_inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    nested::first(ConnHook::SetState, || set_state(&ctx));
    0
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn socklat_inet_sock_set_state_nested(ctx: RawTracePointContext) -> i32 {
    nested::twin(ConnHook::SetState, || set_state(&ctx));
    0
}

/// A connection end changes state.
#[inline(always)]
fn set_state(ctx: &RawTracePointContext) {
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if sk == 0 || new == tcp::LISTEN || (old == tcp::LISTEN && new != tcp::SYN_RECV) {
        return;
    }
    if !sock::is_tcp(sk) {
        return;
    }
    if new != tcp::CLOSE {
        if old == tcp::CLOSE || old == tcp::LISTEN {
            start(sk, false);
        } else if CONNECTIONS.get_ptr(&sk).is_none() {
            start(sk, true);
        }
        return;
    }
    if old == tcp::CLOSE {
        // CLOSE to CLOSE: not a second close.
        return;
    }
    closed(ctx, sk, old);
}

/// Connection end `sk` reached CLOSE from `old`: classify and report it.
#[inline(always)]
fn closed(ctx: &RawTracePointContext, sk: u64, old: i32) {
    // SAFETY: a value of our own map, copied out at once.
    let state = unsafe { CONNECTIONS.get(&sk) }.copied();
    let (cgroup_id, flags, untracked) = if let Some(s) = state {
        if CONNECTIONS.remove(&sk).is_ok() {
            count_conn(true);
        }
        let untracked = if s.flags & CONN_SEEN_LATE == 0 {
            0
        } else {
            CLOSE_UNTRACKED
        };
        (s.cgroup_id, s.flags, untracked)
    } else {
        // Evicted from the full table, or opened before we were attached: classified from
        // its final state only, and reported so.
        (sock::cgroup(sk), 0, CLOSE_UNTRACKED)
    };
    let (dead, done) = sock::dead_done(sk);
    let closing = Closing {
        old,
        flags,
        err: sock::err(sk),
        segs_out: sock::segs_out(sk),
        dead,
        done,
        rcv_shutdown: sock::rcv_shutdown(sk),
    };
    let (outcome, hold) = classify(&closing);
    let value = if hold == Hold::None {
        0
    } else {
        sock::key(sk, Kind::Full, false)
    };
    emit(
        ctx,
        Event {
            cgroup_id,
            value,
            kind: EventKind::ConnClose as u32,
            result: close_result(outcome, hold) | untracked,
        },
    );
}

/// Reports a reset that settles the held close of the connection end with `key`.
#[inline(always)]
fn settle(ctx: &RawTracePointContext, key: u64, outcome: Outcome) {
    emit(
        ctx,
        Event {
            // No cgroup: the shared ring; the daemon knows the held close's cgroup.
            cgroup_id: 0,
            value: key,
            kind: EventKind::ConnReset as u32,
            result: outcome as i32,
        },
    );
}

#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn socklat_tcp_receive_reset(ctx: RawTracePointContext) -> i32 {
    nested::first(ConnHook::ReceiveReset, || receive_reset(&ctx));
    0
}

#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn socklat_tcp_receive_reset_nested(ctx: RawTracePointContext) -> i32 {
    nested::twin(ConnHook::ReceiveReset, || receive_reset(&ctx));
    0
}

/// A connection end receives a reset.
#[inline(always)]
fn receive_reset(ctx: &RawTracePointContext) {
    let sk: u64 = ctx.arg(0);
    if sk != 0 {
        mark(sk, CONN_RST_RECEIVED);
    }
}

#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn socklat_tcp_send_reset(ctx: RawTracePointContext) -> i32 {
    nested::first(ConnHook::SendReset, || send_reset(&ctx));
    0
}

#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn socklat_tcp_send_reset_nested(ctx: RawTracePointContext) -> i32 {
    nested::twin(ConnHook::SendReset, || send_reset(&ctx));
    0
}

/// A connection end (or a timewait socket) sends a reset.
#[inline(always)]
fn send_reset(ctx: &RawTracePointContext) {
    // A reset sent with no socket (to a closed port) belongs to no connection.
    let sk: u64 = ctx.arg(0);
    if sk == 0 {
        return;
    }
    let state = sock::state(sk);
    if state == tcp::TIME_WAIT {
        // A timewait socket (FIN_WAIT2 substate) answers data with a reset (Linux >= 6.10
        // traces it); one that answers a new SYN belongs to no live connection.
        let skb: u64 = ctx.arg(1);
        if !sock::is_syn(skb) {
            settle(
                ctx,
                sock::key(sk, Kind::TimeWait, false),
                Outcome::ResetSent,
            );
        }
        return;
    }
    if state == tcp::NEW_SYN_RECV || !sock::is_tcp(sk) {
        return;
    }
    if CONNECTIONS.get_ptr(&sk).is_some() {
        mark(sk, CONN_RST_SENT);
    } else if state == tcp::CLOSE {
        // Our reset after our CLOSE was reported: it settles that close.
        settle(ctx, sock::key(sk, Kind::Full, false), Outcome::ResetSent);
    }
    // The peer's end, if it is a timewait socket of this node whose close is held, is
    // killed by this reset.
    settle(ctx, sock::key(sk, Kind::Full, true), Outcome::ResetReceived);
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn socklat_tcp_retransmit_skb(ctx: RawTracePointContext) -> i32 {
    nested::first(ConnHook::Retransmit, || retransmit(&ctx));
    0
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn socklat_tcp_retransmit_skb_nested(ctx: RawTracePointContext) -> i32 {
    nested::twin(ConnHook::Retransmit, || retransmit(&ctx));
    0
}

/// A connection end retransmits a segment.
#[inline(always)]
fn retransmit(ctx: &RawTracePointContext) {
    let sk: u64 = ctx.arg(0);
    if sk != 0 {
        bump(&RETRANSMITS, sock::cgroup(sk));
    }
}

/// Called by the socket call probes: a call on `sk` failed with an error of the connection
/// (not -EAGAIN, not interrupted by a signal).
#[inline(always)]
pub fn call_error(sk: u64) {
    if ENABLE_CONN.load() != 0 && sk != 0 {
        mark(sk, CONN_CALL_ERROR);
    }
}
