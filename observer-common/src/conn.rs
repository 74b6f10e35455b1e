//! TCP connections: how one ended ([`Outcome`]), what the kernel keeps of a live one
//! ([`ConnState`]), and the rules that classify it at CLOSE ([`classify`]), shared so that
//! they are unit-tested here and run in the kernel as they are.

/// How a TCP connection ended: the first that applies, in this order (docs/design.md).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// RST in reply to our SYN.
    Refused = 0,
    /// `SYN_SENT` to CLOSE with ETIMEDOUT, or given up without an error.
    ConnectTimeout = 1,
    /// The peer reset the connection.
    ResetReceived = 2,
    /// We reset the connection (abortive close).
    ResetSent = 3,
    /// ETIMEDOUT on an established connection.
    Timeout = 4,
    /// Another socket error, or a send/recv error other than EAGAIN.
    Error = 5,
    /// None of the above.
    Normal = 6,
    /// ICMP host or network unreachable on a connect (EHOSTUNREACH, ENETUNREACH).
    Unreachable = 7,
}

impl Outcome {
    /// All outcomes, in classification order.
    pub const ALL: [Outcome; 8] = [
        Outcome::Refused,
        Outcome::Unreachable,
        Outcome::ConnectTimeout,
        Outcome::ResetReceived,
        Outcome::ResetSent,
        Outcome::Timeout,
        Outcome::Error,
        Outcome::Normal,
    ];

    /// The `outcome` label value.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Refused => "refused",
            Outcome::ConnectTimeout => "connect_timeout",
            Outcome::ResetReceived => "reset_received",
            Outcome::ResetSent => "reset_sent",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
            Outcome::Normal => "normal",
            Outcome::Unreachable => "unreachable",
        }
    }

    /// Maps the wire value back.
    #[must_use]
    pub const fn from_i32(v: i32) -> Option<Self> {
        match v {
            0 => Some(Outcome::Refused),
            1 => Some(Outcome::ConnectTimeout),
            2 => Some(Outcome::ResetReceived),
            3 => Some(Outcome::ResetSent),
            4 => Some(Outcome::Timeout),
            5 => Some(Outcome::Error),
            6 => Some(Outcome::Normal),
            7 => Some(Outcome::Unreachable),
            _ => None,
        }
    }
}

/// What the kernel remembers of a live TCP connection, keyed by socket address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnState {
    /// The socket's cgroup (its `sk_cgrp_data`), read when the connection was first seen.
    pub cgroup_id: u64,
    /// `CONN_*` flags.
    pub flags: u32,
    /// Padding, always 0.
    pub pad: u32,
}

/// `ConnState::flags`: a RST was received.
pub const CONN_RST_RECEIVED: u32 = 1;
/// `ConnState::flags`: a RST was sent.
pub const CONN_RST_SENT: u32 = 2;
/// `ConnState::flags`: a send or receive call failed with an error other than EAGAIN.
pub const CONN_CALL_ERROR: u32 = 4;
/// `ConnState::flags`: first seen after the connection started (its state was evicted, or it
/// was open before the daemon): what happened before is not in the flags, so its close is
/// reported with [`CLOSE_UNTRACKED`].
pub const CONN_SEEN_LATE: u32 = 8;

/// TCP states (`include/net/tcp_states.h`).
pub mod tcp {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const SYN_RECV: i32 = 3;
    pub const FIN_WAIT1: i32 = 4;
    pub const FIN_WAIT2: i32 = 5;
    pub const TIME_WAIT: i32 = 6;
    pub const CLOSE: i32 = 7;
    pub const CLOSE_WAIT: i32 = 8;
    pub const LAST_ACK: i32 = 9;
    pub const LISTEN: i32 = 10;
    pub const CLOSING: i32 = 11;
    pub const NEW_SYN_RECV: i32 = 12;
}

/// Errno values the classification reads in `sk_err`.
pub mod errno {
    pub const EPIPE: i32 = 32;
    pub const ENETUNREACH: i32 = 101;
    pub const ECONNRESET: i32 = 104;
    pub const ETIMEDOUT: i32 = 110;
    pub const ECONNREFUSED: i32 = 111;
    pub const EHOSTUNREACH: i32 = 113;
}

/// What the kernel knows of a connection end when it reaches CLOSE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Closing {
    /// The state it left.
    pub old: i32,
    /// `CONN_*` flags gathered while it lived.
    pub flags: u32,
    /// `sk_err`.
    pub err: i32,
    /// Segments it sent (`tcp_sock.segs_out`): 0 means no SYN ever left.
    pub segs_out: u32,
    /// `SOCK_DEAD`: the application closed it (an orphan).
    pub dead: bool,
    /// `SOCK_DONE`: the peer's FIN came.
    pub done: bool,
    /// `RCV_SHUTDOWN` in `sk_shutdown`.
    pub rcv_shutdown: bool,
}

/// Whether a close is final, or a reset our socket sends may still follow and change it.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Final.
    None = 0,
    /// A reset sent right after CLOSE, in the same context (data arriving at an orphan,
    /// `close()` with unread data after `shutdown(SHUT_WR)`), makes it `reset_sent`.
    Sync = 1,
    /// The orphan left a timewait socket (`FIN_WAIT2` substate) that may still answer
    /// data with a reset (`reset_sent`), or be killed by the peer's reset
    /// (`reset_received`).
    TimeWait = 2,
}

impl Hold {
    /// Maps the wire value back.
    #[must_use]
    pub const fn from_i32(v: i32) -> Option<Self> {
        match v {
            0 => Some(Hold::None),
            1 => Some(Hold::Sync),
            2 => Some(Hold::TimeWait),
            _ => None,
        }
    }
}

