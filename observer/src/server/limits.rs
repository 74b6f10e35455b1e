//! The connection table: what bounds idle and slow clients without locking a scraper out.
//!
//! Every accepted connection has an entry saying what it is doing: waiting (for its TLS
//! handshake or its next request head, keep-alive idle time included), busy with a
//! request, or streaming a scrape. The bounds:
//! - at most [`Limits::max_connections`] connections; a new one past that closes the
//!   connection that has been waiting longest (a slow or idle client, never one in a
//!   request), so a scraper's new connection always gets in;
//! - at most [`Limits::max_scrapes`] scrapes streaming at once (each holds a snapshot); a
//!   new one past that waits for one to end (scrapes of a thousand cgroups take tens of
//!   milliseconds) or closes the oldest scrape that has run for more than
//!   [`SCRAPE_EVICTABLE_AFTER`] (a reader too slow to be a scraper), and is refused only if
//!   neither happens within [`SCRAPE_SLOT_WAIT`];
//! - a connection waits at most [`Limits::header_timeout`] for a request head (hyper's own
//!   timer; also enforced here, with the TLS handshake), and a request is answered to its
//!   last byte within [`Limits::response_timeout`] (hyper has no write timeout).
//!
//! One table under one mutex, touched once per connection, request and reaper tick (once a
//! second), never per byte.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// A scrape that has streamed this long may be closed for a new one when all scrape slots
/// are taken: a scrape of a thousand cgroups takes about a tenth of that.
pub const SCRAPE_EVICTABLE_AFTER: Duration = Duration::from_secs(1);

/// Longest a scrape waits for a slot before it is answered 503 (past
/// [`SCRAPE_EVICTABLE_AFTER`] a slot can always be had by closing a slow scrape).
pub const SCRAPE_SLOT_WAIT: Duration = Duration::from_secs(5);

/// How often a waiting scrape looks again for a scrape that has become old enough to close.
const SLOT_RECHECK: Duration = Duration::from_millis(250);

/// The bounds of the server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Scrapes streaming at once.
    pub max_scrapes: usize,
    /// Time to send a request head: from the connection's start (TLS handshake included)
    /// or from the end of the previous response (keep-alive idle time).
    pub header_timeout: Duration,
    /// Time from a request head to the last byte of its response.
    pub response_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_scrapes: 4,
            header_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(30),
        }
    }
}

/// What a connection is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Handshake, or waiting for a request head.
    Waiting = 0,
    /// Answering a request.
    Busy = 1,
    /// Streaming a scrape.
    Scrape = 2,
}

/// One connection's entry.
pub struct Entry {
    state: AtomicU8,
    /// Milliseconds since the table's start when the state was entered.
    since_ms: AtomicU64,
    /// Told to close (evicted or over its time).
    close: Notify,
}

impl Entry {
    fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            1 => State::Busy,
            2 => State::Scrape,
            _ => State::Waiting,
        }
    }

    /// Resolves when the connection must close.
    pub async fn closed(&self) {
        self.close.notified().await;
    }
}

/// The connection table.
pub struct Registry {
    limits: Limits,
    start: Instant,
    conns: Mutex<BTreeMap<u64, Arc<Entry>>>,
    next_id: AtomicU64,
    /// Told when a scrape ends, for the scrapes waiting for a slot.
    scrape_ended: Notify,
}

