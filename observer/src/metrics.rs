//! Renders a scrape (pure data gathered by the collector) as Prometheus text exposition,
//! with the names and meanings of design.md.
//!
//! The per-cgroup families are written straight into a text buffer one row at a time, so a
//! scrape of a thousand cgroups (about 200 000 samples) streams in bounded memory instead of
//! building an object per sample. The small global families go through the prometheus
//! crate's encoder, which the tests also use as the reference for the streaming writer.

use std::fmt::Write as _;
use std::sync::Arc;

use prometheus::TextEncoder;
#[cfg(test)]
use prometheus::proto::{Bucket, Quantile, Summary};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use crate::aggregate::{BUCKETS_NS, CgroupSnapshot, DurationSnapshot, QUANTILES, Signal};
use crate::cgroups::Labels;
use crate::cli::ProbeMode;
use observer_common::{FaultCounts, Outcome};

/// One set of per-cgroup series: a tracked cgroup, or `_other`.
#[derive(Clone, Debug)]
pub struct Row {
    pub labels: Arc<Labels>,
    pub snap: Option<CgroupSnapshot>,
    /// Page faults counted in the kernel.
    pub faults: FaultCounts,
    /// Events its ring could not take.
    pub lost: u64,
    /// Retransmitted segments counted in the kernel.
    pub retransmits: u64,
}

/// Everything one scrape shows.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub rows: Vec<Row>,
    /// Probe mode in use per enabled signal.
    pub probes: Vec<(Signal, ProbeMode)>,
    pub tracked: usize,
    /// Events received by the daemon per signal (index: `Signal as usize`).
    pub events: [u64; Signal::ALL.len()],
    /// Connections that closed with no state in the kernel's table.
    pub untracked_connections: u64,
    /// Program runs the kernel skipped (recursion protection), all programs together.
    pub probe_misses: u64,
}

/// The labels of a row for `_other`.
#[must_use]
pub fn other_labels() -> Arc<Labels> {
    Arc::new(Labels {
        cgroup: "_other".into(),
        ..Labels::default()
    })
}

fn pair(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

#[cfg(test)]
fn cgroup_labels(l: &Labels, extra: &[(&str, &str)]) -> Vec<LabelPair> {
    let mut v = vec![
        pair("cgroup", &l.cgroup),
        pair("namespace", &l.namespace),
        pair("pod", &l.pod),
        pair("container", &l.container),
    ];
    v.extend(extra.iter().map(|(n, val)| pair(n, val)));
    v
}

fn family(name: &str, help: &str, kind: MetricType) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f
}

#[expect(clippy::cast_precision_loss, reason = "exposition values are f64")]
fn counter(labels: Vec<LabelPair>, v: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(v as f64);
    let mut m = Metric::from_label(labels);
    m.set_counter(c);
    m
}

fn gauge(labels: Vec<LabelPair>, v: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v);
    let mut m = Metric::from_label(labels);
    m.set_gauge(g);
    m
}

#[cfg(test)]
#[expect(clippy::cast_precision_loss, reason = "ns to seconds")]
fn histogram(labels: Vec<LabelPair>, d: &DurationSnapshot) -> Metric {
    let mut h = prometheus::proto::Histogram::default();
    let buckets = BUCKETS_NS
        .iter()
        .zip(&d.totals.cumulative)
        .map(|(ns, c)| {
            let mut b = Bucket::default();
            b.set_upper_bound(*ns as f64 / 1e9);
            b.set_cumulative_count(*c);
            b
        })
        .collect();
    h.set_bucket(buckets);
    h.set_sample_count(d.totals.count);
    h.set_sample_sum(d.totals.sum_seconds);
    let mut m = Metric::from_label(labels);
    m.set_histogram(h);
    m
}

#[cfg(test)]
#[expect(clippy::cast_precision_loss, reason = "ns to seconds")]
fn summary(labels: Vec<LabelPair>, d: &DurationSnapshot) -> Metric {
    let mut s = Summary::default();
    if let Some(qs) = d.window_quantiles_ns {
        s.set_quantile(
            QUANTILES
                .iter()
                .zip(qs)
                .map(|(q, ns)| {
                    let mut x = Quantile::default();
                    x.set_quantile(*q);
                    x.set_value(ns as f64 / 1e9);
                    x
                })
                .collect(),
        );
    }
    s.set_sample_count(d.totals.count);
    s.set_sample_sum(d.totals.sum_seconds);
    let mut m = Metric::from_label(labels);
    m.set_summary(s);
    m
}

