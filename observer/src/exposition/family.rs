//! Every metric the daemon exports: name, help text and type, spelled once here, and the
//! label values of their series.

/// A metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    // Per-cgroup families (labels cgroup, namespace, pod, container), in exposition order.
    CallDuration,
    CallLatency,
    Calls,
    Faults,
    FaultDuration,
    FaultLatency,
    ConnClosed,
    AbnormalRatio,
    Retransmits,
    Untracked,
    Lost,
    // Global families, in exposition order.
    Events,
    Undecodable,
    RingCreateFailures,
    RingMemory,
    RingBudget,
    RingGrowthsDenied,
    ConnEvicted,
    StartsEvicted,
    TableCapacity,
    ProbeMisses,
    ProbeInfo,
    CgroupsTracked,
    BuildInfo,
}

/// The type of a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

impl Kind {
    /// The `# TYPE` word.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
        }
    }
}

/// The `call` label values, in `CgroupSnapshot::calls` order.
pub const CALLS: [&str; 2] = ["sendmsg", "recvmsg"];
/// The `fault` label values of the fault duration series, in `fault_durations` order.
pub const FAULT_KINDS: [&str; 2] = ["minor", "major"];
/// The `mode` label values of `socklat_page_faults_total`.
pub const FAULT_MODES: [&str; 2] = ["user", "kernel"];

impl Family {
    /// The per-cgroup families, in exposition order.
    pub const PER_CGROUP: [Family; 11] = [
        Family::CallDuration,
        Family::CallLatency,
        Family::Calls,
        Family::Faults,
        Family::FaultDuration,
        Family::FaultLatency,
        Family::ConnClosed,
        Family::AbnormalRatio,
        Family::Retransmits,
        Family::Untracked,
        Family::Lost,
    ];

    /// The global (daemon-wide) families, in exposition order.
    pub const GLOBAL: [Family; 13] = [
        Family::Events,
        Family::Undecodable,
        Family::RingCreateFailures,
        Family::RingMemory,
        Family::RingBudget,
        Family::RingGrowthsDenied,
        Family::ConnEvicted,
        Family::StartsEvicted,
        Family::TableCapacity,
        Family::ProbeMisses,
        Family::ProbeInfo,
        Family::CgroupsTracked,
        Family::BuildInfo,
    ];

