//! The collector: one thread that owns every ring buffer and all aggregation state. It
//! waits in epoll on the shared ring, the per-cgroup rings, the aya-log ring and a control
//! eventfd; drains whichever is readable in batches; gives each cgroup it admits a ring of
//! its own; drops cgroups that are gone; and answers scrape requests with a snapshot.
//!
//! Files: [`sys`] (epoll, eventfd), [`handle`] (the HTTP side's link), [`maps`] (taking the
//! maps out of the object), [`installer`] (the thread that updates the kernel's ring map),
//! [`metered`] (rings with their memory counted), [`slots`] (rings per cgroup, replacement,
//! retirement), [`growth`] (when rings grow within the budget), [`counters`] (per-CPU
//! kernel counters), and here the loop, the shared ring, garbage collection and the scrape.

mod counters;
mod growth;
mod handle;
mod installer;
mod maps;
mod metered;
mod slots;
mod sys;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};

pub use handle::Handle;
pub use maps::Maps;
pub use slots::INITIAL_RING_SIZE;

use crate::aggregate::{Admission, Aggregator, Ledger, Now};
use crate::cgroups::Resolver;
use crate::error::Error;
use crate::exposition::{Row, Scrape};
use crate::idmap::IdMap;
use crate::probe_mode::ProbeMode;
use crate::signal::Signal;
use counters::KernelCounters;
use handle::Inbox;
use installer::Installer;
use slots::{BATCH, OnShared, Rings};
use sys::{Epoll, EventFd};

const TOKEN_CONTROL: u64 = 0;
const TOKEN_LOG: u64 = 1;
const TOKEN_SHARED: u64 = 2;
/// The kernel wakes us only when a ring is a quarter full; otherwise we look at every ring
/// this often. A scrape drains everything first, so it never shows stale data.
const POLL: Duration = Duration::from_millis(50);

/// Settings of the collector.
pub struct Settings {
    /// The attached programs (for their skip counts).
    pub programs: Vec<OwnedFd>,
    pub max_cgroups: usize,
    pub window: Duration,
    pub ring_size: u32,
    /// Bytes all rings may take together (the shared ring's included).
    pub ring_budget: u64,
    pub shared_ring_size: u32,
    /// The kernel's tables and their sizes (`table` label, entries), and the size of the
    /// connection table (for its evictions).
    pub tables: Vec<(&'static str, u64)>,
    pub max_connections: u32,
    pub cgroup_ttl: Duration,
    pub probes: Vec<(Signal, ProbeMode)>,
    pub resolver: Resolver,
}

struct Collector {
    shared: RingBuf<MapData>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    counters: KernelCounters,
    /// Which part of the kernel counts each series shows (keeps `_other` monotonic).
    ledger: Ledger,
    rings: Rings,
    agg: Aggregator,
    resolver: Resolver,
    epoll: Epoll,
    inbox: Inbox,
    start: Instant,
    probes: Vec<(Signal, ProbeMode)>,
    cgroup_ttl: Duration,
    programs: Vec<OwnedFd>,
    /// The highest count of probe misses shown so far (see [`Collector::scrape`]).
    probe_misses: u64,
    /// Per tracked cgroup: its event count at the last garbage collection, and since when
    /// it has not changed.
    idle: IdMap<(u64, Instant)>,
    last_gc: Instant,
    /// Cgroups admitted since the last poll tick, to be resolved to their path while their
    /// directory still exists (a short-lived cgroup may be gone by the next scrape).
    unresolved: Vec<u64>,
    tables: Vec<(&'static str, u64)>,
}

/// Starts the collector thread.
///
/// # Errors
/// When a thread, the epoll set or the eventfd cannot be made.
pub fn spawn(
    maps: Maps,
    settings: Settings,
) -> Result<(Handle, std::thread::JoinHandle<()>), Error> {
    let Maps {
        shared,
        outer,
        counters,
        logger,
    } = maps;
    let rings = Rings::new(
        Installer::spawn(outer)?,
        settings.ring_size,
        settings.ring_budget,
        settings.shared_ring_size,
    );
    let counters = KernelCounters::new(counters, settings.max_connections)?;
    let epoll = Epoll::new().map_err(|e| Error::Io("epoll_create1", e))?;
    let (handle, inbox) = Handle::pair(EventFd::new().map_err(|e| Error::Io("eventfd", e))?);
    let epoll_add = |fd, token| epoll.add(fd, token).map_err(|e| Error::Io("epoll_ctl", e));
    epoll_add(inbox.wake.raw(), TOKEN_CONTROL)?;
    epoll_add(shared.as_fd().as_raw_fd(), TOKEN_SHARED)?;
    if let Some(l) = &logger {
        epoll_add(l.as_fd().as_raw_fd(), TOKEN_LOG)?;
    }
    let mut c = Collector {
        shared,
        logger,
        counters,
        ledger: Ledger::default(),
        rings,
        agg: Aggregator::new(settings.max_cgroups, settings.window),
        resolver: settings.resolver,
        epoll,
        inbox,
        start: Instant::now(),
        probes: settings.probes,
        cgroup_ttl: settings.cgroup_ttl,
        programs: settings.programs,
        probe_misses: 0,
        idle: IdMap::default(),
        last_gc: Instant::now(),
        unresolved: Vec::new(),
        tables: settings.tables,
    };
    let join = std::thread::Builder::new()
        .name("socklat-collector".into())
        .spawn(move || c.run())
        .map_err(|e| Error::Io("spawn collector thread", e))?;
    Ok((handle, join))
}

impl Collector {
    fn run(&mut self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
        let mut last_poll = Instant::now();
        let poll_ms = i32::try_from(POLL.as_millis()).unwrap_or(50);
        while !self.inbox.stopping() {
            let n = self.epoll.wait(&mut events, poll_ms);
            if last_poll.elapsed() >= POLL {
                last_poll = Instant::now();
                self.tick();
            }
            if self.last_gc.elapsed()
                >= (self.cgroup_ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(10))
            {
                self.last_gc = Instant::now();
                self.collect_dead_cgroups();
            }
            for ev in &events[..n] {
                let token = ev.u64;
                match token {
                    TOKEN_CONTROL => {
                        self.inbox.wake.drain();
                        self.answer_requests();
                    }
                    TOKEN_LOG => {
                        if let Some(l) = &mut self.logger {
                            l.flush();
                        }
                    }
                    TOKEN_SHARED => self.drain_shared(),
                    t => {
                        // The kernel woke us: this ring is a quarter full. Drain it, and
                        // give the cgroup a bigger ring if it may have one.
                        if let Some(i) = Rings::slot_of_token(t) {
                            let now = self.now();
                            self.rings.drain_slot(i, &mut self.agg, now, BATCH);
                            self.rings.grow(&self.epoll, i);
                        }
                    }
                }
            }
        }
        // Print what the kernel programs logged before the stop.
        if let Some(l) = &mut self.logger {
            l.flush();
        }
    }

