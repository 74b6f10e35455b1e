//! Tests of the protobuf exposition: it carries the same samples as the text format for
//! every `--histograms` setting, its native histograms are consistent and recognisable as
//! native by Prometheus 2.42, and `histogram_quantile` as 2.42 computes it on them is
//! within the bound the schema gives.

use std::collections::BTreeMap;

use super::parse::parse;
use super::proto::{Counter, Metric, MetricFamily, MetricType};
use super::protobuf::{self, decode, series};
use super::reference::scrape_with_traffic;
use super::render_with;
use crate::aggregate::native::{ZERO_THRESHOLD_SECONDS, upper_bound};
use crate::aggregate::{DurationAgg, QUANTILES};
use crate::histograms::Histograms;
use crate::testutil::{Rng, quantile};

/// A sample as (name, labels with `le`/`quantile` normalised as numbers) -> value bits.
type Samples = BTreeMap<(String, BTreeMap<String, String>), u64>;

fn norm(k: &str, v: &str) -> String {
    if k == "le" || k == "quantile" {
        let x: f64 = if v == "+Inf" {
            f64::INFINITY
        } else {
            v.parse().unwrap()
        };
        format!("{x:?}")
    } else {
        v.to_string()
    }
}

fn text_samples(text: &str) -> Samples {
    parse(text)
        .unwrap()
        .into_iter()
        .map(|s| {
            let labels = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), norm(k, v)))
                .collect();
            ((s.name, labels), s.value.to_bits())
        })
        .collect()
}

/// The text-format samples a protobuf exposition stands for (classic histograms expanded
/// to `_bucket`, `_sum`, `_count`; a histogram without classic buckets to nothing, as the
/// text writer leaves such families out).
fn proto_samples(families: &[MetricFamily]) -> Samples {
    let mut out = Samples::new();
    for f in families {
        let name = f.name.clone().unwrap();
        for m in &f.metric {
            let labels: BTreeMap<String, String> = m
                .label
                .iter()
                .map(|l| (l.name.clone().unwrap(), l.value.clone().unwrap()))
                .collect();
            let mut put = |suffix: &str, extra: Option<(&str, f64)>, v: f64| {
                let mut l = labels.clone();
                if let Some((k, x)) = extra {
                    l.insert(k.to_string(), format!("{x:?}"));
                }
                out.insert((format!("{name}{suffix}"), l), v.to_bits());
            };
            #[expect(clippy::cast_precision_loss, reason = "test counts")]
            if let Some(h) = &m.histogram {
                if h.bucket.is_empty() {
                    continue;
                }
                for b in &h.bucket {
                    put(
                        "_bucket",
                        Some(("le", b.upper_bound.unwrap())),
                        b.cumulative_count.unwrap() as f64,
                    );
                }
                let count = h.sample_count.unwrap() as f64;
                put("_bucket", Some(("le", f64::INFINITY)), count);
                put("_sum", None, h.sample_sum.unwrap());
                put("_count", None, count);
            } else if let Some(s) = &m.summary {
                for q in &s.quantile {
                    put(
                        "",
                        Some(("quantile", q.quantile.unwrap())),
                        q.value.unwrap(),
                    );
                }
                put("_sum", None, s.sample_sum.unwrap());
                put("_count", None, s.sample_count.unwrap() as f64);
            } else if let Some(c) = &m.counter {
                put("", None, c.value.unwrap());
            } else if let Some(g) = &m.gauge {
                put("", None, g.value.unwrap());
            }
        }
    }
    out
}

