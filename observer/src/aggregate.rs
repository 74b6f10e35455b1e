//! Pure aggregation: per-(cgroup, signal) duration histograms over a sliding window, plus
//! cumulative buckets for Prometheus. No kernel, no I/O: driven by decoded events.
//!
//! Window: the window is cut into [`SLICES`] slices. Each aggregator records into one dense
//! `HdrHistogram` (the active slice); when time moves into a new slice, the active histogram
//! is sealed into a sparse list of (value, count) and reset. Quantiles merge the sealed
//! slices still inside the window with the active one. Memory per aggregator is one dense
//! histogram plus what the sealed slices hold (at most one entry per distinct bucket).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use hdrhistogram::Histogram;
use observer_common::{EAGAIN, Event, EventKind, FAULT_MAJOR, Outcome};

/// Slices per window.
pub const SLICES: u64 = 6;
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

/// A fast hasher for cgroup ids (already well-spread u64 inode numbers); `SipHash` would
/// cost more than the rest of the per-event path.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }
}

/// `HashMap` keyed by cgroup id.
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

fn new_histogram<C: hdrhistogram::Counter>() -> Histogram<C> {
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

    /// Snapshot of the cumulative (since start) part.
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
    pub sum_seconds: f64,
    pub count: u64,
}

/// Results of socket calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallResults {
    pub ok: u64,
    pub eagain: u64,
    pub error: u64,
}

/// One socket call signal (sendmsg or recvmsg) in one cgroup.
pub struct CallAgg {
    pub durations: DurationAgg,
    pub results: CallResults,
}

/// Indexes of the per-signal event counters (`socklat_events_total{signal}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    SendMsg = 0,
    RecvMsg = 1,
    Connections = 2,
    PageFaults = 3,
}

impl Signal {
    pub const ALL: [Signal; 4] = [
        Signal::SendMsg,
        Signal::RecvMsg,
        Signal::Connections,
        Signal::PageFaults,
    ];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Signal::SendMsg => "sendmsg",
            Signal::RecvMsg => "recvmsg",
            Signal::Connections => "connections",
            Signal::PageFaults => "pagefaults",
        }
    }
}

/// Connection outcomes of one cgroup: counts since start, and (closed, abnormal) per
/// window slice for the abnormal-connection ratio.
#[derive(Default)]
pub struct ConnAgg {
    pub outcomes: [u64; Outcome::ALL.len()],
    slices: VecDeque<(u64, u64, u64)>,
}

impl ConnAgg {
    /// Records one closed connection.
    pub fn record(&mut self, outcome: Outcome, epoch: u64) {
        self.outcomes[outcome as usize] += 1;
        let abnormal = u64::from(outcome != Outcome::Normal);
        match self.slices.back_mut() {
            Some((e, closed, ab)) if *e == epoch => {
                *closed += 1;
                *ab += abnormal;
            }
            _ => self.slices.push_back((epoch, 1, abnormal)),
        }
        self.forget_before(epoch);
    }

    fn forget_before(&mut self, epoch: u64) {
        while self
            .slices
            .front()
            .is_some_and(|(e, _, _)| e + SLICES <= epoch)
        {
            self.slices.pop_front();
        }
    }

    /// Abnormal / closed over the window; `None` when nothing closed in it.
    pub fn window_ratio(&mut self, epoch: u64) -> Option<f64> {
        self.forget_before(epoch);
        let (closed, abnormal) = self
            .slices
            .iter()
            .fold((0u64, 0u64), |(c, a), (_, sc, sa)| (c + sc, a + sa));
        #[expect(clippy::cast_precision_loss, reason = "connection counts")]
        let ratio = (closed > 0).then(|| abnormal as f64 / closed as f64);
        ratio
    }
}

