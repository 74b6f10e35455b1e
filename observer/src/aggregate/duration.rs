//! Durations of one signal in one cgroup: an `HdrHistogram` per window slice for the
//! sliding-window quantiles, plus cumulative Prometheus bucket counts since start, both
//! classic ([`BUCKETS_NS`]) and native ([`super::native`]), from the same events.
//!
//! The active slice records into one dense histogram; when time moves into a new slice it
//! is sealed into a sparse list of (value, count) and reset. Quantiles merge the sealed
//! slices still inside the window with the active one. Memory per aggregator is one dense
//! histogram plus what the sealed slices hold (at most one entry per distinct bucket).

use std::collections::VecDeque;

use hdrhistogram::Histogram;

use super::SLICES;
use super::native::NativeBuckets;

/// Largest duration tracked exactly (100 s, in ns); longer calls are clamped and counted.
pub const MAX_TRACKED_NS: u64 = 100_000_000_000;
/// `HdrHistogram` significant figures (1% worst-case relative error; see README).
pub const SIGFIGS: u8 = 2;
/// Quantiles exported by the summaries.
pub const QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

/// Prometheus bucket upper bounds in ns: 1 us * 2^(k/4), k = 0..=93 (1 us .. ~10 s), four
/// per octave, so that `histogram_quantile` lands within about 10% (worst case 19%).
pub static BUCKETS_NS: std::sync::LazyLock<Vec<u64>> = std::sync::LazyLock::new(|| {
    (0..=93)
        .map(|k| {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "bounded positive values below 2^34"
            )]
            let ns = (1000.0 * 2f64.powf(f64::from(k) / 4.0)).round() as u64;
            ns
        })
        .collect()
});

/// A histogram with the daemon's bounds and precision.
#[must_use]
pub fn new_histogram<C: hdrhistogram::Counter>() -> Histogram<C> {
    Histogram::new_with_bounds(1, MAX_TRACKED_NS, SIGFIGS).expect("static histogram bounds")
}
/// Durations of one signal in one cgroup.
pub struct DurationAgg {
    /// u16 counters halve the memory of the one dense histogram per series; a counter
    /// about to overflow seals the slice early (see [`Self::record`]).
    active: Histogram<u16>,
    active_epoch: u64,
    sealed: VecDeque<(u64, Vec<(u64, u32)>)>,
    /// Cumulative counts per bucket of [`BUCKETS_NS`], plus one for +Inf (last).
    buckets: Vec<u64>,
    /// Native exponential buckets of the same events.
    native: NativeBuckets,
    sum_ns: u128,
    count: u64,
    clamped: u64,
}

impl DurationAgg {
    #[must_use]
    pub fn new(epoch: u64) -> Self {
        Self {
            active: new_histogram(),
            active_epoch: epoch,
            sealed: VecDeque::new(),
            buckets: vec![0; BUCKETS_NS.len() + 1],
            native: NativeBuckets::default(),
            sum_ns: 0,
            count: 0,
            clamped: 0,
        }
    }

    /// Moves the active slice into the sealed list if `epoch` is past it, and forgets
    /// sealed slices that have left the window.
    pub fn advance(&mut self, epoch: u64) {
        if epoch != self.active_epoch {
            self.seal();
            self.active_epoch = epoch;
        }
        while self
            .sealed
            .front()
            .is_some_and(|(e, _)| e + SLICES <= epoch)
        {
            self.sealed.pop_front();
        }
    }

    /// Moves the active histogram's counts into the sealed list, tagged with its epoch.
    fn seal(&mut self) {
        if !self.active.is_empty() {
            let sparse: Vec<(u64, u32)> = self
                .active
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), u32::from(v.count_at_value())))
                .collect();
            self.sealed.push_back((self.active_epoch, sparse));
            self.active.reset();
        }
    }

    /// Records one duration (ns). The caller has called [`Self::advance`] for this batch.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        let v = if ns > MAX_TRACKED_NS {
            self.clamped += 1;
            MAX_TRACKED_NS
        } else {
            ns.max(1)
        };
        if self.active.count_at(v) == u16::MAX {
            // The u16 counter is full (HdrHistogram would saturate silently): seal what we
            // have, with the same epoch, and start afresh.
            self.seal();
        }
        self.active.saturating_record(v);
        let b = BUCKETS_NS.partition_point(|&bound| bound < ns);
        self.buckets[b] += 1;
        self.native.record(ns);
        self.sum_ns += u128::from(ns);
        self.count += 1;
    }

    /// Quantiles over the window, in ns (`None` when nothing was recorded in the window).
    pub fn window_quantiles(
        &mut self,
        epoch: u64,
        scratch: &mut Histogram<u32>,
    ) -> Option<[u64; QUANTILES.len()]> {
        self.advance(epoch);
        scratch.reset();
        for (_, slice) in &self.sealed {
            for &(v, c) in slice {
                scratch.saturating_record_n(v, c);
            }
        }
        for v in self.active.iter_recorded() {
            scratch.saturating_record_n(v.value_iterated_to(), u32::from(v.count_at_value()));
        }
        if scratch.is_empty() {
            return None;
        }
        Some(QUANTILES.map(|q| scratch.value_at_quantile(q)))
    }

    /// Snapshot of the cumulative (since start) part: classic and native buckets, sum and
    /// count, all of one moment (Prometheus refuses a whole scrape in which a native
    /// histogram's buckets add up to more than its count).
    #[must_use]
    pub fn totals(&self) -> HistogramTotals {
        let mut cumulative = Vec::with_capacity(self.buckets.len());
        let mut acc = 0;
        for c in &self.buckets {
            acc += c;
            cumulative.push(acc);
        }
        #[expect(clippy::cast_precision_loss, reason = "seconds as f64 for exposition")]
        let sum_seconds = self.sum_ns as f64 / 1e9;
        HistogramTotals {
            cumulative,
            native: self.native.clone(),
            sum_seconds,
            count: self.count,
        }
    }

    /// Values above [`MAX_TRACKED_NS`] that were clamped for the quantiles.
    #[must_use]
    pub fn clamped(&self) -> u64 {
        self.clamped
    }
}

