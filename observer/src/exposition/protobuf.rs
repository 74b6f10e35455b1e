//! The protobuf exposition format (`application/vnd.google.protobuf;
//! proto=io.prometheus.client.MetricFamily; encoding=delimited`): every family as one
//! length-delimited `MetricFamily` message, streamed.
//!
//! A per-cgroup family is written one metric at a time: its length is added up first (the
//! metrics of one row at a time are built and measured, then dropped) and written as the
//! message's length prefix, then the same metrics are built again and encoded as they come.
//! Memory stays one row's metrics plus the output chunk whatever the number of cgroups,
//! for twice the building work; each family is still exactly one message, as Prometheus's
//! own client libraries send it.
//!
//! Histograms carry the classic buckets, the native buckets or both (`--histograms`). A
//! native histogram always has `zero_threshold` > 0 (Prometheus 2.42 recognises a native
//! histogram only from that or from bucket counts, and decides it for the whole family from
//! its first metric) and, when it has no bucket at all, the no-op span that newer
//! Prometheus versions look for. Count, sum and buckets are of one snapshot, so they agree
//! (2.42 fails the whole scrape when the buckets add up to more than the count).

use observer_common::{FaultCounts, Outcome};
use prost::Message;

use super::family::{CALLS, FAULT_KINDS, FAULT_MODES, Family, Kind};
use super::proto::{
    Bucket, BucketSpan, Counter, Gauge, Histogram, LabelPair, METRIC_FIELD, Metric, MetricFamily,
    MetricType, Quantile, Summary,
};
use super::text::{global_families, has_samples};
use super::{Row, Scrape};
use crate::aggregate::native::{SCHEMA, ZERO_THRESHOLD_SECONDS};
use crate::aggregate::{BUCKETS_NS, DurationSnapshot, QUANTILES};
use crate::histograms::Histograms;

/// The media type of the format, as the response's `Content-Type`.
pub const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

fn pair(name: &str, value: &str) -> LabelPair {
    LabelPair {
        name: Some(name.to_string()),
        value: Some(value.to_string()),
    }
}

/// A row's labels plus `extra`, sorted by name (as Prometheus's clients send them).
fn labels(row: &Row, extra: &[(&str, &str)]) -> Vec<LabelPair> {
    let mut out: Vec<(&str, &str)> = row
        .labels
        .pairs()
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    out.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.into_iter().map(|(k, v)| pair(k, v)).collect()
}

fn family_head(f: Family) -> MetricFamily {
    let kind = match f.kind() {
        Kind::Counter => MetricType::Counter,
        Kind::Gauge => MetricType::Gauge,
        Kind::Histogram => MetricType::Histogram,
        Kind::Summary => MetricType::Summary,
    };
    MetricFamily {
        name: Some(f.name().to_string()),
        help: Some(f.help().to_string()),
        r#type: Some(kind as i32),
        metric: Vec::new(),
    }
}

#[expect(clippy::cast_precision_loss, reason = "exposition values are f64")]
fn counter(label: Vec<LabelPair>, v: u64) -> Metric {
    Metric {
        label,
        counter: Some(Counter {
            value: Some(v as f64),
        }),
        ..Metric::default()
    }
}

fn gauge(label: Vec<LabelPair>, v: f64) -> Metric {
    Metric {
        label,
        gauge: Some(Gauge { value: Some(v) }),
        ..Metric::default()
    }
}

/// The histogram of one duration snapshot, with the parts `hist` asks for.
#[expect(clippy::cast_precision_loss, reason = "ns to seconds")]
#[must_use]
pub fn histogram(d: &DurationSnapshot, hist: Histograms) -> Histogram {
    let t = &d.totals;
    let mut h = Histogram {
        sample_count: Some(t.count),
        sample_sum: Some(t.sum_seconds),
        ..Histogram::default()
    };
    if hist.classic() {
        h.bucket = BUCKETS_NS
            .iter()
            .zip(&t.cumulative)
            .map(|(ns, c)| Bucket {
                cumulative_count: Some(*c),
                upper_bound: Some(*ns as f64 / 1e9),
            })
            .collect();
    }
    if hist.native() {
        let (spans, deltas) = t.native.spans();
        h.schema = Some(SCHEMA);
        h.zero_threshold = Some(ZERO_THRESHOLD_SECONDS);
        h.zero_count = Some(t.native.zero_count);
        h.positive_span = spans
            .into_iter()
            .map(|(offset, length)| BucketSpan {
                offset: Some(offset),
                length: Some(length),
            })
            .collect();
        if h.positive_span.is_empty() && t.native.zero_count == 0 {
            // The no-op span: "native, no observations yet" for Prometheus >= 2.46.
            h.positive_span.push(BucketSpan {
                offset: Some(0),
                length: Some(0),
            });
        }
        h.positive_delta = deltas;
    }
    h
}

