//! The daemon's fatal errors, reported to the operator: each names what failed and what to
//! do. Each module has its own error type (`BtfError`, `MountError`, `AttachError`, ...);
//! this is the top level. [`crate::report`] prints an error with its sources.

/// A fatal daemon error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No cgroup v2 hierarchy to resolve cgroups in.
    #[error(transparent)]
    NoCgroup2(#[from] crate::cgroups::MountError),
    /// The metrics address cannot be bound.
    #[error(
        "cannot listen on {addr} (is another socklat or exporter using the port? choose another with --listen)"
    )]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The ring memory budget cannot be used.
    #[error(transparent)]
    Budget(#[from] crate::ring_budget::BudgetError),
    /// The web configuration file cannot be used.
    #[error(transparent)]
    WebConfig(#[from] crate::server::web_config::WebConfigError),
    /// The object could not be loaded (not a matter of privileges).
    #[cfg(feature = "ebpf")]
    #[error(transparent)]
    Load(crate::kernel::load::LoadError),
    /// The process lacks the privileges to use BPF.
    #[cfg(feature = "ebpf")]
    #[error(
        "permission denied using BPF: run as root or with CAP_BPF and CAP_PERFMON \
         (plus CAP_SYS_RESOURCE before Linux 5.11){}",
        hint.as_ref().map(|h| format!("; {h}")).unwrap_or_default()
    )]
    Privileges {
        /// What this process lacks, where it can tell.
        hint: Option<String>,
        #[source]
        source: crate::kernel::load::LoadError,
    },
    /// Signals that were required did not attach.
    #[error("required probes did not attach:\n  {}", .0.join("\n  "))]
    NotAttached(Vec<String>),
    /// A map the collector needs is missing from the object.
    #[error("map {0} is missing from the kernel object (was it built from this source?)")]
    MissingMap(&'static str),
    /// A map the collector needs has another shape.
    #[cfg(feature = "ebpf")]
    #[error("map {name} of the kernel object (was it built from this source?)")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// An operating system call of the collector or the server failed.
    #[error("{0}")]
    Io(&'static str, #[source] std::io::Error),
}
