//! The text exposition format, streamed: the per-cgroup families are written straight
//! into a buffer one row at a time and handed out in chunks, so a scrape of a thousand
//! cgroups (about 200 000 samples) needs bounded memory instead of an object per sample.
//! The small global families go through the prometheus crate's encoder.

use std::fmt::Write as _;

use observer_common::{FaultCounts, Outcome, StartTable};
use prometheus::TextEncoder;
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use super::family::{CALLS, FAULT_KINDS, FAULT_MODES, Family, Kind};
use super::{Row, Scrape};
use crate::aggregate::{BUCKETS_NS, DurationSnapshot, QUANTILES};
use crate::histograms::Histograms;
use crate::labels::Labels;
use crate::signal::Signal;

/// Whether `row` has samples of per-cgroup family `f`.
#[must_use]
pub fn has_samples(f: Family, row: &Row) -> bool {
    let snap = row.snap.as_ref();
    match f {
        Family::CallDuration | Family::CallLatency | Family::Calls => {
            snap.is_some_and(|s| s.calls.iter().any(Option::is_some))
        }
        Family::Faults => row.faults != FaultCounts::default(),
        Family::FaultDuration | Family::FaultLatency => {
            snap.is_some_and(|s| s.fault_durations.iter().any(Option::is_some))
        }
        Family::ConnClosed => snap.is_some_and(|s| s.conns.is_some()),
        Family::AbnormalRatio => {
            snap.is_some_and(|s| s.conns.as_ref().is_some_and(|c| c.window_ratio.is_some()))
        }
        Family::Retransmits => row.retransmits > 0 || snap.is_some_and(|s| s.conns.is_some()),
        // Only where some close was classified without its state (like losses).
        Family::Untracked => {
            snap.is_some_and(|s| s.conns.as_ref().is_some_and(|c| c.untracked > 0))
        }
        // Present for `_other` from the first scrape, so that alerts on losses have a series.
        Family::Lost => row.lost > 0 || row.labels.is_other(),
        _ => false,
    }
}

/// Writes `s` with `\`, newline and (for label values) `"` escaped.
fn escaped(out: &mut String, s: &str, quote: bool) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// `{cgroup="...",namespace="...",pod="...",container="..."` without the closing brace.
fn open_labels(out: &mut String, l: &Labels) {
    for (i, (k, v)) in l.pairs().into_iter().enumerate() {
        out.push_str(if i == 0 { "{" } else { "," });
        out.push_str(k);
        out.push_str("=\"");
        escaped(out, v, true);
        out.push('"');
    }
}

/// Appends `,k="v"` pairs to an open label set.
fn with_pairs(labels: &str, extra: &[(&str, &str)]) -> String {
    let mut s = String::from(labels);
    for (k, v) in extra {
        s.push(',');
        s.push_str(k);
        s.push_str("=\"");
        escaped(&mut s, v, true);
        s.push('"');
    }
    s
}

/// One sample line: `name{labels[,last]} value`, `labels` being an open label set.
fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &str,
    last: Option<(&str, f64)>,
    v: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    out.push_str(labels);
    match last {
        // `le` and `quantile` values are numbers: nothing to escape.
        Some((k, x)) if x.is_infinite() => {
            let _ = writeln!(out, ",{k}=\"+Inf\"}} {v}");
        }
        Some((k, x)) => {
            let _ = writeln!(out, ",{k}=\"{x}\"}} {v}");
        }
        None => {
            let _ = writeln!(out, "}} {v}");
        }
    }
}

#[expect(clippy::cast_precision_loss, reason = "exposition values are f64")]
fn write_histogram(out: &mut String, name: &str, labels: &str, d: &DurationSnapshot) {
    for (ns, c) in BUCKETS_NS.iter().zip(&d.totals.cumulative) {
        sample(
            out,
            name,
            "_bucket",
            labels,
            Some(("le", *ns as f64 / 1e9)),
            *c as f64,
        );
    }
    sample(
        out,
        name,
        "_bucket",
        labels,
        Some(("le", f64::INFINITY)),
        d.totals.count as f64,
    );
    sample(out, name, "_sum", labels, None, d.totals.sum_seconds);
    sample(out, name, "_count", labels, None, d.totals.count as f64);
}

