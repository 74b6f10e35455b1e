//! The table of `socklat top`: per-cgroup samples read from one scrape, rates between two,
//! and the text of the table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::Column;
use crate::aggregate::QUANTILES;
use crate::exposition::Family;
use crate::exposition::family::CALLS;
use crate::exposition::parse::{ParseError, parse};

/// Identity of a row: the daemon's per-cgroup labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub cgroup: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

impl Key {
    /// `namespace/pod/container` where the daemon named the pod, `pod/container` (UID and
    /// id, shortened) where it only knows the ids, else the cgroup path.
    #[must_use]
    pub fn name(&self) -> String {
        if !self.namespace.is_empty() {
            format!("{}/{}/{}", self.namespace, self.pod, self.container)
        } else if !self.pod.is_empty() {
            let short = |s: &str, n: usize| s.chars().take(n).collect::<String>();
            format!(
                "pod {} ctr {}",
                short(&self.pod, 8),
                short(&self.container, 12)
            )
        } else {
            self.cgroup.clone()
        }
    }
}

/// What one scrape says about one cgroup.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CgroupSample {
    /// [sendmsg, recvmsg] x [P50, P90, P99], seconds.
    pub quantiles: [[Option<f64>; 3]; 2],
    pub calls: f64,
    pub abnormal: Option<f64>,
    pub faults: f64,
    pub lost: f64,
}

/// One scrape: per-cgroup samples.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub cgroups: BTreeMap<Key, CgroupSample>,
}

impl Scrape {
    /// Reads the daemon's exposition text.
    ///
    /// # Errors
    /// When the text is not exposition text.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut cgroups: BTreeMap<Key, CgroupSample> = BTreeMap::new();
        for sample in parse(text)? {
            let Some(cgroup) = sample.label("cgroup") else {
                continue;
            };
            let get = |k: &str| sample.label(k).unwrap_or("").to_string();
            let key = Key {
                cgroup: cgroup.to_string(),
                namespace: get("namespace"),
                pod: get("pod"),
                container: get("container"),
            };
            let call = sample
                .label("call")
                .and_then(|c| CALLS.iter().position(|name| *name == c));
            let s = cgroups.entry(key).or_default();
            let value = sample.value;
            match sample.name.as_str() {
                n if n == Family::CallLatency.name() => {
                    let q = sample
                        .label("quantile")
                        .and_then(|q| q.parse::<f64>().ok())
                        .and_then(|q| QUANTILES.iter().position(|x| (x - q).abs() < 1e-9));
                    if let (Some(c), Some(q)) = (call, q) {
                        s.quantiles[c][q] = Some(value);
                    }
                }
                n if n == Family::Calls.name() => s.calls += value,
                n if n == Family::AbnormalRatio.name() => s.abnormal = Some(value),
                n if n == Family::Faults.name() => s.faults += value,
                n if n == Family::Lost.name() => s.lost += value,
                _ => {}
            }
        }
        Ok(Self { cgroups })
    }
}

/// A row of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub key: Key,
    pub name: String,
    pub quantiles: [[Option<f64>; 3]; 2],
    pub calls_per_sec: Option<f64>,
    pub abnormal: Option<f64>,
    pub faults_per_sec: Option<f64>,
    pub lost: f64,
}

impl Row {
    pub(super) fn sort_value(&self, c: Column) -> f64 {
        let opt = |v: Option<f64>| v.unwrap_or(-1.0);
        match c {
            Column::Name => 0.0,
            Column::SendP50 => opt(self.quantiles[0][0]),
            Column::SendP90 => opt(self.quantiles[0][1]),
            Column::SendP99 => opt(self.quantiles[0][2]),
            Column::RecvP50 => opt(self.quantiles[1][0]),
            Column::RecvP90 => opt(self.quantiles[1][1]),
            Column::RecvP99 => opt(self.quantiles[1][2]),
            Column::Calls => opt(self.calls_per_sec),
            Column::Abnormal => opt(self.abnormal),
            Column::Faults => opt(self.faults_per_sec),
            Column::Lost => self.lost,
        }
    }
}

/// Rows from the current scrape, with rates against the previous one (`dt` apart).
#[must_use]
pub fn rows(prev: Option<&Scrape>, cur: &Scrape, dt: Duration) -> Vec<Row> {
    let secs = dt.as_secs_f64();
    cur.cgroups
        .iter()
        .map(|(k, s)| {
            let before = prev.and_then(|p| p.cgroups.get(k));
            let rate = |now: f64, then: Option<f64>| {
                then.filter(|_| secs > 0.0)
                    .map(|t| ((now - t) / secs).max(0.0))
            };
            Row {
                key: k.clone(),
                name: k.name(),
                quantiles: s.quantiles,
                calls_per_sec: rate(s.calls, before.map(|b| b.calls)),
                abnormal: s.abnormal,
                faults_per_sec: rate(s.faults, before.map(|b| b.faults)),
                lost: s.lost,
            }
        })
        .collect()
}

/// A duration for the table: `850us`, `1.25ms`, `12.5ms`, `1.20s`; `-` when absent.
#[must_use]
pub fn format_seconds(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(s) if s < 1e-3 => format!("{:.0}us", s * 1e6),
        Some(s) if s < 1e-2 => format!("{:.2}ms", s * 1e3),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1e3),
        Some(s) => format!("{s:.2}s"),
    }
}

/// Parses what [`format_seconds`] printed back into seconds (for scripts and tests).
#[must_use]
pub fn parse_seconds(s: &str) -> Option<f64> {
    if let Some(v) = s.strip_suffix("us") {
        return v.parse::<f64>().ok().map(|v| v / 1e6);
    }
    if let Some(v) = s.strip_suffix("ms") {
        return v.parse::<f64>().ok().map(|v| v / 1e3);
    }
    s.strip_suffix('s')?.parse().ok()
}