#[test]
fn protobuf_and_text_carry_the_same_samples_for_every_setting() {
    let scrape = scrape_with_traffic();
    for hist in [Histograms::Classic, Histograms::Native, Histograms::Both] {
        let mut pieces = 0;
        let mut bytes = Vec::new();
        protobuf::stream(&scrape, hist, 128, |p| {
            pieces += 1;
            bytes.extend_from_slice(p);
        });
        assert!(pieces > 1, "streamed in pieces");
        assert_eq!(bytes, protobuf::render(&scrape, hist));
        let families = decode(&bytes).unwrap();
        let text = render_with(&scrape, hist);
        assert_eq!(
            proto_samples(&families),
            text_samples(&text),
            "{}",
            hist.name()
        );
        // Every family once, in the text's order, with its help and type.
        let names: Vec<&str> = families.iter().filter_map(|f| f.name.as_deref()).collect();
        let text_names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let histogram_families = [
            "socklat_tcp_call_duration_seconds",
            "socklat_page_fault_duration_seconds",
        ];
        let expected: Vec<&str> = if hist.classic() {
            text_names.clone()
        } else {
            // The text leaves the histogram families out; protobuf has them, native.
            names.clone()
        };
        assert_eq!(names, expected);
        for h in histogram_families {
            assert!(names.contains(&h), "{h} in protobuf ({})", hist.name());
            assert_eq!(text_names.contains(&h), hist.classic(), "{h} in text");
        }
        for f in &families {
            assert!(f.help.as_ref().is_some_and(|h| !h.is_empty()));
            assert!(!f.metric.is_empty());
        }
    }
}

#[test]
fn native_histograms_are_consistent_and_recognised_as_native() {
    let scrape = scrape_with_traffic();
    for hist in [Histograms::Classic, Histograms::Native, Histograms::Both] {
        let families = decode(&protobuf::render(&scrape, hist)).unwrap();
        let mut histograms = 0;
        for f in &families {
            if f.r#type != Some(MetricType::Histogram as i32) {
                continue;
            }
            for (i, m) in f.metric.iter().enumerate() {
                let h = m.histogram.as_ref().unwrap();
                histograms += 1;
                assert_eq!(h.bucket.is_empty(), !hist.classic());
                if !hist.native() {
                    assert_eq!(h.schema, None);
                    assert_eq!(h.zero_threshold, None);
                    assert!(h.positive_span.is_empty());
                    continue;
                }
                // 2.42's test on the family's first metric, which decides for all.
                if i == 0 {
                    assert!(h.zero_threshold.unwrap() > 0.0);
                }
                assert_eq!(h.schema, Some(4));
                let span_len: u32 = h.positive_span.iter().map(|s| s.length.unwrap()).sum();
                assert_eq!(span_len as usize, h.positive_delta.len());
                let mut acc = 0i64;
                let mut total = h.zero_count.unwrap();
                for d in &h.positive_delta {
                    acc += d;
                    assert!(acc >= 0, "negative bucket");
                    total += u64::try_from(acc).unwrap();
                }
                assert_eq!(
                    total,
                    h.sample_count.unwrap(),
                    "buckets add up to the count"
                );
            }
        }
        // Two calls' histogram (sendmsg only) and two fault kinds.
        assert_eq!(histograms, 3, "{}", hist.name());
    }
}

#[test]
fn series_per_setting() {
    let scrape = scrape_with_traffic();
    let count = |h| series(&decode(&protobuf::render(&scrape, h)).unwrap());
    let text = |h| parse(&render_with(&scrape, h)).unwrap().len();
    // Classic: every histogram is 94 buckets + Inf + sum + count, in both formats.
    assert_eq!(count(Histograms::Classic), text(Histograms::Classic));
    assert_eq!(count(Histograms::Both), count(Histograms::Native));
    // Native: each of the 3 histograms is one series instead of 97.
    assert_eq!(
        count(Histograms::Classic) - count(Histograms::Native),
        3 * 96
    );
    // The text has no histogram families then: 3 sums and counts fewer again.
    assert_eq!(count(Histograms::Native) - text(Histograms::Native), 3);
}

