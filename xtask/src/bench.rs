//! `cargo xtask bench`: the benchmarks (ratios of runs interleaved round by round in one
//! invocation, medians reported) and their report table; loads and observers are in `load`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use observer_common::names::programs;

use crate::build::build_daemon;
use crate::load::cgroups::{self, cgroup2_root};
use observer::exposition::Family;

use crate::load::bpfstats;
use crate::load::measure::{event_counts, median, metric_sum, mib, rss_kib, scrape};
use crate::load::observers::{DAEMON_ARGS_ENV, Observer, Socklat, ensure_bpftrace, start_bpftrace};
use crate::load::traffic::{EchoServer, connect_load, fault_load, pinned_rr_load, rr_load};
use crate::util::{is_root, root, step};

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Seconds each measured run lasts.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Rounds of interleaved runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Client connections of the request/response load.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Extra daemon flags for the socklat runs (e.g. "--ring-size 64K").
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub daemon_args: String,
    /// Parts to run: kernel-cost, throughput, conntrack, connect, faults, pipeline, memory,
    /// scrape, big-node (comma separated; scrape and big-node are not in the default set:
    /// they make 1000 cgroups several times).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kernel-cost,throughput,conntrack,connect,faults,pipeline,memory"
    )]
    pub only: Vec<String>,
    /// Kernel-cost variants to run besides socklat's own object: those whose name contains
    /// one of these (comma separated; default all).
    #[arg(long, value_delimiter = ',')]
    pub variants: Vec<String>,
    /// For the kernel-cost part: a daemon binary of another build (e.g. the previous
    /// release), measured with its own embedded object in the same rounds.
    #[arg(long)]
    pub cost_baseline: Option<PathBuf>,
    /// For the scrape part: a daemon binary of another build (e.g. the previous release)
    /// whose text scrape is measured next to this build's, on the same cgroups.
    #[arg(long)]
    pub scrape_baseline: Option<PathBuf>,
}

/// One line of the report table.
struct Row {
    name: String,
    value: String,
}

/// CPU seconds (user + system) a process has used (/proc/PID/stat, in clock ticks of 10 ms).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let f: Vec<f64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    f.iter().sum::<f64>() / 100.0
}

/// One load under no observer, socklat (tracepoint mode) and the bpftrace script,
/// interleaved round by round: the rates, and for socklat the events it received per
/// second, lost, and its own CPU seconds per million events.
fn under_observers(
    o: &Opts,
    bin: &Path,
    name: &str,
    load: &dyn Fn() -> f64,
    rows: &mut Vec<Row>,
) -> Result<()> {
    ensure_bpftrace()?;
    let conds = ["none", "socklat", "bpftrace"];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); conds.len()];
    let mut event_rate = Vec::new();
    let mut cpu_per_m = Vec::new();
    let mut lost_total = 0.0;
    for round in 0..o.rounds {
        for (i, c) in conds.iter().enumerate() {
            let obs = match *c {
                "socklat" => {
                    Observer::Socklat(Socklat::start(bin, &["--probe-mode", "tracepoint"])?)
                }
                "bpftrace" => Observer::Bpftrace(start_bpftrace()?),
                _ => Observer::None,
            };
            // Losses count from the start; rates and CPU after a warm-up (steady state:
            // rings grown, bpftrace's maps populated), the same for every condition.
            let lost_before = match &obs {
                Observer::Socklat(d) => event_counts(&scrape(d.addr())).1,
                _ => 0.0,
            };
            let _ = pinned_rr_load(WARM_UP_SECONDS);
            let before = match &obs {
                Observer::Socklat(d) => {
                    Some((event_counts(&scrape(d.addr())).0, cpu_seconds(d.pid())))
                }
                _ => None,
            };
            let r = load();
            if let (Observer::Socklat(d), Some((e0, c0))) = (&obs, before) {
                let l0 = lost_before;
                let (e1, l1) = event_counts(&scrape(d.addr()));
                let cpu = cpu_seconds(d.pid()) - c0;
                #[expect(clippy::cast_precision_loss, reason = "seconds")]
                event_rate.push((e1 - e0) / o.seconds as f64);
                if e1 > e0 {
                    cpu_per_m.push(cpu / (e1 - e0) * 1e6);
                }
                lost_total += l1 - l0;
            }
            obs.stop();
            step(&format!("round {} {name}, {c}: {r:.0}/s", round + 1));
            rates[i].push(r);
        }
    }
    let m: Vec<f64> = rates.into_iter().map(median).collect();
    rows.push(Row {
        name: format!("{name}, no observer"),
        value: format!("{:.0} round trips/s", m[0]),
    });
    rows.push(Row {
        name: "  with socklat (tracepoint mode) / without".into(),
        value: format!("{:.3}", m[1] / m[0]),
    });
    rows.push(Row {
        name: "  with the bpftrace histogram script / without".into(),
        value: format!("{:.3}", m[2] / m[0]),
    });
    rows.push(Row {
        name: "  socklat events received per second (median)".into(),
        value: format!("{:.0}", median(event_rate)),
    });
    rows.push(Row {
        name: "  socklat CPU seconds per million events (median)".into(),
        value: format!("{:.2}", median(cpu_per_m)),
    });
    rows.push(Row {
        name: "  socklat lost events over all socklat runs".into(),
        value: format!("{lost_total:.0}"),
    });
    Ok(())
}

