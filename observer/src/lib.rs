//! socklat: per-cgroup TCP socket call latency, connection outcomes and page faults from
//! eBPF, served as Prometheus metrics.
//!
//! The pure parts (aggregation, cgroup paths, exposition, HTTP, CLI) build and test without
//! a kernel or privileges. The `ebpf` feature adds the loader, the ring collector and the
//! daemon entry point, and embeds the kernel object built by `cargo xtask build-ebpf`.

pub mod aggregate;
pub mod btf;
pub mod caps;
pub mod cgroups;
pub mod cli;
pub mod error;
pub mod kube;
pub mod metrics;
pub mod server;
pub mod top;

#[cfg(test)]
mod hostile;

#[cfg(feature = "ebpf")]
pub mod daemon;
#[cfg(feature = "ebpf")]
pub mod loader;
#[cfg(feature = "ebpf")]
pub mod rings;
