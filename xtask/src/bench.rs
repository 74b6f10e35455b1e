//! `cargo xtask bench`: the benchmarks (ratios of runs interleaved round by round in one
//! invocation, medians reported) and their report table; loads and observers are in `load`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::build::build_daemon;
use crate::load::cgroups::{self, cgroup2_root};
use observer::exposition::Family;

use crate::load::measure::{event_counts, median, metric_sum, mib, rss_kib, scrape};
use crate::load::observers::{DAEMON_ARGS_ENV, Observer, Socklat, ensure_bpftrace, start_bpftrace};
use crate::load::traffic::{EchoServer, connect_load, fault_load, rr_load};
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
    /// Parts to run: throughput, conntrack, connect, faults, pipeline, memory, scrape (comma
    /// separated; scrape is not in the default set: it makes 1000 cgroups three times).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "throughput,conntrack,connect,faults,pipeline,memory"
    )]
    pub only: Vec<String>,
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

/// Request/response over loopback with no observer, socklat (tracepoint mode) and the
/// bpftrace script, interleaved; plus the events socklat received and lost meanwhile.
fn throughput(o: &Opts, bin: &Path, rows: &mut Vec<Row>) -> Result<()> {
    ensure_bpftrace()?;
    let conds = ["none", "socklat", "bpftrace"];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); conds.len()];
    let mut event_rate = Vec::new();
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
            let before = match &obs {
                Observer::Socklat(d) => Some(event_counts(&scrape(d.addr()))),
                _ => None,
            };
            let r = rr_load(o.connections, o.seconds, 64);
            if let (Observer::Socklat(d), Some((e0, l0))) = (&obs, before) {
                let (e1, l1) = event_counts(&scrape(d.addr()));
                #[expect(clippy::cast_precision_loss, reason = "seconds")]
                event_rate.push((e1 - e0) / o.seconds as f64);
                lost_total += l1 - l0;
            }
            obs.stop();
            step(&format!("round {} {c}: {r:.0} requests/s", round + 1));
            rates[i].push(r);
        }
    }
    let m: Vec<f64> = rates.into_iter().map(median).collect();
    rows.push(Row {
        name: "loopback request/response, no observer".into(),
        value: format!("{:.0} req/s", m[0]),
    });
    rows.push(Row {
        name: "  with socklat (tracepoint mode) / without".into(),
        value: format!("{:.3}", m[1] / m[0]),
    });
    rows.push(Row {
        name: "  with bpftrace histogram script / without".into(),
        value: format!("{:.3}", m[2] / m[0]),
    });
    rows.push(Row {
        name: "  socklat events received per second (median)".into(),
        value: format!("{:.0}", median(event_rate)),
    });
    rows.push(Row {
        name: "  socklat lost events over all socklat runs".into(),
        value: format!("{lost_total:.0}"),
    });
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
    let want = |p: &str| o.only.iter().any(|x| x == p);
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
    Ok(())
}