    /// The metric name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Family::CallDuration => "socklat_tcp_call_duration_seconds",
            Family::CallLatency => "socklat_tcp_call_latency_seconds",
            Family::Calls => "socklat_tcp_calls_total",
            Family::Faults => "socklat_page_faults_total",
            Family::FaultDuration => "socklat_page_fault_duration_seconds",
            Family::FaultLatency => "socklat_page_fault_latency_seconds",
            Family::ConnClosed => "socklat_tcp_connections_closed_total",
            Family::AbnormalRatio => "socklat_tcp_abnormal_connection_ratio",
            Family::Retransmits => "socklat_tcp_retransmits_total",
            Family::Lost => "socklat_ringbuf_lost_events_total",
            Family::Events => "socklat_events_total",
            Family::Undecodable => "socklat_events_undecodable_total",
            Family::RingCreateFailures => "socklat_ring_create_failures_total",
            Family::RingMemory => "socklat_ring_memory_bytes",
            Family::RingBudget => "socklat_ring_memory_budget_bytes",
            Family::RingGrowthsDenied => "socklat_ring_growths_denied_total",
            Family::ConnEvicted => "socklat_tcp_connections_evicted_total",
            Family::StartsEvicted => "socklat_call_starts_evicted_total",
            Family::TableCapacity => "socklat_kernel_table_capacity",
            Family::Untracked => "socklat_tcp_connections_untracked_total",
            Family::ProbeMisses => "socklat_probe_misses_total",
            Family::ProbeInfo => "socklat_probe_info",
            Family::CgroupsTracked => "socklat_cgroups_tracked",
            Family::BuildInfo => "socklat_build_info",
        }
    }

    /// The help text.
    #[must_use]
    pub const fn help(self) -> &'static str {
        match self {
            Family::CallDuration => {
                "Duration of tcp_sendmsg/tcp_recvmsg calls that returned a byte count, since start."
            }
            Family::CallLatency => {
                "Quantiles of tcp_sendmsg/tcp_recvmsg call durations over the window (HdrHistogram)."
            }
            Family::Calls => {
                "Observed tcp_sendmsg/tcp_recvmsg calls by result (ok, eagain, interrupted, untimed, error)."
            }
            Family::Faults => "Page faults by mode (user, kernel).",
            Family::FaultDuration => {
                "Duration of page faults (handle_mm_fault) by fault (minor, major), where the probe mode gives it."
            }
            Family::FaultLatency => {
                "Quantiles of page fault durations over the window, where the probe mode gives them."
            }
            Family::ConnClosed => "TCP connections that reached CLOSE, by outcome.",
            Family::AbnormalRatio => {
                "Abnormal closed TCP connections / all closed, over the window."
            }
            Family::Retransmits => "Retransmitted TCP segments.",
            Family::Lost => "Events a full ring buffer could not take, per cgroup.",
            Family::Events => "Events received by the daemon from the kernel, per signal.",
            Family::Undecodable => {
                "Ring records the daemon could not decode (not one event of a known kind: a kernel object from another build?)."
            }
            Family::RingCreateFailures => {
                "Rings the daemon could not create for an admitted cgroup; that cgroup's events stay on the shared ring."
            }
            Family::Untracked => {
                "Connections that reached CLOSE with no state in the kernel's table (evicted from the \
                 full table, or opened before the daemon started), classified from their final state only."
            }
            Family::RingMemory => {
                "Bytes of ring buffers the daemon holds now (the shared ring, every cgroup's ring and \
                 rings being replaced), as charged to its memory cgroup."
            }
            Family::RingBudget => {
                "Ring memory budget (--ring-memory): rings are made and grown only within it."
            }
            Family::RingGrowthsDenied => {
                "Times the budget kept a ring from growing (or a cgroup from getting its first ring) and \
                 no colder ring could make room, at most once per cgroup per second; its events go to the \
                 shared ring meanwhile."
            }
            Family::ConnEvicted => {
                "Connection states the kernel's full table (--max-connections) evicted, at least: entries \
                 made minus entries removed at CLOSE beyond the table's size, at its highest so far."
            }
            Family::StartsEvicted => {
                "In-flight call starts the per-thread LRU table (--max-threads) evicted before their call \
                 returned (the call counts untimed), by table; 0 with task-local storage."
            }
            Family::TableCapacity => {
                "Entries the kernel's tables hold: connections (--max-connections), threads \
                 (--max-threads; not with task-local storage)."
            }
            Family::ProbeMisses => {
                "Probe runs the kernel skipped instead of running (bpf_prog_info.recursion_misses, e.g. \
                 a fentry program preempted on the CPU), less those a twin program ran instead; the calls \
                 they would have seen are not counted."
            }
            Family::ProbeInfo => "Probe mode in use per signal (1).",
            Family::CgroupsTracked => "Cgroups with their own series now.",
            Family::BuildInfo => "Build of the daemon (1).",
        }
    }

    /// The type.
    #[must_use]
    pub const fn kind(self) -> Kind {
        match self {
            Family::CallDuration | Family::FaultDuration => Kind::Histogram,
            Family::CallLatency | Family::FaultLatency => Kind::Summary,
            Family::AbnormalRatio
            | Family::ProbeInfo
            | Family::CgroupsTracked
            | Family::BuildInfo
            | Family::RingMemory
            | Family::RingBudget
            | Family::TableCapacity => Kind::Gauge,
            Family::Calls
            | Family::Faults
            | Family::Lost
            | Family::ConnClosed
            | Family::Retransmits
            | Family::Events
            | Family::Undecodable
            | Family::RingCreateFailures
            | Family::Untracked
            | Family::RingGrowthsDenied
            | Family::ConnEvicted
            | Family::StartsEvicted
            | Family::ProbeMisses => Kind::Counter,
        }
    }
}
