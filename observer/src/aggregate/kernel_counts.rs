//! The counts the kernel keeps per cgroup (page faults, lost events, retransmits), split
//! between the tracked cgroups' series and `_other` so that every series only grows.
//!
//! A cgroup beyond `--max-cgroups` has its counts summed into `_other`. When room is made
//! (a cgroup is dropped after `--cgroup-ttl`) and it is admitted, what `_other` showed of it
//! stays in `_other`, and its own series starts from there: moving those counts out of
//! `_other` would make `_other` go down, which Prometheus reads as a counter reset.

use observer_common::FaultCounts;

use crate::idmap::IdMap;

/// One cgroup's kernel counts, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounts {
    pub faults: FaultCounts,
    pub lost: u64,
    pub retransmits: u64,
}

impl KernelCounts {
    fn add(&mut self, o: &KernelCounts) {
        self.faults.add(&o.faults);
        self.lost += o.lost;
        self.retransmits += o.retransmits;
    }

    /// `self - o`, field by field, never below zero.
    #[must_use]
    fn minus(&self, o: &KernelCounts) -> KernelCounts {
        let f = (&self.faults, &o.faults);
        KernelCounts {
            faults: FaultCounts {
                user: f.0.user.saturating_sub(f.1.user),
                kernel: f.0.kernel.saturating_sub(f.1.kernel),
                major: f.0.major.saturating_sub(f.1.major),
                minor: f.0.minor.saturating_sub(f.1.minor),
            },
            lost: self.lost.saturating_sub(o.lost),
            retransmits: self.retransmits.saturating_sub(o.retransmits),
        }
    }
}

/// Which part of each cgroup's kernel counts each series shows, from scrape to scrape.
#[derive(Default)]
pub struct Ledger {
    /// Per cgroup without a series: what `_other` showed of it at the last scrape.
    in_other: IdMap<KernelCounts>,
    /// Per cgroup with a series: what `_other` had shown of it before it was admitted.
    baseline: IdMap<KernelCounts>,
    /// Counts that `_other` keeps for cgroups no longer in `in_other`.
    kept: KernelCounts,
}

impl Ledger {
    /// Splits one reading: returns the counts of each tracked cgroup's own series and those
    /// of `_other`. `tracked` says whether a cgroup has a series now.
    pub fn split(
        &mut self,
        counts: &IdMap<KernelCounts>,
        tracked: impl Fn(u64) -> bool,
    ) -> (IdMap<KernelCounts>, KernelCounts) {
        let mut own = IdMap::default();
        for (&id, c) in counts {
            if tracked(id) {
                if let Some(shown) = self.in_other.remove(&id) {
                    // Admitted since the last scrape: `_other` keeps what it showed of it.
                    self.kept.add(&shown);
                    self.baseline.insert(id, shown);
                }
                let base = self.baseline.get(&id).copied().unwrap_or_default();
                own.insert(id, c.minus(&base));
            } else {
                self.in_other.insert(id, *c);
            }
        }
        // Untracked cgroups whose counts left the kernel's maps: `_other` keeps them.
        let gone: Vec<u64> = self
            .in_other
            .keys()
            .filter(|id| !counts.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            if let Some(shown) = self.in_other.remove(&id) {
                self.kept.add(&shown);
            }
        }
        let mut other = self.kept;
        for c in self.in_other.values() {
            other.add(c);
        }
        (own, other)
    }

    /// Forgets a tracked cgroup whose series was dropped (its kernel counts are deleted).
    pub fn forget(&mut self, id: u64) {
        self.baseline.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(faults: u64, lost: u64) -> KernelCounts {
        KernelCounts {
            faults: FaultCounts {
                user: faults,
                ..FaultCounts::default()
            },
            lost,
            retransmits: lost * 2,
        }
    }

    /// Across admissions and drops, every series only grows, and own + `_other` always
    /// holds everything the kernel counted (no count lost or shown twice).
    #[test]
    fn every_series_only_grows_across_admissions() {
        let mut ledger = Ledger::default();
        let mut tracked: Vec<u64> = vec![1];
        let mut last_other = KernelCounts::default();
        let mut last_own: IdMap<KernelCounts> = IdMap::default();
        let mut reading: IdMap<KernelCounts> = IdMap::default();
        for step in 1..=12u64 {
            // Cgroups 1..=3 count up every step; 2 and 3 start beyond the limit.
            for id in 1..=3 {
                reading.insert(id, counts(step * 10 * id, step * id));
            }
            if step == 5 {
                tracked.push(2); // room was made: 2 is admitted
            }
            if step == 9 {
                tracked.retain(|&id| id != 1); // 1 is dropped after the TTL ...
                ledger.forget(1);
                reading.remove(&1); // ... with its kernel counts
                tracked.push(3);
            }
            let (own, other) = ledger.split(&reading, |id| tracked.contains(&id));
            assert!(other.faults.user >= last_other.faults.user, "step {step}");
            assert!(other.lost >= last_other.lost && other.retransmits >= last_other.retransmits);
            for (id, c) in &own {
                if let Some(prev) = last_own.get(id) {
                    assert!(c.faults.user >= prev.faults.user, "cgroup {id} step {step}");
                    assert!(c.lost >= prev.lost, "cgroup {id} step {step}");
                }
            }
            let mut total = other;
            for c in own.values() {
                total.add(c);
            }
            let mut want = KernelCounts::default();
            for c in reading.values() {
                want.add(c);
            }
            if step >= 9 {
                // Cgroup 1's counts left with its series.
                assert_eq!(total.faults.user, want.faults.user, "step {step}");
            } else {
                assert_eq!(total, want, "step {step}");
            }
            last_other = other;
            last_own = own;
        }
        // Cgroup 2 was shown in `_other` up to step 4 (4 * 20 faults): its own series holds
        // only what came after.
        assert_eq!(last_own[&2].faults.user, 12 * 20 - 4 * 20);
    }
}
