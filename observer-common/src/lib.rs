//! Types and constants shared by the kernel programs (`observer-ebpf`) and the daemon
//! (`observer`). Everything that crosses the kernel boundary is defined here once,
//! `#[repr(C)]` and without implicit padding.
#![no_std]

/// One observation sent from the kernel to the daemon through a ring buffer.
///
/// 24 bytes, no padding. The meaning of `value` and `result` depends on `kind`:
///
/// | kind | value | result |
/// |---|---|---|
/// | [`EventKind::SendMsg`], [`EventKind::RecvMsg`] | call duration, ns | bytes (>= 0), `-errno`, or [`CALL_UNTIMED`] |
/// | [`EventKind::PageFault`] | fault duration, ns | [`FAULT_MAJOR`] / [`FAULT_KERNEL`] flags |
/// | [`EventKind::ConnClose`] | 0 | [`Outcome`] as `i32` |
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Event {
    /// cgroup v2 id (inode number of the cgroup directory) the event belongs to.
    pub cgroup_id: u64,
    /// Kind-specific value, see the table above.
    pub value: u64,
    /// One of [`EventKind`] as `u32`.
    pub kind: u32,
    /// Kind-specific result, see the table above.
    pub result: i32,
}

/// Size of one [`Event`] record in bytes.
pub const EVENT_SIZE: usize = core::mem::size_of::<Event>();
const _: () = assert!(EVENT_SIZE == 24);

impl Event {
    /// Decodes an event from a ring buffer record. Returns `None` when the record is not
    /// exactly one event long (a truncated or foreign record).
    #[must_use]
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != EVENT_SIZE {
            return None;
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_ne_bytes(b)
        };
        let u32_at = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[at..at + 4]);
            u32::from_ne_bytes(b)
        };
        Some(Self {
            cgroup_id: u64_at(0),
            value: u64_at(8),
            kind: u32_at(16),
            result: u32_at(20).cast_signed(),
        })
    }

    /// Encodes the event the way the kernel writes it (used by tests and benchmarks).
    #[must_use]
    pub fn to_bytes(&self) -> [u8; EVENT_SIZE] {
        let mut out = [0u8; EVENT_SIZE];
        out[0..8].copy_from_slice(&self.cgroup_id.to_ne_bytes());
        out[8..16].copy_from_slice(&self.value.to_ne_bytes());
        out[16..20].copy_from_slice(&self.kind.to_ne_bytes());
        out[20..24].copy_from_slice(&self.result.to_ne_bytes());
        out
    }
}

/// What an [`Event`] reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// One `tcp_sendmsg` call.
    SendMsg = 1,
    /// One `tcp_recvmsg` call.
    RecvMsg = 2,
    /// One page fault with its duration (fentry/kprobe modes only).
    PageFault = 3,
    /// One TCP connection reached CLOSE; `result` is its [`Outcome`].
    ConnClose = 4,
}

impl EventKind {
    /// Maps the wire value back to the kind.
    #[must_use]
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::SendMsg),
            2 => Some(Self::RecvMsg),
            3 => Some(Self::PageFault),
            4 => Some(Self::ConnClose),
            _ => None,
        }
    }
}

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

/// `Event::result` flag of a page fault event: the fault was major (needed I/O).
pub const FAULT_MAJOR: i32 = 1;
/// `Event::result` flag of a page fault event: the fault happened in kernel mode.
pub const FAULT_KERNEL: i32 = 2;

/// `EAGAIN` on Linux; a call returning `-EAGAIN` is counted, not timed.
pub const EAGAIN: i32 = 11;
/// `EINTR` on Linux.
pub const EINTR: i32 = 4;
/// `ERESTARTSYS` .. `ERESTART_RESTARTBLOCK` (include/linux/errno.h): kernel-internal codes of
/// a call interrupted by a signal, which the kernel restarts or turns into `EINTR`.
pub const ERESTART: core::ops::RangeInclusive<i32> = 512..=516;

/// `Event::result` of a socket call that reached a TCP socket but could not be timed (no
/// entry of the thread's current syscall was recorded): not a byte count, not an errno.
pub const CALL_UNTIMED: i32 = i32::MIN;

/// How a socket call's return value is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallResult {
    /// A byte count: timed.
    Ok,
    /// `-EAGAIN`: counted, not timed.
    Again,
    /// Interrupted by a signal (`-EINTR`, `-ERESTARTSYS` ..): counted, not timed, and not an
    /// error of the connection.
    Interrupted,
    /// Reached a TCP socket but could not be timed.
    Untimed,
    /// Any other error: counted, and marks the connection abnormal.
    Error,
}