/// The headline: one connection's ping-pong pinned to one CPU (repeatable on these VMs),
/// then the 4-connection form.
fn throughput(o: &Opts, bin: &Path, rows: &mut Vec<Row>) -> Result<()> {
    let secs = o.seconds;
    under_observers(
        o,
        bin,
        "pinned ping-pong (1 connection, 64 B, one CPU)",
        &move || pinned_rr_load(secs),
        rows,
    )?;
    let conns = o.connections;
    under_observers(
        o,
        bin,
        &format!("request/response ({conns} connections, 64 B)"),
        &move || rr_load(conns, secs, 64),
        rows,
    )
}

/// What a variant of the kernel object stands for in the kernel-cost tables.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The object socklat loads (task-local storage).
    Shipped,
    /// The object it falls back to (LRU hash), the shipped one's per-thread form replaced.
    Fallback,
    /// The shipped object without one step: the step's cost is the difference.
    Step,
    /// The floor: two hooks, one clock read each, a per-thread store and load, one record.
    Floor,
    /// The floor without one of its parts.
    FloorStep,
}

/// The variants of the kernel object the kernel-cost part measures: (name, features of
/// observer-ebpf besides `task-storage`, part). The first is the shipped object.
pub const COST_VARIANTS: &[(&str, &[&str], Part)] = &[
    ("socklat", &[], Part::Shipped),
    (
        "socklat, per-thread state in an LRU hash (Linux 5.10)",
        &[],
        Part::Fallback,
    ),
    (
        "without the syscall check",
        &["ablate-syscall-check"],
        Part::Step,
    ),
    (
        "without the socket type check",
        &["ablate-sk-check"],
        Part::Step,
    ),
    ("without the cgroup id", &["ablate-cgroup"], Part::Step),
    (
        "without the per-cgroup ring lookup",
        &["ablate-cgroup-ring"],
        Part::Step,
    ),
    (
        "without the wakeup decision",
        &["ablate-wakeup"],
        Part::Step,
    ),
    ("floor", &["floor"], Part::Floor),
    (
        "floor without the per-thread store and load",
        &["floor", "no-start"],
        Part::FloorStep,
    ),
    (
        "floor without the clock reads",
        &["floor", "no-clock"],
        Part::FloorStep,
    ),
    (
        "floor without the ring record",
        &["floor", "no-ring"],
        Part::FloorStep,
    ),
];

