//! `cargo xtask vm-bench`: the kernel cost of each probe mode on stock kernels, measured
//! inside the kernel-matrix guests (QEMU TCG): the pinned ping-pong under socklat in each
//! mode, each run paired with a run without observer just before it, round by round in one
//! guest boot, as ratios socklat/none (medians), with the kernel's own accounting of socklat's programs (ns per observed
//! socket call). TCG emulates the CPU: absolute costs are distorted (every instruction is
//! translated), ratios within one boot are what compare.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Result, bail};

use super::{ensure_qemu, initramfs, kernels, qemu, vm_dir};
use crate::build::{static_binaries, static_xtask};
use crate::util::{is_root, step};

/// Options of `cargo xtask vm-bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Kernels to boot (5.10, 6.1, 6.12, 7.3).
    #[arg(long, value_delimiter = ',', default_value = "6.12,7.3")]
    pub kernels: Vec<String>,
    /// Probe modes to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fentry,kprobe,tracepoint"
    )]
    pub modes: Vec<String>,
    /// Rounds of interleaved runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds each measured run lasts.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Seconds a guest may run before it counts as hung.
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
    /// Kernel-cost variants of the object (`cargo xtask bench` names, by substring) to
    /// measure too, in `--variant-mode`: which step costs what on stock kernels.
    #[arg(long, value_delimiter = ',')]
    pub variants: Vec<String>,
    /// The probe mode the variants run in.
    #[arg(long, default_value = "fentry")]
    pub variant_mode: String,
}

/// One `@@bench` line: round, condition, round trips/s, ns per observed call.
#[derive(Debug, Clone, PartialEq)]
struct Run {
    condition: String,
    rate: f64,
    ns_per_call: f64,
}

