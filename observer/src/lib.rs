//! socklat: per-cgroup TCP socket call latency, connection outcomes and page faults from
//! eBPF, served as Prometheus metrics. `docs/architecture.md` walks the data path from the
//! kernel to `/metrics`; `docs/design.md` is the external contract.
//!
//! The pure parts (aggregation, cgroup paths, exposition, HTTP, command line) build and
//! test without a kernel or privileges. The `ebpf` feature adds the loader, the ring
//! collector and the daemon entry point, and embeds the kernel object built by
//! `cargo xtask build-ebpf`.

// Shared types and value parsers.
pub mod error;
pub mod histograms;
pub mod http_client;
pub mod idmap;
pub mod labels;
pub mod probe_mode;
pub mod report;
pub mod signal;
pub mod units;

// The pure parts.
pub mod aggregate;
pub mod cgroups;
pub mod cli;
pub mod exposition;
pub mod kube;
pub mod ring_budget;
pub mod ring_plan;
pub mod server;
pub mod top;

// The kernel side (BTF, program table and capabilities build without the feature).
pub mod kernel;

#[cfg(feature = "ebpf")]
pub mod collector;
#[cfg(feature = "ebpf")]
pub mod daemon;

#[doc(hidden)]
pub mod testutil;
