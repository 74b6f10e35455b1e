//! Connection closes held until they are settled: a reset our socket sends after CLOSE (the
//! kernel sets CLOSE before it sends the reset of an abort) or one its timewait socket
//! sends, or receives, later, changes the outcome; the kernel reports the close held, with
//! the connection's key, and the reset with the same key. A held close is counted when its
//! reset comes or its time is up, whichever is first, so it is counted exactly once.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use observer_common::{Hold, Outcome};

use crate::idmap::IdHasher;

/// How long a close that a reset in the same context may follow is held: the reset comes
/// microseconds after the CLOSE (in softirq, or in the same system call).
pub const SYNC_HOLD_MS: u64 = 50;
/// How long the close of an orphan that left a timewait socket in the `FIN_WAIT2`
/// substate is held: the timewait socket answers data that arrives later with a reset,
/// or is killed by the peer's reset, up to `tcp_fin_timeout` (60 s) later. Resets later
/// than this do not change the outcome.
pub const TIMEWAIT_HOLD_MS: u64 = 2000;
/// How long a reset whose close has not been read yet (its events are on different rings)
/// waits for it.
pub const EARLY_RESET_MS: u64 = 1000;

struct HeldClose {
    cgroup_id: u64,
    outcome: Outcome,
    due_ms: u64,
}

type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// The held closes and the resets that came before their close.
#[derive(Default)]
pub struct PendingCloses {
    held: KeyMap<HeldClose>,
    early: KeyMap<(Outcome, u64)>,
    due: Vec<(u64, Outcome)>,
}

impl PendingCloses {
    /// A close reported with `hold`: `Some(outcome)` to count now (final, or settled by a
    /// reset that came first), `None` when it is held.
    pub fn close(
        &mut self,
        cgroup_id: u64,
        key: u64,
        outcome: Outcome,
        hold: Hold,
        now_ms: u64,
    ) -> Option<Outcome> {
        let wait = match hold {
            Hold::None => return Some(outcome),
            Hold::Sync => SYNC_HOLD_MS,
            Hold::TimeWait => TIMEWAIT_HOLD_MS,
        };
        if let Some((settled, _)) = self.early.remove(&key) {
            return Some(settled);
        }
        // A key held twice (a connection end closed again at the same 4-tuple before the
        // first was settled) counts the first now.
        let previous = self.held.insert(
            key,
            HeldClose {
                cgroup_id,
                outcome,
                due_ms: now_ms + wait,
            },
        );
        if let Some(p) = previous {
            self.due.push((p.cgroup_id, p.outcome));
        }
        None
    }

    /// A reset that settles the held close with `key` as `outcome`: the close's cgroup and
    /// outcome to count now, if it is held.
    pub fn reset(&mut self, key: u64, outcome: Outcome, now_ms: u64) -> Option<(u64, Outcome)> {
        if let Some(h) = self.held.remove(&key) {
            return Some((h.cgroup_id, outcome));
        }
        self.early.insert(key, (outcome, now_ms + EARLY_RESET_MS));
        None
    }

    /// The closes to count now: those whose time is up at `now_ms` (all with `u64::MAX`).
    /// The resets that waited in vain are dropped.
    pub fn due(&mut self, now_ms: u64) -> std::vec::Drain<'_, (u64, Outcome)> {
        let due = &mut self.due;
        self.held.retain(|_, h| {
            let keep = h.due_ms > now_ms;
            if !keep {
                due.push((h.cgroup_id, h.outcome));
            }
            keep
        });
        self.early.retain(|_, (_, t)| *t > now_ms);
        self.due.drain(..)
    }

    /// Closes held now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether no close is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_close_is_counted_once_settled_or_when_due() {
        let mut p = PendingCloses::default();
        assert_eq!(
            p.close(7, 0, Outcome::Normal, Hold::None, 0),
            Some(Outcome::Normal)
        );
        // Held, then settled by our reset: counted once, as reset_sent.
        assert_eq!(p.close(7, 11, Outcome::Normal, Hold::Sync, 0), None);
        assert_eq!(
            p.reset(11, Outcome::ResetSent, 1),
            Some((7, Outcome::ResetSent))
        );
        assert_eq!(p.due(u64::MAX).count(), 0);
        // Held, no reset: counted as it was when due, not before.
        assert_eq!(p.close(7, 12, Outcome::Normal, Hold::TimeWait, 0), None);
        assert_eq!(p.due(TIMEWAIT_HOLD_MS - 1).count(), 0);
        assert_eq!(
            p.due(TIMEWAIT_HOLD_MS).collect::<Vec<_>>(),
            vec![(7, Outcome::Normal)]
        );
        // A reset read before its close (another ring): the close is settled by it.
        assert_eq!(p.reset(13, Outcome::ResetReceived, 5), None);
        assert_eq!(
            p.close(8, 13, Outcome::Normal, Hold::TimeWait, 6),
            Some(Outcome::ResetReceived)
        );
        // A reset for no held close is dropped after a while.
        assert_eq!(p.reset(14, Outcome::ResetSent, 10), None);
        let _ = p.due(10 + EARLY_RESET_MS);
        assert_eq!(p.close(8, 14, Outcome::Normal, Hold::Sync, 2000), None);
        assert_eq!(p.len(), 1);
        // The same key held twice: the first is counted at once.
        assert_eq!(p.close(9, 14, Outcome::Normal, Hold::Sync, 2001), None);
        assert_eq!(p.due(2001).collect::<Vec<_>>(), vec![(8, Outcome::Normal)]);
    }
}
