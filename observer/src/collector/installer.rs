//! Installs rings into the kernel's cgroup -> ring map on a thread of its own: every update
//! of a map of maps waits for an RCU grace period (`maybe_wait_bpf_programs` in
//! kernel/bpf/syscall.c), milliseconds each, and the collector must keep draining meanwhile
//! (measured: installing 1000 rings inline filled the shared ring).

use std::os::fd::AsFd;
use std::sync::mpsc;

use aya::maps::{HashOfMaps, MapData, RingBuf};

use crate::error::Error;

/// A request to the installer thread.
enum Request {
    /// Put a cgroup's ring in the map; the ticket comes back when done.
    Insert {
        cgroup_id: u64,
        ring: MapData,
        ticket: u64,
    },
    /// Take a dead cgroup's ring out of the map; the ticket comes back when done.
    Remove { cgroup_id: u64, ticket: u64 },
}

/// The collector's end of the installer thread.
pub struct Installer {
    requests: mpsc::Sender<Request>,
    done: mpsc::Receiver<(u64, bool)>,
    next_ticket: u64,
}

impl Installer {
    /// Starts the thread that owns the kernel's map of rings.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn spawn(mut outer: HashOfMaps<MapData, u64, MapData>) -> Result<Self, Error> {
        let (requests, rx) = mpsc::channel::<Request>();
        let (done_tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("socklat-install".into())
            .spawn(move || {
                let mut failures = 0u64;
                while let Ok(req) = rx.recv() {
                    let (cgroup_id, ring, ticket) = match req {
                        Request::Insert {
                            cgroup_id,
                            ring,
                            ticket,
                        } => (cgroup_id, ring, ticket),
                        Request::Remove { cgroup_id, ticket } => {
                            let _ = outer.remove(&cgroup_id);
                            if done_tx.send((ticket, true)).is_err() {
                                break;
                            }
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
    pub fn install(&mut self, cgroup_id: u64, ring: &RingBuf<MapData>) -> Option<u64> {
        let fd = ring.as_fd().try_clone_to_owned().ok()?;
        let ring = MapData::from_fd(fd).ok()?;
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.requests
            .send(Request::Insert {
                cgroup_id,
                ring,
                ticket,
            })
            .ok()?;
        Some(ticket)
    }

    /// Queues the removal of a dead cgroup's ring; returns the ticket its completion will
    /// carry.
    pub fn remove(&mut self, cgroup_id: u64) -> Option<u64> {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.requests
            .send(Request::Remove { cgroup_id, ticket })
            .ok()?;
        Some(ticket)
    }

    /// The next finished install, if any: its ticket and whether it succeeded.
    pub fn completed(&self) -> Option<(u64, bool)> {
        self.done.try_recv().ok()
    }
}