/// The `@@bench` lines of a serial log.
fn runs(text: &str) -> Vec<Run> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().strip_prefix("@@bench ")?.split_whitespace();
            let _round: usize = f.next()?.parse().ok()?;
            Some(Run {
                condition: f.next()?.to_string(),
                rate: f.next()?.parse().ok()?,
                ns_per_call: f.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// The modes the guest said do not attach.
fn skipped(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("@@bench-skip "))
        .map(str::to_string)
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Per mode: (median of socklat/none per round, median ns per call, rounds).
fn summarize(runs: &[Run]) -> BTreeMap<String, (f64, f64, usize)> {
    let mut by_mode: BTreeMap<String, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let mut none = f64::NAN;
    for r in runs {
        if r.condition == "none" {
            none = r.rate;
            continue;
        }
        let e = by_mode.entry(r.condition.clone()).or_default();
        // Each run against the no-observer run just before it.
        e.0.push(r.rate / none);
        e.1.push(r.ns_per_call);
    }
    by_mode
        .into_iter()
        .map(|(m, (ratios, ns))| {
            let n = ratios.len();
            (m, (median(ratios), median(ns), n))
        })
        .collect()
}

/// The runs of a guest that finished, or why it did not: QEMU's exit code is the guest's
/// (2 x rc + 1); a guest whose bench failed (`@@done` with rc 1) or reported no runs is a
/// failure, with the guest's last `error` line as the reason.
fn outcome(text: &str, code: i32) -> Result<Vec<Run>, String> {
    let reason = || {
        text.lines()
            .rev()
            .find(|l| l.contains("error"))
            .map_or_else(|| format!("QEMU exit {code}"), |l| l.trim().to_string())
    };
    match code {
        1 => {}
        3 => return Err(reason()),
        _ => return Err(format!("QEMU exit {code} (no verdict from the guest)")),
    }
    let runs = runs(text);
    if runs.is_empty() {
        return Err("the guest reported no runs".into());
    }
    Ok(runs)
}

/// Boots each kernel with the bench initramfs and prints the kernel x mode table.
///
/// # Errors
/// When a build, download or boot fails, or a guest reports no runs.
pub fn vm_bench(o: &Opts) -> Result<()> {
    if !is_root() {
        bail!("the guest bench installs QEMU and needs root");
    }
    ensure_qemu()?;
    let ks = kernels::download(&o.kernels)?;
    let (daemon, _) = static_binaries()?;
    let driver = static_xtask()?;
    let mut objects = Vec::new();
    let mut args = vec![
        format!("--modes {}", o.modes.join(",")),
        format!("--rounds {}", o.rounds),
        format!("--seconds {}", o.seconds),
        format!("--variant-mode {}", o.variant_mode),
    ];
    if !o.variants.is_empty() {
        for v in crate::bench::cost_variants(&o.variants).into_iter().skip(1) {
            let path = crate::bench::variant_object(v)?;
            args.push(format!(
                "--variant {}={}",
                crate::bench::variant_slug(v.0),
                path.display()
            ));
            objects.push(path);
        }
    }
    let initrd = vm_dir().join("initrd-bench.cpio.gz");
    initramfs::write_bench(&initrd, &daemon, &driver, &objects, &args)?;
    let mut table = String::from(
        "| kernel | mode | pinned ping-pong socklat/none | kernel ns per observed socket call (bpf_stats) |\n\
         |---|---|---|---|\n",
    );
    let mut failed = Vec::new();
    for (label, vmlinuz) in &ks {
        let (text, code) = qemu::run(&format!("bench-{label}"), vmlinuz, &initrd, o.timeout)?;
        let kernel = super::verdict::SerialLog(&text)
            .kernel()
            .unwrap_or(label)
            .to_string();
        let runs = match outcome(&text, code) {
            Ok(runs) => runs,
            Err(why) => {
                qemu::show_tail(label, &text, &format!("QEMU exit {code}"));
                let _ = writeln!(table, "| {kernel} | all | failed: {why} | |");
                failed.push(format!("{label}: {why}"));
                continue;
            }
        };
        for (mode, (ratio, ns, n)) in summarize(&runs) {
            step(&format!(
                "{kernel} {mode}: socklat/none {ratio:.3}, {ns:.0} ns per call ({n} rounds)"
            ));
            let _ = writeln!(table, "| {kernel} | {mode} | {ratio:.3} | {ns:.0} |");
        }
        for mode in skipped(&text) {
            let _ = writeln!(table, "| {kernel} | {mode} | does not attach | |");
        }
    }
    println!(
        "\nsocklat vm-bench: {} rounds x {} s, QEMU TCG (absolute costs distorted; ratios \
         within one boot compare)\n{table}",
        o.rounds, o.seconds
    );
    if !failed.is_empty() {
        bail!("the guest bench failed on {}", failed.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::guest_bench::line;

    #[test]
    fn runs_are_read_back_and_each_compared_with_the_none_before_it() {
        let text = [
            "noise",
            &line(1, "none", 1000.0, 0.0),
            &line(1, "fentry", 900.0, 800.0),
            &line(1, "none", 1000.0, 0.0),
            &line(1, "kprobe", 800.0, 1200.0),
            &line(2, "none", 2000.0, 0.0),
            &line(2, "fentry", 1900.0, 700.0),
            &line(2, "none", 1000.0, 0.0),
            &line(2, "kprobe", 750.0, 1100.0),
            &line(3, "none", 1000.0, 0.0),
            &line(3, "fentry", 950.0, 750.0),
            &line(3, "none", 1000.0, 0.0),
            &line(3, "kprobe", 700.0, 1300.0),
            "@@bench-skip tracepoint",
        ]
        .join("\n");
        let runs = runs(&text);
        assert_eq!(runs.len(), 12);
        let s = summarize(&runs);
        let (ratio, ns, n) = s["fentry"];
        assert!((ratio - 0.95).abs() < 1e-9, "{ratio}");
        assert!((ns - 750.0).abs() < 1e-9);
        assert_eq!(n, 3);
        assert!((s["kprobe"].0 - 0.75).abs() < 1e-9);
        assert_eq!(skipped(&text), ["tracepoint"]);
    }

    #[test]
    fn a_guest_that_failed_is_a_failure_with_its_reason_not_a_missing_row() {
        let text = [
            "@@kernel 6.12.117+deb12-amd64",
            &line(1, "none", 8583.0, 0.0),
            "xtask: error: socklat did not become healthy",
            "@@done 1",
        ]
        .join("\n");
        let e = outcome(&text, 3).unwrap_err();
        assert!(e.contains("socklat did not become healthy"), "{e}");
        let ok = [
            &line(1, "none", 1000.0, 0.0),
            &line(1, "fentry", 900.0, 1.0),
            "@@done 0",
        ]
        .join("\n");
        assert_eq!(outcome(&ok, 1).unwrap().len(), 2);
        assert!(outcome("@@done 0", 1).is_err(), "no runs is a failure");
        assert!(
            outcome(&ok, 124).is_err(),
            "a QEMU exit that is not the guest's"
        );
    }
}
