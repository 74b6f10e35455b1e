//! Socket calls: how a return value is counted, and the start of an in-flight call.

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

/// The per-thread tables of call starts (`SYSCALL_START`, `CALL_START`, `FAULT_START`), by
/// their index in `STARTS_EVICTED` and in the LRU object's record of the threads each has
/// held an entry for.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartTable {
    /// Entries of send/recv-family syscalls (tracepoint mode).
    Syscall = 0,
    /// Entries of `tcp_sendmsg`/`tcp_recvmsg` calls (fentry and kprobe modes).
    Call = 1,
    /// Entries of page fault handler calls (fentry and kprobe modes).
    Fault = 2,
}

impl StartTable {
    /// All tables, in index order.
    pub const ALL: [StartTable; 3] = [StartTable::Syscall, StartTable::Call, StartTable::Fault];

    /// The `table` label value.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            StartTable::Syscall => "syscall",
            StartTable::Call => "call",
            StartTable::Fault => "fault",
        }
    }
}

/// Thread ids the LRU object's record of threads covers (`PID_MAX_LIMIT` on 64-bit: every
/// thread id there can be), one bit each per table.
pub const THREAD_IDS: u32 = 1 << 22;
/// u64 words of that record per table.
pub const THREAD_SEEN_WORDS: u32 = THREAD_IDS / 64;