/// Everything known about one cgroup (or about `_other`).
#[derive(Default)]
pub struct CgroupAgg {
    pub calls: [Option<Box<CallAgg>>; 2],
    pub conns: Option<Box<ConnAgg>>,
    /// Fault durations, `[minor, major]` (fentry/kprobe modes).
    pub fault_durations: [Option<Box<DurationAgg>>; 2],
    /// Events received per [`Signal`].
    pub events: [u64; Signal::ALL.len()],
}

impl CgroupAgg {
    /// Records one event. `epoch` is the current window slice.
    #[inline]
    pub fn record(&mut self, ev: &Event, epoch: u64) -> bool {
        let (slot, signal) = match EventKind::from_u32(ev.kind) {
            Some(EventKind::SendMsg) => (0, Signal::SendMsg),
            Some(EventKind::RecvMsg) => (1, Signal::RecvMsg),
            Some(EventKind::PageFault) => {
                self.events[Signal::PageFaults as usize] += 1;
                let major = usize::from(ev.result & FAULT_MAJOR != 0);
                let d = self.fault_durations[major]
                    .get_or_insert_with(|| Box::new(DurationAgg::new(epoch)));
                d.advance(epoch);
                d.record(ev.value);
                return true;
            }
            Some(EventKind::ConnClose) => {
                let Some(outcome) = Outcome::from_i32(ev.result) else {
                    return false;
                };
                self.events[Signal::Connections as usize] += 1;
                self.conns.get_or_insert_default().record(outcome, epoch);
                return true;
            }
            None => return false,
        };
        self.events[signal as usize] += 1;
        let call = self.calls[slot].get_or_insert_with(|| {
            Box::new(CallAgg {
                durations: DurationAgg::new(epoch),
                results: CallResults::default(),
            })
        });
        if ev.result >= 0 {
            call.results.ok += 1;
            call.durations.advance(epoch);
            call.durations.record(ev.value);
        } else if ev.result == -EAGAIN {
            call.results.eagain += 1;
        } else {
            call.results.error += 1;
        }
        true
    }
}

/// Where an event went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Into the cgroup's own aggregator, which already existed.
    Known,
    /// A new cgroup was admitted: the caller should give it its own ring.
    New,
    /// Over `--max-cgroups`: aggregated under `_other`.
    Other,
}

/// All aggregators, keyed by cgroup id, with the `_other` overflow.
pub struct Aggregator {
    cgroups: IdMap<CgroupAgg>,
    other: CgroupAgg,
    max_cgroups: usize,
    slice: Duration,
    /// Events whose kind the daemon does not know (a newer kernel object?).
    pub unknown_events: u64,
    /// Events that went to `_other` because the cgroup limit was reached.
    pub overflow_events: u64,
    received: u64,
    forgotten_events: [u64; Signal::ALL.len()],
    scratch: Histogram<u32>,
}

impl Aggregator {
    #[must_use]
    pub fn new(max_cgroups: usize, window: Duration) -> Self {
        let slice = (window / u32::try_from(SLICES).unwrap_or(1)).max(Duration::from_millis(1));
        Self {
            cgroups: IdMap::default(),
            other: CgroupAgg::default(),
            max_cgroups,
            slice,
            unknown_events: 0,
            overflow_events: 0,
            received: 0,
            forgotten_events: [0; Signal::ALL.len()],
            scratch: new_histogram(),
        }
    }

    /// The window slice that `elapsed` (time since start) falls in.
    #[must_use]
    pub fn epoch(&self, elapsed: Duration) -> u64 {
        u64::try_from(elapsed.as_nanos() / self.slice.as_nanos().max(1)).unwrap_or(u64::MAX)
    }

    /// Number of cgroups with their own series.
    #[must_use]
    pub fn tracked(&self) -> usize {
        self.cgroups.len()
    }

