//! The collector: one thread that owns every ring buffer and all aggregation state. It
//! waits in epoll on the shared ring, the per-cgroup rings, the aya-log ring and a control
//! eventfd; drains whichever is readable in batches; creates a ring for each cgroup it
//! admits; and answers scrape requests with a snapshot. Nothing here is shared with the
//! HTTP side but a channel, so a scrape never holds a lock the event path needs.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aya::maps::{HashOfMaps, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf};
use aya::util::nr_cpus;
use observer_common::{Event, FaultCache, FaultCounts, UNATTRIBUTED, names};
use tokio::sync::oneshot;

use crate::aggregate::{Admission, Aggregator, IdMap, Signal};
use crate::cgroups::Resolver;
use crate::cli::ProbeMode;
use crate::error::Error;
use crate::metrics::{Row, Scrape, other_labels};
use crate::server::Source;

const TOKEN_CONTROL: u64 = 0;
const TOKEN_LOG: u64 = 1;
const TOKEN_SHARED: u64 = 2;
const TOKEN_FIRST_RING: u64 = 3;
/// Most records taken from one ring per wake-up, so one busy cgroup cannot starve others.
const BATCH: usize = 8192;
/// The kernel wakes us only when a ring is a quarter full; otherwise we look at every ring
/// this often. A scrape drains everything first, so it never shows stale data.
const POLL_MS: i32 = 50;
/// Size of a cgroup's first ring. Rings grow (x4, up to `--ring-size`) each time the kernel
/// has to wake us because one is a quarter full, so quiet cgroups keep small rings: ring
/// pages are mapped twice into the daemon and charged to its memory cgroup.
pub const INITIAL_RING_SIZE: u32 = 8 * 1024;
/// How long a replaced ring is still drained: programs that looked it up before the swap
/// may still write to it until they return.
const RETIRE_AFTER: Duration = Duration::from_secs(1);

