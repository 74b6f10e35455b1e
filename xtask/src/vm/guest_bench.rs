//! `xtask guest-bench` (internal): the guest's half of `cargo xtask vm-bench`. Inside a
//! kernel-matrix guest it runs the pinned ping-pong with no observer and under socklat in
//! each probe mode, round by round, reads the kernel's own accounting of socklat's programs
//! around each run, and prints one `@@bench` line per run on the console for the host.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use observer::kernel::programs::{self, KernelShape};
use observer::probe_mode::ProbeMode;
use observer::signal::Signal;

use crate::bench::WARM_UP_SECONDS;
use crate::load::bpfstats;
use crate::load::observers::Socklat;
use crate::load::traffic::pinned_rr_load;

/// Options of the guest's half.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// The daemon binary.
    #[arg(long)]
    pub daemon: PathBuf,
    /// Probe modes to measure.
    #[arg(long, value_delimiter = ',')]
    pub modes: Vec<String>,
    /// Rounds of interleaved runs.
    #[arg(long)]
    pub rounds: usize,
    /// Seconds each run lasts.
    #[arg(long)]
    pub seconds: u64,
    /// Variants of the kernel object to measure too, as NAME=PATH, in `variant_mode`.
    #[arg(long = "variant")]
    pub variants: Vec<String>,
    /// The probe mode the variants run in.
    #[arg(long, default_value = "fentry")]
    pub variant_mode: String,
}

/// The line the host reads for one run: round, condition (`none` or a mode), round trips
/// per second, and kernel ns per observed socket call (0 for `none`).
#[must_use]
pub fn line(round: usize, condition: &str, rate: f64, ns_per_call: f64) -> String {
    format!("@@bench {round} {condition} {rate:.0} {ns_per_call:.0}")
}

/// The names (as the kernel keeps them: 15 bytes) of the programs that run once per
/// observed socket call in `mode` (where a call ends), on any kernel shape.
fn exit_programs(mode: ProbeMode) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for signal in [Signal::SendMsg, Signal::RecvMsg] {
        for recvmsg_params in [Some(4), Some(5), Some(6)] {
            for btf_sock_length in [false, true] {
                for tcp_sendpage in [false, true] {
                    let shape = KernelShape {
                        recvmsg_params,
                        btf_sock_length,
                        tcp_sendpage,
                    };
                    for p in programs::for_mode(signal, mode, shape) {
                        if p.ends_a_call() {
                            names.insert(p.name.chars().take(15).collect());
                        }
                    }
                }
            }
        }
    }
    names
}

/// The probe mode named `m` (not auto).
fn mode_named(m: &str) -> Result<ProbeMode> {
    ProbeMode::Auto
        .candidates()
        .iter()
        .copied()
        .find(|p| p.name() == m)
        .ok_or_else(|| anyhow::anyhow!("unknown probe mode {m}"))
}

/// Whether `mode` attaches the socket call signals here.
fn attaches(daemon: &Path, mode: &str) -> bool {
    Command::new(daemon)
        .args([
            "--check",
            "--probe-mode",
            mode,
            "--signals",
            "sendmsg,recvmsg",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One run under socklat in `mode` (with the kernel object at `object`, or the embedded
/// one): round trips per second and kernel ns per observed call (every socklat program's
/// run time over the runs of the per-call exit programs).
fn measure(o: &Opts, mode: ProbeMode, object: Option<&str>) -> Result<(f64, f64)> {
    let mut args = vec!["--probe-mode", mode.name(), "--signals", "sendmsg,recvmsg"];
    if let Some(path) = object {
        args.extend(["--ebpf-object", path]);
    }
    let daemon = Socklat::start(&o.daemon, &args)?;
    // Steady state first: a cgroup's ring starts small and grows while its load runs (each
    // growth a wakeup and an install); a long-running daemon has long grown it.
    let _ = pinned_rr_load(WARM_UP_SECONDS);
    let before = bpfstats::snapshot()?;
    let rate = pinned_rr_load(o.seconds);
    let after = bpfstats::snapshot()?;
    daemon.stop();
    let exits = exit_programs(mode);
    let (mut time, mut calls) = (0u64, 0u64);
    for (name, (t, n)) in bpfstats::between(&before, &after) {
        if name.starts_with("socklat_") {
            time += t;
            if exits.contains(&name) {
                calls += n;
            }
        }
    }
    #[expect(clippy::cast_precision_loss, reason = "ns and call counts")]
    let per_call = if calls == 0 {
        f64::NAN
    } else {
        time as f64 / calls as f64
    };
    Ok((rate, per_call))
}

/// Runs the rounds and prints the `@@bench` lines (and `@@bench-skip MODE` for a mode
/// that does not attach).
///
/// # Errors
/// When the accounting cannot be turned on or a daemon does not start.
pub fn run(o: &Opts) -> Result<()> {
    let _stats = bpfstats::StatsEnabled::on()?;
    let mut modes = Vec::new();
    for m in &o.modes {
        let mode = mode_named(m)?;
        if attaches(&o.daemon, m) {
            modes.push(mode);
        } else {
            println!("@@bench-skip {m}");
        }
    }
    let variant_mode = mode_named(&o.variant_mode)?;
    let variants: Vec<(&str, &str)> = if modes.contains(&variant_mode) {
        o.variants
            .iter()
            .filter_map(|v| v.split_once('='))
            .collect()
    } else {
        Vec::new()
    };
    // Each run right after a run without observer: TCG guests drift over a round, and a
    // ratio is only as good as the two runs it compares are close in time.
    for round in 1..=o.rounds {
        let conditions = modes
            .iter()
            .map(|&m| (m, None, m.name().to_string()))
            .chain(variants.iter().map(|(name, path)| {
                (
                    variant_mode,
                    Some(*path),
                    format!("{}/{name}", variant_mode.name()),
                )
            }));
        for (mode, object, condition) in conditions {
            println!("{}", line(round, "none", pinned_rr_load(o.seconds), 0.0));
            let (rate, per_call) = measure(o, mode, object)?;
            println!("{}", line(round, &condition, rate, per_call));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_programs_are_the_per_call_programs() {
        let fentry = exit_programs(ProbeMode::Fentry);
        assert!(fentry.contains("socklat_fexit_t"), "{fentry:?}");
        assert!(!fentry.iter().any(|n| n.starts_with("socklat_fentry")));
        let tp = exit_programs(ProbeMode::Tracepoint);
        assert!(tp.contains("socklat_btf_soc"), "{tp:?}");
        assert!(!tp.contains("socklat_sys_ent"));
        let kp = exit_programs(ProbeMode::Kprobe);
        assert!(kp.contains("socklat_kretpro"), "{kp:?}");
    }
}