impl Registry {
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            start: Instant::now(),
            conns: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            scrape_ended: Notify::new(),
        }
    }

    #[must_use]
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Entry>>> {
        // A panic while holding the lock leaves a consistent map (every operation is one
        // insert or remove): carry on with it.
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a new connection, closing the longest-waiting one if the table is full;
    /// `None` when it is full of connections in requests.
    pub fn admit(self: &Arc<Self>) -> Option<Conn> {
        let now = self.now_ms();
        let mut conns = self.table();
        if conns.len() >= self.limits.max_connections {
            let victim = conns
                .iter()
                .filter(|(_, e)| e.state() == State::Waiting)
                .min_by_key(|(_, e)| e.since_ms.load(Ordering::Relaxed))
                .map(|(id, _)| *id)?;
            if let Some(e) = conns.remove(&victim) {
                e.close.notify_one();
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry {
            state: AtomicU8::new(State::Waiting as u8),
            since_ms: AtomicU64::new(now),
            close: Notify::new(),
        });
        conns.insert(id, Arc::clone(&entry));
        Some(Conn {
            registry: Arc::clone(self),
            id,
            entry,
        })
    }

    /// Closes connections over their time; called about once a second.
    pub fn reap(&self) {
        let now = self.now_ms();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        // hyper closes a connection whose head is late; this also covers the handshake.
        let waiting = ms(self.limits.header_timeout) + 1000;
        let busy = ms(self.limits.response_timeout);
        let mut conns = self.table();
        conns.retain(|_, e| {
            let age = now.saturating_sub(e.since_ms.load(Ordering::Relaxed));
            let over = match e.state() {
                State::Waiting => age > waiting,
                State::Busy | State::Scrape => age > busy,
            };
            if over {
                e.close.notify_one();
            }
            !over
        });
    }

    /// Connections open now.
    #[must_use]
    pub fn open(&self) -> usize {
        self.table().len()
    }

    fn set(&self, entry: &Entry, state: State) {
        entry.since_ms.store(self.now_ms(), Ordering::Relaxed);
        entry.state.store(state as u8, Ordering::Release);
    }
}

/// A connection's place in the table; removed when dropped.
pub struct Conn {
    registry: Arc<Registry>,
    id: u64,
    entry: Arc<Entry>,
}

impl Conn {
    /// The entry, to wait on [`Entry::closed`].
    #[must_use]
    pub fn entry(&self) -> Arc<Entry> {
        Arc::clone(&self.entry)
    }

    /// Marks the connection busy with a request until the guard is dropped (with the
    /// response body, after its last byte).
    #[must_use]
    pub fn begin(&self) -> Request {
        self.registry.set(&self.entry, State::Busy);
        Request {
            registry: Arc::clone(&self.registry),
            entry: Arc::clone(&self.entry),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.registry.table().remove(&self.id);
    }
}

/// A request in progress (see [`Conn::begin`]).
pub struct Request {
    registry: Arc<Registry>,
    entry: Arc<Entry>,
}

impl Request {
    /// Takes a scrape slot, waiting for one to free up (or for a slow scrape to become old
    /// enough to be closed for it); false when none could be had in [`SCRAPE_SLOT_WAIT`].
    pub async fn begin_scrape(&self) -> bool {
        let deadline = tokio::time::Instant::now() + SCRAPE_SLOT_WAIT;
        loop {
            let ended = self.registry.scrape_ended.notified();
            tokio::pin!(ended);
            // Registered before looking, so that an end in between is not missed.
            ended.as_mut().enable();
            if self.try_begin_scrape() {
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            let _ = tokio::time::timeout_at(deadline.min(now + SLOT_RECHECK), ended).await;
        }
    }

    /// Takes a scrape slot if one is free, or closes the oldest scrape that has run for
    /// more than [`SCRAPE_EVICTABLE_AFTER`] to take its slot.
    #[must_use]
    pub fn try_begin_scrape(&self) -> bool {
        let r = &self.registry;
        let now = r.now_ms();
        let conns = r.table();
        let scrapes: Vec<(&u64, &Arc<Entry>)> = conns
            .iter()
            .filter(|(_, e)| e.state() == State::Scrape)
            .collect();
        if scrapes.len() >= r.limits.max_scrapes {
            let old = u64::try_from(SCRAPE_EVICTABLE_AFTER.as_millis()).unwrap_or(u64::MAX);
            let Some((_, victim)) = scrapes
                .into_iter()
                .filter(|(_, e)| now.saturating_sub(e.since_ms.load(Ordering::Relaxed)) > old)
                .min_by_key(|(_, e)| e.since_ms.load(Ordering::Relaxed))
            else {
                return false;
            };
            // Marked waiting so that it no longer counts; its task closes it.
            victim.state.store(State::Waiting as u8, Ordering::Release);
            victim.close.notify_one();
        }
        drop(conns);
        r.set(&self.entry, State::Scrape);
        true
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        let was = self.entry.state();
        self.registry.set(&self.entry, State::Waiting);
        if was == State::Scrape {
            self.registry.scrape_ended.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(max_connections: usize, max_scrapes: usize) -> Arc<Registry> {
        Arc::new(Registry::new(Limits {
            max_connections,
            max_scrapes,
            ..Limits::default()
        }))
    }

    #[test]
    fn a_full_table_closes_the_longest_waiting_connection_never_a_busy_one() {
        let table = registry(3, 4);
        let first = table.admit().unwrap();
        let second = table.admit().unwrap();
        let third = table.admit().unwrap();
        let _busy_first = first.begin();
        // The second and third wait, the second longer: it is closed for a fourth.
        let fourth = table.admit().unwrap();
        assert_eq!(table.open(), 3);
        assert!(!table.table().contains_key(&second.id));
        assert!(table.table().contains_key(&third.id));
        let _busy_third = third.begin();
        let _busy_fourth = fourth.begin();
        // Everything is busy: no room.
        assert!(table.admit().is_none());
        drop(second);
        assert_eq!(table.open(), 3);
    }

    #[test]
    fn scrape_slots_go_to_new_scrapes_only_past_slow_ones() {
        let r = registry(10, 1);
        let a = r.admit().unwrap();
        let b = r.admit().unwrap();
        let ra = a.begin();
        assert!(ra.try_begin_scrape());
        let rb = b.begin();
        // The running scrape is young: the new one gets no slot now.
        assert!(!rb.try_begin_scrape());
        // Once it is old, it makes room.
        a.entry.since_ms.store(0, Ordering::Relaxed);
        std::thread::sleep(SCRAPE_EVICTABLE_AFTER + Duration::from_millis(20));
        assert!(rb.try_begin_scrape());
        assert_eq!(a.entry.state(), State::Waiting);
        drop(ra);
        drop(rb);
        assert_eq!(b.entry.state(), State::Waiting);
    }

    #[tokio::test]
    async fn a_scrape_waits_for_a_slot_to_free_up() {
        let r = registry(10, 1);
        let (a, b) = (r.admit().unwrap(), r.admit().unwrap());
        let ra = a.begin();
        assert!(ra.begin_scrape().await);
        let rb = b.begin();
        let waiting = tokio::spawn(async move { rb.begin_scrape().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "waits while the slot is taken");
        drop(ra);
        assert!(
            waiting.await.unwrap(),
            "gets the slot when the other scrape ends"
        );
    }

    #[test]
    fn the_reaper_closes_connections_over_their_time() {
        let r = Arc::new(Registry::new(Limits {
            header_timeout: Duration::ZERO,
            response_timeout: Duration::from_millis(10),
            ..Limits::default()
        }));
        let waiting = r.admit().unwrap();
        let busy = r.admit().unwrap();
        let _req = busy.begin();
        std::thread::sleep(Duration::from_millis(30));
        r.reap();
        // The busy one is over its 10 ms; the waiting one has a second of grace over
        // hyper's own timer.
        assert_eq!(r.open(), 1);
        assert!(r.table().contains_key(&waiting.id));
    }
}