    /// Admits `cgroup_id` if there is room; tells where its events go.
    pub fn admit(&mut self, cgroup_id: u64) -> Admission {
        if self.cgroups.contains_key(&cgroup_id) {
            Admission::Known
        } else if self.cgroups.len() < self.max_cgroups {
            self.cgroups.insert(cgroup_id, CgroupAgg::default());
            Admission::New
        } else {
            Admission::Other
        }
    }

    /// A sink for the events of one cgroup's own ring: the cgroup is looked up once per
    /// batch, not once per event.
    pub fn sink(&mut self, cgroup_id: u64, epoch: u64) -> Sink<'_> {
        let agg = match self.cgroups.get_mut(&cgroup_id) {
            Some(agg) => agg,
            None => &mut self.other,
        };
        Sink {
            agg,
            unknown: &mut self.unknown_events,
            received: &mut self.received,
            epoch,
        }
    }

    /// Records read from the kernel so far (decodable or not).
    #[must_use]
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Records one event from the shared ring, admitting its cgroup when there is room.
    pub fn record_shared(&mut self, ev: &Event, epoch: u64) -> Admission {
        self.received += 1;
        let admission = self.admit(ev.cgroup_id);
        let agg = match admission {
            Admission::Other => {
                self.overflow_events += 1;
                &mut self.other
            }
            _ => self
                .cgroups
                .get_mut(&ev.cgroup_id)
                .expect("admitted cgroup exists"),
        };
        if !agg.record(ev, epoch) {
            self.unknown_events += 1;
        }
        admission
    }

    /// Builds the data a scrape renders.
    pub fn snapshot(&mut self, epoch: u64) -> Vec<CgroupSnapshot> {
        let mut out = Vec::with_capacity(self.cgroups.len() + 1);
        let scratch = &mut self.scratch;
        for (id, agg) in &mut self.cgroups {
            out.push(snapshot_one(Some(*id), agg, epoch, scratch));
        }
        if self.other.events.iter().any(|&e| e > 0) {
            out.push(snapshot_one(None, &mut self.other, epoch, scratch));
        }
        out
    }

    /// Forgets a cgroup (it was removed); its future events, if any, re-admit it. Its event
    /// counts stay in the totals.
    pub fn forget(&mut self, cgroup_id: u64) -> bool {
        let Some(agg) = self.cgroups.remove(&cgroup_id) else {
            return false;
        };
        for (t, e) in self.forgotten_events.iter_mut().zip(agg.events) {
            *t += e;
        }
        true
    }

    /// Events of cgroups that were forgotten, per [`Signal`].
    #[must_use]
    pub fn forgotten_events(&self) -> [u64; Signal::ALL.len()] {
        self.forgotten_events
    }

    /// All events received for a tracked cgroup (`None` when it is not tracked).
    #[must_use]
    pub fn events_of(&self, cgroup_id: u64) -> Option<u64> {
        self.cgroups.get(&cgroup_id).map(|a| a.events.iter().sum())
    }

    /// Ids of the admitted cgroups.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.cgroups.keys().copied()
    }
}

/// Records the events of one cgroup (see [`Aggregator::sink`]).
pub struct Sink<'a> {
    agg: &'a mut CgroupAgg,
    unknown: &'a mut u64,
    received: &'a mut u64,
    epoch: u64,
}

impl Sink<'_> {
    /// Decodes and records one ring record.
    #[inline]
    pub fn push(&mut self, bytes: &[u8]) {
        *self.received += 1;
        match Event::from_bytes(bytes) {
            Some(ev) if self.agg.record(&ev, self.epoch) => {}
            _ => *self.unknown += 1,
        }
    }
}