    /// The poll tick: installs done, every ring drained, new cgroups resolved.
    fn tick(&mut self) {
        let now = self.now();
        self.rings.completions(&self.epoll, &mut self.agg, now);
        self.drain_shared();
        self.rings.drain_all(&mut self.agg, now);
        self.rings.every_second(&self.epoll);
        self.agg.settle(now);
        // At most one rescan of the cgroup tree per tick, and only when a new cgroup came.
        if !self.unresolved.is_empty() {
            self.resolver.begin_round();
            for id in std::mem::take(&mut self.unresolved) {
                let _ = self.resolver.resolve(id);
            }
        }
    }

    fn now(&self) -> Now {
        self.agg.now(self.start.elapsed())
    }

    /// Drains a batch of the shared ring: admits new cgroups (and gives them rings), and
    /// grows the rings of admitted cgroups that spilled over.
    fn drain_shared(&mut self) {
        let now = self.now();
        let mut spilled: Vec<usize> = Vec::new();
        for _ in 0..BATCH {
            let Some(item) = self.shared.next() else {
                break;
            };
            let pushed = self.agg.push_shared(&item, now);
            drop(item);
            let Some((cgroup_id, admission)) = pushed else {
                continue;
            };
            if admission == Admission::Other {
                continue;
            }
            match self.rings.on_shared(cgroup_id) {
                OnShared::New => {
                    self.rings.give(&self.epoll, cgroup_id);
                    self.unresolved.push(cgroup_id);
                }
                // An admitted cgroup's event on the shared ring: its own ring overflowed
                // (the kernel spills to the shared ring). It asks for the largest ring.
                OnShared::Spilled(i) => spilled.push(i),
                OnShared::NoRing => {}
            }
        }
        spilled.sort_unstable();
        spilled.dedup();
        for i in spilled {
            self.rings.grow_to_max(&self.epoll, i);
        }
    }

