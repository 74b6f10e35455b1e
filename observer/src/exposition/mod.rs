//! The exposition: what a scrape shows ([`Scrape`], plain data gathered by the collector),
//! every metric's name and help ([`family`]), the streaming writers of the text format
//! ([`text`]) and of the protobuf format ([`protobuf`], on the messages of [`proto`]), and
//! the one parser of the text format ([`parse`], used by `socklat top` and the tests).

pub mod family;
pub mod parse;
pub mod proto;
pub mod protobuf;
#[cfg(test)]
mod protobuf_tests;
#[cfg(test)]
pub(crate) mod reference;
pub mod text;

use std::sync::Arc;

use observer_common::FaultCounts;

pub use family::Family;
pub use text::{render, render_with, stream};

use crate::aggregate::CgroupSnapshot;
use crate::labels::Labels;
use crate::probe_mode::ProbeMode;
use crate::signal::Signal;

/// One set of per-cgroup series: a tracked cgroup, or `_other`.
#[derive(Clone, Debug)]
pub struct Row {
    pub labels: Arc<Labels>,
    pub snap: Option<CgroupSnapshot>,
    /// Page faults counted in the kernel.
    pub faults: FaultCounts,
    /// Events its ring could not take.
    pub lost: u64,
    /// Retransmitted segments counted in the kernel.
    pub retransmits: u64,
}

impl Row {
    /// The `_other` row with no data.
    #[must_use]
    pub fn empty_other() -> Row {
        Row {
            labels: Labels::other(),
            snap: None,
            faults: FaultCounts::default(),
            lost: 0,
            retransmits: 0,
        }
    }
}

/// Everything one scrape shows.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub rows: Vec<Row>,
    /// Probe mode in use per enabled signal.
    pub probes: Vec<(Signal, ProbeMode)>,
    pub tracked: usize,
    /// Events received by the daemon per signal (index: `Signal as usize`).
    pub events: [u64; Signal::ALL.len()],
    /// Ring records the daemon could not decode.
    pub undecodable: u64,
    /// Rings the daemon could not create for an admitted cgroup (its events stay on the
    /// shared ring).
    pub ring_create_failures: u64,
    /// Bytes of rings held now, and the budget.
    pub ring_memory: u64,
    pub ring_budget: u64,
    /// Growths (and first rings) the budget refused.
    pub ring_growths_denied: u64,
    /// Connection states the kernel's table evicted (a lower bound).
    pub connections_evicted: u64,
    /// In-flight call starts evicted, per `observer_common::StartTable`.
    pub starts_evicted: [u64; 3],
    /// The kernel's tables and their capacities (`table` label, entries).
    pub tables: Vec<(&'static str, u64)>,
    /// Program runs the kernel skipped (recursion protection), all programs together.
    pub probe_misses: u64,
}