fn format_rate(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(r) if r >= 10_000.0 => format!("{:.0}k", r / 1000.0),
        Some(r) => format!("{r:.0}"),
    }
}

/// How the table is shown.
#[derive(Clone, Debug)]
pub struct View {
    pub sort: Column,
    pub descending: bool,
    pub filter: String,
}

/// Width of the numeric columns.
const NUM: usize = 9;

/// The table as text, `width` columns wide at most (names are cut on the left).
#[must_use]
pub fn render(rows: &[Row], view: &View, width: usize) -> String {
    let mut shown: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            view.filter.is_empty()
                || r.name.contains(&view.filter)
                || r.key.cgroup.contains(&view.filter)
        })
        .collect();
    shown.sort_by(|a, b| {
        let o = if view.sort == Column::Name {
            a.name.cmp(&b.name)
        } else {
            a.sort_value(view.sort).total_cmp(&b.sort_value(view.sort))
        };
        let o = if view.descending { o.reverse() } else { o };
        o.then_with(|| a.name.cmp(&b.name))
    });
    let name_width = width
        .saturating_sub(NUM * (Column::ALL.len() - 1))
        .clamp(12, 60);
    let mut out = String::new();
    for c in Column::ALL {
        let mut h = c.header().to_string();
        if c == view.sort {
            h.push(if view.descending { 'v' } else { '^' });
        }
        if c == Column::Name {
            let _ = write!(out, "{h:<name_width$}");
        } else {
            let _ = write!(out, "{h:>NUM$}");
        }
    }
    out.push('\n');
    for r in shown {
        let n = r.name.chars().count();
        let name: String = if n > name_width {
            let tail: String = r.name.chars().skip(n - (name_width - 1)).collect();
            format!("~{tail}")
        } else {
            r.name.clone()
        };
        let _ = write!(out, "{name:<name_width$}");
        for call in r.quantiles {
            for q in call {
                let _ = write!(out, "{:>NUM$}", format_seconds(q));
            }
        }
        let abnormal = r
            .abnormal
            .map_or_else(|| "-".to_string(), |a| format!("{:.1}%", a * 100.0));
        let _ = write!(
            out,
            "{:>NUM$}{abnormal:>NUM$}{:>NUM$}{:>NUM$}",
            format_rate(r.calls_per_sec),
            format_rate(r.faults_per_sec),
            format!("{:.0}", r.lost)
        );
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP x
socklat_tcp_call_latency_seconds{cgroup="/a",namespace="",pod="",container="",call="sendmsg",quantile="0.5"} 0.0001
socklat_tcp_call_latency_seconds{cgroup="/a",namespace="",pod="",container="",call="recvmsg",quantile="0.99"} 0.025
socklat_tcp_calls_total{cgroup="/a",namespace="",pod="",container="",call="sendmsg",result="ok"} 100
socklat_tcp_calls_total{cgroup="/a",namespace="",pod="",container="",call="recvmsg",result="ok"} 100
socklat_page_faults_total{cgroup="/a",namespace="",pod="",container="",mode="user"} 50
socklat_tcp_call_latency_seconds{cgroup="/k",namespace="shop",pod="web-0",container="app",call="recvmsg",quantile="0.99"} 0.002
socklat_tcp_abnormal_connection_ratio{cgroup="/k",namespace="shop",pod="web-0",container="app"} 0.25
socklat_ringbuf_lost_events_total{cgroup="_other",namespace="",pod="",container=""} 3
socklat_events_total{signal="sendmsg"} 5
"#;

    #[test]
    fn rows_rates_and_table() {
        let first = Scrape::parse(TEXT).unwrap();
        let second = Scrape::parse(
            &TEXT
                .replace("result=\"ok\"} 100", "result=\"ok\"} 300")
                .replace("mode=\"user\"} 50", "mode=\"user\"} 150"),
        )
        .unwrap();
        let r = rows(Some(&first), &second, Duration::from_secs(2));
        assert_eq!(r.len(), 3);
        let a = r.iter().find(|r| r.key.cgroup == "/a").unwrap();
        assert_eq!(a.calls_per_sec, Some(200.0));
        assert_eq!(a.faults_per_sec, Some(50.0));
        assert_eq!(a.quantiles[0][0], Some(0.0001));
        assert_eq!(a.quantiles[1][2], Some(0.025));
        let k = r.iter().find(|r| r.key.cgroup == "/k").unwrap();
        assert_eq!(k.name, "shop/web-0/app");
        assert_eq!(k.abnormal, Some(0.25));
        let view = View {
            sort: Column::RecvP99,
            descending: true,
            filter: String::new(),
        };
        let t = render(&r, &view, 160);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("NAME") && lines[0].contains("P99v"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("/a ") && lines[1].contains("25.0ms"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("shop/web-0/app") && lines[2].contains("25.0%"),
            "{t}"
        );
        assert!(lines[3].starts_with("_other"), "{t}");
        let only = render(
            &r,
            &View {
                filter: "web".into(),
                ..view
            },
            160,
        );
        assert_eq!(only.lines().count(), 2, "{only}");
    }

    #[test]
    fn seconds_round_trip() {
        for v in [0.000_85, 0.001_25, 0.0125, 0.125, 1.5] {
            let back = parse_seconds(&format_seconds(Some(v))).unwrap();
            assert!((back - v).abs() <= v * 0.01, "{v} -> {back}");
        }
        assert_eq!(format_seconds(None), "-");
        assert_eq!(parse_seconds("-"), None);
    }
}