/// Per-cgroup metric families, in exposition order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    CallDuration,
    CallLatency,
    Calls,
    Faults,
    FaultDuration,
    FaultLatency,
    ConnClosed,
    AbnormalRatio,
    Retransmits,
    Lost,
}

impl Family {
    pub const ALL: [Family; 10] = [
        Family::CallDuration,
        Family::CallLatency,
        Family::Calls,
        Family::Faults,
        Family::FaultDuration,
        Family::FaultLatency,
        Family::ConnClosed,
        Family::AbnormalRatio,
        Family::Retransmits,
        Family::Lost,
    ];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Family::CallDuration => "socklat_tcp_call_duration_seconds",
            Family::CallLatency => "socklat_tcp_call_latency_seconds",
            Family::Calls => "socklat_tcp_calls_total",
            Family::Faults => "socklat_page_faults_total",
            Family::FaultDuration => "socklat_page_fault_duration_seconds",
            Family::FaultLatency => "socklat_page_fault_latency_seconds",
            Family::ConnClosed => "socklat_tcp_connections_closed_total",
            Family::AbnormalRatio => "socklat_tcp_abnormal_connection_ratio",
            Family::Retransmits => "socklat_tcp_retransmits_total",
            Family::Lost => "socklat_ringbuf_lost_events_total",
        }
    }

    #[must_use]
    pub const fn help(self) -> &'static str {
        match self {
            Family::CallDuration => {
                "Duration of tcp_sendmsg/tcp_recvmsg calls that returned a byte count, since start."
            }
            Family::CallLatency => {
                "Quantiles of tcp_sendmsg/tcp_recvmsg call durations over the window (HdrHistogram)."
            }
            Family::Calls => {
                "Observed tcp_sendmsg/tcp_recvmsg calls by result (ok, eagain, error)."
            }
            Family::Faults => "Page faults by mode (user, kernel).",
            Family::FaultDuration => {
                "Duration of page faults (handle_mm_fault) by fault (minor, major), where the probe mode gives it."
            }
            Family::FaultLatency => {
                "Quantiles of page fault durations over the window, where the probe mode gives them."
            }
            Family::ConnClosed => "TCP connections that reached CLOSE, by outcome.",
            Family::AbnormalRatio => {
                "Abnormal closed TCP connections / all closed, over the window."
            }
            Family::Retransmits => "Retransmitted TCP segments.",
            Family::Lost => "Events a full ring buffer could not take, per cgroup.",
        }
    }

    const fn kind(self) -> &'static str {
        match self {
            Family::CallDuration | Family::FaultDuration => "histogram",
            Family::CallLatency | Family::FaultLatency => "summary",
            Family::AbnormalRatio => "gauge",
            Family::Calls
            | Family::Faults
            | Family::Lost
            | Family::ConnClosed
            | Family::Retransmits => "counter",
        }
    }

    /// Whether `row` has samples of this family.
    #[must_use]
    pub fn has_samples(self, row: &Row) -> bool {
        let snap = row.snap.as_ref();
        match self {
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
            Family::Lost => row.lost > 0 || row.labels.cgroup == "_other",
        }
    }
}

const CALLS: [&str; 2] = ["sendmsg", "recvmsg"];
/// The `fault` label of the fault duration series, in `fault_durations` order.
const FAULT_KINDS: [&str; 2] = ["minor", "major"];

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
    for (i, (k, v)) in [
        ("cgroup", &l.cgroup),
        ("namespace", &l.namespace),
        ("pod", &l.pod),
        ("container", &l.container),
    ]
    .into_iter()
    .enumerate()
    {
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

/// `# HELP` and `# TYPE` of a per-cgroup family.
pub fn write_header(f: Family, out: &mut String) {
    let _ = writeln!(out, "# HELP {} {}", f.name(), f.help());
    let _ = writeln!(out, "# TYPE {} {}", f.name(), f.kind());
}

/// The samples of one row in one family.
#[expect(clippy::cast_precision_loss, reason = "exposition values are f64")]
pub fn write_row(f: Family, row: &Row, out: &mut String) {
    if !f.has_samples(row) {
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
                        for (result, n) in [
                            ("ok", c.results.ok),
                            ("eagain", c.results.eagain),
                            ("error", c.results.error),
                        ] {
                            let l = with_pairs(&with_call, &[("result", result)]);
                            sample(out, name, "", &l, None, n as f64);
                        }
                    }
                }
            }
        }
        Family::Faults => {
            for (mode, n) in [("user", row.faults.user), ("kernel", row.faults.kernel)] {
                sample(
                    out,
                    name,
                    "",
                    &with_pairs(&labels, &[("mode", mode)]),
                    None,
                    n as f64,
                );
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
        Family::Lost => sample(out, name, "", &labels, None, row.lost as f64),
    }
}

