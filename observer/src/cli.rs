//! The command line (docs/design.md). Every flag also reads `SOCKLAT_<FLAG>` from the
//! environment. Values are validated while parsing, so that a bad one gets one clear line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::histograms::Histograms;
use crate::probe_mode::ProbeMode;
use crate::ring_budget::RingMemory;
use crate::signal::Signal;
use crate::units::{parse_duration, parse_max_connections, parse_max_threads, parse_ring_size};

/// eBPF TCP socket latency, connection outcome and page fault observer, per cgroup.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "socklat",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Without a command, socklat runs the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to serve /metrics and /healthz on.
    #[arg(long, env = "SOCKLAT_LISTEN", default_value = "0.0.0.0:9640")]
    pub listen: SocketAddr,

    /// Buckets of the duration histograms: `classic` (94 `_bucket` series each), `native`
    /// (Prometheus native histograms, served in the protobuf format; no `_bucket` series
    /// in either format) or `both` (native buckets in protobuf, classic buckets in both).
    #[arg(long, env = "SOCKLAT_HISTOGRAMS", value_enum, default_value_t = Histograms::Both)]
    pub histograms: Histograms,

    /// Web configuration file in the Prometheus exporter-toolkit format: TLS
    /// (`tls_server_config`) and basic authentication (`basic_auth_users`, bcrypt hashes)
    /// of the listener; re-read when it or the files it names change.
    #[arg(long = "web.config.file", env = "SOCKLAT_WEB_CONFIG_FILE")]
    pub web_config_file: Option<PathBuf>,

    /// Also serve /healthz (only) on this address, plain HTTP without authentication: for
    /// kubelet probes when the main listener requires TLS client certificates.
    #[arg(long = "web.healthz-listen", env = "SOCKLAT_WEB_HEALTHZ_LISTEN")]
    pub healthz_listen: Option<SocketAddr>,

    /// Probe mode: `auto` picks the best that loads and attaches, per signal.
    #[arg(long, env = "SOCKLAT_PROBE_MODE", value_enum, default_value_t = ProbeMode::Auto)]
    pub probe_mode: ProbeMode,

    /// Window of the quantiles and the abnormal-connection ratio (e.g. 60s, 5m, 1500ms).
    #[arg(long, env = "SOCKLAT_WINDOW", default_value = "60s", value_parser = parse_duration)]
    pub window: Duration,

    /// Cgroups with their own ring and series; events of further cgroups are
    /// aggregated under cgroup="_other".
    #[arg(long, env = "SOCKLAT_MAX_CGROUPS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_cgroups: u32,

    /// Largest size of a per-cgroup ring buffer in bytes: a power of two and a multiple of
    /// the page size (suffixes K, M accepted: 256K). Rings start at 8 KiB and grow four-fold,
    /// up to this size, each time the kernel has to wake the daemon because one is a
    /// quarter full; the shared ring is four times this size (at least 1 MiB).
    #[arg(long, env = "SOCKLAT_RING_SIZE", default_value = "256K", value_parser = parse_ring_size)]
    pub ring_size: u32,

    /// Memory for all ring buffers together (the shared ring and every cgroup's ring):
    /// `auto` (the memory cgroup's limit minus what the loaded daemon uses and a reserve for
    /// its heap; without a limit, every cgroup's ring at --ring-size), or bytes (K, M, G).
    /// Rings grow only within it, the busiest first: a cgroup that cannot grow its ring
    /// takes room from cgroups less than half as busy, else its events go to the shared
    /// ring.
    #[arg(long, env = "SOCKLAT_RING_MEMORY", default_value = "auto",
          value_parser = RingMemory::parse)]
    pub ring_memory: RingMemory,

    /// Connections the kernel keeps state for at once (an LRU table of 88 bytes per entry);
    /// beyond it the least recently active lose theirs and are classified from their final
    /// state when they close (`socklat_tcp_connections_untracked_total`).
    #[arg(long, env = "SOCKLAT_MAX_CONNECTIONS", default_value = "65536",
          value_parser = parse_max_connections)]
    pub max_connections: u32,

    /// Threads the kernel keeps an in-flight call for at once, where per-thread state is
    /// not in task-local storage (kernels that cannot create it, e.g. 5.10): three LRU
    /// tables of 96 bytes per entry (syscall entries, socket call entries, page fault
    /// entries).
    #[arg(long, env = "SOCKLAT_MAX_THREADS", default_value = "65536",
          value_parser = parse_max_threads)]
    pub max_threads: u32,

    /// Signals to enable, comma separated: sendmsg, recvmsg, connections, pagefaults.
    #[arg(long, env = "SOCKLAT_SIGNALS", value_delimiter = ',',
          default_value = "sendmsg,recvmsg,connections,pagefaults", value_parser = Signal::parse)]
    pub signals: Vec<Signal>,

    /// How long a removed cgroup keeps its series (and the daemon its ring) after its last
    /// event; then they are dropped, so that churn does not fill `--max-cgroups`.
    #[arg(long, env = "SOCKLAT_CGROUP_TTL", default_value = "2m", value_parser = parse_duration)]
    pub cgroup_ttl: Duration,

    /// The cgroup v2 hierarchy to resolve cgroup ids in, instead of the one found in
    /// /proc/self/mountinfo. In a container, mount the node's /sys/fs/cgroup read-only
    /// (e.g. at /host/sys/fs/cgroup) and point this at it: the container's own
    /// /sys/fs/cgroup shows only its own cgroup.
    #[arg(long, env = "SOCKLAT_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,

    /// The node's kubelet log directory (its /var/log, holding pods/ and containers/),
    /// read to name the namespace, pod and container of Kubernetes cgroups. Unset: the
    /// labels pod and container carry the pod UID and container id from the cgroup path.
    #[arg(long, env = "SOCKLAT_KUBELET_LOG_DIR")]
    pub kubelet_log_dir: Option<PathBuf>,

    /// Load and attach everything, print what was chosen per signal and why, and exit
    /// (0 if every enabled signal attached).
    #[arg(long, env = "SOCKLAT_CHECK")]
    pub check: bool,

    /// Load the kernel object from this file instead of the embedded one (development).
    #[arg(long, env = "SOCKLAT_EBPF_OBJECT")]
    pub ebpf_object: Option<PathBuf>,
}