/// The variants whose name contains one of `filter` (all when empty), socklat's own object
/// always first.
pub fn cost_variants(
    filter: &[String],
) -> Vec<&'static (&'static str, &'static [&'static str], Part)> {
    COST_VARIANTS
        .iter()
        .filter(|(name, _, part)| {
            *part == Part::Shipped
                || filter.is_empty()
                || filter.iter().any(|v| name.contains(v.as_str()))
        })
        .collect()
}

/// The object of a variant, built where it is not the shipped one (or its fallback).
///
/// # Errors
/// When the build fails.
pub fn variant_object(v: &(&str, &[&str], Part)) -> Result<PathBuf> {
    let (name, features, part) = v;
    match part {
        Part::Shipped => Ok(crate::build::ebpf_task_storage_object()),
        Part::Fallback => Ok(crate::build::ebpf_object()),
        _ => {
            let mut f = features.to_vec();
            f.push("task-storage");
            crate::build::build_ebpf_variant(&variant_slug(name), &f)
        }
    }
}

/// A variant's name without spaces (its build directory, and its name in the guests).
#[must_use]
pub fn variant_slug(name: &str) -> String {
    name.replace([' ', ','], "-").replace("--", "-")
}

/// Seconds of load before a measured run under socklat.
pub const WARM_UP_SECONDS: u64 = 2;

/// What one pinned run of a variant cost: ns per run of the `sys_enter` hook, of the
/// `sock_*_length` programs, ns per observed socket call, and the ping-pong rate.
#[derive(Clone, Copy, Default)]
struct Cost {
    enter_ns: f64,
    length_ns: f64,
    per_call_ns: f64,
    rate: f64,
    /// The ping-pong rate without observer, measured just before.
    none: f64,
    /// IRQ-work interrupts per second (ring buffer wakeups are IRQ work).
    irq_work: f64,
}

/// IRQ-work interrupts so far, all CPUs (the `IWI` line of /proc/interrupts).
fn irq_work_interrupts() -> u64 {
    std::fs::read_to_string("/proc/interrupts")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let rest = l.trim_start().strip_prefix("IWI:")?;
            Some(
                rest.split_whitespace()
                    .map_while(|w| w.parse::<u64>().ok())
                    .sum(),
            )
        })
        .unwrap_or(0)
}

/// Runs the pinned ping-pong once without observer, then under socklat with `object`; reads
/// the kernel's own accounting of our programs around the second.
fn cost_run(o: &Opts, bin: &Path, object: Option<&Path>) -> Result<Cost> {
    let none = pinned_rr_load(o.seconds);
    let obj = object.map(|p| p.to_string_lossy().into_owned());
    let mut args = vec!["--probe-mode", "tracepoint", "--signals", "sendmsg,recvmsg"];
    if let Some(obj) = &obj {
        args.extend(["--ebpf-object", obj]);
    }
    let daemon = Socklat::start(bin, &args)?;
    // Steady state first: a cgroup's ring starts small and grows while its load runs (each
    // growth a wakeup and an install); a long-running daemon has long grown it.
    let _ = pinned_rr_load(WARM_UP_SECONDS);
    let before = bpfstats::snapshot()?;
    let iwi = irq_work_interrupts();
    let rate = pinned_rr_load(o.seconds);
    let iwi = irq_work_interrupts() - iwi;
    let after = bpfstats::snapshot()?;
    daemon.stop();
    let spent = bpfstats::between(&before, &after);
    // The kernel keeps 15 bytes of a program's name: "socklat_sys_ent", and the programs at
    // the end of a socket call ("socklat_btf_soc", send and receive together; another
    // build's may have other names).
    let enter_name = &programs::SYS_ENTER[..15];
    let (enter_t, enter_n) = spent.get(enter_name).copied().unwrap_or((0, 0));
    let (len_t, len_n) = spent
        .iter()
        .filter(|(name, _)| name.starts_with("socklat_") && name.as_str() != enter_name)
        .fold((0, 0), |(t, n), (_, (t1, n1))| (t + t1, n + n1));
    #[expect(clippy::cast_precision_loss, reason = "ns and run counts")]
    let per = |t: u64, n: u64| {
        if n == 0 {
            f64::NAN
        } else {
            t as f64 / n as f64
        }
    };
    Ok(Cost {
        enter_ns: per(enter_t, enter_n),
        length_ns: per(len_t, len_n),
        per_call_ns: per(enter_t + len_t, len_n),
        rate,
        none,
        #[expect(clippy::cast_precision_loss, reason = "interrupt counts")]
        irq_work: iwi as f64 / o.seconds as f64,
    })
}