fn snapshot_one(
    id: Option<u64>,
    agg: &mut CgroupAgg,
    epoch: u64,
    scratch: &mut Histogram<u32>,
) -> CgroupSnapshot {
    let mut dur = |d: &mut DurationAgg| DurationSnapshot {
        totals: d.totals(),
        window_quantiles_ns: d.window_quantiles(epoch, scratch),
    };
    let calls = [0, 1].map(|i| {
        agg.calls[i].as_deref_mut().map(|c| CallSnapshot {
            durations: dur(&mut c.durations),
            results: c.results,
        })
    });
    let fault_durations = [0, 1].map(|i| agg.fault_durations[i].as_deref_mut().map(&mut dur));
    let conns = agg.conns.as_deref_mut().map(|c| ConnSnapshot {
        outcomes: c.outcomes,
        window_ratio: c.window_ratio(epoch),
    });
    CgroupSnapshot {
        id,
        calls,
        fault_durations,
        conns,
        events: agg.events,
    }
}

/// What a scrape shows of one duration aggregator.
#[derive(Clone, Debug, PartialEq)]
pub struct DurationSnapshot {
    pub totals: HistogramTotals,
    pub window_quantiles_ns: Option<[u64; QUANTILES.len()]>,
}

/// What a scrape shows of one call signal.
#[derive(Clone, Debug, PartialEq)]
pub struct CallSnapshot {
    pub durations: DurationSnapshot,
    pub results: CallResults,
}

/// What a scrape shows of one cgroup's connections.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnSnapshot {
    /// Closed connections per [`Outcome`], since start.
    pub outcomes: [u64; Outcome::ALL.len()],
    /// Abnormal / closed over the window, `None` when nothing closed in it.
    pub window_ratio: Option<f64>,
}

