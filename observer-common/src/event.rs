//! The one record the kernel sends to the daemon.

#[cfg(doc)]
use crate::{CALL_UNTIMED, FAULT_KERNEL, FAULT_MAJOR, Hold, Outcome, close_result};

/// One observation sent from the kernel to the daemon through a ring buffer.
///
/// 24 bytes, no padding. The meaning of `value` and `result` depends on `kind`:
///
/// | kind | value | result |
/// |---|---|---|
/// | [`EventKind::SendMsg`], [`EventKind::RecvMsg`] | call duration, ns | bytes (>= 0), `-errno`, or [`CALL_UNTIMED`] |
/// | [`EventKind::PageFault`] | fault duration, ns | [`FAULT_MAJOR`] / [`FAULT_KERNEL`] flags |
/// | [`EventKind::ConnClose`] | 0, or the connection's key when it is held | [`close_result`]: [`Outcome`] and [`Hold`] |
/// | [`EventKind::ConnReset`] | the key of the connection end it settles | the [`Outcome`] it settles it with |
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
    /// One TCP connection reached CLOSE; `result` is its [`Outcome`] and [`Hold`].
    ConnClose = 4,
    /// A reset sent (or received) by a connection end after its CLOSE was reported, which
    /// settles a held close (sent to the shared ring, cgroup 0).
    ConnReset = 5,
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
            5 => Some(Self::ConnReset),
            _ => None,
        }
    }
}