/// The kernel's cost per observed socket call (tracepoint mode), measured with
/// `kernel.bpf_stats_enabled` under the pinned ping-pong: for socklat, for each variant
/// without one step of its programs, and for the floor (the least the job needs), side by
/// side, interleaved round by round; next to the ping-pong rate without any observer.
fn kernel_cost(o: &Opts, bin: &Path, rows: &mut Vec<Row>, tables: &mut Vec<String>) -> Result<()> {
    let variants = cost_variants(&o.variants);
    // (name, daemon, object): the variants with this build's daemon, then the baseline.
    let mut runs: Vec<(String, PathBuf, Option<PathBuf>)> = variants
        .iter()
        .map(|v| Ok((v.0.to_string(), bin.to_path_buf(), Some(variant_object(v)?))))
        .collect::<Result<_>>()?;
    if let Some(b) = &o.cost_baseline {
        runs.push((format!("baseline: {}", b.display()), b.clone(), None));
    }
    let _stats = bpfstats::StatsEnabled::on()?;
    let mut costs: Vec<Vec<Cost>> = vec![Vec::new(); runs.len()];
    for round in 0..o.rounds {
        for (i, (name, daemon, obj)) in runs.iter().enumerate() {
            let c = cost_run(o, daemon, obj.as_deref())?;
            step(&format!(
                "round {} {}: {:.0} ns/call ({:.0} + {:.0} ns/run), {:.0} round trips/s",
                round + 1,
                name,
                c.per_call_ns,
                c.enter_ns,
                c.length_ns,
                c.rate
            ));
            costs[i].push(c);
        }
    }
    let med = |v: &[Cost], f: fn(&Cost) -> f64| median(v.iter().map(f).collect());
    let mut t = String::from(
        "| kernel object (tracepoint mode) | sys_enter ns/run | sock_*_length ns/run | ns per observed socket call | pinned ping-pong / none (bpf_stats on) | IRQ-work interrupts/s |\n|---|---|---|---|---|---|\n",
    );
    let per_call: Vec<f64> = costs.iter().map(|c| med(c, |c| c.per_call_ns)).collect();
    for (i, (name, ..)) in runs.iter().enumerate() {
        let _ = std::fmt::Write::write_fmt(
            &mut t,
            format_args!(
                "| {name} | {:.0} | {:.0} | {:.0} | {:.3} | {:.0} |\n",
                med(&costs[i], |c| c.enter_ns),
                med(&costs[i], |c| c.length_ns),
                per_call[i],
                med(&costs[i], |c| c.rate / c.none),
                med(&costs[i], |c| c.irq_work),
            ),
        );
    }
    t.push_str("\n| step of socklat's programs | ns per observed call (socklat minus the variant without it) |\n|---|---|\n");
    let of = |want: Part| {
        variants
            .iter()
            .enumerate()
            .filter(move |(_, (.., part))| *part == want)
            .map(|(i, (name, ..))| (i, *name))
    };
    for (i, name) in of(Part::Step) {
        let step = name.trim_start_matches("without ");
        let _ = std::fmt::Write::write_fmt(
            &mut t,
            format_args!("| {step} | {:.0} |\n", per_call[0] - per_call[i]),
        );
    }
    let floor = of(Part::Floor)
        .map(|(i, _)| per_call[i])
        .next()
        .unwrap_or(f64::NAN);
    for (i, name) in of(Part::FloorStep) {
        let step = name.trim_start_matches("floor without ");
        let _ = std::fmt::Write::write_fmt(
            &mut t,
            format_args!("| {step} (in the floor) | {:.0} |\n", floor - per_call[i]),
        );
    }
    tables.push(t);
    rows.push(Row {
        name: "kernel time per observed socket call, socklat (tracepoint mode)".into(),
        value: format!("{:.0} ns", per_call[0]),
    });
    rows.push(Row {
        name: "  the floor program, same run".into(),
        value: format!("{floor:.0} ns ({:.2}x)", per_call[0] / floor),
    });
    if o.cost_baseline.is_some() {
        let b = per_call[runs.len() - 1];
        rows.push(Row {
            name: "  the baseline build, same run".into(),
            value: format!("{b:.0} ns (this build: {:.2}x of it)", per_call[0] / b),
        });
    }
    Ok(())
}

