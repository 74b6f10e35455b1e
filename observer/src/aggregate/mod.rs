//! Pure aggregation: per-(cgroup, signal) duration histograms over a sliding window, plus
//! cumulative buckets for Prometheus. No kernel, no I/O: driven by ring records.
//!
//! Every record read from a ring is decoded in one place, [`Intake::decode`], which counts
//! it as received (and as undecodable when it is not one event), whichever ring it came
//! from.

mod cgroup;
mod connections;
mod duration;
mod fault_sum;
mod kernel_counts;
pub mod native;
mod pending;
mod snapshot;

use std::time::Duration;

use hdrhistogram::Histogram;
use observer_common::{Event, EventKind, Outcome, split_close_result};

pub use cgroup::{CallAgg, CallResults, CgroupAgg};
pub use connections::ConnAgg;
pub use duration::{
    BUCKETS_NS, DurationAgg, HistogramTotals, MAX_TRACKED_NS, QUANTILES, SIGFIGS, new_histogram,
};
pub use fault_sum::sum_faults;
pub use kernel_counts::{KernelCounts, Ledger};
pub use native::NativeBuckets;
pub use pending::{EARLY_RESET_MS, PendingCloses, SYNC_HOLD_MS, TIMEWAIT_HOLD_MS};
pub use snapshot::{CallSnapshot, CgroupSnapshot, ConnSnapshot, DurationSnapshot};

use crate::idmap::IdMap;
use crate::signal::Signal;

/// Slices per window.
pub const SLICES: u64 = 6;

/// The daemon's clock as the aggregator reads it: the window slice, and milliseconds since
/// start (for held connection closes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Now {
    pub epoch: u64,
    pub ms: u64,
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

/// Counts of the records read from the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Intake {
    /// Records read, decodable or not.
    pub received: u64,
    /// Records that were not one event of a known kind (a newer kernel object?).
    pub undecodable: u64,
}

impl Intake {
    /// Decodes one ring record, counting it.
    #[inline]
    pub fn decode(&mut self, bytes: &[u8]) -> Option<Event> {
        self.received += 1;
        let ev = Event::from_bytes(bytes);
        if ev.is_none() {
            self.undecodable += 1;
        }
        ev
    }
}

/// All aggregators, keyed by cgroup id, with the `_other` overflow.
pub struct Aggregator {
    cgroups: IdMap<CgroupAgg>,
    other: CgroupAgg,
    max_cgroups: usize,
    slice: Duration,
    intake: Intake,
    pending: PendingCloses,
    events_without_series: [u64; Signal::ALL.len()],
    scratch: Histogram<u32>,
}

/// What the aggregator does with a decoded event before a cgroup records it.
enum Step {
    /// The cgroup records it.
    Record,
    /// A connection close to count now, with this outcome.
    Close(Outcome),
    /// Held, or a reset that settled (or waits for) a held close.
    Taken,
}

