//! The HTTP side's handle on the collector: a channel of scrape requests and an eventfd
//! that wakes the collector. Nothing else is shared, so a scrape never holds a lock the
//! event path needs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use tokio::sync::oneshot;

use super::sys::EventFd;
use crate::exposition::Scrape;
use crate::server::Source;

/// A scrape request: where to send the answer.
pub type Request = oneshot::Sender<Scrape>;

/// What the collector thread keeps of the link: requests, the eventfd, the stop flag.
pub struct Inbox {
    pub requests: mpsc::Receiver<Request>,
    pub wake: Arc<EventFd>,
    pub stop: Arc<AtomicBool>,
}

impl Inbox {
    /// Whether the collector was asked to stop.
    #[must_use]
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// The HTTP side's handle on the collector.
pub struct Handle {
    requests: mpsc::Sender<Request>,
    wake: Arc<EventFd>,
    ready: AtomicBool,
    stop: Arc<AtomicBool>,
}

impl Handle {
    /// A linked handle and inbox.
    #[must_use]
    pub fn pair(wake: EventFd) -> (Handle, Inbox) {
        let (tx, rx) = mpsc::channel();
        let wake = Arc::new(wake);
        let stop = Arc::new(AtomicBool::new(false));
        (
            Handle {
                requests: tx,
                wake: Arc::clone(&wake),
                ready: AtomicBool::new(true),
                stop: Arc::clone(&stop),
            },
            Inbox {
                requests: rx,
                wake,
                stop,
            },
        )
    }

    /// Asks the collector thread to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.signal();
    }
}

impl Source for Handle {
    fn request(&self) -> oneshot::Receiver<Scrape> {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(tx).is_ok() {
            self.wake.signal();
        }
        rx
    }
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
