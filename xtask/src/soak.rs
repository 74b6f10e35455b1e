//! `cargo xtask soak --minutes N`: the soak run (the daemon under steady load and cgroup
//! churn, sampled every 10 s) and its report; the load itself is in `load`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::build::build_daemon;
use crate::load::cgroups::churn;
use observer::exposition::Family;

use crate::load::measure::{event_counts, median, metric_sum, mib, rss_kib, timed_scrape};
use crate::load::observers::Socklat;
use crate::load::traffic::{EchoServer, steady_load};
use crate::util::{is_root, root, step};

/// Options of `cargo xtask soak`.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// How long to run.
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// New cgroups per second (each makes 20 requests, then is removed).
    #[arg(long, default_value_t = 10)]
    pub churn: usize,
    /// Steady load, requests per second over loopback (2 connections).
    #[arg(long, default_value_t = 5000)]
    pub rate: u64,
}

/// What the daemon looked like at one point of the run.
struct Sample {
    at: f64,
    rss_kib: u64,
    scrape_ms: f64,
    tracked: f64,
    lost: f64,
    events: f64,
    cgroups_made: u64,
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "a few hundred samples")]
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let num: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let den: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if den == 0.0 { 0.0 } else { num / den }
}

/// Writes the samples to target/soak.csv and prints the report table.
fn report(o: &Opts, samples: &[Sample], alive: bool) -> Result<()> {
    let mut csv =
        String::from("seconds,rss_kib,scrape_ms,cgroups_tracked,lost,events,cgroups_made\n");
    for s in samples {
        let _ = writeln!(
            csv,
            "{:.0},{},{:.2},{},{},{},{}",
            s.at, s.rss_kib, s.scrape_ms, s.tracked, s.lost, s.events, s.cgroups_made
        );
    }
    std::fs::write(root().join("target/soak.csv"), csv)?;
    if samples.len() < 4 {
        bail!("too short a soak to report a slope (at least 40 s)");
    }
    let settled: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= samples.last().map_or(0.0, |l| l.at) / 4.0)
        .collect();
    let pts: Vec<(f64, f64)> = settled
        .iter()
        .map(|s| (s.at / 3600.0, mib(s.rss_kib)))
        .collect();
    let q = samples.len() / 4;
    let early = median(samples[..q.max(1)].iter().map(|s| s.scrape_ms).collect());
    let late = median(
        samples[samples.len() - q.max(1)..]
            .iter()
            .map(|s| s.scrape_ms)
            .collect(),
    );
    let last = samples.last().expect("samples");
    println!("\n| soak ({:.1} min) | value |\n|---|---|", o.minutes);
    println!(
        "| load | {} req/s steady, {} new cgroups/s (20 requests each), --cgroup-ttl 30s |",
        o.rate, o.churn
    );
    println!("| cgroups made and removed | {} |", last.cgroups_made);
    println!("| events received | {} |", last.events);
    println!("| events lost | {} |", last.lost);
    println!(
        "| RSS first / last sample | {:.1} / {:.1} MiB |",
        mib(samples[0].rss_kib),
        mib(last.rss_kib)
    );
    println!(
        "| RSS slope after the first quarter (least squares) | {:+.2} MiB/hour |",
        slope(&pts)
    );
    println!("| scrape time, median of first / last quarter | {early:.1} / {late:.1} ms |");
    println!("| cgroups tracked at the end | {} |", last.tracked);
    println!("| daemon healthy at the end | {alive} |");
    println!("samples: target/soak.csv");
    Ok(())
}

/// Runs the soak and prints its report: the daemon under steady request/response load plus
/// cgroup churn (new cgroups with a little traffic every second, each removed right after),
/// with a short `--cgroup-ttl` so that garbage collection runs all along. Every 10 s it
/// records the daemon's resident memory, the time one scrape takes, the cgroups tracked and
/// the events lost; at the end it reports the memory slope (least squares over the run
/// after its first quarter) and the scrape time early and late. Samples go to
/// target/soak.csv.
pub fn soak(o: &Opts) -> Result<()> {
    if !is_root() {
        bail!("the soak loads BPF programs and makes cgroups: run it as root");
    }
    let bin = build_daemon()?;
    let daemon = Socklat::start(&bin, &["--cgroup-ttl", "30s"])?;
    let stop_flag = Arc::new(AtomicBool::new(false));
    let server = EchoServer::start(64);
    let load = steady_load(server.addr(), o.rate, &stop_flag);
    let made = Arc::new(AtomicU64::new(0));
    let churner = churn(server.addr(), o.churn, &stop_flag, &made)?;
    let total = Duration::from_secs_f64(o.minutes * 60.0);
    step(&format!(
        "soak for {:.1} min: {} req/s steady, {} new cgroups/s, --cgroup-ttl 30s; a line every minute",
        o.minutes, o.rate, o.churn
    ));
    let start = Instant::now();
    let mut samples = Vec::new();
    while start.elapsed() < total {
        std::thread::sleep(Duration::from_secs(10).min(total.saturating_sub(start.elapsed())));
        let (ms, text) = timed_scrape(daemon.addr());
        let (events, lost) = event_counts(&text);
        let s = Sample {
            at: start.elapsed().as_secs_f64(),
            rss_kib: rss_kib(daemon.pid()).0,
            scrape_ms: ms,
            tracked: metric_sum(&text, Family::CgroupsTracked),
            lost,
            events,
            cgroups_made: made.load(Ordering::Relaxed),
        };
        if samples.len() % 6 == 5 {
            eprintln!(
                "    {:5.1} min: RSS {:.1} MiB, scrape {:.1} ms, tracked {}, cgroups made {}, events {}, lost {}",
                s.at / 60.0,
                mib(s.rss_kib),
                s.scrape_ms,
                s.tracked,
                s.cgroups_made,
                s.events,
                s.lost
            );
        }
        samples.push(s);
    }
    stop_flag.store(true, Ordering::Relaxed);
    let _ = churner.join();
    for h in load {
        let _ = h.join();
    }
    server.stop();
    let alive = daemon.healthy();
    daemon.stop();

    report(o, &samples, alive)?;
    if !alive {
        bail!("the daemon was not healthy at the end of the soak");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn slope_of_a_line() {
        let pts: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i), 2.0 * f64::from(i) + 1.0))
            .collect();
        assert!((super::slope(&pts) - 2.0).abs() < 1e-9);
        assert!(super::slope(&[(1.0, 1.0), (1.0, 2.0)]).abs() < 1e-9);
    }
}
