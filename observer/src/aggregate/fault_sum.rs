//! One reading of the kernel's page fault counters: the per-cgroup hash plus the per-CPU
//! caches of counts not yet moved into it (`observer_common::FaultCache`), read so that a
//! count moved from a cache to the hash while the daemon reads is counted once.
//!
//! The daemon reads every CPU's cache, then the hash, then the caches again. Counts taken
//! before the reading began are in the hash or in the first caches; a cache flushed in
//! between moved its counts to the hash, and the hash slot it added to carries that
//! flush's number, so the first cache's counts are added only where the hash was read
//! before that flush. The second caches' counts came after any flush, so they are never in
//! the hash read and are always added.

use observer_common::{FaultCache, FaultCounts, FaultSlot};

use crate::idmap::IdMap;

/// The fault counts per cgroup from the caches read `before` the hash (one per CPU), the
/// hash's entries (cgroup id, one slot per CPU) and the caches read `after` it.
pub fn sum_faults<'a>(
    before: &[FaultCache],
    hash: impl IntoIterator<Item = (u64, &'a [FaultSlot])>,
    after: &[FaultCache],
) -> IdMap<FaultCounts> {
    // CPUs whose cache was flushed while the hash was read, with what it held before.
    let mut moved: Vec<(usize, &FaultCache, bool)> = before
        .iter()
        .zip(after)
        .enumerate()
        .filter(|(_, (b, a))| b.flushes != a.flushes && b.cgroup_id != 0)
        .map(|(cpu, (b, _))| (cpu, b, false))
        .collect();
    let mut out: IdMap<FaultCounts> = IdMap::default();
    for (id, slots) in hash {
        let f = out.entry(id).or_default();
        for s in slots {
            f.add(&s.counts);
        }
        for (cpu, b, seen) in moved.iter_mut().filter(|(_, b, _)| b.cgroup_id == id) {
            // The flush that moved `b`'s counts is number `b.flushes + 1` on that CPU.
            *seen = slots.get(*cpu).is_some_and(|s| s.flush > b.flushes);
        }
    }
    for (_, b, _) in moved.iter().filter(|(_, _, seen)| !seen) {
        out.entry(b.cgroup_id).or_default().add(&b.counts);
    }
    for c in after.iter().filter(|c| c.cgroup_id != 0) {
        out.entry(c.cgroup_id).or_default().add(&c.counts);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(cgroup_id: u64, user: u64, flushes: u64) -> FaultCache {
        FaultCache {
            cgroup_id,
            counts: FaultCounts {
                user,
                ..FaultCounts::default()
            },
            flushes,
        }
    }

    fn slot(user: u64, flush: u64) -> FaultSlot {
        FaultSlot {
            counts: FaultCounts {
                user,
                ..FaultCounts::default()
            },
            flush,
        }
    }

    fn user(out: &IdMap<FaultCounts>, id: u64) -> u64 {
        out.get(&id).map_or(0, |f| f.user)
    }

    /// The CI failure (aarch64 7.3): 20 000 faults of one cgroup in CPU 0's cache; while
    /// the daemon read the hash (no entry for it yet), a fault of another cgroup on CPU 0
    /// flushed them into the hash; the second read of the cache holds the other cgroup.
    #[test]
    fn counts_flushed_while_the_hash_is_read_are_not_lost() {
        let before = [cache(7, 20_000, 0), cache(0, 0, 0)];
        let after = [cache(9, 3, 1), cache(0, 0, 0)];
        let out = sum_faults(&before, std::iter::empty(), &after);
        assert_eq!(user(&out, 7), 20_000);
        assert_eq!(user(&out, 9), 3);
        // The same, the hash read holding cgroup 7 from earlier flushes only.
        let earlier = [slot(500, 0), slot(40, 0)];
        let out = sum_faults(&before, [(7, &earlier[..])], &after);
        assert_eq!(user(&out, 7), 20_540);
    }

    /// The hash was read after the flush: its slot carries the flush's number and already
    /// holds the counts; they are not added a second time.
    #[test]
    fn counts_flushed_before_the_hash_is_read_are_counted_once() {
        let before = [cache(7, 20_000, 4)];
        let after = [cache(9, 3, 5)];
        let slots = [slot(20_500, 5)];
        let out = sum_faults(&before, [(7, &slots[..])], &after);
        assert_eq!(user(&out, 7), 20_500);
        assert_eq!(user(&out, 9), 3);
    }

    /// No flush while reading: the hash plus the second caches (which grew meanwhile).
    #[test]
    fn without_a_flush_the_hash_and_the_later_caches_add_up() {
        let before = [cache(7, 10, 2), cache(8, 1, 6)];
        let after = [cache(7, 15, 2), cache(8, 4, 6)];
        let a = [slot(100, 2), slot(0, 0)];
        let b = [slot(0, 0), slot(50, 6)];
        let out = sum_faults(&before, [(7, &a[..]), (8, &b[..])], &after);
        assert_eq!(user(&out, 7), 115);
        assert_eq!(user(&out, 8), 54);
    }

    /// Several flushes on one CPU while reading: the first cache's cgroup moved out, others
    /// came and went (their counts are from during the reading: whichever the hash showed),
    /// and the first came back. Its earlier counts are counted once, whether the hash saw
    /// its flush or not.
    #[test]
    fn several_flushes_on_one_cpu_count_the_first_caches_counts_once() {
        let before = [cache(7, 1_000, 10)];
        let after = [cache(7, 2, 13)];
        // Read before flush 11 (7's): the slot says flush 9.
        let unseen = [slot(300, 9)];
        let out = sum_faults(&before, [(7, &unseen[..])], &after);
        assert_eq!(user(&out, 7), 1_302);
        // Read after flush 13 (7's second): 300 + 1 000 + what came after, say 5.
        let seen = [slot(1_305, 13)];
        let out = sum_faults(&before, [(7, &seen[..])], &after);
        assert_eq!(user(&out, 7), 1_307);
    }
}