/// Takes the connection events that wait for each other out of the way.
fn step(pending: &mut PendingCloses, ev: &Event, now_ms: u64) -> Step {
    match EventKind::from_u32(ev.kind) {
        Some(EventKind::ConnClose) => match split_close_result(ev.result) {
            Some((outcome, hold)) => {
                match pending.close(ev.cgroup_id, ev.value, outcome, hold, now_ms) {
                    Some(o) => Step::Close(o),
                    None => Step::Taken,
                }
            }
            None => Step::Record,
        },
        _ => Step::Record,
    }
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
            intake: Intake::default(),
            pending: PendingCloses::default(),
            events_without_series: [0; Signal::ALL.len()],
            scratch: new_histogram(),
        }
    }

    /// The window slice that `elapsed` (time since start) falls in.
    #[must_use]
    pub fn epoch(&self, elapsed: Duration) -> u64 {
        u64::try_from(elapsed.as_nanos() / self.slice.as_nanos().max(1)).unwrap_or(u64::MAX)
    }

    /// The clock at `elapsed` (time since start).
    #[must_use]
    pub fn now(&self, elapsed: Duration) -> Now {
        Now {
            epoch: self.epoch(elapsed),
            ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        }
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

    /// A sink for the records of one cgroup's own ring: the cgroup is looked up once per
    /// batch, not once per event.
    pub fn sink(&mut self, cgroup_id: u64, now: Now) -> Sink<'_> {
        let agg = match self.cgroups.get_mut(&cgroup_id) {
            Some(agg) => agg,
            None => &mut self.other,
        };
        Sink {
            agg,
            intake: &mut self.intake,
            pending: &mut self.pending,
            now,
        }
    }

    /// The aggregator of `cgroup_id`, or `_other`'s.
    fn agg_of(&mut self, cgroup_id: u64) -> &mut CgroupAgg {
        match self.cgroups.get_mut(&cgroup_id) {
            Some(agg) => agg,
            None => &mut self.other,
        }
    }

    /// Counts the held connection closes whose time is up.
    pub fn settle(&mut self, now: Now) {
        let due: Vec<(u64, Outcome)> = self.pending.due(now.ms).collect();
        for (cgroup_id, outcome) in due {
            self.agg_of(cgroup_id).record_close(outcome, now.epoch);
        }
    }

    /// Connection closes held now.
    #[must_use]
    pub fn held_closes(&self) -> usize {
        self.pending.len()
    }

    /// What was read from the kernel so far.
    #[must_use]
    pub fn intake(&self) -> Intake {
        self.intake
    }

    /// Records one record of the shared ring, admitting its cgroup when there is room.
    /// Returns the event's cgroup and where it went; `None` for an undecodable record and
    /// for a connection reset (it has no cgroup: it settles a held close).
    pub fn push_shared(&mut self, bytes: &[u8], now: Now) -> Option<(u64, Admission)> {
        let ev = self.intake.decode(bytes)?;
        if ev.kind == EventKind::ConnReset as u32 {
            self.reset(&ev, now);
            return None;
        }
        let admission = self.admit(ev.cgroup_id);
        let agg = match admission {
            Admission::Other => &mut self.other,
            _ => self
                .cgroups
                .get_mut(&ev.cgroup_id)
                .expect("admitted cgroup exists"),
        };
        if !record(agg, &mut self.pending, &ev, now) {
            self.intake.undecodable += 1;
        }
        Some((ev.cgroup_id, admission))
    }

    /// A reset that settles a held close.
    fn reset(&mut self, ev: &Event, now: Now) {
        self.events_without_series[Signal::Connections as usize] += 1;
        let Some(outcome) = Outcome::from_i32(ev.result) else {
            self.intake.undecodable += 1;
            return;
        };
        if let Some((cgroup_id, o)) = self.pending.reset(ev.value, outcome, now.ms) {
            self.agg_of(cgroup_id).record_close(o, now.epoch);
        }
    }

    /// Builds the data a scrape renders.
    pub fn snapshot(&mut self, epoch: u64) -> Vec<CgroupSnapshot> {
        let mut out = Vec::with_capacity(self.cgroups.len() + 1);
        let scratch = &mut self.scratch;
        for (id, agg) in &mut self.cgroups {
            out.push(CgroupSnapshot::take(Some(*id), agg, epoch, scratch));
        }
        if self.other.events.iter().any(|&e| e > 0) {
            out.push(CgroupSnapshot::take(None, &mut self.other, epoch, scratch));
        }
        out
    }

    /// Forgets a cgroup (it was removed); its future events, if any, re-admit it. Its event
    /// counts stay in the totals.
    pub fn forget(&mut self, cgroup_id: u64) -> bool {
        let Some(agg) = self.cgroups.remove(&cgroup_id) else {
            return false;
        };
        for (t, e) in self.events_without_series.iter_mut().zip(agg.events) {
            *t += e;
        }
        true
    }

    /// Events counted in no cgroup's series, per [`Signal`]: those of cgroups that were
    /// forgotten, and connection resets (which belong to no cgroup).
    #[must_use]
    pub fn events_without_series(&self) -> [u64; Signal::ALL.len()] {
        self.events_without_series
    }

    /// All events received for a tracked cgroup (`None` when it is not tracked).
    #[must_use]
    pub fn events_of(&self, cgroup_id: u64) -> Option<u64> {
        self.cgroups.get(&cgroup_id).map(|a| a.events.iter().sum())
    }

    /// Whether `cgroup_id` has its own series.
    #[must_use]
    pub fn tracks(&self, cgroup_id: u64) -> bool {
        self.cgroups.contains_key(&cgroup_id)
    }

    /// Ids of the admitted cgroups.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.cgroups.keys().copied()
    }
}