impl CallResult {
    /// Classifies a socket call's return value (or [`CALL_UNTIMED`]).
    #[expect(
        clippy::inline_always,
        reason = "used by the kernel programs, which inline every helper"
    )]
    #[inline(always)]
    #[must_use]
    pub const fn of(ret: i32) -> CallResult {
        if ret >= 0 {
            CallResult::Ok
        } else if ret == CALL_UNTIMED {
            CallResult::Untimed
        } else if ret == -EAGAIN {
            CallResult::Again
        } else if ret == -EINTR || (ret <= -*ERESTART.start() && ret >= -*ERESTART.end()) {
            CallResult::Interrupted
        } else {
            CallResult::Error
        }
    }

    /// Whether a call returning `ret` is an error of its connection.
    #[expect(
        clippy::inline_always,
        reason = "used by the kernel programs, which inline every helper"
    )]
    #[inline(always)]
    #[must_use]
    pub const fn marks_connection(ret: i32) -> bool {
        matches!(CallResult::of(ret), CallResult::Error)
    }
}

/// Per-cgroup page fault counters kept in the kernel (a per-CPU hash keyed by cgroup id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FaultCounts {
    /// Faults taken in user mode.
    pub user: u64,
    /// Faults taken in kernel mode.
    pub kernel: u64,
    /// Major faults (fentry/kprobe modes only).
    pub major: u64,
    /// Minor faults (fentry/kprobe modes only).
    pub minor: u64,
}

impl FaultCounts {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &FaultCounts) {
        self.user += other.user;
        self.kernel += other.kernel;
        self.major += other.major;
        self.minor += other.minor;
    }

    /// The larger of each count of `self` and `other`.
    #[must_use]
    pub fn max(self, other: FaultCounts) -> FaultCounts {
        FaultCounts {
            user: self.user.max(other.user),
            kernel: self.kernel.max(other.kernel),
            major: self.major.max(other.major),
            minor: self.minor.max(other.minor),
        }
    }
}

// SAFETY: `#[repr(C)]`, only u64 fields, no padding: every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FaultCounts {}

/// Per-CPU cache of the page fault counts of the cgroup that faulted last on this CPU:
/// counting into it costs an array access instead of a hash lookup; it is added to
/// `FAULT_COUNTS` when another cgroup faults on the CPU. The daemon reads both.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FaultCache {
    /// The cgroup the counts belong to (0: none yet).
    pub cgroup_id: u64,
    /// Counts not yet added to `FAULT_COUNTS`.
    pub counts: FaultCounts,
}

// SAFETY: `#[repr(C)]`, only u64 fields, no padding: every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FaultCache {}

/// Start of an in-flight call, keyed by `pid_tgid` in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CallStart {
    /// `bpf_ktime_get_ns()` at the call's entry; 0 once used (tracepoint mode).
    pub ts: u64,
    /// The socket of the call (fentry/kprobe modes), to mark connections on errors; the
    /// faulting address of a page fault.
    pub sk: u64,
    /// The syscall whose entry `ts` is (tracepoint mode); flags of a page fault.
    pub nr: i64,
}

/// Names of maps, programs and globals, shared so that neither side spells them twice.
/// (Program names are the kernel programs' function names; a unit test of the daemon checks
/// that its program table and the built object agree.)
pub mod names {
    /// Hash of maps: cgroup id -> that cgroup's ring buffer.
    pub const CGROUP_RINGS: &str = "CGROUP_RINGS";
    /// Ring buffer for cgroups without their own ring (and the daemon's news of new cgroups).
    pub const SHARED_RING: &str = "SHARED_RING";
    /// Per-CPU hash: cgroup id -> events a full ring could not take.
    pub const LOST_EVENTS: &str = "LOST_EVENTS";
    /// Per-CPU hash: cgroup id -> [`super::FaultCounts`].
    pub const FAULT_COUNTS: &str = "FAULT_COUNTS";
    /// Per-CPU array of one u64: connections that reached CLOSE with no tracked state.
    pub const CONN_UNTRACKED: &str = "CONN_UNTRACKED";
    /// Per-CPU array of one [`super::FaultCache`].
    pub const FAULT_CACHE: &str = "FAULT_CACHE";
    /// Per-CPU hash: cgroup id -> retransmitted segments.
    pub const RETRANSMITS: &str = "RETRANSMITS";

