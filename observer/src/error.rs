//! Errors the daemon reports to the operator: each names what failed and what to do.

use std::path::PathBuf;

/// A fatal daemon error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel object given with --ebpf-object cannot be read.
    #[error("cannot read the kernel object {path}: {source}")]
    Object {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Creating maps or loading the object failed.
    #[error("cannot load the kernel object: {0}")]
    Load(String),
    /// The process lacks the privileges to use BPF.
    #[error(
        "permission denied using BPF: run as root or with CAP_BPF and CAP_PERFMON \
         (plus CAP_SYS_RESOURCE before Linux 5.11); detail: {0}"
    )]
    Privileges(String),
    /// A map the daemon needs is not in the object.
    #[error("map {0} is missing from the kernel object (was it built from this source?)")]
    MissingMap(&'static str),
    /// A map has an unexpected shape.
    #[error("map {0}: {1}")]
    Map(&'static str, String),
    /// An operating system call failed.
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    /// The metrics address cannot be bound.
    #[error(
        "cannot listen on {addr}: {source} (is another socklat or exporter using the port? choose another with --listen)"
    )]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// No cgroup v2 hierarchy.
    #[error("{0}")]
    NoCgroup2(String),
    /// Signals that were required did not attach.
    #[error("{0}")]
    NotAttached(String),
}