#[expect(clippy::cast_precision_loss, reason = "ns to seconds")]
fn write_summary(out: &mut String, name: &str, labels: &str, d: &DurationSnapshot) {
    if let Some(qs) = d.window_quantiles_ns {
        for (q, ns) in QUANTILES.iter().zip(qs) {
            sample(
                out,
                name,
                "",
                labels,
                Some(("quantile", *q)),
                ns as f64 / 1e9,
            );
        }
    }
    sample(out, name, "_sum", labels, None, d.totals.sum_seconds);
    sample(out, name, "_count", labels, None, d.totals.count as f64);
}

/// `# HELP` and `# TYPE` of a family.
pub fn write_header(f: Family, out: &mut String) {
    let _ = writeln!(out, "# HELP {} {}", f.name(), f.help());
    let _ = writeln!(out, "# TYPE {} {}", f.name(), f.kind().name());
}

/// The samples of one row in one per-cgroup family.
#[expect(clippy::cast_precision_loss, reason = "exposition values are f64")]
pub fn write_row(f: Family, row: &Row, out: &mut String) {
    if !has_samples(f, row) {
        return;
    }
    let mut labels = String::new();
    open_labels(&mut labels, &row.labels);
    let name = f.name();
    match f {
        Family::CallDuration | Family::CallLatency | Family::Calls => {
            let Some(snap) = &row.snap else { return };
            for (call, c) in CALLS.iter().zip(&snap.calls) {
                let Some(c) = c else { continue };
                let with_call = with_pairs(&labels, &[("call", call)]);
                match f {
                    Family::CallDuration => write_histogram(out, name, &with_call, &c.durations),
                    Family::CallLatency => write_summary(out, name, &with_call, &c.durations),
                    _ => {
                        for (result, n) in c.results.by_label() {
                            let l = with_pairs(&with_call, &[("result", result)]);
                            sample(out, name, "", &l, None, n as f64);
                        }
                    }
                }
            }
        }
        Family::Faults => {
            for (mode, n) in FAULT_MODES.iter().zip([row.faults.user, row.faults.kernel]) {
                let l = with_pairs(&labels, &[("mode", mode)]);
                sample(out, name, "", &l, None, n as f64);
            }
        }
        Family::FaultDuration | Family::FaultLatency => {
            let Some(snap) = &row.snap else { return };
            for (kind, d) in FAULT_KINDS.iter().zip(&snap.fault_durations) {
                let Some(d) = d else { continue };
                let l = with_pairs(&labels, &[("fault", kind)]);
                if f == Family::FaultDuration {
                    write_histogram(out, name, &l, d);
                } else {
                    write_summary(out, name, &l, d);
                }
            }
        }
        Family::ConnClosed => {
            let Some(c) = row.snap.as_ref().and_then(|s| s.conns.as_ref()) else {
                return;
            };
            for o in Outcome::ALL {
                let l = with_pairs(&labels, &[("outcome", o.name())]);
                sample(out, name, "", &l, None, c.outcomes[o as usize] as f64);
            }
        }
        Family::AbnormalRatio => {
            if let Some(r) = row
                .snap
                .as_ref()
                .and_then(|s| s.conns.as_ref())
                .and_then(|c| c.window_ratio)
            {
                sample(out, name, "", &labels, None, r);
            }
        }
        Family::Retransmits => sample(out, name, "", &labels, None, row.retransmits as f64),
        Family::Untracked => {
            let n = row
                .snap
                .as_ref()
                .and_then(|s| s.conns.as_ref())
                .map_or(0, |c| c.untracked);
            sample(out, name, "", &labels, None, n as f64);
        }
        Family::Lost => sample(out, name, "", &labels, None, row.lost as f64),
        _ => {}
    }
}

fn pair(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

/// An empty family of the prometheus crate's data model.
#[must_use]
pub fn family(f: Family) -> MetricFamily {
    let mut out = MetricFamily::default();
    out.set_name(f.name().to_string());
    out.set_help(f.help().to_string());
    out.set_field_type(match f.kind() {
        Kind::Counter => MetricType::COUNTER,
        Kind::Gauge => MetricType::GAUGE,
        Kind::Histogram => MetricType::HISTOGRAM,
        Kind::Summary => MetricType::SUMMARY,
    });
    out
}

/// A counter sample of the prometheus crate's data model.
#[expect(clippy::cast_precision_loss, reason = "exposition values are f64")]
#[must_use]
pub fn counter(labels: Vec<LabelPair>, v: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(v as f64);
    let mut m = Metric::from_label(labels);
    m.set_counter(c);
    m
}

/// A gauge sample of the prometheus crate's data model.
#[must_use]
pub fn gauge(labels: Vec<LabelPair>, v: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v);
    let mut m = Metric::from_label(labels);
    m.set_gauge(g);
    m
}