/// What a scrape shows of one cgroup; `id` is `None` for `_other`.
#[derive(Clone, Debug, PartialEq)]
pub struct CgroupSnapshot {
    pub id: Option<u64>,
    /// `[sendmsg, recvmsg]`.
    pub calls: [Option<CallSnapshot>; 2],
    /// `[minor, major]`.
    pub fault_durations: [Option<DurationSnapshot>; 2],
    pub conns: Option<ConnSnapshot>,
    pub events: [u64; Signal::ALL.len()],
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random numbers (xorshift), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// Log-uniform durations from 1 us to ~1 s, with a few very short and very long.
        fn duration(&mut self) -> u64 {
            let exp = self.next() % 20;
            1000 + (self.next() % (1u64 << exp)) * (1 + self.next() % 1000)
        }
    }

    fn brute_quantile(sorted: &[u64], q: f64) -> u64 {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "test helper on small counts"
        )]
        let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
        sorted[rank - 1]
    }

    fn ev(kind: EventKind, ns: u64, result: i32) -> Event {
        Event {
            cgroup_id: 7,
            value: ns,
            kind: kind as u32,
            result,
        }
    }

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
            let exact = brute_quantile(&values, *quant);
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
                let exact = brute_quantile(&window, *quant).min(MAX_TRACKED_NS);
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
    }

    #[test]
    fn bucket_bounds_span_1us_to_10s_four_per_octave() {
        assert_eq!(BUCKETS_NS[0], 1000);
        assert_eq!(BUCKETS_NS[4], 2000);
        let last = *BUCKETS_NS.last().unwrap();
        assert!((9_500_000_000..=10_500_000_000).contains(&last), "{last}");
        assert!(BUCKETS_NS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn results_are_split_and_only_successes_are_timed() {
        let mut c = CgroupAgg::default();
        assert!(c.record(&ev(EventKind::SendMsg, 5000, 100), 0));
        assert!(c.record(&ev(EventKind::SendMsg, 1, -EAGAIN), 0));
        assert!(c.record(&ev(EventKind::SendMsg, 9, -104), 0));
        assert!(c.record(&ev(EventKind::RecvMsg, 7000, 0), 0));
        assert!(!c.record(
            &Event {
                kind: 99,
                ..Event::default()
            },
            0
        ));
        let send = c.calls[0].as_ref().unwrap();
        assert_eq!(
            send.results,
            CallResults {
                ok: 1,
                eagain: 1,
                error: 1
            }
        );
        assert_eq!(send.durations.totals().count, 1);
        assert_eq!(c.calls[1].as_ref().unwrap().results.ok, 1);
        assert_eq!(c.events[Signal::SendMsg as usize], 3);
    }

    #[test]
    fn outcomes_and_the_window_ratio() {
        let mut c = CgroupAgg::default();
        let close = |o: Outcome| Event {
            cgroup_id: 7,
            value: 0,
            kind: EventKind::ConnClose as u32,
            result: o as i32,
        };
        for o in [
            Outcome::Normal,
            Outcome::Normal,
            Outcome::Refused,
            Outcome::ResetSent,
        ] {
            assert!(c.record(&close(o), 0));
        }
        assert!(!c.record(
            &Event {
                result: 99,
                ..close(Outcome::Normal)
            },
            0
        ));
        let conns = c.conns.as_mut().unwrap();
        assert_eq!(conns.outcomes[Outcome::Normal as usize], 2);
        assert_eq!(conns.outcomes[Outcome::Refused as usize], 1);
        assert_eq!(conns.window_ratio(0), Some(0.5));
        // Three slices later one more normal close: still inside the window.
        assert!(c.record(&close(Outcome::Normal), 3));
        assert_eq!(c.conns.as_mut().unwrap().window_ratio(3), Some(0.4));
        // Once the first slice leaves the window only the last close counts.
        assert_eq!(c.conns.as_mut().unwrap().window_ratio(SLICES), Some(0.0));
        // And with nothing closed in the window there is no ratio at all.
        assert_eq!(c.conns.as_mut().unwrap().window_ratio(3 + SLICES), None);
        assert_eq!(c.events[Signal::Connections as usize], 5);
    }

    #[test]
    fn cgroups_beyond_the_limit_go_to_other_and_are_counted() {
        let mut a = Aggregator::new(2, Duration::from_mins(1));
        let mk = |id| Event {
            cgroup_id: id,
            value: 1000,
            kind: EventKind::SendMsg as u32,
            result: 1,
        };
        assert_eq!(a.record_shared(&mk(1), 0), Admission::New);
        assert_eq!(a.record_shared(&mk(1), 0), Admission::Known);
        assert_eq!(a.record_shared(&mk(2), 0), Admission::New);
        assert_eq!(a.record_shared(&mk(3), 0), Admission::Other);
        assert_eq!(a.record_shared(&mk(4), 0), Admission::Other);
        assert_eq!(a.tracked(), 2);
        assert_eq!(a.overflow_events, 2);
        let snap = a.snapshot(0);
        let other = snap.iter().find(|s| s.id.is_none()).unwrap();
        assert_eq!(other.calls[0].as_ref().unwrap().results.ok, 2);
        let total: u64 = snap
            .iter()
            .map(|s| s.calls[0].as_ref().map_or(0, |c| c.results.ok))
            .sum();
        assert_eq!(total, 5, "no event lost or double counted");
        // A forgotten cgroup frees its slot; its events stay in the totals.
        assert!(a.forget(1));
        assert!(!a.forget(1));
        assert_eq!(a.tracked(), 1);
        assert_eq!(a.forgotten_events()[Signal::SendMsg as usize], 2);
        assert_eq!(a.record_shared(&mk(5), 0), Admission::New);
    }

    #[test]
    fn batches_decode_and_count_foreign_records() {
        let mut a = Aggregator::new(4, Duration::from_mins(1));
        assert_eq!(a.admit(7), Admission::New);
        let good = ev(EventKind::RecvMsg, 3000, 10).to_bytes();
        let short = [0u8; 5];
        let mut sink = a.sink(7, 0);
        for rec in [&good[..], &short[..], &good[..]] {
            sink.push(rec);
        }
        assert_eq!(a.unknown_events, 1);
        assert_eq!(a.received(), 3);
        let snap = a.snapshot(0);
        assert_eq!(snap[0].calls[1].as_ref().unwrap().results.ok, 2);
    }
}