/// Records one decoded event into `agg` (a held close into `pending`); false when it is
/// of no known kind.
#[inline]
fn record(agg: &mut CgroupAgg, pending: &mut PendingCloses, ev: &Event, now: Now) -> bool {
    match step(pending, ev, now.ms) {
        Step::Record => agg.record(ev, now.epoch),
        Step::Close(outcome) => {
            agg.events[Signal::Connections as usize] += 1;
            agg.note_untracked(ev);
            agg.record_close(outcome, now.epoch);
            true
        }
        Step::Taken => {
            agg.events[Signal::Connections as usize] += 1;
            agg.note_untracked(ev);
            true
        }
    }
}

/// Records the records of one cgroup's ring (see [`Aggregator::sink`]).
pub struct Sink<'a> {
    agg: &'a mut CgroupAgg,
    intake: &'a mut Intake,
    pending: &'a mut PendingCloses,
    now: Now,
}

impl Sink<'_> {
    /// Decodes and records one ring record.
    #[inline]
    pub fn push(&mut self, bytes: &[u8]) {
        if let Some(ev) = self.intake.decode(bytes)
            && !record(self.agg, self.pending, &ev, self.now)
        {
            self.intake.undecodable += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use observer_common::EventKind;

    fn ev(kind: EventKind, ns: u64, result: i32) -> Event {
        Event {
            cgroup_id: 7,
            value: ns,
            kind: kind as u32,
            result,
        }
    }

    #[test]
    fn cgroups_beyond_the_limit_go_to_other_and_are_counted() {
        let mut a = Aggregator::new(2, Duration::from_mins(1));
        let mk = |id| {
            Event {
                cgroup_id: id,
                value: 1000,
                kind: EventKind::SendMsg as u32,
                result: 1,
            }
            .to_bytes()
        };
        let admitted =
            |a: &mut Aggregator, id| a.push_shared(&mk(id), Now::default()).map(|(_, adm)| adm);
        assert_eq!(admitted(&mut a, 1), Some(Admission::New));
        assert_eq!(admitted(&mut a, 1), Some(Admission::Known));
        assert_eq!(admitted(&mut a, 2), Some(Admission::New));
        assert_eq!(admitted(&mut a, 3), Some(Admission::Other));
        assert_eq!(admitted(&mut a, 4), Some(Admission::Other));
        assert_eq!(a.tracked(), 2);
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
        assert_eq!(a.events_without_series()[Signal::SendMsg as usize], 2);
        assert_eq!(admitted(&mut a, 5), Some(Admission::New));
    }

    /// Both rings count records the same way: every record is received, and one that is
    /// not an event (or of an unknown kind) is undecodable.
    #[test]
    fn every_ring_counts_undecodable_records_the_same_way() {
        let good = ev(EventKind::RecvMsg, 3000, 10).to_bytes();
        let unknown_kind = Event {
            kind: 99,
            ..ev(EventKind::RecvMsg, 1, 1)
        }
        .to_bytes();
        let short = [0u8; 5];
        let records: [&[u8]; 4] = [&good, &short, &unknown_kind, &good];

        let mut own = Aggregator::new(4, Duration::from_mins(1));
        assert_eq!(own.admit(7), Admission::New);
        let mut sink = own.sink(7, Now::default());
        for rec in records {
            sink.push(rec);
        }
        let mut shared = Aggregator::new(4, Duration::from_mins(1));
        for rec in records {
            shared.push_shared(rec, Now::default());
        }
        for a in [&mut own, &mut shared] {
            assert_eq!(
                a.intake(),
                Intake {
                    received: 4,
                    undecodable: 2
                }
            );
            let snap = a.snapshot(0);
            assert_eq!(snap[0].calls[1].as_ref().unwrap().results.ok, 2);
        }
    }
}
