//! What the runs read back: a daemon's endpoints over HTTP, sums of its samples, a process's
//! resident memory, and medians.

use std::net::SocketAddr;
use std::time::Instant;

use observer::exposition::Family;
use observer::exposition::parse::parse;
pub use observer::testutil::http_get;

/// A daemon's /metrics text (empty if it does not answer).
pub fn scrape(addr: SocketAddr) -> String {
    match http_get(addr, "/metrics") {
        Ok((200, body)) => body,
        _ => String::new(),
    }
}

/// [`scrape`], with the milliseconds it took.
pub fn timed_scrape(addr: SocketAddr) -> (f64, String) {
    let t = Instant::now();
    let text = scrape(addr);
    (t.elapsed().as_secs_f64() * 1e3, text)
}

/// The sum of the samples of family `f` in an exposition text (0 for text that does not
/// parse: a daemon that did not answer).
pub fn metric_sum(text: &str, f: Family) -> f64 {
    parse(text)
        .unwrap_or_default()
        .iter()
        .filter(|s| s.name == f.name())
        .map(|s| s.value)
        .sum()
}

/// (events received, lost) in an exposition text, summed over their labels.
pub fn event_counts(text: &str) -> (f64, f64) {
    (
        metric_sum(text, Family::Events),
        metric_sum(text, Family::Lost),
    )
}

/// (`VmRSS`, `RssAnon`, `RssFile` + `RssShmem`) of a process in KiB, 0 where unknown.
pub fn rss_kib(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (
        get("VmRSS:"),
        get("RssAnon:"),
        get("RssFile:") + get("RssShmem:"),
    )
}

/// KiB to MiB for the reports.
#[expect(
    clippy::cast_precision_loss,
    reason = "memory sizes far below 2^52 KiB"
)]
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The median (the upper one of an even count), NaN of nothing.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_medians() {
        let text = "# HELP socklat_events_total events\n\
                    socklat_events_total{signal=\"sendmsg\"} 10\n\
                    socklat_events_total{signal=\"recvmsg\"} 5\n\
                    socklat_ringbuf_lost_events_total{ring=\"shared\"} 2\n\
                    socklat_cgroups_tracked 7\n";
        assert_eq!(event_counts(text), (15.0, 2.0));
        assert!((metric_sum(text, Family::CgroupsTracked) - 7.0).abs() < f64::EPSILON);
        assert!((median(vec![3.0, 1.0, 2.0]) - 2.0).abs() < f64::EPSILON);
        assert!((median(vec![4.0, 1.0, 3.0, 2.0]) - 3.0).abs() < f64::EPSILON);
        assert!(median(Vec::new()).is_nan());
    }
}
