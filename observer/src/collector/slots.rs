//! The per-cgroup rings: one slot per admitted cgroup with its ring and the ring's state in
//! the kernel's map, growth of busy cgroups' rings, and the retirement of replaced rings.

use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};

use super::installer::Installer;
use super::sys::Epoll;
use crate::aggregate::{Aggregator, Now};
use crate::idmap::IdMap;

/// Size of a cgroup's first ring. Rings grow (x4, up to `--ring-size`) each time the kernel
/// has to wake us because one is a quarter full, so quiet cgroups keep small rings: ring
/// pages are mapped twice into the daemon and charged to its memory cgroup.
pub const INITIAL_RING_SIZE: u32 = 8 * 1024;
/// How long a replaced ring is still drained: programs that looked it up before the swap
/// may still write to it until they return.
const RETIRE_AFTER: Duration = Duration::from_secs(1);
/// Most records taken from one ring per wake-up, so one busy cgroup cannot starve others.
pub const BATCH: usize = 8192;
/// epoll token of slot 0; slot `i` has `FIRST_TOKEN + i`.
pub const FIRST_TOKEN: u64 = 3;

/// Where a ring stands in the kernel's cgroup -> ring map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
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

struct Slot {
    cgroup_id: u64,
    ring: RingBuf<MapData>,
    size: u32,
    state: State,
}

/// Where a cgroup's events are read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    /// Its own ring, in this slot.
    Own(usize),
    /// The shared ring: no ring of its own could be made.
    Shared,
}

/// A ring replaced by a bigger one: drained until [`RETIRE_AFTER`] after its successor was
/// installed (until then the kernel may still write to it).
struct Retired {
    cgroup_id: u64,
    ring: RingBuf<MapData>,
    size: u32,
    successor: u64,
    since: Option<Instant>,
}

/// Every per-cgroup ring of the daemon.
pub struct Rings {
    slots: Vec<Option<Slot>>,
    by_cgroup: IdMap<Placement>,
    retired: Vec<Retired>,
    installer: Installer,
    max_size: u32,
    create_failures: u64,
}

impl Rings {
    #[must_use]
    pub fn new(installer: Installer, max_size: u32) -> Self {
        Self {
            slots: Vec::new(),
            by_cgroup: IdMap::default(),
            retired: Vec::new(),
            installer,
            max_size,
            create_failures: 0,
        }
    }

    /// Rings that could not be created.
    #[must_use]
    pub fn create_failures(&self) -> u64 {
        self.create_failures
    }

    /// Whether `cgroup_id` was given a ring (or found to need the shared one).
    #[must_use]
    pub fn knows(&self, cgroup_id: u64) -> bool {
        self.by_cgroup.contains_key(&cgroup_id)
    }

    /// The slot of `cgroup_id`'s ring, if it is installed in the kernel's map.
    #[must_use]
    pub fn installed_slot(&self, cgroup_id: u64) -> Option<usize> {
        match self.by_cgroup.get(&cgroup_id) {
            Some(&Placement::Own(i)) => self.slots[i]
                .as_ref()
                .is_some_and(|s| s.state == State::Installed)
                .then_some(i),
            _ => None,
        }
    }

    /// The slot an epoll token stands for.
    #[must_use]
    pub fn slot_of_token(token: u64) -> Option<usize> {
        token
            .checked_sub(FIRST_TOKEN)
            .and_then(|i| usize::try_from(i).ok())
    }