/// The global families (events, untracked connections, probes, cgroups tracked, build).
fn global_families(s: &Scrape) -> Vec<MetricFamily> {
    let mut events = family(
        "socklat_events_total",
        "Events received by the daemon from the kernel, per signal.",
        MetricType::COUNTER,
    );
    for sig in Signal::ALL {
        events.mut_metric().push(counter(
            vec![pair("signal", sig.name())],
            s.events[sig as usize],
        ));
    }
    let mut untracked = family(
        "socklat_tcp_connections_untracked_total",
        "Connections that reached CLOSE with no state in the kernel's table (opened before the \
         daemon started, or evicted from the full table), classified from their final state only.",
        MetricType::COUNTER,
    );
    untracked
        .mut_metric()
        .push(counter(vec![], s.untracked_connections));
    let mut misses = family(
        "socklat_probe_misses_total",
        "Probe runs the kernel skipped instead of running (bpf_prog_info.recursion_misses, e.g. \
         a fentry program preempted on the CPU); the calls they would have seen are not counted.",
        MetricType::COUNTER,
    );
    misses.mut_metric().push(counter(vec![], s.probe_misses));
    let mut probe = family(
        "socklat_probe_info",
        "Probe mode in use per signal (1).",
        MetricType::GAUGE,
    );
    for (sig, mode) in &s.probes {
        probe.mut_metric().push(gauge(
            vec![pair("signal", sig.name()), pair("mode", mode.name())],
            1.0,
        ));
    }
    let mut tracked = family(
        "socklat_cgroups_tracked",
        "Cgroups with their own series now.",
        MetricType::GAUGE,
    );
    #[expect(clippy::cast_precision_loss, reason = "small count")]
    tracked.mut_metric().push(gauge(vec![], s.tracked as f64));
    let mut build = family(
        "socklat_build_info",
        "Build of the daemon (1).",
        MetricType::GAUGE,
    );
    build
        .mut_metric()
        .push(gauge(vec![pair("version", env!("CARGO_PKG_VERSION"))], 1.0));
    [events, untracked, misses, probe, tracked, build]
        .into_iter()
        .filter(|f| !f.get_metric().is_empty())
        .collect()
}

/// Writes the global families through the prometheus crate's encoder.
pub fn write_globals(s: &Scrape, out: &mut String) {
    TextEncoder::new()
        .encode_utf8(&global_families(s), out)
        .expect("families built here are well-formed");
}

/// The `_other` row with no data, shown when the scrape has none, so that the lost-events
/// series exists from the first scrape.
fn default_other() -> Row {
    Row {
        labels: other_labels(),
        snap: None,
        faults: FaultCounts::default(),
        lost: 0,
        retransmits: 0,
    }
}

