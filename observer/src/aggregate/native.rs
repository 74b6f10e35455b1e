//! Native (exponential) histogram buckets of one duration aggregator: Prometheus's sparse
//! buckets of schema [`SCHEMA`], kept from the same events as the classic buckets.
//!
//! Bucket `i` holds durations `v` (seconds) with `2^((i-1)/16) < v <= 2^(i/16)`; durations
//! up to [`ZERO_THRESHOLD_SECONDS`] are counted in the zero bucket. The counts live in one
//! dense window over the indices seen so far (grown when an event falls outside it, which
//! happens at most a few hundred times in a series' life: never per event in steady state).
//!
//! Why schema 4: Prometheus 2.42 (Debian 12's) interpolates `histogram_quantile` linearly
//! inside the bucket that holds the rank, so the answer and the true quantile share one
//! bucket `(l, l*b]` and can differ by up to `b - 1` of the value: 9.05% at schema 3
//! (`b = 2^(1/8)`), 4.43% at schema 4 (`b = 2^(1/16)`). Schema 4 is the coarsest that keeps
//! every quantile within 5% there; Prometheus >= 3.0 interpolates exponentially and does
//! better still. A call duration spans at most the 7 decades from 1 us to 10 s, 372 buckets
//! at this schema, of which only the populated ones are sent.

/// The bucket schema: `2^4 = 16` buckets per power of two.
pub const SCHEMA: i32 = 4;

/// Durations up to this (2^-20 s, about 0.954 us) go to the zero bucket: the power of two
/// just under 1 us, so that the threshold is a bucket boundary of every schema (histograms
/// of several daemons, or at other schemas, then merge without splitting a bucket). It is
/// also what makes Prometheus 2.42 take a histogram for native when it has no buckets yet:
/// 2.42 decides from `zero_threshold > 0` (or counts), not from spans.
pub const ZERO_THRESHOLD_SECONDS: f64 = 1.0 / 1_048_576.0;

/// Prometheus's bucket bounds of schema 4 in [0.5, 1) (`exponentialBounds[4]` in
/// prometheus/model/histogram/generic.go), copied rather than computed so that every value
/// lands in the bucket Prometheus computes its bounds for, to the last bit.
const BOUNDS: [f64; 16] = [
    0.5,
    0.522_136_891_213_706_9,
    0.545_253_866_332_628_8,
    0.569_394_317_378_345_8,
    0.594_603_557_501_360_5,
    0.620_928_906_036_742,
    0.648_419_777_325_504_8,
    0.677_127_773_468_446_3,
    0.707_106_781_186_547_5,
    0.738_413_072_969_749_6,
    0.771_105_412_703_970_4,
    0.805_245_165_974_627,
    0.840_896_415_253_714_4,
    0.878_126_080_186_649_5,
    0.917_004_043_204_671_1,
    0.957_603_280_698_573_5,
];

/// The bits of [`BOUNDS`]: for positive floats the bit patterns order as the values do.
const BOUND_BITS: [u64; 16] = {
    let mut b = [0u64; 16];
    let mut j = 0;
    while j < 16 {
        b[j] = BOUNDS[j].to_bits();
        j += 1;
    }
    b
};

/// The mantissa bits of an f64.
const MANTISSA: u64 = (1 << 52) - 1;

/// For each of 256 equal cells of [0.5, 1) (the top 8 mantissa bits), the first bound at
/// or above the cell's start. Bounds are at least 0.022 apart and a cell 1/512 wide, so a
/// cell holds at most one bound: one comparison finishes the search (instead of a binary
/// search per event).
const CELL_FIRST_BOUND: [u8; 256] = {
    let mut lut = [0u8; 256];
    let mut cell = 0;
    while cell < 256 {
        let low = (1022u64 << 52) | ((cell as u64) << 44);
        let mut j = 0;
        while j < 16 && BOUND_BITS[j] < low {
            j += 1;
        }
        #[expect(clippy::cast_possible_truncation, reason = "at most 16")]
        let first = j as u8;
        lut[cell] = first;
        cell += 1;
    }
    lut
};