/// A tiny epoll wrapper.
struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> std::io::Result<Self> {
        // SAFETY: epoll_create1 has no pointer arguments.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn remove(&self, fd: RawFd) {
        // SAFETY: a NULL event is allowed for EPOLL_CTL_DEL since Linux 2.6.9.
        let _ = unsafe {
            libc::epoll_ctl(
                self.0.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
    }

    fn add(&self, fd: RawFd, token: u64) -> std::io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` outlives the call; fds are valid.
        let rc =
            unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &raw mut ev) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait(&self, out: &mut [libc::epoll_event], timeout_ms: i32) -> usize {
        let max = i32::try_from(out.len()).unwrap_or(i32::MAX);
        // SAFETY: `out` is valid for `max` entries.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), out.as_mut_ptr(), max, timeout_ms) };
        usize::try_from(n).unwrap_or(0)
    }
}

fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: eventfd has no pointer arguments.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64.
    let _ = unsafe { libc::write(fd, (&raw const one).cast(), 8) };
}

fn eventfd_drain(fd: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a valid u64.
    let _ = unsafe { libc::read(fd, (&raw mut v).cast(), 8) };
}

/// The HTTP side's handle on the collector.
pub struct Handle {
    requests: mpsc::Sender<oneshot::Sender<Scrape>>,
    wake: Arc<OwnedFd>,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Handle {
    /// Asks the collector thread to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        eventfd_signal(self.wake.as_raw_fd());
    }
}

impl Source for Handle {
    fn request(&self) -> oneshot::Receiver<Scrape> {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(tx).is_ok() {
            eventfd_signal(self.wake.as_raw_fd());
        }
        rx
    }
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Maps and settings the collector takes from the loaded object.
pub struct Parts {
    pub shared: RingBuf<MapData>,
    pub outer: HashOfMaps<MapData, u64, MapData>,
    pub lost: PerCpuHashMap<MapData, u64, u64>,
    pub faults: PerCpuHashMap<MapData, u64, FaultCounts>,
    pub retransmits: PerCpuHashMap<MapData, u64, u64>,
    pub fault_cache: PerCpuArray<MapData, FaultCache>,
    pub conn_untracked: PerCpuArray<MapData, u64>,
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Parts {
    /// Takes the collector's maps out of the loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, Error> {
        let map = |ebpf: &mut aya::Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(Error::MissingMap(name))
        };
        let conv =
            |name: &'static str| move |e: aya::maps::MapError| Error::Map(name, e.to_string());
        let logger = match aya_log::EbpfLogger::init(ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                log::warn!("kernel log messages unavailable: {e}");
                None
            }
        };
        Ok(Self {
            shared: RingBuf::try_from(map(ebpf, names::SHARED_RING)?)
                .map_err(conv(names::SHARED_RING))?,
            outer: HashOfMaps::try_from(map(ebpf, names::CGROUP_RINGS)?)
                .map_err(conv(names::CGROUP_RINGS))?,
            lost: PerCpuHashMap::try_from(map(ebpf, names::LOST_EVENTS)?)
                .map_err(conv(names::LOST_EVENTS))?,
            faults: PerCpuHashMap::try_from(map(ebpf, names::FAULT_COUNTS)?)
                .map_err(conv(names::FAULT_COUNTS))?,
            retransmits: PerCpuHashMap::try_from(map(ebpf, names::RETRANSMITS)?)
                .map_err(conv(names::RETRANSMITS))?,
            fault_cache: PerCpuArray::try_from(map(ebpf, names::FAULT_CACHE)?)
                .map_err(conv(names::FAULT_CACHE))?,
            conn_untracked: PerCpuArray::try_from(map(ebpf, names::CONN_UNTRACKED)?)
                .map_err(conv(names::CONN_UNTRACKED))?,
            logger,
        })
    }
}

struct Slot {
    cgroup_id: u64,
    ring: RingBuf<MapData>,
    size: u32,
    /// Which install request put this ring in the kernel's map, and whether it is done.
    ticket: u64,
    installed: bool,
}

/// A ring replaced by a bigger one: drained until `RETIRE_AFTER` after its successor was
/// installed (until then the kernel may still write to it).
struct Retired {
    slot: Slot,
    successor: u64,
    since: Option<Instant>,
}

/// Installs rings into the kernel's cgroup -> ring map on a thread of its own: every
/// update of a map of maps waits for an RCU grace period (`maybe_wait_bpf_programs` in
/// kernel/bpf/syscall.c), milliseconds each, and the collector must keep draining
/// meanwhile (measured: installing 1000 rings inline filled the shared ring).
struct Installer {
    requests: mpsc::Sender<Install>,
    done: mpsc::Receiver<(u64, bool)>,
    next_ticket: u64,
}

enum Install {
    /// Put a cgroup's ring in the map (ticket reported when done).
    Insert(u64, MapData, u64),
    /// Take a dead cgroup's ring out of the map.
    Remove(u64),
}

impl Installer {
    fn spawn(mut outer: HashOfMaps<MapData, u64, MapData>) -> Result<Self, Error> {
        let (requests, rx) = mpsc::channel::<Install>();
        let (done_tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("socklat-install".into())
            .spawn(move || {
                let mut failures = 0u64;
                while let Ok(req) = rx.recv() {
                    let (cgroup_id, ring, ticket) = match req {
                        Install::Insert(c, r, t) => (c, r, t),
                        Install::Remove(c) => {
                            let _ = outer.remove(&c);
                            continue;
                        }
                    };
                    let ok = match outer.insert(&cgroup_id, &ring, 0) {
                        Ok(()) => true,
                        Err(e) => {
                            failures += 1;
                            if failures == 1 {
                                log::warn!(
                                    "cannot install a ring for cgroup {cgroup_id} ({e}); \
                                     its events stay on the shared ring"
                                );
                            }
                            false
                        }
                    };
                    if done_tx.send((ticket, ok)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::Io("spawn installer thread", e))?;
        Ok(Self {
            requests,
            done,
            next_ticket: 1,
        })
    }

    /// Queues `ring` for `cgroup_id`; returns the ticket its completion will carry.
    fn install(&mut self, cgroup_id: u64, ring: &RingBuf<MapData>) -> Option<u64> {
        let fd = ring.as_fd().try_clone_to_owned().ok()?;
        let data = MapData::from_fd(fd).ok()?;
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.requests
            .send(Install::Insert(cgroup_id, data, ticket))
            .ok()?;
        Some(ticket)
    }

    /// Queues the removal of a dead cgroup's ring.
    fn remove(&self, cgroup_id: u64) {
        let _ = self.requests.send(Install::Remove(cgroup_id));
    }
}

struct Collector {
    shared: RingBuf<MapData>,
    lost: PerCpuHashMap<MapData, u64, u64>,
    faults: PerCpuHashMap<MapData, u64, FaultCounts>,
    retransmits: PerCpuHashMap<MapData, u64, u64>,
    fault_cache: PerCpuArray<MapData, FaultCache>,
    conn_untracked: PerCpuArray<MapData, u64>,
    /// Highest fault counts shown per cgroup: the kernel moves counts from its per-CPU
    /// cache to the hash while we read, so a scrape may miss some; never show less.
    fault_floor: IdMap<FaultCounts>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    slots: Vec<Option<Slot>>,
    by_cgroup: IdMap<usize>,
    agg: Aggregator,
    resolver: Resolver,
    epoll: Epoll,
    wake: Arc<OwnedFd>,
    requests: mpsc::Receiver<oneshot::Sender<Scrape>>,
    stop: Arc<AtomicBool>,
    start: Instant,
    ring_size: u32,
    probes: Vec<(Signal, ProbeMode)>,
    ring_create_failures: u64,
    retired: Vec<Retired>,
    installer: Installer,
    cgroup_ttl: Duration,
    programs: Vec<OwnedFd>,
    /// Per tracked cgroup: its event count at the last garbage collection, and since when
    /// it has not changed.
    idle: IdMap<(u64, Instant)>,
    last_gc: Instant,
    /// Cgroups admitted since the last poll tick, to be resolved to their path while their
    /// directory still exists (a short-lived cgroup may be gone by the next scrape).
    unresolved: Vec<u64>,
}

/// Settings of the collector.
pub struct Settings {
    /// The attached programs (for their skip counts).
    pub programs: Vec<OwnedFd>,
    pub max_cgroups: usize,
    pub window: Duration,
    pub ring_size: u32,
    pub cgroup_ttl: Duration,
    pub probes: Vec<(Signal, ProbeMode)>,
    pub resolver: Resolver,
}

/// Starts the collector thread.
pub fn spawn(
    parts: Parts,
    settings: Settings,
) -> Result<(Handle, std::thread::JoinHandle<()>), Error> {
    let Parts {
        shared,
        outer,
        mut lost,
        faults,
        retransmits,
        fault_cache,
        conn_untracked,
        logger,
    } = parts;
    let installer = Installer::spawn(outer)?;
    let epoll = Epoll::new().map_err(|e| Error::Io("epoll_create1", e))?;
    let wake = Arc::new(eventfd().map_err(|e| Error::Io("eventfd", e))?);
    epoll
        .add(wake.as_raw_fd(), TOKEN_CONTROL)
        .map_err(|e| Error::Io("epoll_ctl", e))?;
    epoll
        .add(shared.as_fd().as_raw_fd(), TOKEN_SHARED)
        .map_err(|e| Error::Io("epoll_ctl", e))?;
    if let Some(l) = &logger {
        epoll
            .add(l.as_fd().as_raw_fd(), TOKEN_LOG)
            .map_err(|e| Error::Io("epoll_ctl", e))?;
    }
    // The unattributed-loss slot always exists, so the kernel can count into it.
    let cpus = nr_cpus().map_err(|(_, e)| Error::Io("nr_cpus", e))?;
    let zeros = PerCpuValues::try_from(vec![0u64; usize::try_from(cpus.get()).unwrap_or(1)])
        .map_err(|e| Error::Io("per-cpu values", e))?;
    lost.insert(&UNATTRIBUTED, zeros, 0)
        .map_err(|e| Error::Map(names::LOST_EVENTS, e.to_string()))?;

    let (tx, rx) = mpsc::channel();
    let ready = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let handle = Handle {
        requests: tx,
        wake: Arc::clone(&wake),
        ready,
        stop: Arc::clone(&stop),
    };
    let mut c = Collector {
        shared,
        lost,
        faults,
        retransmits,
        fault_cache,
        conn_untracked,
        fault_floor: IdMap::default(),
        logger,
        installer,
        slots: Vec::new(),
        by_cgroup: IdMap::default(),
        agg: Aggregator::new(settings.max_cgroups, settings.window),
        resolver: settings.resolver,
        epoll,
        wake,
        requests: rx,
        stop,
        start: Instant::now(),
        ring_size: settings.ring_size,
        probes: settings.probes,
        ring_create_failures: 0,
        retired: Vec::new(),
        cgroup_ttl: settings.cgroup_ttl,
        programs: settings.programs,
        idle: IdMap::default(),
        last_gc: Instant::now(),
        unresolved: Vec::new(),
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
        while !self.stop.load(Ordering::Acquire) {
            let n = self.epoll.wait(&mut events, POLL_MS);
            if last_poll.elapsed() >= Duration::from_millis(POLL_MS.unsigned_abs().into()) {
                last_poll = Instant::now();
                self.completions();
                self.drain_shared();
                for i in 0..self.slots.len() {
                    self.drain_slot(i);
                }
                self.drain_retired();
                // At most one rescan of the cgroup tree per tick, and only when a new
                // cgroup came.
                if !self.unresolved.is_empty() {
                    self.resolver.begin_round();
                    for id in std::mem::take(&mut self.unresolved) {
                        let _ = self.resolver.resolve(id);
                    }
                }
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
                        eventfd_drain(self.wake.as_raw_fd());
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
                        let i = usize::try_from(t - TOKEN_FIRST_RING).unwrap_or(usize::MAX);
                        self.drain_slot(i);
                        self.grow(i);
                    }
                }
            }
        }
        // Final drain so that nothing read before the stop is left uncounted in the log.
        if let Some(l) = &mut self.logger {
            l.flush();
        }
    }

    fn epoch(&self) -> u64 {
        self.agg.epoch(self.start.elapsed())
    }

    fn drain_slot(&mut self, i: usize) {
        let epoch = self.epoch();
        let Some(Some(slot)) = self.slots.get_mut(i) else {
            return;
        };
        let mut sink = self.agg.sink(slot.cgroup_id, epoch);
        let mut n = 0;
        while n < BATCH {
            let Some(item) = slot.ring.next() else { break };
            sink.push(&item);
            n += 1;
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
            self.agg.forget(id);
            self.idle.remove(&id);
            self.resolver.forget(id);
            self.fault_floor.remove(&id);
            if let Some(i) = self.by_cgroup.remove(&id) {
                if let Some(Some(slot)) = self.slots.get(i) {
                    self.epoll.remove(slot.ring.as_fd().as_raw_fd());
                    self.installer.remove(id);
                }
                if let Some(s) = self.slots.get_mut(i) {
                    *s = None;
                }
            }
            self.retired.retain(|r| r.slot.cgroup_id != id);
            let _ = self.lost.remove(&id);
            let _ = self.faults.remove(&id);
            let _ = self.retransmits.remove(&id);
            log::debug!("cgroup {id} is gone: series and ring dropped");
        }
    }

    /// Marks rings whose install finished; starts the retirement clock of the rings they
    /// replaced.
    fn completions(&mut self) {
        while let Ok((ticket, ok)) = self.installer.done.try_recv() {
            if let Some(slot) = self.slots.iter_mut().flatten().find(|s| s.ticket == ticket) {
                slot.installed = ok;
            }
            for r in &mut self.retired {
                if r.successor == ticket {
                    r.since = Some(Instant::now());
                }
            }
        }
    }

    fn drain_retired(&mut self) {
        let epoch = self.epoch();
        for r in &mut self.retired {
            let mut sink = self.agg.sink(r.slot.cgroup_id, epoch);
            while let Some(item) = r.slot.ring.next() {
                sink.push(&item);
            }
        }
        self.retired
            .retain(|r| r.since.is_none_or(|t| t.elapsed() < RETIRE_AFTER));
    }

    /// Replaces slot `i`'s ring by one four times larger (up to `--ring-size`).
    fn grow(&mut self, i: usize) {
        let Some(Some(slot)) = self.slots.get(i) else {
            return;
        };
        self.grow_to(i, slot.size.saturating_mul(4));
    }

    /// Replaces slot `i`'s ring by one of `size` bytes (at most `--ring-size`), if larger
    /// and once the current one is installed.
    fn grow_to(&mut self, i: usize, size: u32) {
        let Some(Some(slot)) = self.slots.get(i) else {
            return;
        };
        let size = size.min(self.ring_size);
        if slot.size >= size || !slot.installed {
            return;
        }
        let cgroup_id = slot.cgroup_id;
        let ring = match RingBuf::create(size, 0) {
            Ok(r) => r,
            Err(e) => {
                log::debug!("cannot grow cgroup {cgroup_id}'s ring to {size}: {e}");
                return;
            }
        };
        let token = TOKEN_FIRST_RING + i as u64;
        let Some(ticket) = self.installer.install(cgroup_id, &ring) else {
            return;
        };
        let Some(old) = self.slots[i].take() else {
            return;
        };
        self.epoll.remove(old.ring.as_fd().as_raw_fd());
        if let Err(e) = self.epoll.add(ring.as_fd().as_raw_fd(), token) {
            log::warn!("epoll_ctl for cgroup {cgroup_id}'s ring: {e}");
        }
        log::debug!("cgroup {cgroup_id}: ring grows to {size} bytes");
        self.slots[i] = Some(Slot {
            cgroup_id,
            ring,
            size,
            ticket,
            installed: false,
        });
        self.retired.push(Retired {
            slot: old,
            successor: ticket,
            since: None,
        });
    }

    fn drain_shared(&mut self) {
        let epoch = self.epoch();
        let mut spilled: Vec<usize> = Vec::new();
        let mut n = 0;
        while n < BATCH {
            let Some(item) = self.shared.next() else {
                break;
            };
            n += 1;
            let Some(ev) = Event::from_bytes(&item) else {
                self.agg.unknown_events += 1;
                continue;
            };
            drop(item);
            let admission = self.agg.record_shared(&ev, epoch);
            if admission == Admission::Other {
                continue;
            }
            match self.by_cgroup.get(&ev.cgroup_id) {
                None => self.give_ring(ev.cgroup_id),
                // An admitted cgroup's event on the shared ring: its own ring overflowed
                // (the kernel spills to the shared ring). Give it the largest ring now.
                Some(&i) if i != usize::MAX => {
                    if self.slots[i].as_ref().is_some_and(|s| s.installed) {
                        spilled.push(i);
                    }
                }
                Some(_) => {}
            }
        }
        spilled.sort_unstable();
        spilled.dedup();
        for i in spilled {
            self.grow_to(i, self.ring_size);
        }
    }

    /// Creates a ring for a newly admitted cgroup and tells the kernel to use it.
    fn give_ring(&mut self, cgroup_id: u64) {
        let size = INITIAL_RING_SIZE.min(self.ring_size);
        let ring = match RingBuf::create(size, 0) {
            Ok(r) => r,
            Err(e) => {
                self.ring_create_failures += 1;
                if self.ring_create_failures == 1 {
                    log::warn!(
                        "cannot create a ring for cgroup {cgroup_id} ({e}); its events stay on the shared ring"
                    );
                }
                // Do not try again for this cgroup on every event.
                self.by_cgroup.insert(cgroup_id, usize::MAX);
                return;
            }
        };
        let i = self
            .slots
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.slots.len());
        let token = TOKEN_FIRST_RING + i as u64;
        if let Err(e) = self.epoll.add(ring.as_fd().as_raw_fd(), token) {
            log::warn!("epoll_ctl for cgroup {cgroup_id}'s ring: {e}");
            self.by_cgroup.insert(cgroup_id, usize::MAX);
            return;
        }
        let Some(ticket) = self.installer.install(cgroup_id, &ring) else {
            self.epoll.remove(ring.as_fd().as_raw_fd());
            self.by_cgroup.insert(cgroup_id, usize::MAX);
            return;
        };
        let slot = Slot {
            cgroup_id,
            ring,
            size,
            ticket,
            installed: false,
        };
        if i == self.slots.len() {
            self.slots.push(Some(slot));
        } else {
            self.slots[i] = Some(slot);
        }
        self.by_cgroup.insert(cgroup_id, i);
        self.unresolved.push(cgroup_id);
        log::debug!("cgroup {cgroup_id}: own ring, slot {i}");
    }

    fn drain_everything(&mut self) {
        // Until every ring reads empty: a scrape sees every event submitted before it.
        loop {
            let before = self.agg.received();
            self.drain_shared();
            for i in 0..self.slots.len() {
                self.drain_slot(i);
            }
            self.drain_retired();
            self.completions();
            if self.agg.received() == before {
                break;
            }
        }
    }

    fn answer_requests(&mut self) {
        let mut pending = Vec::new();
        while let Ok(tx) = self.requests.try_recv() {
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
        let epoch = self.epoch();
        let mut faults: IdMap<FaultCounts> = IdMap::default();
        for (id, per_cpu) in self.faults.iter().flatten() {
            let mut sum = FaultCounts::default();
            for c in per_cpu.iter() {
                sum.user += c.user;
                sum.kernel += c.kernel;
                sum.major += c.major;
                sum.minor += c.minor;
            }
            faults.insert(id, sum);
        }
        // Then the per-CPU caches (read after the hash: a count moving meanwhile is missed
        // once, never counted twice).
        if let Ok(per_cpu) = self.fault_cache.get(&0, 0) {
            for c in per_cpu.iter() {
                if c.cgroup_id != 0 {
                    let f = faults.entry(c.cgroup_id).or_default();
                    f.user += c.counts.user;
                    f.kernel += c.counts.kernel;
                }
            }
        }
        for (id, f) in &mut faults {
            let floor = self.fault_floor.entry(*id).or_default();
            floor.user = floor.user.max(f.user);
            floor.kernel = floor.kernel.max(f.kernel);
            floor.major = floor.major.max(f.major);
            floor.minor = floor.minor.max(f.minor);
            *f = *floor;
        }
        let mut lost: IdMap<u64> = IdMap::default();
        for (id, per_cpu) in self.lost.iter().flatten() {
            lost.insert(id, per_cpu.iter().sum());
        }
        let mut retrans: IdMap<u64> = IdMap::default();
        for (id, per_cpu) in self.retransmits.iter().flatten() {
            retrans.insert(id, per_cpu.iter().sum());
        }
        // Cgroups known only from their kernel counters get series too, if there is room.
        for id in faults.keys().chain(lost.keys()).chain(retrans.keys()) {
            if *id != UNATTRIBUTED {
                let _ = self.agg.admit(*id);
            }
        }
        let mut rows = Vec::new();
        let mut other = Row {
            labels: other_labels(),
            snap: None,
            faults: FaultCounts::default(),
            lost: lost.remove(&UNATTRIBUTED).unwrap_or(0),
            retransmits: 0,
        };
        let mut events = self.agg.forgotten_events();
        let snaps = self.agg.snapshot(epoch);
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
                Some(id) => rows.push(Row {
                    labels: self.resolver.resolve(id),
                    faults: faults.remove(&id).unwrap_or_default(),
                    lost: lost.remove(&id).unwrap_or(0),
                    retransmits: retrans.remove(&id).unwrap_or(0),
                    snap: Some(snap),
                }),
                None => other.snap = Some(snap),
            }
        }
        // What is left belongs to cgroups over the limit.
        for f in faults.values() {
            other.faults.user += f.user;
            other.faults.kernel += f.kernel;
            other.faults.major += f.major;
            other.faults.minor += f.minor;
        }
        other.lost += lost.values().sum::<u64>();
        other.retransmits += retrans.values().sum::<u64>();
        rows.push(other);
        let untracked = self.conn_untracked.get(&0, 0).map_or(0, |v| v.iter().sum());
        let probe_misses = self
            .programs
            .iter()
            .map(|p| crate::loader::recursion_misses(p.as_fd()))
            .sum();
        Scrape {
            rows,
            probe_misses,
            untracked_connections: untracked,
            probes: self.probes.clone(),
            tracked: self.agg.tracked(),
            events,
        }
    }
}