/// Calls `flush` with the exposition in pieces of roughly `chunk` bytes.
pub fn stream(s: &Scrape, chunk: usize, mut flush: impl FnMut(&str)) {
    let fallback = default_other();
    let has_other = s.rows.iter().any(|r| r.labels.cgroup == "_other");
    let extra: &[Row] = if has_other {
        &[]
    } else {
        std::slice::from_ref(&fallback)
    };
    let mut out = String::with_capacity(chunk + 4096);
    for f in Family::ALL {
        let rows = || s.rows.iter().chain(extra);
        if !rows().any(|r| f.has_samples(r)) {
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
    write_globals(s, &mut out);
    flush(&out);
}

/// Renders a whole scrape as text exposition.
#[must_use]
pub fn render(s: &Scrape) -> String {
    let mut all = String::new();
    stream(s, 1 << 16, |piece| all.push_str(piece));
    all
}

/// Builds the metric families of a scrape with the prometheus crate's data model: the
/// reference the streaming writer is tested against.
#[cfg(test)]
#[must_use]
#[expect(
    clippy::too_many_lines,
    reason = "one block per metric family, in design order"
)]
pub fn families(s: &Scrape) -> Vec<MetricFamily> {
    let mut dur = family(
        "socklat_tcp_call_duration_seconds",
        "Duration of tcp_sendmsg/tcp_recvmsg calls that returned a byte count, since start.",
        MetricType::HISTOGRAM,
    );
    let mut lat = family(
        "socklat_tcp_call_latency_seconds",
        "Quantiles of tcp_sendmsg/tcp_recvmsg call durations over the window (HdrHistogram).",
        MetricType::SUMMARY,
    );
    let mut calls = family(
        "socklat_tcp_calls_total",
        "Observed tcp_sendmsg/tcp_recvmsg calls by result (ok, eagain, error).",
        MetricType::COUNTER,
    );
    let mut faults = family(
        "socklat_page_faults_total",
        "Page faults by mode (user, kernel).",
        MetricType::COUNTER,
    );
    let mut fdur = family(
        "socklat_page_fault_duration_seconds",
        "Duration of page faults (handle_mm_fault) by fault (minor, major), where the probe mode gives it.",
        MetricType::HISTOGRAM,
    );
    let mut flat = family(
        "socklat_page_fault_latency_seconds",
        "Quantiles of page fault durations over the window, where the probe mode gives them.",
        MetricType::SUMMARY,
    );
    let mut closed = family(
        Family::ConnClosed.name(),
        Family::ConnClosed.help(),
        MetricType::COUNTER,
    );
    let mut ratio = family(
        Family::AbnormalRatio.name(),
        Family::AbnormalRatio.help(),
        MetricType::GAUGE,
    );
    let mut retrans = family(
        Family::Retransmits.name(),
        Family::Retransmits.help(),
        MetricType::COUNTER,
    );
    let mut lost = family(
        "socklat_ringbuf_lost_events_total",
        "Events a full ring buffer could not take, per cgroup.",
        MetricType::COUNTER,
    );
    for row in &s.rows {
        let l = &row.labels;
        if let Some(c) = row.snap.as_ref().and_then(|s| s.conns.as_ref()) {
            for o in Outcome::ALL {
                closed.mut_metric().push(counter(
                    cgroup_labels(l, &[("outcome", o.name())]),
                    c.outcomes[o as usize],
                ));
            }
            if let Some(r) = c.window_ratio {
                ratio.mut_metric().push(gauge(cgroup_labels(l, &[]), r));
            }
        }
        if Family::Retransmits.has_samples(row) {
            retrans
                .mut_metric()
                .push(counter(cgroup_labels(l, &[]), row.retransmits));
        }
    }
    for row in &s.rows {
        let l = &row.labels;
        if let Some(snap) = &row.snap {
            for (i, call) in CALLS.iter().enumerate() {
                let Some(c) = &snap.calls[i] else { continue };
                dur.mut_metric()
                    .push(histogram(cgroup_labels(l, &[("call", call)]), &c.durations));
                lat.mut_metric()
                    .push(summary(cgroup_labels(l, &[("call", call)]), &c.durations));
                for (result, n) in [
                    ("ok", c.results.ok),
                    ("eagain", c.results.eagain),
                    ("error", c.results.error),
                ] {
                    calls.mut_metric().push(counter(
                        cgroup_labels(l, &[("call", call), ("result", result)]),
                        n,
                    ));
                }
            }
            for (kind, d) in FAULT_KINDS.iter().zip(&snap.fault_durations) {
                if let Some(d) = d {
                    fdur.mut_metric()
                        .push(histogram(cgroup_labels(l, &[("fault", kind)]), d));
                    flat.mut_metric()
                        .push(summary(cgroup_labels(l, &[("fault", kind)]), d));
                }
            }
        }
        if row.faults != FaultCounts::default() {
            faults.mut_metric().push(counter(
                cgroup_labels(l, &[("mode", "user")]),
                row.faults.user,
            ));
            faults.mut_metric().push(counter(
                cgroup_labels(l, &[("mode", "kernel")]),
                row.faults.kernel,
            ));
        }
        if row.lost > 0 || l.cgroup == "_other" {
            lost.mut_metric()
                .push(counter(cgroup_labels(l, &[]), row.lost));
        }
    }
    if !s.rows.iter().any(|r| r.labels.cgroup == "_other") {
        // Present from the first scrape, so that alerts on losses have a series.
        lost.mut_metric()
            .push(counter(cgroup_labels(&other_labels(), &[]), 0));
    }

    let mut all: Vec<MetricFamily> = [
        dur, lat, calls, faults, fdur, flat, closed, ratio, retrans, lost,
    ]
    .into_iter()
    .filter(|f| !f.get_metric().is_empty())
    .collect();
    all.extend(global_families(s));
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Aggregator;
    use observer_common::{Event, EventKind};
    use std::time::Duration;

    fn scrape_with_traffic() -> Scrape {
        let mut a = Aggregator::new(8, Duration::from_mins(1));
        for i in 0..100u64 {
            a.record_shared(
                &Event {
                    cgroup_id: 42,
                    value: 10_000 + i * 1000,
                    kind: EventKind::SendMsg as u32,
                    result: 10,
                },
                0,
            );
        }
        for (ns, result) in [
            (2_000, 0),
            (3_000, 0),
            (900_000, observer_common::FAULT_MAJOR),
        ] {
            a.record_shared(
                &Event {
                    cgroup_id: 42,
                    value: ns,
                    kind: EventKind::PageFault as u32,
                    result,
                },
                0,
            );
        }
        for o in [Outcome::Normal, Outcome::Refused, Outcome::Normal] {
            a.record_shared(
                &Event {
                    cgroup_id: 42,
                    value: 0,
                    kind: EventKind::ConnClose as u32,
                    result: o as i32,
                },
                0,
            );
        }
        let snap = a.snapshot(0).pop();
        Scrape {
            rows: vec![Row {
                labels: Arc::new(Labels {
                    cgroup: "/test/\"quoted\"".into(),
                    ..Labels::default()
                }),
                snap,
                faults: FaultCounts {
                    user: 5,
                    kernel: 1,
                    ..FaultCounts::default()
                },
                lost: 3,
                retransmits: 2,
            }],
            probes: vec![(Signal::SendMsg, ProbeMode::Tracepoint)],
            tracked: 1,
            events: [100, 0, 0, 0],
            untracked_connections: 4,
            probe_misses: 0,
        }
    }

    #[test]
    fn exposition_has_the_design_names_and_values() {
        let text = render(&scrape_with_traffic());
        let want = [
            "# TYPE socklat_tcp_call_duration_seconds histogram",
            "socklat_tcp_call_duration_seconds_bucket{cgroup=\"/test/\\\"quoted\\\"\",namespace=\"\",pod=\"\",container=\"\",call=\"sendmsg\",le=\"+Inf\"} 100",
            "socklat_tcp_call_duration_seconds_count{cgroup=\"/test/\\\"quoted\\\"\",namespace=\"\",pod=\"\",container=\"\",call=\"sendmsg\"} 100",
            "socklat_tcp_call_latency_seconds{cgroup=\"/test/\\\"quoted\\\"\",namespace=\"\",pod=\"\",container=\"\",call=\"sendmsg\",quantile=\"0.99\"}",
            "socklat_tcp_calls_total{cgroup=\"/test/\\\"quoted\\\"\",namespace=\"\",pod=\"\",container=\"\",call=\"sendmsg\",result=\"ok\"} 100",
            "socklat_page_faults_total{cgroup=\"/test/\\\"quoted\\\"\",namespace=\"\",pod=\"\",container=\"\",mode=\"user\"} 5",
            "socklat_ringbuf_lost_events_total{cgroup=\"/test/\\\"quoted\\\"\",namespace=\"\",pod=\"\",container=\"\"} 3",
            "socklat_ringbuf_lost_events_total{cgroup=\"_other\",namespace=\"\",pod=\"\",container=\"\"} 0",
            "socklat_events_total{signal=\"sendmsg\"} 100",
            "socklat_tcp_connections_untracked_total 4",
            "socklat_probe_misses_total 0",
            "socklat_page_fault_duration_seconds_count{cgroup=\"/test/\\\"quoted\\\"\",namespace=\"\",pod=\"\",container=\"\",fault=\"minor\"} 2",
            "socklat_page_fault_duration_seconds_count{cgroup=\"/test/\\\"quoted\\\"\",namespace=\"\",pod=\"\",container=\"\",fault=\"major\"} 1",
            "socklat_tcp_connections_closed_total{cgroup=\"/test/\\\"quoted\\\"\",namespace=\"\",pod=\"\",container=\"\",outcome=\"refused\"} 1",
            "socklat_tcp_abnormal_connection_ratio{cgroup=\"/test/\\\"quoted\\\"\",namespace=\"\",pod=\"\",container=\"\"} 0.3333333333333333",
            "socklat_tcp_retransmits_total{cgroup=\"/test/\\\"quoted\\\"\",namespace=\"\",pod=\"\",container=\"\"} 2",
            "socklat_probe_info{signal=\"sendmsg\",mode=\"tracepoint\"} 1",
            "socklat_cgroups_tracked 1",
            "socklat_build_info{version=",
        ];
        for w in want {
            assert!(text.contains(w), "missing {w}\n{text}");
        }
        // Median of 10..109 us is 59 us; HdrHistogram 2 sigfigs answers within 1%.
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("socklat_tcp_call_latency_seconds{") && l.contains("quantile=\"0.5\"")
            })
            .unwrap();
        let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((v - 59e-6).abs() / 59e-6 < 0.01, "{line}");
    }

    /// The streaming writer produces exactly what the prometheus crate's encoder produces
    /// for the same data, escaping included.
    #[test]
    fn streaming_writer_matches_the_prometheus_encoder() {
        let mut s = scrape_with_traffic();
        let mut second = s.rows[0].clone();
        second.labels = Arc::new(Labels {
            cgroup: "/a\\b\nc".into(),
            namespace: "ns".into(),
            pod: "p".into(),
            container: "c".into(),
        });
        second.faults = FaultCounts::default();
        second.lost = 0;
        second.retransmits = 0;
        s.rows.push(second);
        for scrape in [s, Scrape::default()] {
            let mut reference = String::new();
            TextEncoder::new()
                .encode_utf8(&families(&scrape), &mut reference)
                .unwrap();
            let mut pieces = 0;
            let mut streamed = String::new();
            stream(&scrape, 256, |p| {
                pieces += 1;
                streamed.push_str(p);
            });
            let first_diff = streamed
                .lines()
                .zip(reference.lines())
                .find(|(a, b)| a != b);
            assert_eq!(first_diff, None, "streamed vs reference");
            assert_eq!(streamed.len(), reference.len());
            assert_eq!(render(&scrape), reference);
            assert!(pieces > 1 || scrape.rows.is_empty());
        }
    }

    #[test]
    fn self_metrics_exist_on_an_empty_scrape() {
        let text = render(&Scrape::default());
        assert!(text.contains("socklat_events_total{signal=\"pagefaults\"} 0"));
        assert!(text.contains("socklat_ringbuf_lost_events_total{cgroup=\"_other\""));
        assert!(text.contains("socklat_cgroups_tracked 0"));
        assert!(!text.contains("socklat_tcp_call_duration_seconds"));
    }

    /// promtool (Debian package `prometheus`) is the reference parser; where it is not
    /// installed this test says so and checks nothing else.
    #[test]
    fn promtool_accepts_the_exposition() {
        use std::io::Write;

        let text = render(&scrape_with_traffic());
        let Ok(mut child) = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!("promtool not installed: exposition checked by the privileged tests");
            return;
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every metric the operator files reference (dashboard, recording and alerting rules)
    /// is a sample name the daemon exports: a renamed metric breaks this test, not a pager.
    #[test]
    fn dashboard_and_rules_reference_only_exported_metrics() {
        let text = render(&scrape_with_traffic());
        let exported: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
        let mut checked = 0;
        for file in [
            "grafana/socklat.json",
            "prometheus/rules.yaml",
            "prometheus/rules_test.yaml",
        ] {
            let body = std::fs::read_to_string(format!("{deploy}/{file}")).unwrap();
            let mut rest = body.as_str();
            while let Some(i) = rest.find("socklat_") {
                // A recording rule's name (`level:socklat_...:op`) is not a daemon metric.
                let record = rest[..i].ends_with(':');
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                if record || rest.starts_with(':') {
                    continue;
                }
                assert!(
                    exported.contains(name.as_str()),
                    "{file} references {name}, which the daemon does not export"
                );
                checked += 1;
            }
        }
        assert!(checked > 20, "only {checked} references found");
    }
}