#[expect(clippy::cast_precision_loss, reason = "ns to seconds")]
fn summary(d: &DurationSnapshot) -> Summary {
    Summary {
        sample_count: Some(d.totals.count),
        sample_sum: Some(d.totals.sum_seconds),
        quantile: d
            .window_quantiles_ns
            .map(|qs| {
                QUANTILES
                    .iter()
                    .zip(qs)
                    .map(|(q, ns)| Quantile {
                        quantile: Some(*q),
                        value: Some(ns as f64 / 1e9),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The metrics of one row in per-cgroup family `f`, as the text writer has its samples.
fn metrics_of(f: Family, row: &Row, hist: Histograms, out: &mut Vec<Metric>) {
    if !has_samples(f, row) {
        return;
    }
    let snap = row.snap.as_ref();
    match f {
        Family::CallDuration | Family::CallLatency | Family::Calls => {
            let Some(snap) = snap else { return };
            for (call, c) in CALLS.iter().zip(&snap.calls) {
                let Some(c) = c else { continue };
                match f {
                    Family::CallDuration => out.push(Metric {
                        label: labels(row, &[("call", call)]),
                        histogram: Some(histogram(&c.durations, hist)),
                        ..Metric::default()
                    }),
                    Family::CallLatency => out.push(Metric {
                        label: labels(row, &[("call", call)]),
                        summary: Some(summary(&c.durations)),
                        ..Metric::default()
                    }),
                    _ => {
                        for (result, n) in c.results.by_label() {
                            out.push(counter(
                                labels(row, &[("call", call), ("result", result)]),
                                n,
                            ));
                        }
                    }
                }
            }
        }
        Family::Faults => {
            let FaultCounts { user, kernel, .. } = row.faults;
            for (mode, n) in FAULT_MODES.iter().zip([user, kernel]) {
                out.push(counter(labels(row, &[("mode", mode)]), n));
            }
        }
        Family::FaultDuration | Family::FaultLatency => {
            let Some(snap) = snap else { return };
            for (kind, d) in FAULT_KINDS.iter().zip(&snap.fault_durations) {
                let Some(d) = d else { continue };
                let label = labels(row, &[("fault", kind)]);
                out.push(if f == Family::FaultDuration {
                    Metric {
                        label,
                        histogram: Some(histogram(d, hist)),
                        ..Metric::default()
                    }
                } else {
                    Metric {
                        label,
                        summary: Some(summary(d)),
                        ..Metric::default()
                    }
                });
            }
        }
        Family::ConnClosed => {
            if let Some(c) = snap.and_then(|s| s.conns.as_ref()) {
                for o in Outcome::ALL {
                    out.push(counter(
                        labels(row, &[("outcome", o.name())]),
                        c.outcomes[o as usize],
                    ));
                }
            }
        }
        Family::AbnormalRatio => {
            if let Some(r) = snap
                .and_then(|s| s.conns.as_ref())
                .and_then(|c| c.window_ratio)
            {
                out.push(gauge(labels(row, &[]), r));
            }
        }
        Family::Retransmits => out.push(counter(labels(row, &[]), row.retransmits)),
        Family::Untracked => {
            let n = snap
                .and_then(|s| s.conns.as_ref())
                .map_or(0, |c| c.untracked);
            out.push(counter(labels(row, &[]), n));
        }
        Family::Lost => out.push(counter(labels(row, &[]), row.lost)),
        _ => {}
    }
}

/// One of the global families, from the same data the text writer encodes.
fn global(f: &prometheus::proto::MetricFamily) -> MetricFamily {
    let kind = match f.get_field_type() {
        prometheus::proto::MetricType::GAUGE => MetricType::Gauge,
        _ => MetricType::Counter,
    };
    MetricFamily {
        name: Some(f.name().to_string()),
        help: Some(f.help().to_string()),
        r#type: Some(kind as i32),
        metric: f
            .get_metric()
            .iter()
            .map(|m| {
                let label = m
                    .get_label()
                    .iter()
                    .map(|l| pair(l.name(), l.value()))
                    .collect();
                if kind == MetricType::Gauge {
                    gauge(label, m.get_gauge().get_value())
                } else {
                    Metric {
                        label,
                        counter: Some(Counter {
                            value: Some(m.get_counter().get_value()),
                        }),
                        ..Metric::default()
                    }
                }
            })
            .collect(),
    }
}

/// Calls `flush` with the exposition in pieces of roughly `chunk` bytes.
pub fn stream(s: &Scrape, hist: Histograms, chunk: usize, mut flush: impl FnMut(&[u8])) {
    let fallback = Row::empty_other();
    let has_other = s.rows.iter().any(|r| r.labels.is_other());
    let extra: &[Row] = if has_other {
        &[]
    } else {
        std::slice::from_ref(&fallback)
    };
    let rows = || s.rows.iter().chain(extra);
    let mut out: Vec<u8> = Vec::with_capacity(chunk + 4096);
    let mut metrics = Vec::new();
    for f in Family::PER_CGROUP {
        if !rows().any(|r| has_samples(f, r)) {
            continue;
        }
        let head = family_head(f).encode_to_vec();
        let mut len = head.len();
        for row in rows() {
            metrics.clear();
            metrics_of(f, row, hist, &mut metrics);
            len += metrics
                .iter()
                .map(|m| prost::encoding::message::encoded_len(METRIC_FIELD, m))
                .sum::<usize>();
        }
        prost::encoding::encode_varint(len as u64, &mut out);
        out.extend_from_slice(&head);
        for row in rows() {
            metrics.clear();
            metrics_of(f, row, hist, &mut metrics);
            for m in &metrics {
                prost::encoding::message::encode(METRIC_FIELD, m, &mut out);
            }
            if out.len() >= chunk {
                flush(&out);
                out.clear();
            }
        }
    }
    for f in global_families(s) {
        out.extend_from_slice(&global(&f).encode_length_delimited_to_vec());
    }
    flush(&out);
}

/// Renders a whole scrape in the protobuf format.
#[must_use]
pub fn render(s: &Scrape, hist: Histograms) -> Vec<u8> {
    let mut all = Vec::new();
    stream(s, hist, 1 << 16, |piece| all.extend_from_slice(piece));
    all
}

/// Decodes a delimited protobuf exposition (tests, benchmarks, `socklat top`'s checks).
///
/// # Errors
/// When the bytes are not a sequence of length-delimited `MetricFamily` messages.
pub fn decode(mut bytes: &[u8]) -> Result<Vec<MetricFamily>, prost::DecodeError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        out.push(MetricFamily::decode_length_delimited(&mut bytes)?);
    }
    Ok(out)
}

/// The series Prometheus stores from these families when it scrapes protobuf with native
/// histograms on (2.42's `--enable-feature=native-histograms`, 3.x's default): one per
/// native histogram (whose classic buckets it then ignores); `_bucket` per classic bucket
/// plus the +Inf one, `_sum` and `_count` for a classic histogram; one per quantile plus
/// `_sum` and `_count` for a summary; one per counter or gauge.
#[must_use]
pub fn series(families: &[MetricFamily]) -> usize {
    families
        .iter()
        .flat_map(|f| &f.metric)
        .map(|m| {
            if let Some(h) = &m.histogram {
                let native = h.zero_threshold.is_some_and(|z| z > 0.0)
                    || h.zero_count.is_some_and(|z| z > 0)
                    || !h.positive_delta.is_empty();
                if native { 1 } else { h.bucket.len() + 3 }
            } else if let Some(s) = &m.summary {
                s.quantile.len() + 2
            } else {
                1
            }
        })
        .sum()
}
