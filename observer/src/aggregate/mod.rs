//! Pure aggregation: per-(cgroup, signal) duration histograms over a sliding window, plus
//! cumulative buckets for Prometheus. No kernel, no I/O: driven by ring records.
//!
//! Every record read from a ring is decoded in one place, [`Intake::decode`], which counts
//! it as received (and as undecodable when it is not one event), whichever ring it came
//! from.

mod cgroup;
mod connections;
mod duration;
mod kernel_counts;
mod snapshot;

use std::time::Duration;

use hdrhistogram::Histogram;
use observer_common::Event;

pub use cgroup::{CallAgg, CallResults, CgroupAgg};
pub use connections::ConnAgg;
pub use duration::{
    BUCKETS_NS, DurationAgg, HistogramTotals, MAX_TRACKED_NS, QUANTILES, SIGFIGS, new_histogram,
};
pub use kernel_counts::{KernelCounts, Ledger};
pub use snapshot::{CallSnapshot, CgroupSnapshot, ConnSnapshot, DurationSnapshot};

use crate::idmap::IdMap;
use crate::signal::Signal;

/// Slices per window.
pub const SLICES: u64 = 6;

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
            intake: Intake::default(),
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

    /// A sink for the records of one cgroup's own ring: the cgroup is looked up once per
    /// batch, not once per event.
    pub fn sink(&mut self, cgroup_id: u64, epoch: u64) -> Sink<'_> {
        let agg = match self.cgroups.get_mut(&cgroup_id) {
            Some(agg) => agg,
            None => &mut self.other,
        };
        Sink {
            agg,
            intake: &mut self.intake,
            epoch,
        }
    }

    /// What was read from the kernel so far.
    #[must_use]
    pub fn intake(&self) -> Intake {
        self.intake
    }

    /// Records one record of the shared ring, admitting its cgroup when there is room.
    /// Returns the event's cgroup and where it went; `None` for an undecodable record.
    pub fn push_shared(&mut self, bytes: &[u8], epoch: u64) -> Option<(u64, Admission)> {
        let ev = self.intake.decode(bytes)?;
        let admission = self.admit(ev.cgroup_id);
        let agg = match admission {
            Admission::Other => &mut self.other,
            _ => self
                .cgroups
                .get_mut(&ev.cgroup_id)
                .expect("admitted cgroup exists"),
        };
        if !agg.record(&ev, epoch) {
            self.intake.undecodable += 1;
        }
        Some((ev.cgroup_id, admission))
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

/// Records the records of one cgroup's ring (see [`Aggregator::sink`]).
pub struct Sink<'a> {
    agg: &'a mut CgroupAgg,
    intake: &'a mut Intake,
    epoch: u64,
}

impl Sink<'_> {
    /// Decodes and records one ring record.
    #[inline]
    pub fn push(&mut self, bytes: &[u8]) {
        if let Some(ev) = self.intake.decode(bytes)
            && !self.agg.record(&ev, self.epoch)
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
        let admitted = |a: &mut Aggregator, id| a.push_shared(&mk(id), 0).map(|(_, adm)| adm);
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
        assert_eq!(a.forgotten_events()[Signal::SendMsg as usize], 2);
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
        let mut sink = own.sink(7, 0);
        for rec in records {
            sink.push(rec);
        }
        let mut shared = Aggregator::new(4, Duration::from_mins(1));
        for rec in records {
            shared.push_shared(rec, 0);
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