    /// Drops cgroups that no longer exist and have had no event for `--cgroup-ttl`: their
    /// series, ring, kernel map entries and cached labels.
    fn collect_dead_cgroups(&mut self) {
        self.resolver.begin_round();
        let now = Instant::now();
        let ids: Vec<u64> = self.agg.ids().collect();
        let mut dead = Vec::new();
        for id in ids {
            let events = self.agg.events_of(id).unwrap_or(0);
            let entry = self.idle.entry(id).or_insert((events, now));
            if entry.0 != events {
                *entry = (events, now);
                continue;
            }
            if now.duration_since(entry.1) < self.cgroup_ttl {
                continue;
            }
            let _ = self.resolver.resolve(id);
            if self.resolver.exists(id) != Some(true) {
                dead.push(id);
            }
        }
        for id in dead {
            self.forget(id);
            log::debug!("cgroup {id} is gone: series and ring dropped");
        }
    }

    /// Forgets everything of one cgroup, after counting what its rings still hold.
    fn forget(&mut self, id: u64) {
        let now = self.now();
        self.rings.drain_cgroup(id, &mut self.agg, now);
        self.agg.forget(id);
        self.idle.remove(&id);
        self.resolver.forget(id);
        self.rings.forget(id);
        self.counters.forget(id);
        self.ledger.forget(id);
    }

    /// Drains every ring until all read empty: a scrape sees every event submitted before it.
    fn drain_everything(&mut self) {
        loop {
            let before = self.agg.intake().received;
            self.drain_shared();
            let now = self.now();
            self.rings.drain_all(&mut self.agg, now);
            self.rings.completions(&self.epoll, &mut self.agg, now);
            if self.agg.intake().received == before {
                break;
            }
        }
    }

    fn answer_requests(&mut self) {
        let mut pending = Vec::new();
        while let Ok(tx) = self.inbox.requests.try_recv() {
            pending.push(tx);
        }
        if pending.is_empty() {
            return;
        }
        self.drain_everything();
        let scrape = self.scrape();
        for tx in pending {
            let _ = tx.send(scrape.clone());
        }
    }

    fn scrape(&mut self) -> Scrape {
        self.resolver.begin_round();
        let now = self.now();
        let counts = self.counters.read();
        // Cgroups known only from their kernel counters get series too, if there is room.
        for id in counts.per_cgroup.keys() {
            let _ = self.agg.admit(*id);
        }
        let agg = &self.agg;
        let (mut own, beyond) = self.ledger.split(&counts.per_cgroup, |id| agg.tracks(id));
        let mut rows = Vec::new();
        let mut other = Row {
            faults: beyond.faults,
            lost: counts.unattributed_lost + beyond.lost,
            retransmits: beyond.retransmits,
            ..Row::empty_other()
        };
        let mut events = self.agg.events_without_series();
        self.agg.settle(now);
        let snaps = self.agg.snapshot(now.epoch);
        // Resolve every id before taking labels: finding a new cgroup can relabel an old
        // one (a path made again), and both rows must see that.
        for id in snaps.iter().filter_map(|s| s.id) {
            let _ = self.resolver.resolve(id);
        }
        for snap in snaps {
            for (t, e) in events.iter_mut().zip(snap.events) {
                *t += e;
            }
            match snap.id {
                Some(id) => {
                    let k = own.remove(&id).unwrap_or_default();
                    rows.push(Row {
                        labels: self.resolver.resolve(id),
                        faults: k.faults,
                        lost: k.lost,
                        retransmits: k.retransmits,
                        snap: Some(snap),
                    });
                }
                None => other.snap = Some(snap),
            }
        }
        rows.push(other);
        // Skipped runs that a twin program made good are not misses. Read the skips first:
        // a twin's run counted after that is subtracted early, never late, so the value is
        // at most the true one; the floor keeps the counter from going down.
        let skipped: u64 = self
            .programs
            .iter()
            .map(|p| crate::kernel::prog_info::recursion_misses(p.as_fd()))
            .sum();
        self.probe_misses = self
            .probe_misses
            .max(skipped.saturating_sub(self.counters.nested_runs()));
        let probe_misses = self.probe_misses;
        let (ring_memory, ring_budget, ring_growths_denied) = self.rings.memory();
        Scrape {
            rows,
            probe_misses,
            probes: self.probes.clone(),
            tracked: self.agg.tracked(),
            events,
            undecodable: self.agg.intake().undecodable,
            ring_create_failures: self.rings.create_failures(),
            ring_memory,
            ring_budget,
            ring_growths_denied,
            connections_evicted: counts.connections_evicted,
            starts_evicted: counts.starts_evicted,
            tables: self.tables.clone(),
        }
    }
}