/// The index of the bucket that holds `v` seconds (`v` a positive normal number above the
/// zero threshold), as Prometheus's client libraries compute it: `v = frac * 2^exp` with
/// `frac` in [0.5, 1) (frexp), then the first bound at or above `frac`; no floating
/// logarithm, which would round wrongly next to the bounds.
#[must_use]
#[inline]
pub fn bucket_index(v: f64) -> i32 {
    let bits = v.to_bits();
    // An 11-bit field: the cast cannot truncate.
    let exp = ((bits >> 52) & 0x7ff) as i32 - 1022;
    let frac = (bits & MANTISSA) | (1022 << 52);
    let mut j = usize::from(CELL_FIRST_BOUND[((bits >> 44) & 0xff) as usize]);
    if j < BOUNDS.len() && BOUND_BITS[j] < frac {
        j += 1;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "at most 16"
    )]
    let j = j as i32;
    j + (exp - 1) * (1 << SCHEMA)
}

/// The upper bound (inclusive) of bucket `i`, in seconds.
#[must_use]
pub fn upper_bound(i: i32) -> f64 {
    #[expect(clippy::cast_sign_loss, reason = "masked to 0..16")]
    let frac = BOUNDS[(i & ((1 << SCHEMA) - 1)) as usize];
    frac * 2f64.powi((i >> SCHEMA) + 1)
}

/// Cumulative native bucket counts of one aggregator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NativeBuckets {
    /// Durations at or below [`ZERO_THRESHOLD_SECONDS`].
    pub zero_count: u64,
    /// Index of `counts[0]`.
    pub first: i32,
    /// Counts of buckets `first..first + counts.len()`; the ends are non-zero.
    pub counts: Vec<u64>,
}

impl NativeBuckets {
    /// Records one duration (ns).
    #[inline]
    pub fn record(&mut self, ns: u64) {
        #[expect(clippy::cast_precision_loss, reason = "durations as f64 seconds")]
        let v = ns as f64 * 1e-9;
        if v <= ZERO_THRESHOLD_SECONDS {
            self.zero_count += 1;
            return;
        }
        let i = bucket_index(v);
        if self.counts.is_empty() {
            self.first = i;
            self.counts.push(0);
        } else if i < self.first {
            let grow = usize::try_from(self.first - i).unwrap_or(0);
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.first = i;
        } else {
            let at = usize::try_from(i - self.first).unwrap_or(0);
            if at >= self.counts.len() {
                self.counts.resize(at + 1, 0);
            }
        }
        let at = usize::try_from(i - self.first).unwrap_or(0);
        self.counts[at] += 1;
    }

