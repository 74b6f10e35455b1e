//! Page faults: the per-cgroup counters the kernel keeps, and the flags of a fault event.

/// `Event::result` flag of a page fault event: the fault was major (needed I/O).
pub const FAULT_MAJOR: i32 = 1;
/// `Event::result` flag of a page fault event: the fault happened in kernel mode.
pub const FAULT_KERNEL: i32 = 2;

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

/// One CPU's value in `FAULT_COUNTS` (a per-CPU hash keyed by cgroup id): the counts, and
/// which of this CPU's [`FaultCache`] flushes last added to them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FaultSlot {
    pub counts: FaultCounts,
    /// [`FaultCache::flushes`] of the flush that last added to these counts (0: none).
    pub flush: u64,
}

// SAFETY: `#[repr(C)]`, only u64 fields, no padding: every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FaultSlot {}

/// Per-CPU cache of the page fault counts of the cgroup that faulted last on this CPU:
/// counting into it costs an array access instead of a hash lookup; it is added to
/// `FAULT_COUNTS` (a flush) when another cgroup faults on the CPU. The daemon reads the
/// caches before and after the hash, and the flush numbers tell it whether a flush that
/// happened meanwhile is in what it read of the hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FaultCache {
    /// The cgroup the counts belong to (0: none yet).
    pub cgroup_id: u64,
    /// Counts not yet added to `FAULT_COUNTS`.
    pub counts: FaultCounts,
    /// Flushes done on this CPU so far; a flush stamps the [`FaultSlot`] it adds to with
    /// this number (after counting itself).
    pub flushes: u64,
}

// SAFETY: `#[repr(C)]`, only u64 fields, no padding: every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FaultCache {}
