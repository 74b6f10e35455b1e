//! Test-only: the same exposition built with the prometheus crate's data model and encoder,
//! the reference the streaming writer is compared with byte for byte; and the tests of the
//! exposition as a whole.

use observer_common::{FaultCounts, Outcome};
use prometheus::proto::{Bucket, LabelPair, Metric, MetricFamily, Quantile, Summary};

use super::family::{CALLS, FAULT_KINDS, FAULT_MODES, Family};
use super::text::{counter, family, gauge, global_families, has_samples};
use super::{Row, Scrape};
use crate::aggregate::{BUCKETS_NS, DurationSnapshot, QUANTILES};
use crate::labels::Labels;

fn pair(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

fn cgroup_labels(l: &Labels, extra: &[(&str, &str)]) -> Vec<LabelPair> {
    l.pairs()
        .iter()
        .chain(extra)
        .map(|(n, v)| pair(n, v))
        .collect()
}

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

/// The metrics of one row in per-cgroup family `f`.
fn metrics_of(f: Family, row: &Row) -> Vec<Metric> {
    let l = &row.labels;
    let mut out = Vec::new();
    let snap = row.snap.as_ref();
    match f {
        Family::CallDuration | Family::CallLatency | Family::Calls => {
            for (call, c) in CALLS
                .iter()
                .zip(snap.map(|s| &s.calls).into_iter().flatten())
            {
                let Some(c) = c else { continue };
                match f {
                    Family::CallDuration => {
                        out.push(histogram(cgroup_labels(l, &[("call", call)]), &c.durations));
                    }
                    Family::CallLatency => {
                        out.push(summary(cgroup_labels(l, &[("call", call)]), &c.durations));
                    }
                    _ => {
                        for (result, n) in c.results.by_label() {
                            out.push(counter(
                                cgroup_labels(l, &[("call", call), ("result", result)]),
                                n,
                            ));
                        }
                    }
                }
            }
        }
        Family::Faults if row.faults != FaultCounts::default() => {
            for (mode, n) in FAULT_MODES.iter().zip([row.faults.user, row.faults.kernel]) {
                out.push(counter(cgroup_labels(l, &[("mode", mode)]), n));
            }
        }
        Family::FaultDuration | Family::FaultLatency => {
            let durations = snap.map(|s| &s.fault_durations).into_iter().flatten();
            for (kind, d) in FAULT_KINDS.iter().zip(durations) {
                let Some(d) = d else { continue };
                let labels = cgroup_labels(l, &[("fault", kind)]);
                out.push(if f == Family::FaultDuration {
                    histogram(labels, d)
                } else {
                    summary(labels, d)
                });
            }
        }
        Family::ConnClosed => {
            if let Some(c) = snap.and_then(|s| s.conns.as_ref()) {
                for o in Outcome::ALL {
                    out.push(counter(
                        cgroup_labels(l, &[("outcome", o.name())]),
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
                out.push(gauge(cgroup_labels(l, &[]), r));
            }
        }
        Family::Retransmits if has_samples(f, row) => {
            out.push(counter(cgroup_labels(l, &[]), row.retransmits));
        }
        Family::Untracked if has_samples(f, row) => {
            let n = snap
                .and_then(|s| s.conns.as_ref())
                .map_or(0, |c| c.untracked);
            out.push(counter(cgroup_labels(l, &[]), n));
        }
        Family::Lost if has_samples(f, row) => out.push(counter(cgroup_labels(l, &[]), row.lost)),
        _ => {}
    }
    out
}

/// Builds the metric families of a scrape with the prometheus crate's data model.
fn families(s: &Scrape) -> Vec<MetricFamily> {
    let fallback = Row::empty_other();
    let has_other = s.rows.iter().any(|r| r.labels.is_other());
    let mut all: Vec<MetricFamily> = Family::PER_CGROUP
        .into_iter()
        .map(|f| {
            let mut fam = family(f);
            for row in s.rows.iter().chain((!has_other).then_some(&fallback)) {
                fam.mut_metric().extend(metrics_of(f, row));
            }
            fam
        })
        .filter(|f| !f.get_metric().is_empty())
        .collect();
    all.extend(global_families(s));
    all
}

fn push(a: &mut crate::aggregate::Aggregator, ev: &observer_common::Event) {
    a.push_shared(&ev.to_bytes(), crate::aggregate::Now::default());
}

/// A scrape of one cgroup with calls, faults (minor and major) and closed connections.
pub(crate) fn scrape_with_traffic() -> Scrape {
    let mut a = crate::aggregate::Aggregator::new(8, std::time::Duration::from_mins(1));
    for i in 0..100u64 {
        push(
            &mut a,
            &observer_common::Event {
                cgroup_id: 42,
                value: 10_000 + i * 1000,
                kind: observer_common::EventKind::SendMsg as u32,
                result: 10,
            },
        );
    }
    for (ns, result) in [
        (2_000, 0),
        (3_000, 0),
        (900_000, observer_common::FAULT_MAJOR),
    ] {
        push(
            &mut a,
            &observer_common::Event {
                cgroup_id: 42,
                value: ns,
                kind: observer_common::EventKind::PageFault as u32,
                result,
            },
        );
    }
    for (o, untracked) in [
        (Outcome::Normal, 0),
        (Outcome::Refused, 0),
        (Outcome::Normal, observer_common::CLOSE_UNTRACKED),
    ] {
        push(
            &mut a,
            &observer_common::Event {
                cgroup_id: 42,
                value: 0,
                kind: observer_common::EventKind::ConnClose as u32,
                result: o as i32 | untracked,
            },
        );
    }
    let snap = a.snapshot(0).pop();
    Scrape {
        rows: vec![Row {
            labels: std::sync::Arc::new(Labels {
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
        probes: vec![(
            crate::signal::Signal::SendMsg,
            crate::probe_mode::ProbeMode::Tracepoint,
        )],
        tracked: 1,
        events: [100, 0, 0, 0],
        probe_misses: 0,
        undecodable: 0,
        ring_create_failures: 0,
        ring_memory: 3 << 20,
        ring_budget: 96 << 20,
        ring_growths_denied: 7,
        connections_evicted: 4,
        starts_evicted: [5, 0, 1],
        tables: vec![("connections", 65536), ("threads", 4096)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exposition::{render, stream};
    use prometheus::TextEncoder;
    use std::sync::Arc;

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
            "socklat_tcp_connections_untracked_total{cgroup=\"/test/\\\"quoted\\\"\",namespace=\"\",pod=\"\",container=\"\"} 1",
            "socklat_ring_memory_bytes 3145728",
            "socklat_ring_memory_budget_bytes 100663296",
            "socklat_ring_growths_denied_total 7",
            "socklat_tcp_connections_evicted_total 4",
            "socklat_call_starts_evicted_total{table=\"syscall\"} 5",
            "socklat_call_starts_evicted_total{table=\"fault\"} 1",
            "socklat_kernel_table_capacity{table=\"threads\"} 4096",
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
            stream(&scrape, crate::histograms::Histograms::Both, 256, |p| {
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
        for hist in [
            crate::histograms::Histograms::Classic,
            crate::histograms::Histograms::Native,
            crate::histograms::Histograms::Both,
        ] {
            let text = crate::exposition::render_with(&scrape_with_traffic(), hist);
            match crate::testutil::promtool_check(&text) {
                None => {
                    eprintln!("promtool not installed: exposition checked by the privileged tests");
                    return;
                }
                Some(Err(e)) => panic!("promtool ({}): {e}", hist.name()),
                Some(Ok(())) => {}
            }
        }
    }

    /// Every metric the operator files reference (dashboard, recording and alerting rules)
    /// is a sample name the daemon exports: a renamed metric breaks this test, not a pager.
    #[test]
    fn dashboard_and_rules_reference_only_exported_metrics() {
        let text = render(&scrape_with_traffic());
        let mut exported: std::collections::BTreeSet<String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_string)
            .collect();
        // A native histogram is one series named after its family (protobuf only).
        let native = crate::exposition::protobuf::render(
            &scrape_with_traffic(),
            crate::histograms::Histograms::Native,
        );
        for f in crate::exposition::protobuf::decode(&native).unwrap() {
            if f.metric.iter().any(|m| m.histogram.is_some()) {
                exported.extend(f.name);
            }
        }
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
                    exported.contains(&name),
                    "{file} references {name}, which the daemon does not export"
                );
                checked += 1;
            }
        }
        assert!(checked > 20, "only {checked} references found");
    }
}
