//! The per-cgroup rings: one slot per admitted cgroup with its ring and the ring's state in
//! the kernel's map, replacement of a slot's ring by a bigger or smaller one, and the
//! retirement of replaced rings. When rings grow, within the budget, is [`super::growth`].

use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use super::installer::Installer;
use super::metered::{Meter, Ring};
use super::sys::Epoll;
use crate::aggregate::{Aggregator, Now};
use crate::idmap::IdMap;
pub use crate::ring_plan::INITIAL_RING_SIZE;
use crate::ring_plan::{Heat, RingView};

/// How long a replaced ring is still drained: programs that looked it up before the swap
/// may still write to it until they return.
const RETIRE_AFTER: Duration = Duration::from_secs(1);
/// Most records taken from one ring per wake-up, so one busy cgroup cannot starve others.
pub const BATCH: usize = 8192;
/// epoll token of slot 0; slot `i` has `FIRST_TOKEN + i`.
pub const FIRST_TOKEN: u64 = 3;

/// Where a ring stands in the kernel's cgroup -> ring map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// Queued at the installer; its completion carries this ticket.
    Installing(u64),
    /// In the map: the kernel writes the cgroup's events to it.
    Installed,
    /// The installer could not put it in the map: the cgroup's events stay on the shared
    /// ring.
    Failed,
    /// Its cgroup is gone: being taken out of the map (this ticket), and drained until then.
    Removing(u64),
}

pub(super) struct Slot {
    pub(super) cgroup_id: u64,
    pub(super) ring: Ring,
    pub(super) state: State,
    /// Records drained per second.
    pub(super) heat: Heat,
    /// Shrunk to make room: it does not grow again before this.
    pub(super) cool_until: Option<Instant>,
    /// When the budget last refused it (a refusal is counted once a second at most).
    pub(super) denied_at: Option<Instant>,
}

impl Slot {
    /// What the growth planner sees of it.
    pub(super) fn view(&self, now: Instant) -> RingView {
        RingView {
            size: self.ring.size,
            heat: self.heat.now(),
            movable: self.state == State::Installed && self.cool_until.is_none_or(|t| t <= now),
        }
    }
}

/// Where a cgroup's events are read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Placement {
    /// Its own ring, in this slot.
    Own(usize),
    /// The shared ring: no ring of its own could be made.
    Shared,
    /// The shared ring, until the budget has room for a ring of its own.
    Waiting,
}

/// A ring replaced by another: drained until [`RETIRE_AFTER`] after its successor was
/// installed (until then the kernel may still write to it).
pub(super) struct Retired {
    pub(super) cgroup_id: u64,
    pub(super) ring: Ring,
    pub(super) successor: u64,
    pub(super) since: Option<Instant>,
}

/// A cgroup waiting for room for its first ring.
#[derive(Default)]
pub(super) struct Waiter {
    pub(super) heat: Heat,
    pub(super) denied_at: Option<Instant>,
}

/// What the shared ring's record of a known cgroup says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnShared {
    /// Not seen before: admit it.
    New,
    /// Its own ring is installed and overflowed into the shared ring (this slot).
    Spilled(usize),
    /// It has no ring of its own (yet).
    NoRing,
}

/// Every per-cgroup ring of the daemon, and the budget they share.
pub struct Rings {
    pub(super) slots: Vec<Option<Slot>>,
    pub(super) by_cgroup: IdMap<Placement>,
    pub(super) waiting: IdMap<Waiter>,
    pub(super) retired: Vec<Retired>,
    pub(super) installer: Installer,
    pub(super) max_size: u32,
    pub(super) create_failures: u64,
    pub(super) meter: Meter,
    pub(super) budget: u64,
    pub(super) denied: u64,
    pub(super) last_roll: Instant,
}

impl Rings {
    /// Rings of up to `max_size` bytes within `budget` bytes, the shared ring of
    /// `shared_size` bytes included.
    #[must_use]
    pub fn new(installer: Installer, max_size: u32, budget: u64, shared_size: u32) -> Self {
        let meter = Meter::default();
        meter.add_fixed(shared_size);
        Self {
            slots: Vec::new(),
            by_cgroup: IdMap::default(),
            waiting: IdMap::default(),
            retired: Vec::new(),
            installer,
            max_size,
            create_failures: 0,
            meter,
            budget,
            denied: 0,
            last_roll: Instant::now(),
        }
    }

    /// Rings that could not be created.
    #[must_use]
    pub fn create_failures(&self) -> u64 {
        self.create_failures
    }

    /// (bytes of rings now, the budget, refusals so far).
    #[must_use]
    pub fn memory(&self) -> (u64, u64, u64) {
        (self.meter.bytes(), self.budget, self.denied)
    }