/// Cumulative histogram data as Prometheus wants it.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramTotals {
    /// Cumulative count at each bound of [`BUCKETS_NS`], then the +Inf count.
    pub cumulative: Vec<u64>,
    /// Native buckets; their total equals `count`.
    pub native: NativeBuckets,
    pub sum_seconds: f64,
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Rng, quantile};

    #[test]
    fn window_quantiles_match_a_brute_force_sort() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut agg = DurationAgg::new(0);
        let mut scratch = new_histogram();
        let mut values = Vec::new();
        for _ in 0..50_000 {
            let v = rng.duration();
            values.push(v);
            agg.record(v);
        }
        values.sort_unstable();
        let q = agg.window_quantiles(0, &mut scratch).expect("recorded");
        for (i, quant) in QUANTILES.iter().enumerate() {
            let exact = quantile(&values, *quant);
            // HdrHistogram answers with the highest value equivalent to the exact one.
            assert!(
                scratch.equivalent(exact, q[i]),
                "q{quant}: hdr {} vs exact {exact}",
                q[i]
            );
        }
    }

    #[test]
    fn rotation_drops_exactly_the_slices_that_left_the_window() {
        let mut rng = Rng(42);
        let mut agg = DurationAgg::new(0);
        let mut scratch = new_histogram();
        // One batch per slice for 20 slices; each slice has its own distribution.
        let mut per_slice: Vec<Vec<u64>> = Vec::new();
        for epoch in 0..20u64 {
            agg.advance(epoch);
            let scale = 1 + epoch % 7;
            let vals: Vec<u64> = (0..997).map(|_| rng.duration() * scale).collect();
            for &v in &vals {
                agg.record(v);
            }
            per_slice.push(vals);
            let lo = usize::try_from((epoch + 1).saturating_sub(SLICES)).unwrap();
            let mut window: Vec<u64> = per_slice[lo..].iter().flatten().copied().collect();
            window.sort_unstable();
            let q = agg.window_quantiles(epoch, &mut scratch).unwrap();
            for (i, quant) in QUANTILES.iter().enumerate() {
                let exact = quantile(&window, *quant).min(MAX_TRACKED_NS);
                assert!(
                    scratch.equivalent(exact, q[i]),
                    "epoch {epoch} q{quant}: {} vs {exact}",
                    q[i]
                );
            }
        }
        // Time passes with no events: the window empties.
        assert_eq!(agg.window_quantiles(20 + SLICES, &mut scratch), None);
        // Totals are since start and never drop.
        assert_eq!(agg.totals().count, 20 * 997);
    }

    #[test]
    fn buckets_are_cumulative_and_le_inclusive() {
        let mut agg = DurationAgg::new(0);
        // More than a u16 counter holds, in one bucket: sealed early, nothing lost.
        for _ in 0..70_000 {
            agg.record(5_000_000);
        }
        let mut scratch = new_histogram();
        let q = agg.window_quantiles(0, &mut scratch).unwrap();
        assert!(scratch.equivalent(q[0], 5_000_000));
        assert_eq!(scratch.len(), 70_000);
        let mut agg = DurationAgg::new(0);
        agg.record(1000); // exactly 1 us: in the first bucket (le="1e-06")
        agg.record(1001);
        agg.record(20_000_000_000); // 20 s: only +Inf
        let t = agg.totals();
        assert_eq!(t.cumulative[0], 1);
        assert_eq!(t.cumulative[1], 2);
        assert_eq!(t.cumulative[BUCKETS_NS.len() - 1], 2);
        assert_eq!(*t.cumulative.last().unwrap(), 3);
        assert_eq!(t.count, 3);
        assert!((t.sum_seconds - 20.000_002_001).abs() < 1e-9);
        assert_eq!(agg.clamped(), 0);
        agg.record(MAX_TRACKED_NS + 1);
        assert_eq!(agg.clamped(), 1);
        // The native buckets saw the same events, the clamped one included.
        assert_eq!(agg.totals().native.total(), agg.totals().count);
    }

    #[test]
    fn native_and_classic_buckets_agree_on_every_count() {
        let mut rng = Rng(7);
        let mut agg = DurationAgg::new(0);
        for _ in 0..10_000 {
            agg.record(rng.duration() / 3);
        }
        let t = agg.totals();
        assert_eq!(t.native.total(), t.count);
        assert_eq!(*t.cumulative.last().unwrap(), t.count);
    }

    #[test]
    fn bucket_bounds_span_1us_to_10s_four_per_octave() {
        assert_eq!(BUCKETS_NS[0], 1000);
        assert_eq!(BUCKETS_NS[4], 2000);
        let last = *BUCKETS_NS.last().unwrap();
        assert!((9_500_000_000..=10_500_000_000).contains(&last), "{last}");
        assert!(BUCKETS_NS.windows(2).all(|w| w[0] < w[1]));
    }
}