    /// Observations counted, zero bucket included.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.zero_count + self.counts.iter().sum::<u64>()
    }

    /// The populated buckets as Prometheus's sparse spans: `(offset, length)` pairs (the
    /// first offset is the first index, each later one the gap since the previous span)
    /// and the count deltas (the first bucket's count, then each bucket's count minus the
    /// previous one's). Runs of up to two empty buckets stay inside a span, where a zero
    /// count costs less than a new span (as `client_golang` does).
    #[must_use]
    pub fn spans(&self) -> (Vec<(i32, u32)>, Vec<i64>) {
        let mut spans: Vec<(i32, u32)> = Vec::new();
        let mut deltas = Vec::new();
        let mut prev_count: i64 = 0;
        let mut last_index: Option<i32> = None;
        let mut pending_zeros: Vec<i32> = Vec::new();
        for (i, &c) in (self.first..).zip(&self.counts) {
            if c == 0 {
                pending_zeros.push(i);
                continue;
            }
            let count = i64::try_from(c).unwrap_or(i64::MAX);
            match (last_index, spans.last_mut()) {
                (Some(last), Some(span)) if i - last <= 3 => {
                    // Gap of at most two empty buckets: keep them in the span.
                    for _ in &pending_zeros {
                        deltas.push(-prev_count);
                        prev_count = 0;
                    }
                    span.1 += u32::try_from(pending_zeros.len()).unwrap_or(0) + 1;
                }
                (Some(last), _) => spans.push((i - last - 1, 1)),
                (None, _) => spans.push((i, 1)),
            }
            pending_zeros.clear();
            deltas.push(count - prev_count);
            prev_count = count;
            last_index = Some(i);
        }
        (spans, deltas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_match_prometheus_at_the_bounds() {
        // 1 s is the upper bound of bucket 0; just above it is bucket 1; 2 s is bucket 16.
        assert_eq!(bucket_index(1.0), 0);
        assert_eq!(bucket_index(1.000_000_1), 1);
        assert_eq!(bucket_index(2.0), 16);
        assert_eq!(bucket_index(0.5), -16);
        for i in -330..120 {
            let ub = upper_bound(i);
            assert_eq!(bucket_index(ub), i, "upper bound of {i} is in it");
            assert_eq!(bucket_index(ub * (1.0 + 1e-12)), i + 1, "just above {i}");
        }
        // The zero threshold is the upper bound of a bucket (-320).
        assert!((upper_bound(-320) - ZERO_THRESHOLD_SECONDS).abs() < f64::EPSILON);
    }

    /// The cell table gives what a plain search of the bounds gives, for values all over
    /// every cell and right at and next to every bound.
    #[test]
    fn the_cell_table_agrees_with_a_search_of_the_bounds() {
        let reference = |v: f64| {
            let bits = v.to_bits();
            let exp = i32::try_from((bits >> 52) & 0x7ff).unwrap() - 1022;
            let frac = f64::from_bits((bits & MANTISSA) | (1022 << 52));
            i32::try_from(BOUNDS.partition_point(|&b| b < frac)).unwrap() + (exp - 1) * 16
        };
        let mut rng = crate::testutil::Rng(11);
        for _ in 0..200_000 {
            let ns = 954 + rng.next_u64() % 100_000_000_000;
            #[expect(clippy::cast_precision_loss, reason = "test durations")]
            let v = ns as f64 * 1e-9;
            assert_eq!(bucket_index(v), reference(v), "{v}");
        }
        for b in BOUNDS {
            for v in [
                b,
                f64::from_bits(b.to_bits() - 1),
                f64::from_bits(b.to_bits() + 1),
            ] {
                for scale in [1.0, 2.0, 0.25, 1024.0] {
                    assert_eq!(bucket_index(v * scale), reference(v * scale), "{v}");
                }
            }
        }
    }

    #[test]
    fn bucket_width_bounds_the_relative_error_below_5_percent() {
        let b = upper_bound(1) / upper_bound(0);
        assert!((b - 2f64.powf(1.0 / 16.0)).abs() < 1e-12);
        assert!(b - 1.0 < 0.05, "{b}");
    }

    #[test]
    fn counts_spans_and_deltas() {
        let mut n = NativeBuckets::default();
        n.record(500); // under the threshold
        n.record(1_000_000_000); // 1 s: bucket 0
        n.record(1_000_000_000);
        n.record(1_050_000_000); // bucket 2 (2^(1/16) = 1.044)
        n.record(2_000_000_000); // bucket 16
        n.record(900_000_000); // bucket -2 (below the first: the window grows down)
        assert_eq!(n.zero_count, 1);
        assert_eq!(n.total(), 6);
        assert_eq!(n.first, -2);
        let (spans, deltas) = n.spans();
        // -2 (1), -1 empty, 0 (2), 1 empty, 2 (1) in one span; 13 empty; 16 (1).
        assert_eq!(spans, vec![(-2, 5), (13, 1)]);
        assert_eq!(deltas, vec![1, -1, 2, -2, 1, 0]);
        let span_len: u32 = spans.iter().map(|s| s.1).sum();
        assert_eq!(span_len as usize, deltas.len());
        // Deltas add back up to each bucket's count.
        let mut acc = 0;
        let counts: Vec<i64> = deltas
            .iter()
            .map(|d| {
                acc += d;
                acc
            })
            .collect();
        assert_eq!(counts.iter().sum::<i64>(), 5);
        assert!(counts.iter().all(|&c| c >= 0));
    }

    #[test]
    fn no_buckets_means_no_spans() {
        let mut n = NativeBuckets::default();
        n.record(10);
        assert_eq!(n.spans(), (vec![], vec![]));
        assert_eq!(n.total(), 1);
    }
}