    /// Global: 1 when the sendmsg signal is enabled.
    pub const ENABLE_SEND: &str = "ENABLE_SEND";
    /// Global: 1 when the recvmsg signal is enabled.
    pub const ENABLE_RECV: &str = "ENABLE_RECV";
    /// Global: 1 when the connections signal is enabled (marks call errors on connections).
    pub const ENABLE_CONN: &str = "ENABLE_CONN";
    /// Global: offset of `sock_common.skc_family` (kernel BTF).
    pub const OFF_SK_FAMILY: &str = "OFF_SK_FAMILY";
    /// Global: offset of the first of `sock.sk_type` and `sk_protocol`, adjacent u16s
    /// (their order differs between kernels).
    pub const OFF_SK_TYPE_PROTOCOL: &str = "OFF_SK_TYPE_PROTOCOL";
    /// Global: the 4 bytes at `OFF_SK_TYPE_PROTOCOL` of a `SOCK_STREAM` socket of protocol
    /// TCP, as a little-endian u32.
    pub const SK_TCP_STREAM: &str = "SK_TCP_STREAM";
    /// Global: offset of `sock.sk_err` (kernel BTF).
    pub const OFF_SK_ERR: &str = "OFF_SK_ERR";
    /// Global: offset of the cgroup pointer in `sock.sk_cgrp_data` (kernel BTF).
    pub const OFF_SK_CGRP: &str = "OFF_SK_CGRP";
    /// Global: 1 where `sock_cgroup_data` is a tagged word (before Linux 5.15).
    pub const CGRP_TAGGED: &str = "CGRP_TAGGED";
    /// Global: offset of `cgroup.kn` (kernel BTF).
    pub const OFF_CGROUP_KN: &str = "OFF_CGROUP_KN";
    /// Global: offset of `kernfs_node.id` (kernel BTF).
    pub const OFF_KN_ID: &str = "OFF_KN_ID";

    /// Program names (the functions of `observer-ebpf`).
    pub mod programs {
        /// Raw `sys_enter`: entry of the send/recv-family syscalls (tracepoint mode).
        pub const SYS_ENTER: &str = "socklat_sys_enter";
        /// Raw tracepoint `sock_send_length` (tracepoint mode, BTF offsets).
        pub const RAW_SOCK_SEND_LENGTH: &str = "socklat_raw_sock_send_length";
        /// Raw tracepoint `sock_recv_length` (tracepoint mode, BTF offsets).
        pub const RAW_SOCK_RECV_LENGTH: &str = "socklat_raw_sock_recv_length";
        /// Classic tracepoint `sock:sock_send_length` (tracepoint mode without BTF).
        pub const SOCK_SEND_LENGTH: &str = "socklat_sock_send_length";
        /// Classic tracepoint `sock:sock_recv_length` (tracepoint mode without BTF).
        pub const SOCK_RECV_LENGTH: &str = "socklat_sock_recv_length";
        /// fentry `tcp_sendmsg`.
        pub const FENTRY_TCP_SENDMSG: &str = "socklat_fentry_tcp_sendmsg";
        /// fexit `tcp_sendmsg`.
        pub const FEXIT_TCP_SENDMSG: &str = "socklat_fexit_tcp_sendmsg";
        /// fentry `tcp_recvmsg`.
        pub const FENTRY_TCP_RECVMSG: &str = "socklat_fentry_tcp_recvmsg";
        /// fexit `tcp_recvmsg` with 4 parameters (Linux 7.x).
        pub const FEXIT_TCP_RECVMSG4: &str = "socklat_fexit_tcp_recvmsg4";
        /// fexit `tcp_recvmsg` with 5 parameters (Linux 5.19 .. 6.x).
        pub const FEXIT_TCP_RECVMSG5: &str = "socklat_fexit_tcp_recvmsg5";
        /// fexit `tcp_recvmsg` with 6 parameters (before Linux 5.19).
        pub const FEXIT_TCP_RECVMSG6: &str = "socklat_fexit_tcp_recvmsg6";
        /// kprobe `tcp_sendmsg`.
        pub const KPROBE_TCP_SENDMSG: &str = "socklat_kprobe_tcp_sendmsg";
        /// kretprobe `tcp_sendmsg`.
        pub const KRETPROBE_TCP_SENDMSG: &str = "socklat_kretprobe_tcp_sendmsg";
        /// kprobe `tcp_recvmsg`.
        pub const KPROBE_TCP_RECVMSG: &str = "socklat_kprobe_tcp_recvmsg";
        /// kretprobe `tcp_recvmsg`.
        pub const KRETPROBE_TCP_RECVMSG: &str = "socklat_kretprobe_tcp_recvmsg";
        /// Raw tracepoint `inet_sock_set_state`.
        pub const INET_SOCK_SET_STATE: &str = "socklat_inet_sock_set_state";
        /// Raw tracepoint `tcp_receive_reset`.
        pub const TCP_RECEIVE_RESET: &str = "socklat_tcp_receive_reset";
        /// Raw tracepoint `tcp_send_reset`.
        pub const TCP_SEND_RESET: &str = "socklat_tcp_send_reset";
        /// Raw tracepoint `tcp_retransmit_skb`.
        pub const TCP_RETRANSMIT_SKB: &str = "socklat_tcp_retransmit_skb";
        /// Raw tracepoint `page_fault_user` (x86).
        pub const PAGE_FAULT_USER: &str = "socklat_page_fault_user";
        /// Raw tracepoint `page_fault_kernel` (x86).
        pub const PAGE_FAULT_KERNEL: &str = "socklat_page_fault_kernel";
        /// fentry `handle_mm_fault`.
        pub const FENTRY_HANDLE_MM_FAULT: &str = "socklat_fentry_handle_mm_fault";
        /// fexit `handle_mm_fault`.
        pub const FEXIT_HANDLE_MM_FAULT: &str = "socklat_fexit_handle_mm_fault";
        /// kprobe `handle_mm_fault`.
        pub const KPROBE_HANDLE_MM_FAULT: &str = "socklat_kprobe_handle_mm_fault";
        /// kretprobe `handle_mm_fault`.
        pub const KRETPROBE_HANDLE_MM_FAULT: &str = "socklat_kretprobe_handle_mm_fault";
    }
}