/// The cost of connection tracking: request/response with socklat with and without the
/// connections signal, both against no observer, interleaved.
fn conntrack(o: &Opts, bin: &Path, rows: &mut Vec<Row>) -> Result<()> {
    let mut none = Vec::new();
    let mut without = Vec::new();
    let mut with = Vec::new();
    for round in 0..o.rounds {
        none.push(rr_load(o.connections, o.seconds, 64));
        let daemon = Socklat::start(
            bin,
            &[
                "--probe-mode",
                "tracepoint",
                "--signals",
                "sendmsg,recvmsg,pagefaults",
            ],
        )?;
        without.push(rr_load(o.connections, o.seconds, 64));
        daemon.stop();
        let daemon = Socklat::start(bin, &["--probe-mode", "tracepoint"])?;
        with.push(rr_load(o.connections, o.seconds, 64));
        daemon.stop();
        step(&format!(
            "round {}: {:.0} req/s none, {:.0} without connections, {:.0} with",
            round + 1,
            none[round],
            without[round],
            with[round]
        ));
    }
    let n = median(none);
    let (a, b) = (median(without) / n, median(with) / n);
    rows.push(Row {
        name: "request/response ratio, socklat without the connections signal".into(),
        value: format!("{a:.3}"),
    });
    rows.push(Row {
        name: "  with it (difference in percentage points)".into(),
        value: format!("{b:.3} ({:+.1} pp)", (b - a) * 100.0),
    });
    Ok(())
}

/// `load` without and with socklat (tracepoint mode), interleaved round by round.
fn interleaved(
    o: &Opts,
    bin: &Path,
    name: &str,
    unit: &str,
    load: &dyn Fn() -> f64,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let mut without = Vec::new();
    let mut with = Vec::new();
    for round in 0..o.rounds {
        without.push(load());
        let daemon = Socklat::start(bin, &["--probe-mode", "tracepoint"])?;
        with.push(load());
        daemon.stop();
        step(&format!(
            "round {} {name}: {:.0} {unit} without, {:.0} with socklat",
            round + 1,
            without[round],
            with[round]
        ));
    }
    let (a, b) = (median(without), median(with));
    rows.push(Row {
        name: format!("{name}, no observer"),
        value: format!("{a:.0} {unit}"),
    });
    rows.push(Row {
        name: "  with socklat / without".into(),
        value: format!("{:.3}", b / a),
    });
    Ok(())
}