/// Commands besides the daemon.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// A live table of a running daemon's metrics, one row per cgroup or pod container:
    /// P50/P90/P99 of sendmsg and recvmsg, calls/s, abnormal connection ratio, faults/s,
    /// lost events. Needs no privileges; reads only the daemon's /metrics.
    Top(crate::top::TopArgs),
}

impl Cli {
    /// Whether a signal is enabled.
    #[must_use]
    pub fn enabled(&self, s: Signal) -> bool {
        self.signals.contains(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("socklat").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_design() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:9640");
        assert_eq!(c.probe_mode, ProbeMode::Auto);
        assert_eq!(c.window, Duration::from_mins(1));
        assert_eq!(c.max_cgroups, 1024);
        assert_eq!(c.ring_size, 256 * 1024);
        assert_eq!(c.signals.len(), 4);
        assert_eq!(c.cgroup_ttl, Duration::from_mins(2));
        assert!(!c.check);
        assert!(c.command.is_none());
        assert_eq!(c.cgroup_root, None);
        assert_eq!(c.kubelet_log_dir, None);
        assert_eq!(c.histograms, Histograms::Both);
        assert_eq!(c.web_config_file, None);
        assert_eq!(c.healthz_listen, None);
        assert_eq!(c.ring_memory, RingMemory::Auto);
        assert_eq!(c.max_connections, 65536);
        assert_eq!(c.max_threads, 65536);
    }

    #[test]
    fn table_sizes_and_budget_are_validated() {
        let c = parse(&[
            "--max-connections",
            "300000",
            "--max-threads",
            "8192",
            "--ring-memory",
            "96M",
        ])
        .unwrap();
        assert_eq!(c.max_connections, 300_000);
        assert_eq!(c.max_threads, 8192);
        assert_eq!(c.ring_memory, RingMemory::Bytes(96 << 20));
        for (flag, bad, want) in [
            ("--max-connections", "10", "from 1024 to 16777216"),
            ("--max-connections", "many", "is not a number"),
            ("--max-threads", "99999999", "from 1024 to 4194304"),
            ("--ring-memory", "lots", "auto or a size"),
        ] {
            let e = parse(&[flag, bad]).unwrap_err().to_string();
            assert!(e.contains(flag) && e.contains(want), "{e}");
        }
    }

    #[test]
    fn web_flags() {
        let c = parse(&[
            "--histograms",
            "native",
            "--web.config.file",
            "/etc/socklat/web.yml",
            "--web.healthz-listen",
            "0.0.0.0:9641",
        ])
        .unwrap();
        assert_eq!(c.histograms, Histograms::Native);
        assert_eq!(c.web_config_file, Some("/etc/socklat/web.yml".into()));
        assert_eq!(c.healthz_listen, Some("0.0.0.0:9641".parse().unwrap()));
        let e = parse(&["--histograms", "sparse"]).unwrap_err().to_string();
        assert!(e.contains("--histograms"), "{e}");
    }

    #[test]
    fn bad_input_is_refused_with_the_flag_named() {
        let e = parse(&["--probe-mode", "ebpf"]).unwrap_err().to_string();
        assert!(e.contains("--probe-mode"), "{e}");
        let e = parse(&["--signals", "sendmsg,bogus"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown signal 'bogus'"), "{e}");
        let e = parse(&["--max-cgroups", "0"]).unwrap_err().to_string();
        assert!(e.contains("--max-cgroups"), "{e}");
        let e = parse(&["--listen", "nope"]).unwrap_err().to_string();
        assert!(e.contains("--listen"), "{e}");
    }

    #[test]
    fn top_is_a_command_and_takes_no_daemon_flags() {
        let c = parse(&[
            "top",
            "--once",
            "--sort",
            "send-p99",
            "--url",
            "http://h:1/metrics",
        ])
        .unwrap();
        let Some(Command::Top(t)) = c.command else {
            panic!("not top");
        };
        assert!(t.once);
        assert_eq!(t.sort, crate::top::Column::SendP99);
        assert!(parse(&["--window", "5s", "top"]).is_err());
        assert!(parse(&["top", "--sort", "bogus"]).is_err());
    }

    #[test]
    fn signals_subset() {
        let c = parse(&["--signals", "recvmsg,pagefaults"]).unwrap();
        assert!(c.enabled(Signal::RecvMsg));
        assert!(!c.enabled(Signal::SendMsg));
    }
}