/// Compile-time size of a per-cgroup ring in the object; the daemon may create rings of
/// another size (`--ring-size`).
pub const DEFAULT_RING_SIZE: usize = 256 * 1024;
/// Compile-time capacity of the outer ring map; the daemon sets it from `--max-cgroups`.
pub const DEFAULT_MAX_CGROUPS: usize = 1024;
/// Compile-time capacity of the per-cgroup counter maps.
pub const COUNTER_MAP_ENTRIES: usize = 65536;
/// Key under which losses that could not be attributed to their cgroup are counted.
pub const UNATTRIBUTED: u64 = u64::MAX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_roundtrip() {
        let e = Event {
            cgroup_id: 0x1122_3344_5566_7788,
            value: 42,
            kind: EventKind::RecvMsg as u32,
            result: -EAGAIN,
        };
        assert_eq!(Event::from_bytes(&e.to_bytes()), Some(e));
    }

    #[test]
    fn truncated_or_oversized_records_are_refused() {
        let bytes = Event::default().to_bytes();
        assert_eq!(Event::from_bytes(&bytes[..EVENT_SIZE - 1]), None);
        let mut long = [0u8; EVENT_SIZE + 8];
        long[..EVENT_SIZE].copy_from_slice(&bytes);
        assert_eq!(Event::from_bytes(&long), None);
        assert_eq!(Event::from_bytes(&[]), None);
    }

    #[test]
    fn call_results_are_classified() {
        assert_eq!(CallResult::of(0), CallResult::Ok);
        assert_eq!(CallResult::of(1 << 20), CallResult::Ok);
        assert_eq!(CallResult::of(-EAGAIN), CallResult::Again);
        for ret in [-4, -512, -513, -514, -515, -516] {
            assert_eq!(CallResult::of(ret), CallResult::Interrupted, "{ret}");
            assert!(!CallResult::marks_connection(ret));
        }
        for ret in [-104, -32, -511, -517, -1] {
            assert_eq!(CallResult::of(ret), CallResult::Error, "{ret}");
            assert!(CallResult::marks_connection(ret));
        }
        assert_eq!(CallResult::of(CALL_UNTIMED), CallResult::Untimed);
        assert!(!CallResult::marks_connection(CALL_UNTIMED));
    }

    #[test]
    fn outcomes_round_trip() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::from_i32(o as i32), Some(o));
        }
    }

    #[test]
    fn unknown_kinds_are_not_mapped() {
        assert_eq!(EventKind::from_u32(0), None);
        assert_eq!(EventKind::from_u32(99), None);
        assert_eq!(EventKind::from_u32(2), Some(EventKind::RecvMsg));
    }
}
