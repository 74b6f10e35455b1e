//! Ring buffers with their memory counted: every ring the collector makes adds what it
//! costs ([`crate::ring_budget::ring_cost`]) to one meter, and takes it off when dropped,
//! whichever path drops it (retired, replaced, its cgroup gone, a failed install), so that
//! the budget sees exactly the rings that exist.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aya::maps::{MapData, MapError, RingBuf};

use crate::ring_budget::ring_cost;

/// Bytes charged by the rings that exist.
#[derive(Clone, Default)]
pub struct Meter(Arc<AtomicU64>);

impl Meter {
    /// Bytes now.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Adds a ring that exists for the daemon's lifetime (the shared ring).
    pub fn add_fixed(&self, size: u32) {
        self.0.fetch_add(ring_cost(size), Ordering::Relaxed);
    }
}

/// A ring buffer of `size` data bytes, counted in a [`Meter`] while it lives.
pub struct Ring {
    pub buf: RingBuf<MapData>,
    pub size: u32,
    meter: Meter,
}

impl Ring {
    /// Creates a ring and counts it.
    ///
    /// # Errors
    /// When the kernel refuses the ring.
    pub fn create(size: u32, meter: &Meter) -> Result<Self, MapError> {
        let buf = RingBuf::create(size, 0)?;
        meter.0.fetch_add(ring_cost(size), Ordering::Relaxed);
        Ok(Self {
            buf,
            size,
            meter: meter.clone(),
        })
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.meter
            .0
            .fetch_sub(ring_cost(self.size), Ordering::Relaxed);
    }
}
