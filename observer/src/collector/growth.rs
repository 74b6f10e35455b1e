//! When rings grow, within the ring memory budget: a ring the kernel woke us for asks for
//! four times its size, a ring whose events spilled to the shared ring for `--ring-size`,
//! a cgroup without a ring for a first one; [`crate::ring_plan::plan`] says whether it
//! gets it, and which colder rings shrink to make room. Once a second the rings' heat
//! rolls and the busiest cgroups waiting for a first ring get one where there is room.

use std::time::{Duration, Instant};

use super::slots::{Placement, Rings, State};
use super::sys::Epoll;
use crate::ring_plan::{Growth, INITIAL_RING_SIZE, Request, RingView, plan};

/// A ring shrunk to make room does not grow again for this long: the room is for the
/// busier cgroup that asked.
const COOL_DOWN: Duration = Duration::from_secs(5);
/// A refused ring (or cgroup) is not asked about again, nor counted refused again, for
/// this long: a ring that cannot grow wakes us at every quarter.
const REFUSE_EVERY: Duration = Duration::from_secs(1);
/// Most cgroups given a first ring per second from the waiting list.
const WAITERS_PER_SECOND: usize = 64;

impl Rings {
    /// The kernel woke us because slot `i`'s ring is a quarter full: it asks for four times
    /// its size.
    pub fn grow(&mut self, epoll: &Epoll, i: usize) {
        if let Some(Some(slot)) = self.slots.get(i) {
            let target = slot.ring.size.saturating_mul(4);
            self.want(epoll, i, target);
        }
    }

    /// Slot `i`'s events spilled to the shared ring: it asks for the largest ring.
    pub fn grow_to_max(&mut self, epoll: &Epoll, i: usize) {
        self.want(epoll, i, self.max_size);
    }

    fn want(&mut self, epoll: &Epoll, i: usize, target: u32) {
        let now = Instant::now();
        let target = target.min(self.max_size);
        let Some(Some(slot)) = self.slots.get(i) else {
            return;
        };
        if slot.state != State::Installed
            || slot.ring.size >= target
            || slot
                .denied_at
                .is_some_and(|t| now.duration_since(t) < REFUSE_EVERY)
        {
            return;
        }
        if slot.cool_until.is_some_and(|t| t > now) {
            self.refused(Some(i), None, now);
            return;
        }
        let req = Request {
            slot: Some(i),
            size: slot.ring.size,
            heat: slot.heat.now(),
            target,
        };
        match self.decide(&req, now) {
            Growth::To(size) => {
                self.replace(epoll, i, size);
            }
            Growth::MakeRoom(victims) => {
                self.make_room(epoll, &victims, now);
                self.refused(Some(i), None, now);
            }
            Growth::Deny => self.refused(Some(i), None, now),
        }
    }

    /// Gives waiting cgroup `cgroup_id` its first ring if the budget has room, or makes
    /// room from colder rings for a later round. True when it got one.
    pub(super) fn place_waiting(&mut self, epoll: &Epoll, cgroup_id: u64, now: Instant) -> bool {
        let Some(w) = self.waiting.get(&cgroup_id) else {
            return false;
        };
        if w.denied_at
            .is_some_and(|t| now.duration_since(t) < REFUSE_EVERY)
        {
            return false;
        }
        let req = Request {
            slot: None,
            size: 0,
            heat: w.heat.now(),
            target: INITIAL_RING_SIZE.min(self.max_size),
        };
        match self.decide(&req, now) {
            Growth::To(size) => self.first_ring(epoll, cgroup_id, size),
            Growth::MakeRoom(victims) => {
                self.make_room(epoll, &victims, now);
                self.refused(None, Some(cgroup_id), now);
                false
            }
            Growth::Deny => {
                self.refused(None, Some(cgroup_id), now);
                false
            }
        }
    }

    /// The plan for `req`: the rings are looked at only when the budget has no room.
    fn decide(&self, req: &Request, now: Instant) -> Growth {
        let used = self.meter.bytes();
        if let Growth::To(size) = plan(self.budget, used, &[], req) {
            return Growth::To(size);
        }
        let views: Vec<Option<RingView>> = self
            .slots
            .iter()
            .map(|s| s.as_ref().map(|s| s.view(now)))
            .collect();
        plan(self.budget, used, &views, req)
    }

    /// Shrinks `victims` (slot, new size); they do not grow again for [`COOL_DOWN`].
    fn make_room(&mut self, epoll: &Epoll, victims: &[(usize, u32)], now: Instant) {
        for &(j, size) in victims {
            if self.replace(epoll, j, size)
                && let Some(Some(s)) = self.slots.get_mut(j)
            {
                s.cool_until = Some(now + COOL_DOWN);
            }
        }
    }

    /// Counts a refusal of slot `slot` or waiting cgroup `waiter`.
    fn refused(&mut self, slot: Option<usize>, waiter: Option<u64>, now: Instant) {
        self.denied += 1;
        if let Some(Some(s)) = slot.and_then(|i| self.slots.get_mut(i)) {
            s.denied_at = Some(now);
        }
        if let Some(w) = waiter.and_then(|id| self.waiting.get_mut(&id)) {
            w.denied_at = Some(now);
        }
    }

    /// Once a second: every heat takes in the second that ended, then the busiest cgroups
    /// waiting for a first ring (those with events in that second) get one where the
    /// budget has room. Returns how many got one.
    pub fn every_second(&mut self, epoll: &Epoll) -> usize {
        let now = Instant::now();
        if now.duration_since(self.last_roll) < Duration::from_secs(1) {
            return 0;
        }
        self.last_roll = now;
        for s in self.slots.iter_mut().flatten() {
            s.heat.roll();
        }
        for w in self.waiting.values_mut() {
            w.heat.roll();
        }
        let mut busy: Vec<(u64, u64)> = self
            .waiting
            .iter()
            .map(|(id, w)| (w.heat.now(), *id))
            .filter(|(heat, _)| *heat > 0)
            .collect();
        busy.sort_unstable_by(|a, b| b.cmp(a));
        let mut placed = 0;
        for (_, id) in busy.into_iter().take(WAITERS_PER_SECOND) {
            if self.by_cgroup.get(&id) == Some(&Placement::Waiting)
                && self.place_waiting(epoll, id, now)
            {
                placed += 1;
            }
        }
        placed
    }
}