/// `histogram_quantile` as Prometheus 2.42 computes it on a native histogram of positive
/// observations: the first bucket (the zero bucket `[0, zt]` first) whose cumulative count
/// reaches `q * count`, interpolated linearly inside it (promql/quantile.go).
fn quantile_242(h: &super::proto::Histogram, q: f64) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "test counts")]
    let count = h.sample_count.unwrap() as f64;
    let rank = q * count;
    let mut buckets: Vec<(f64, f64, f64)> = Vec::new();
    #[expect(clippy::cast_precision_loss, reason = "test counts")]
    buckets.push((0.0, ZERO_THRESHOLD_SECONDS, h.zero_count.unwrap() as f64));
    let mut deltas = h.positive_delta.iter();
    let mut c = 0i64;
    // The index after the previous span: a later span's offset is the gap from there.
    let mut next = 0;
    for (n, s) in h.positive_span.iter().enumerate() {
        let start = if n == 0 {
            s.offset.unwrap()
        } else {
            next + s.offset.unwrap()
        };
        let len = i32::try_from(s.length.unwrap()).unwrap();
        for i in start..start + len {
            c += deltas.next().unwrap();
            #[expect(clippy::cast_precision_loss, reason = "test counts")]
            buckets.push((upper_bound(i - 1), upper_bound(i), c as f64));
        }
        next = start + len;
    }
    let mut cum = 0.0;
    for (lo, hi, n) in buckets {
        cum += n;
        if cum >= rank && n > 0.0 {
            let r = rank - (cum - n);
            return lo + (hi - lo) * (r / n);
        }
    }
    f64::NAN
}

/// The bound the schema gives: the answer and the exact quantile share one bucket
/// `(l, l * 2^(1/16)]`, so they differ by less than 4.43% of the value, for smooth
/// distributions and for point masses alike.
#[test]
fn histogram_quantile_of_2_42_is_within_the_schema_bound() {
    let bound = 2f64.powf(1.0 / 16.0) - 1.0;
    assert!(bound < 0.05);
    let mut rng = Rng(0x5eed);
    let sets: Vec<Vec<u64>> = vec![
        (0..20_000).map(|_| rng.duration()).collect(),
        // Point masses, some right above a bucket's lower bound.
        (0..5000)
            .map(|i| [1_001_000, 2_000_001, 40_000_000, 1_000_000_001][i % 4])
            .collect(),
        (0..3000).map(|i| 50_000 + (i % 7) * 10_000).collect(),
    ];
    for mut values in sets {
        let mut agg = DurationAgg::new(0);
        for &v in &values {
            agg.record(v);
        }
        let snap = crate::aggregate::DurationSnapshot {
            totals: agg.totals(),
            window_quantiles_ns: None,
        };
        let h = protobuf::histogram(&snap, Histograms::Native);
        values.sort_unstable();
        for q in QUANTILES {
            #[expect(clippy::cast_precision_loss, reason = "test values")]
            let exact = quantile(&values, q) as f64 / 1e9;
            let got = quantile_242(&h, q);
            let err = (got - exact).abs() / exact;
            assert!(err <= bound + 1e-9, "q{q}: {got} vs exact {exact} ({err})");
        }
    }
}

/// A known-good encoding, byte for byte: `a` as a counter of value 1.
#[test]
fn wire_bytes_of_a_minimal_family() {
    let f = MetricFamily {
        name: Some("a".into()),
        help: None,
        r#type: Some(MetricType::Counter as i32),
        metric: vec![Metric {
            counter: Some(Counter { value: Some(1.0) }),
            ..Metric::default()
        }],
    };
    let bytes = prost::Message::encode_length_delimited_to_vec(&f);
    let want = [
        0x12, // length 18
        0x0a, 0x01, b'a', // name
        0x18, 0x00, // type COUNTER
        0x22, 0x0b, // metric, 11 bytes
        0x1a, 0x09, // counter, 9 bytes
        0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, // value 1.0
    ];
    assert_eq!(bytes, want);
    assert_eq!(decode(&want).unwrap(), vec![f]);
}