    /// Notes a shared-ring record of `cgroup_id` (counting it in the cgroup's heat) and says
    /// what it means.
    pub fn on_shared(&mut self, cgroup_id: u64) -> OnShared {
        match self.by_cgroup.get(&cgroup_id) {
            None => OnShared::New,
            Some(&Placement::Own(i)) => match self.slots[i].as_mut() {
                Some(s) if s.state == State::Installed => {
                    s.heat.add(1);
                    OnShared::Spilled(i)
                }
                _ => OnShared::NoRing,
            },
            Some(Placement::Waiting) => {
                if let Some(w) = self.waiting.get_mut(&cgroup_id) {
                    w.heat.add(1);
                }
                OnShared::NoRing
            }
            Some(Placement::Shared) => OnShared::NoRing,
        }
    }

    /// The slot an epoll token stands for.
    #[must_use]
    pub fn slot_of_token(token: u64) -> Option<usize> {
        token
            .checked_sub(FIRST_TOKEN)
            .and_then(|i| usize::try_from(i).ok())
    }

    fn create(&mut self, cgroup_id: u64, size: u32) -> Option<Ring> {
        match Ring::create(size, &self.meter) {
            Ok(r) => Some(r),
            Err(e) => {
                self.create_failures += 1;
                if self.create_failures == 1 {
                    log::warn!(
                        "cannot create a {size}-byte ring for cgroup {cgroup_id} ({e}); its events \
                         stay on the shared ring"
                    );
                }
                None
            }
        }
    }

    /// Gives a newly admitted cgroup a ring of its own if the budget has room (else it
    /// waits on the shared ring, see [`Rings::place_waiting`]). False when it has none.
    pub fn give(&mut self, epoll: &Epoll, cgroup_id: u64) -> bool {
        // Whatever happens, do not try again for this cgroup on every event.
        self.by_cgroup.insert(cgroup_id, Placement::Waiting);
        self.waiting.insert(cgroup_id, Waiter::default());
        self.place_waiting(epoll, cgroup_id, Instant::now())
    }

