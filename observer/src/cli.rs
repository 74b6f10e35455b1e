//! The command line of design.md. Every flag also reads `SOCKLAT_<FLAG>` from the
//! environment. Values are validated here, so that a bad one gets one clear line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::aggregate::Signal;

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

    /// Probe mode: `auto` picks the best that loads and attaches, per signal.
    #[arg(long, env = "SOCKLAT_PROBE_MODE", value_enum, default_value_t = ProbeMode::Auto)]
    pub probe_mode: ProbeMode,

    /// Window of the quantiles and the abnormal-connection ratio (e.g. 60s, 5m, 500ms).
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

    /// Signals to enable, comma separated: sendmsg, recvmsg, connections, pagefaults.
    #[arg(long, env = "SOCKLAT_SIGNALS", value_delimiter = ',',
          default_value = "sendmsg,recvmsg,connections,pagefaults", value_parser = parse_signal)]
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

/// How the kernel side is attached.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeMode {
    /// The best mode that loads and attaches, per signal: fentry, then kprobe, then tracepoint.
    Auto,
    /// fentry/fexit (BTF trampolines).
    Fentry,
    /// kprobe/kretprobe.
    Kprobe,
    /// Tracepoints only (Linux >= 6.3 for the socket call signals).
    Tracepoint,
}

impl ProbeMode {
    /// The mode's name as exported in `socklat_probe_info{mode}`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            ProbeMode::Auto => "auto",
            ProbeMode::Fentry => "fentry",
            ProbeMode::Kprobe => "kprobe",
            ProbeMode::Tracepoint => "tracepoint",
        }
    }
}

/// Parses `60s`, `500ms`, `5m`, `1h`, `2s500ms` is not accepted: one number, one unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("'{s}' has no unit: write e.g. 60s, 500ms, 5m or 1h"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' does not start with a whole number (e.g. 60s)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("unknown unit '{unit}' in '{s}': use ms, s, m or h")),
    };
    if d < Duration::from_secs(1) || d > Duration::from_hours(24) {
        return Err(format!(
            "'{s}' is out of range: the window must be from 1s to 24h"
        ));
    }
    Ok(d)
}

/// Parses a ring size: bytes, or with a K or M suffix (KiB, MiB).
pub fn parse_ring_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("KiB").or_else(|| t.strip_suffix('K')) {
        (n, 1024u64)
    } else if let Some(n) = t.strip_suffix("MiB").or_else(|| t.strip_suffix('M')) {
        (n, 1024 * 1024)
    } else {
        (t, 1)
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size in bytes (e.g. 262144 or 256K)"))?;
    let bytes = n.saturating_mul(mult);
    let page = page_size();
    if !bytes.is_power_of_two() || bytes % page != 0 {
        return Err(format!(
            "{bytes} bytes is not a power of two and a multiple of the page size ({page}): try 256K"
        ));
    }
    if bytes > 1 << 30 {
        return Err(format!(
            "{bytes} bytes is more than the 1 GiB a ring may have"
        ));
    }
    u32::try_from(bytes).map_err(|_| format!("{bytes} bytes is too large"))
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).unwrap_or(4096)
}

/// Parses one signal name.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    Signal::ALL
        .into_iter()
        .find(|sig| sig.name() == s.trim())
        .ok_or_else(|| {
            format!("unknown signal '{s}': use sendmsg, recvmsg, connections, pagefaults")
        })
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
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("500ms"),
            Err("'500ms' is out of range: the window must be from 1s to 24h".into())
        );
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_mins(5)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_hours(1)));
        assert!(parse_duration("60").unwrap_err().contains("no unit"));
        assert!(parse_duration("60x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_size("256K"), Ok(262_144));
        assert_eq!(parse_ring_size("1M"), Ok(1 << 20));
        assert_eq!(parse_ring_size("65536"), Ok(65536));
        assert!(
            parse_ring_size("100000")
                .unwrap_err()
                .contains("power of two")
        );
        assert!(parse_ring_size("1024").unwrap_err().contains("page size"));
        assert!(parse_ring_size("4G").is_err());
        assert!(parse_ring_size("2048M").unwrap_err().contains("1 GiB"));
        assert!(parse_ring_size("-1").is_err());
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