    fn create(&mut self, cgroup_id: u64, size: u32) -> Option<RingBuf<MapData>> {
        match RingBuf::create(size, 0) {
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

    /// Creates a ring for a newly admitted cgroup and asks the installer to put it in the
    /// kernel's map. False when the cgroup stays on the shared ring.
    pub fn give(&mut self, epoll: &Epoll, cgroup_id: u64) -> bool {
        let size = INITIAL_RING_SIZE.min(self.max_size);
        // Whatever happens, do not try again for this cgroup on every event.
        self.by_cgroup.insert(cgroup_id, Placement::Shared);
        let Some(ring) = self.create(cgroup_id, size) else {
            return false;
        };
        let i = self
            .slots
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.slots.len());
        if let Err(e) = epoll.add(ring.as_fd().as_raw_fd(), FIRST_TOKEN + i as u64) {
            log::warn!("epoll_ctl for cgroup {cgroup_id}'s ring: {e}");
            return false;
        }
        let Some(ticket) = self.installer.install(cgroup_id, &ring) else {
            epoll.remove(ring.as_fd().as_raw_fd());
            return false;
        };
        let slot = Slot {
            cgroup_id,
            ring,
            size,
            state: State::Installing(ticket),
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

    /// Replaces slot `i`'s ring by one four times larger (up to `--ring-size`).
    pub fn grow(&mut self, epoll: &Epoll, i: usize) {
        if let Some(Some(slot)) = self.slots.get(i) {
            let size = slot.size.saturating_mul(4);
            self.grow_to(epoll, i, size);
        }
    }

    /// Replaces slot `i`'s ring by one of `size` bytes (at most `--ring-size`), if larger
    /// and once the current one is installed.
    pub fn grow_to(&mut self, epoll: &Epoll, i: usize, size: u32) {
        let Some(Some(slot)) = self.slots.get(i) else {
            return;
        };
        let size = size.min(self.max_size);
        if slot.size >= size || slot.state != State::Installed {
            return;
        }
        let cgroup_id = slot.cgroup_id;
        let Some(ring) = self.create(cgroup_id, size) else {
            return;
        };
        let Some(ticket) = self.installer.install(cgroup_id, &ring) else {
            return;
        };
        let Some(old) = self.slots[i].take() else {
            return;
        };
        epoll.remove(old.ring.as_fd().as_raw_fd());
        if let Err(e) = epoll.add(ring.as_fd().as_raw_fd(), FIRST_TOKEN + i as u64) {
            log::warn!("epoll_ctl for cgroup {cgroup_id}'s ring: {e}");
        }
        log::debug!("cgroup {cgroup_id}: ring grows to {size} bytes");
        self.slots[i] = Some(Slot {
            cgroup_id,
            ring,
            size,
            state: State::Installing(ticket),
        });
        self.retired.push(Retired {
            cgroup_id,
            ring: old.ring,
            size: old.size,
            successor: ticket,
            since: None,
        });
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
                    epoll.remove(slot.ring.as_fd().as_raw_fd());
                }
                continue;
            }
            let replaced = self.retired.iter().position(|r| r.successor == ticket);
            match (ok, replaced) {
                (true, Some(r)) => self.retired[r].since = Some(Instant::now()),
                (false, Some(r)) => {
                    // The map still holds the old ring: keep reading it, drop the new one.
                    let old = self.retired.swap_remove(r);
                    let new = self.slots[i].take().expect("the slot found above");
                    epoll.remove(new.ring.as_fd().as_raw_fd());
                    if let Err(e) = epoll.add(old.ring.as_fd().as_raw_fd(), FIRST_TOKEN + i as u64)
                    {
                        log::warn!("epoll_ctl for cgroup {}'s ring: {e}", old.cgroup_id);
                    }
                    self.slots[i] = Some(Slot {
                        cgroup_id: old.cgroup_id,
                        ring: old.ring,
                        size: old.size,
                        state: State::Installed,
                    });
                    // Drain what the new ring may hold (nothing, as it was never installed).
                    let mut sink = agg.sink(new.cgroup_id, now);
                    let mut ring = new.ring;
                    while let Some(item) = ring.next() {
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
        for _ in 0..max {
            let Some(item) = slot.ring.next() else { break };
            sink.push(&item);
        }
    }

    /// Drains every slot (a batch each) and every retired ring (whole), then drops the
    /// retired rings whose time is up.
    pub fn drain_all(&mut self, agg: &mut Aggregator, now: Now) {
        for i in 0..self.slots.len() {
            self.drain_slot(i, agg, now, BATCH);
        }
        for r in &mut self.retired {
            let mut sink = agg.sink(r.cgroup_id, now);
            while let Some(item) = r.ring.next() {
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
            while let Some(item) = r.ring.next() {
                sink.push(&item);
            }
        }
    }

    /// Takes a gone cgroup's ring out of the kernel's map; the ring is drained until that
    /// is done (see [`Rings::completions`]) and then dropped. Call [`Rings::drain_cgroup`]
    /// first.
    pub fn forget(&mut self, cgroup_id: u64) {
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