    /// Makes a ring of `size` bytes for a cgroup without one and asks the installer to put
    /// it in the kernel's map. False when it stays on the shared ring.
    pub(super) fn first_ring(&mut self, epoll: &Epoll, cgroup_id: u64, size: u32) -> bool {
        self.waiting.remove(&cgroup_id);
        self.by_cgroup.insert(cgroup_id, Placement::Shared);
        let Some(ring) = self.create(cgroup_id, size) else {
            return false;
        };
        let i = self
            .slots
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.slots.len());
        if let Err(e) = epoll.add(ring.buf.as_fd().as_raw_fd(), FIRST_TOKEN + i as u64) {
            log::warn!("epoll_ctl for cgroup {cgroup_id}'s ring: {e}");
            return false;
        }
        let Some(ticket) = self.installer.install(cgroup_id, &ring.buf) else {
            epoll.remove(ring.buf.as_fd().as_raw_fd());
            return false;
        };
        let slot = Slot {
            cgroup_id,
            ring,
            state: State::Installing(ticket),
            heat: Heat::default(),
            cool_until: None,
            denied_at: None,
        };
        if i == self.slots.len() {
            self.slots.push(Some(slot));
        } else {
            self.slots[i] = Some(slot);
        }
        self.by_cgroup.insert(cgroup_id, Placement::Own(i));
        log::debug!("cgroup {cgroup_id}: own ring, slot {i}");
        true
    }

    /// Replaces slot `i`'s ring by one of `size` bytes (bigger or smaller), once the
    /// current one is installed; the old one is retired. False if nothing was done.
    pub(super) fn replace(&mut self, epoll: &Epoll, i: usize, size: u32) -> bool {
        let Some(Some(slot)) = self.slots.get(i) else {
            return false;
        };
        if slot.ring.size == size || slot.state != State::Installed {
            return false;
        }
        let cgroup_id = slot.cgroup_id;
        let Some(ring) = self.create(cgroup_id, size) else {
            return false;
        };
        let Some(ticket) = self.installer.install(cgroup_id, &ring.buf) else {
            return false;
        };
        let Some(mut slot) = self.slots[i].take() else {
            return false;
        };
        epoll.remove(slot.ring.buf.as_fd().as_raw_fd());
        if let Err(e) = epoll.add(ring.buf.as_fd().as_raw_fd(), FIRST_TOKEN + i as u64) {
            log::warn!("epoll_ctl for cgroup {cgroup_id}'s ring: {e}");
        }
        log::debug!(
            "cgroup {cgroup_id}: ring {} -> {size} bytes",
            slot.ring.size
        );
        let old = std::mem::replace(&mut slot.ring, ring);
        slot.state = State::Installing(ticket);
        self.slots[i] = Some(slot);
        self.retired.push(Retired {
            cgroup_id,
            ring: old,
            successor: ticket,
            since: None,
        });
        true
    }

    /// Takes the installer's finished work: marks rings installed (or failed), starts the
    /// retirement clock of the rings they replaced (or, where the replacement failed, puts
    /// the replaced ring back: the kernel still writes to it), and drops the rings of gone
    /// cgroups once they are out of the map and drained.
    pub fn completions(&mut self, epoll: &Epoll, agg: &mut Aggregator, now: Now) {
        while let Some((ticket, ok)) = self.installer.completed() {
            let Some(i) = self.slots.iter().position(|s| {
                s.as_ref().is_some_and(|s| {
                    s.state == State::Installing(ticket) || s.state == State::Removing(ticket)
                })
            }) else {
                continue;
            };
            if matches!(
                self.slots[i].as_ref().map(|s| s.state),
                Some(State::Removing(_))
            ) {
                self.drain_slot(i, agg, now, usize::MAX);
                if let Some(slot) = self.slots[i].take() {
                    epoll.remove(slot.ring.buf.as_fd().as_raw_fd());
                }
                continue;
            }
            let replaced = self.retired.iter().position(|r| r.successor == ticket);
            match (ok, replaced) {
                (true, Some(r)) => self.retired[r].since = Some(Instant::now()),
                (false, Some(r)) => {
                    // The map still holds the old ring: keep reading it, drop the new one.
                    let old = self.retired.swap_remove(r);
                    let Some(slot) = self.slots[i].as_mut() else {
                        continue;
                    };
                    epoll.remove(slot.ring.buf.as_fd().as_raw_fd());
                    if let Err(e) =
                        epoll.add(old.ring.buf.as_fd().as_raw_fd(), FIRST_TOKEN + i as u64)
                    {
                        log::warn!("epoll_ctl for cgroup {}'s ring: {e}", old.cgroup_id);
                    }
                    let mut new = std::mem::replace(&mut slot.ring, old.ring);
                    slot.state = State::Installed;
                    // Drain what the new ring may hold (nothing, as it was never installed).
                    let mut sink = agg.sink(old.cgroup_id, now);
                    while let Some(item) = new.buf.next() {
                        sink.push(&item);
                    }
                    continue;
                }
                _ => {}
            }
            if let Some(slot) = self.slots[i].as_mut() {
                slot.state = if ok { State::Installed } else { State::Failed };
            }
        }
    }

    /// Drains up to `max` records of slot `i`'s ring into `agg`.
    pub fn drain_slot(&mut self, i: usize, agg: &mut Aggregator, now: Now, max: usize) {
        let Some(Some(slot)) = self.slots.get_mut(i) else {
            return;
        };
        let mut sink = agg.sink(slot.cgroup_id, now);
        let mut n = 0;
        while n < max {
            let Some(item) = slot.ring.buf.next() else {
                break;
            };
            sink.push(&item);
            n += 1;
        }
        slot.heat.add(n as u64);
    }

    /// Drains every slot (a batch each) and every retired ring (whole), then drops the
    /// retired rings whose time is up.
    pub fn drain_all(&mut self, agg: &mut Aggregator, now: Now) {
        for i in 0..self.slots.len() {
            self.drain_slot(i, agg, now, BATCH);
        }
        for r in &mut self.retired {
            let mut sink = agg.sink(r.cgroup_id, now);
            while let Some(item) = r.ring.buf.next() {
                sink.push(&item);
            }
        }
        self.retired
            .retain(|r| r.since.is_none_or(|t| t.elapsed() < RETIRE_AFTER));
    }

    /// Drains everything a cgroup's rings hold into `agg` (before the cgroup is forgotten).
    pub fn drain_cgroup(&mut self, cgroup_id: u64, agg: &mut Aggregator, now: Now) {
        if let Some(&Placement::Own(i)) = self.by_cgroup.get(&cgroup_id) {
            self.drain_slot(i, agg, now, usize::MAX);
        }
        for r in self.retired.iter_mut().filter(|r| r.cgroup_id == cgroup_id) {
            let mut sink = agg.sink(cgroup_id, now);
            while let Some(item) = r.ring.buf.next() {
                sink.push(&item);
            }
        }
    }

    /// Takes a gone cgroup's ring out of the kernel's map; the ring is drained until that
    /// is done (see [`Rings::completions`]) and then dropped. Call [`Rings::drain_cgroup`]
    /// first.
    pub fn forget(&mut self, cgroup_id: u64) {
        self.waiting.remove(&cgroup_id);
        if let Some(Placement::Own(i)) = self.by_cgroup.remove(&cgroup_id)
            && let Some(slot) = self.slots[i].as_mut()
        {
            match self.installer.remove(cgroup_id) {
                Some(ticket) => slot.state = State::Removing(ticket),
                None => self.slots[i] = None,
            }
        }
        self.retired.retain(|r| r.cgroup_id != cgroup_id);
    }
}