/// The global families of a scrape.
#[must_use]
pub fn global_families(s: &Scrape) -> Vec<MetricFamily> {
    Family::GLOBAL
        .into_iter()
        .map(|f| {
            let mut fam = family(f);
            let metrics = fam.mut_metric();
            match f {
                Family::Events => {
                    for sig in Signal::ALL {
                        metrics.push(counter(
                            vec![pair("signal", sig.name())],
                            s.events[sig as usize],
                        ));
                    }
                }
                Family::Undecodable => metrics.push(counter(vec![], s.undecodable)),
                Family::RingCreateFailures => {
                    metrics.push(counter(vec![], s.ring_create_failures));
                }
                #[expect(clippy::cast_precision_loss, reason = "byte counts below 2^52")]
                Family::RingMemory => metrics.push(gauge(vec![], s.ring_memory as f64)),
                #[expect(clippy::cast_precision_loss, reason = "byte counts below 2^52")]
                Family::RingBudget => metrics.push(gauge(vec![], s.ring_budget as f64)),
                Family::RingGrowthsDenied => {
                    metrics.push(counter(vec![], s.ring_growths_denied));
                }
                Family::ConnEvicted => metrics.push(counter(vec![], s.connections_evicted)),
                Family::StartsEvicted => {
                    for (t, n) in StartTable::ALL.iter().zip(s.starts_evicted) {
                        metrics.push(counter(vec![pair("table", t.name())], n));
                    }
                }
                Family::TableCapacity => {
                    for (t, n) in &s.tables {
                        #[expect(clippy::cast_precision_loss, reason = "table sizes")]
                        metrics.push(gauge(vec![pair("table", t)], *n as f64));
                    }
                }
                Family::ProbeMisses => metrics.push(counter(vec![], s.probe_misses)),
                Family::ProbeInfo => {
                    for (sig, mode) in &s.probes {
                        metrics.push(gauge(
                            vec![pair("signal", sig.name()), pair("mode", mode.name())],
                            1.0,
                        ));
                    }
                }
                Family::CgroupsTracked => {
                    #[expect(clippy::cast_precision_loss, reason = "small count")]
                    metrics.push(gauge(vec![], s.tracked as f64));
                }
                Family::BuildInfo => {
                    metrics.push(gauge(vec![pair("version", env!("CARGO_PKG_VERSION"))], 1.0));
                }
                _ => {}
            }
            fam
        })
        .filter(|f| !f.get_metric().is_empty())
        .collect()
}

/// The per-cgroup families of the text exposition with `hist`: without classic buckets
/// the histogram families are left out (their `_sum` and `_count` are those of the
/// summaries of the same durations, `socklat_*_latency_seconds`).
pub fn text_families(hist: Histograms) -> impl Iterator<Item = Family> {
    Family::PER_CGROUP
        .into_iter()
        .filter(move |f| hist.classic() || f.kind() != Kind::Histogram)
}

/// Calls `flush` with the exposition in pieces of roughly `chunk` bytes.
pub fn stream(s: &Scrape, hist: Histograms, chunk: usize, mut flush: impl FnMut(&str)) {
    let fallback = Row::empty_other();
    let has_other = s.rows.iter().any(|r| r.labels.is_other());
    let extra: &[Row] = if has_other {
        &[]
    } else {
        std::slice::from_ref(&fallback)
    };
    let mut out = String::with_capacity(chunk + 4096);
    for f in text_families(hist) {
        let rows = || s.rows.iter().chain(extra);
        if !rows().any(|r| has_samples(f, r)) {
            continue;
        }
        write_header(f, &mut out);
        for row in rows() {
            write_row(f, row, &mut out);
            if out.len() >= chunk {
                flush(&out);
                out.clear();
            }
        }
    }
    TextEncoder::new()
        .encode_utf8(&global_families(s), &mut out)
        .expect("families built here are well-formed");
    flush(&out);
}

/// Renders a whole scrape as text exposition, with classic buckets.
#[must_use]
pub fn render(s: &Scrape) -> String {
    render_with(s, Histograms::Both)
}

/// Renders a whole scrape as text exposition with `hist`.
#[must_use]
pub fn render_with(s: &Scrape, hist: Histograms) -> String {
    let mut all = String::new();
    stream(s, hist, 1 << 16, |piece| all.push_str(piece));
    all
}
