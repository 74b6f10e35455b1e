//! [`NameSource`]: the thread that keeps pod and container names fresh by reading the
//! kubelet's log directories, at most every [`MIN_INTERVAL`] when the resolver meets an
//! unnamed pod and every [`REFRESH`] otherwise; never on the event path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use super::logs::{Names, read_names};

/// How often the log directories are read when nothing asks for it.
pub const REFRESH: Duration = Duration::from_secs(30);
/// The shortest time between two reads.
pub const MIN_INTERVAL: Duration = Duration::from_secs(2);

/// Pod and container names, kept fresh by a thread that reads the kubelet's log
/// directories. The resolver polls it without blocking.
pub struct NameSource {
    dir: PathBuf,
    current: Arc<Names>,
    updates: Receiver<Arc<Names>>,
    nudge: SyncSender<()>,
}

impl NameSource {
    /// Starts the reader thread for the log directories under `dir` (the node's `/var/log`,
    /// or where the `DaemonSet` mounts it).
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn spawn(dir: PathBuf) -> std::io::Result<Self> {
        let (tx, updates) = mpsc::channel();
        let (nudge, nudged) = mpsc::sync_channel(1);
        let d = dir.clone();
        std::thread::Builder::new()
            .name("socklat-names".into())
            .spawn(move || reader(&d, &tx, &nudged))?;
        Ok(Self {
            dir,
            current: Arc::new(Names::default()),
            updates,
            nudge,
        })
    }

    /// Where the names come from.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the newest names read, if any arrived; true if they changed.
    pub fn poll(&mut self) -> bool {
        let mut changed = false;
        loop {
            match self.updates.try_recv() {
                Ok(n) => {
                    self.current = n;
                    changed = true;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return changed,
            }
        }
    }

    /// The names known now.
    #[must_use]
    pub fn names(&self) -> &Names {
        &self.current
    }

    /// Asks for a fresh read soon (a pod without a name was met).
    pub fn nudge(&self) {
        let _ = self.nudge.try_send(());
    }
}

fn reader(dir: &Path, tx: &mpsc::Sender<Arc<Names>>, nudged: &Receiver<()>) {
    let mut last: Option<Names> = None;
    let mut failing = false;
    loop {
        let started = Instant::now();
        match read_names(dir) {
            Ok(n) => {
                if failing {
                    log::info!("pod names: {} readable again", dir.join("pods").display());
                    failing = false;
                }
                if last.as_ref() != Some(&n) {
                    if tx.send(Arc::new(n.clone())).is_err() {
                        return;
                    }
                    last = Some(n);
                }
            }
            Err(e) => {
                if !failing {
                    log::warn!(
                        "pod names: cannot read {}: {e}; labels carry the pod UID and container \
                         id from the cgroup path (mount the node's /var/log/pods and \
                         /var/log/containers read-only, or unset --kubelet-log-dir)",
                        dir.join("pods").display()
                    );
                    failing = true;
                }
            }
        }
        match nudged.recv_timeout(REFRESH) {
            Ok(()) => std::thread::sleep(MIN_INTERVAL.saturating_sub(started.elapsed())),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