/// The daemon crate's pipeline bench: decode and aggregation of synthetic events.
fn pipeline(rows: &mut Vec<Row>) -> Result<()> {
    step("userspace pipeline (decode + aggregation, synthetic events, one core)");
    let out = Command::new("cargo")
        .current_dir(root())
        .args(["bench", "-q", "-p", "observer", "--bench", "pipeline"])
        .output()
        .context("cargo bench")?;
    if !out.status.success() {
        bail!(
            "pipeline bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((k, v)) = l.strip_prefix('@').and_then(|l| l.split_once(' '))
            && k.ends_with("per_sec")
        {
            let v: f64 = v.parse().unwrap_or(0.0);
            rows.push(Row {
                name: k.replace('_', " "),
                value: format!("{:.1} M events/s", v / 1e6),
            });
        }
    }
    Ok(())
}

/// Resident memory of a daemon at default settings with N cgroups that each made traffic.
fn memory(bin: &Path, rows: &mut Vec<Row>) -> Result<()> {
    let cg_root = PathBuf::from(cgroup2_root()?);
    let server = EchoServer::start(64);
    for n in [1usize, 100, 1000] {
        let daemon = Socklat::start(bin, &[])?;
        let dirs = cgroups::make_active(&cg_root, n, server.addr())?;
        let tracked = metric_sum(&scrape(daemon.addr()), Family::CgroupsTracked);
        let (rss, anon, file) = rss_kib(daemon.pid());
        daemon.stop();
        cgroups::remove_all(&dirs);
        step(&format!(
            "{n} cgroups: tracked {tracked}, VmRSS {rss} KiB (anon {anon}, ring mappings {file})"
        ));
        rows.push(Row {
            name: format!("resident memory, {n} active cgroups (tracked {tracked})"),
            value: format!(
                "{:.1} MiB (heap {:.1}, ring mappings {:.1})",
                mib(rss),
                mib(anon),
                mib(file)
            ),
        });
    }
    server.stop();
    Ok(())
}

/// Request/responses each busy cgroup's client makes in the big-node part, 256 sent before
/// their answers are read: 8 000 events (256 KiB of ring records) in bursts of 256 calls
/// each way, so that rings fill between drains and grow.
const BUSY_REQUESTS: usize = 4000;
const BUSY_DEPTH: usize = 256;

/// Memory charged to the daemon's memory cgroup (heap, ring pages, kernel maps) at 1, 100
/// and 1000 busy cgroups whose rings grew, at default settings: without a limit (the
/// budget is every cgroup's ring at `--ring-size`) and in the `DaemonSet`'s 192 MiB (the
/// budget derived from it).
fn big_node(bin: &Path, rows: &mut Vec<Row>) -> Result<()> {
    use crate::load::memcg::MemoryCgroup;
    const MIB: f64 = 1_048_576.0;
    let cg_root = PathBuf::from(cgroup2_root()?);
    let server = EchoServer::start(64);
    for limit in [None, Some(192u64 << 20)] {
        for n in [1usize, 100, 1000] {
            let mem = MemoryCgroup::create("daemon", limit)?;
            let daemon = Socklat::start_in(bin, &[], Some(&mem.procs()))?;
            let started = mem.usage();
            let dirs = cgroups::make_busy(&cg_root, n, server.addr(), BUSY_REQUESTS, BUSY_DEPTH)?;
            std::thread::sleep(std::time::Duration::from_secs(1));
            let text = scrape(daemon.addr());
            let (usage, peak) = (mem.usage(), mem.peak());
            let (rss, _, _) = rss_kib(daemon.pid());
            daemon.stop();
            cgroups::remove_all(&dirs);
            let rings = metric_sum(&text, Family::RingMemory);
            let budget = metric_sum(&text, Family::RingBudget);
            let denied = metric_sum(&text, Family::RingGrowthsDenied);
            let (events, lost) = event_counts(&text);
            #[expect(clippy::cast_precision_loss, reason = "memory sizes far below 2^52")]
            let (usage, peak, started) =
                (usage as f64 / MIB, peak as f64 / MIB, started as f64 / MIB);
            let limit_name =
                limit.map_or("no limit".to_string(), |l| format!("limit {} MiB", l >> 20));
            step(&format!(
                "{n} busy cgroups, {limit_name}: memory cgroup {usage:.1} MiB (peak {peak:.1}, \
                 {started:.1} at start), rings {:.1} of budget {:.1} MiB, {denied} growths \
                 denied, VmRSS {:.1} MiB, {events} events, {lost} lost",
                rings / MIB,
                budget / MIB,
                mib(rss)
            ));
            rows.push(Row {
                name: format!(
                    "memory cgroup of the daemon, {n} busy cgroups (rings grown), {limit_name}"
                ),
                value: format!(
                    "{usage:.1} MiB (peak {peak:.1}; rings {:.1} of a {:.1} MiB budget, {denied} \
                     growths denied; {lost} of {} events lost)",
                    rings / MIB,
                    budget / MIB,
                    events + lost
                ),
            });
        }
    }
    server.stop();
    Ok(())
}

/// Scrape size and time per `--histograms` setting, format and compression, at 1, 100 and
/// 1000 active cgroups: one daemon per setting (tracepoint mode, all signals), the same
/// cgroups' traffic seen by all three; the median of `--rounds` scrapes (at least 5).
fn scrape_sizes(o: &Opts, bin: &Path, rows: &mut Vec<Row>) -> Result<()> {
    use crate::load::scrape::{ACCEPT_PROTOBUF, ACCEPT_TEXT, measure};
    let cg_root = PathBuf::from(cgroup2_root()?);
    let server = EchoServer::start(64);
    let settings = ["classic", "native", "both"];
    // (setting, format, accept): what each kind of scraper gets from each setting.
    let formats = [("text", ACCEPT_TEXT), ("protobuf", ACCEPT_PROTOBUF)];
    let mut per_cgroup: Vec<(String, f64)> = Vec::new();
    let mut first: Vec<(f64, f64)> = Vec::new();
    for n in [1usize, 100, 1000] {
        let mut daemons = scrape_daemons(bin, &settings)?;
        let baseline = match &o.scrape_baseline {
            Some(b) => Some(Socklat::start(
                b,
                &["--probe-mode", "tracepoint", "--window", "10m"],
            )?),
            None => None,
        };
        let dirs = cgroups::make_active(&cg_root, n, server.addr())?;
        // Every cgroup's path resolved and its events drained.
        std::thread::sleep(std::time::Duration::from_secs(2));
        let mut series_here = Vec::new();
        for (h, d) in settings.iter().zip(daemons.iter_mut()) {
            let tracked = metric_sum(&scrape(d.addr()), Family::CgroupsTracked);
            for (format, accept) in formats {
                for gzip in [false, true] {
                    let runs = match (0..o.rounds.max(5))
                        .map(|_| measure(d.addr(), accept, gzip))
                        .collect::<Result<Vec<_>>>()
                    {
                        Ok(r) => r,
                        Err(e) => {
                            cgroups::remove_all(&dirs);
                            bail!(
                                "--histograms {h}: {e:#} (daemon exit status: {:?})",
                                d.exited()
                            );
                        }
                    };
                    let ms = median(runs.iter().map(|m| m.ms).collect());
                    let m = &runs[runs.len() - 1];
                    let gz = if gzip { "gzip" } else { "plain" };
                    step(&format!(
                        "{n} cgroups (tracked {tracked}), --histograms {h}, {format}, {gz}: \
                         {} bytes on the wire ({} decompressed), {} series, {ms:.1} ms",
                        m.wire, m.plain, m.series
                    ));
                    rows.push(Row {
                        name: format!(
                            "scrape, {n} active cgroups, --histograms {h}, {format}, {gz}"
                        ),
                        value: format!("{} B, {} series, {ms:.1} ms", m.wire, m.series),
                    });
                    if !gzip {
                        #[expect(clippy::cast_precision_loss, reason = "series counts")]
                        series_here.push((
                            format!("--histograms {h}, {format}"),
                            m.series as f64,
                            tracked,
                        ));
                    }
                }
            }
        }
        if let Some(b) = baseline {
            baseline_scrape(o, n, &b, rows)?;
            b.stop();
        }
        for d in daemons {
            d.stop();
        }
        cgroups::remove_all(&dirs);
        if n == 1 {
            first = series_here.iter().map(|s| (s.1, s.2)).collect();
        } else if n == 1000 {
            per_cgroup = series_here
                .iter()
                .zip(&first)
                .map(|((name, s, tracked), (s1, t1))| {
                    (name.clone(), (s - s1) / (tracked - t1).max(1.0))
                })
                .collect();
        }
    }
    server.stop();
    for (name, per) in per_cgroup {
        rows.push(Row {
            name: format!("series per active cgroup (1000 vs 1 cgroups), {name}"),
            value: format!("{per:.1}"),
        });
    }
    Ok(())
}

/// One daemon per `--histograms` setting, tracepoint mode, with a window longer than the
/// run (every cgroup keeps its quantile series throughout).
fn scrape_daemons(bin: &Path, settings: &[&str]) -> Result<Vec<Socklat>> {
    settings
        .iter()
        .map(|h| {
            Socklat::start(
                bin,
                &[
                    "--probe-mode",
                    "tracepoint",
                    "--window",
                    "10m",
                    "--histograms",
                    h,
                ],
            )
        })
        .collect()
}

/// The text scrape of a baseline build (`--scrape-baseline`), measured like the others.
fn baseline_scrape(o: &Opts, n: usize, b: &Socklat, rows: &mut Vec<Row>) -> Result<()> {
    use crate::load::scrape::{ACCEPT_TEXT, measure};
    let runs = (0..o.rounds.max(5))
        .map(|_| measure(b.addr(), ACCEPT_TEXT, true))
        .collect::<Result<Vec<_>>>()?;
    let ms = median(runs.iter().map(|m| m.ms).collect());
    let m = &runs[runs.len() - 1];
    step(&format!(
        "{n} cgroups, baseline build, text: {} bytes on the wire, {} series, {ms:.1} ms",
        m.wire, m.series
    ));
    rows.push(Row {
        name: format!("scrape, {n} active cgroups, baseline build (text, no gzip)"),
        value: format!("{} B, {} series, {ms:.1} ms", m.wire, m.series),
    });
    Ok(())
}

/// Runs the benchmarks and prints a table.
pub fn bench(o: &Opts) -> Result<()> {
    if !is_root() {
        bail!("the benchmarks load BPF programs and need root");
    }
    let bin = build_daemon()?;
    // SAFETY: set before any thread of ours starts.
    unsafe { std::env::set_var(DAEMON_ARGS_ENV, &o.daemon_args) };
    let mut rows = Vec::new();
    let mut tables = Vec::new();
    let want = |p: &str| o.only.iter().any(|x| x == p);
    if want("kernel-cost") {
        kernel_cost(o, &bin, &mut rows, &mut tables)?;
    }
    if want("throughput") {
        throughput(o, &bin, &mut rows)?;
    }
    if want("conntrack") {
        conntrack(o, &bin, &mut rows)?;
    }
    if want("connect") {
        let conns = o.connections;
        let secs = o.seconds;
        interleaved(
            o,
            &bin,
            "short connections (connect, 1 request, close)",
            "conn/s",
            &move || connect_load(conns, secs),
            &mut rows,
        )?;
    }
    if want("faults") {
        let secs = o.seconds;
        interleaved(
            o,
            &bin,
            "page faults (map, touch, unmap 16 MiB)",
            "pages/s",
            &move || fault_load(secs),
            &mut rows,
        )?;
    }
    if want("pipeline") {
        pipeline(&mut rows)?;
    }
    if want("memory") {
        memory(&bin, &mut rows)?;
    }
    if want("scrape") {
        scrape_sizes(o, &bin, &mut rows)?;
    }
    if want("big-node") {
        big_node(&bin, &mut rows)?;
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "\nsocklat bench: {} rounds x {} s, {} connections, kernel {}",
        o.rounds,
        o.seconds,
        o.connections,
        kernel.trim()
    );
    println!("| measurement | value |\n|---|---|");
    for r in rows {
        println!("| {} | {} |", r.name, r.value);
    }
    for t in tables {
        println!("\n{t}");
    }
    Ok(())
}