/// `Event::result` of a [`crate::EventKind::ConnClose`]: the outcome in the low byte, the
/// [`Hold`] above it.
#[must_use]
pub const fn close_result(outcome: Outcome, hold: Hold) -> i32 {
    (outcome as i32) | ((hold as i32) << 8)
}

/// `Event::result` flag of a [`crate::EventKind::ConnClose`]: the kernel's table did not
/// hold the connection's state from its start (evicted from it, or opened before the daemon
/// started), so it was classified from its final state, and what was seen of it since its
/// state was made again.
pub const CLOSE_UNTRACKED: i32 = 1 << 16;

/// The outcome and hold of a [`crate::EventKind::ConnClose`] result (its
/// [`CLOSE_UNTRACKED`] flag aside).
#[must_use]
pub const fn split_close_result(result: i32) -> Option<(Outcome, Hold)> {
    let result = result & !CLOSE_UNTRACKED;
    match (
        Outcome::from_i32(result & 0xff),
        Hold::from_i32(result >> 8),
    ) {
        (Some(o), Some(h)) => Some((o, h)),
        _ => None,
    }
}

/// Whether a [`crate::EventKind::ConnClose`] result carries [`CLOSE_UNTRACKED`].
#[must_use]
pub const fn close_untracked(result: i32) -> bool {
    result & CLOSE_UNTRACKED != 0
}

/// What the kernel counts of its connection table, per CPU: the daemon derives evictions
/// from them (entries made beyond those removed and the table's size).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnTableCounts {
    /// Entries made for connections the table did not hold.
    pub inserted: u64,
    /// Entries removed at the connection's CLOSE.
    pub removed: u64,
}

// SAFETY: `#[repr(C)]`, only u64 fields, no padding: every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ConnTableCounts {}

/// Classifies a connection end at CLOSE: the first outcome that applies (`docs/design.md`),
/// and whether a reset that may still follow could change it.
#[inline(always)]
#[must_use]
pub const fn classify(c: &Closing) -> (Outcome, Hold) {
    use errno::{ECONNREFUSED, ECONNRESET, EHOSTUNREACH, ENETUNREACH, EPIPE, ETIMEDOUT};
    use tcp::{CLOSE_WAIT, CLOSING, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, LAST_ACK, SYN_SENT};
    if c.old == SYN_SENT {
        let o = if c.flags & CONN_RST_RECEIVED != 0 || c.err == ECONNREFUSED {
            Outcome::Refused
        } else if c.err == EHOSTUNREACH || c.err == ENETUNREACH {
            Outcome::Unreachable
        } else if c.err == ETIMEDOUT || (c.err == 0 && c.segs_out > 0) {
            // Timed out, or given up by the application while its SYN was out.
            Outcome::ConnectTimeout
        } else {
            // A local failure (no SYN ever sent: no free port, no buffer) or another error.
            Outcome::Error
        };
        return (o, Hold::None);
    }
    if c.flags & CONN_RST_SENT != 0 {
        return (Outcome::ResetSent, Hold::None);
    }
    let half_closed = matches!(
        c.old,
        FIN_WAIT1 | FIN_WAIT2 | CLOSING | LAST_ACK | CLOSE_WAIT
    );
    if c.flags & CONN_RST_RECEIVED != 0 || c.err == ECONNRESET || c.err == EPIPE {
        // The kernel also reports a reset on our socket when it aborts an orphan that
        // received data after close() (tcp_reset in tcp_rcv_state_process): then its own
        // reset follows.
        let hold = if half_closed && c.rcv_shutdown {
            Hold::Sync
        } else {
            Hold::None
        };
        return (Outcome::ResetReceived, hold);
    }
    if c.err == ETIMEDOUT {
        // Retransmissions timed out (tcp_write_err): no reset follows.
        return (Outcome::Timeout, Hold::None);
    }
    if c.err != 0 || c.flags & CONN_CALL_ERROR != 0 {
        return (Outcome::Error, Hold::Sync);
    }
    if c.old == ESTABLISHED || c.old == CLOSE_WAIT {
        // Straight to CLOSE with no reset received and no error: an abortive close by us
        // (unread data or SO_LINGER 0 in tcp_close, or tcp_disconnect), which sets CLOSE
        // before it sends the reset.
        return (Outcome::ResetSent, Hold::None);
    }
    if c.old == FIN_WAIT2 && c.dead && !c.done {
        // Our FIN was acked, the peer's has not come: the orphan became a timewait socket
        // in the FIN_WAIT2 substate (tcp_time_wait), or is aborted on data right now.
        return (Outcome::Normal, Hold::TimeWait);
    }
    (Outcome::Normal, Hold::Sync)
}

/// The connection tracepoints, by their slot in `CONN_RUNNING` and `NESTED_RUNS`. Each has
/// two programs: the first, and a twin that runs a hit only while the first is running on
/// the same CPU (a softirq interrupted it), when the kernel's recursion guard skips the
/// first's run for that hit (`observer-ebpf/src/nested.rs`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnHook {
    /// `inet_sock_set_state`.
    SetState = 0,
    /// `tcp_receive_reset`.
    ReceiveReset = 1,
    /// `tcp_send_reset`.
    SendReset = 2,
    /// `tcp_retransmit_skb`.
    Retransmit = 3,
}

impl ConnHook {
    /// All hooks, in slot order.
    pub const ALL: [ConnHook; 4] = [
        ConnHook::SetState,
        ConnHook::ReceiveReset,
        ConnHook::SendReset,
        ConnHook::Retransmit,
    ];
}
