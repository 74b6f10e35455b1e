//! What a scrape shows of the aggregators: plain data, taken by the collector and rendered
//! by the exposition.

use hdrhistogram::Histogram;
use observer_common::Outcome;

use super::cgroup::{CallResults, CgroupAgg};
use super::duration::{DurationAgg, HistogramTotals, QUANTILES};
use crate::signal::Signal;

/// What a scrape shows of one duration aggregator.
#[derive(Clone, Debug, PartialEq)]
pub struct DurationSnapshot {
    pub totals: HistogramTotals,
    pub window_quantiles_ns: Option<[u64; QUANTILES.len()]>,
}

/// What a scrape shows of one call signal.
#[derive(Clone, Debug, PartialEq)]
pub struct CallSnapshot {
    pub durations: DurationSnapshot,
    pub results: CallResults,
}

/// What a scrape shows of one cgroup's connections.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnSnapshot {
    /// Closed connections per [`Outcome`], since start.
    pub outcomes: [u64; Outcome::ALL.len()],
    /// Abnormal / closed over the window, `None` when nothing closed in it.
    pub window_ratio: Option<f64>,
    /// Closes classified without the kernel's state of the connection, since start.
    pub untracked: u64,
}

/// What a scrape shows of one cgroup; `id` is `None` for `_other`.
#[derive(Clone, Debug, PartialEq)]
pub struct CgroupSnapshot {
    pub id: Option<u64>,
    /// `[sendmsg, recvmsg]`.
    pub calls: [Option<CallSnapshot>; 2],
    /// `[minor, major]`.
    pub fault_durations: [Option<DurationSnapshot>; 2],
    pub conns: Option<ConnSnapshot>,
    pub events: [u64; Signal::ALL.len()],
}

impl CgroupSnapshot {
    /// Takes the snapshot of one aggregator at window slice `epoch`.
    pub(super) fn take(
        id: Option<u64>,
        agg: &mut CgroupAgg,
        epoch: u64,
        scratch: &mut Histogram<u32>,
    ) -> Self {
        let mut dur = |d: &mut DurationAgg| DurationSnapshot {
            totals: d.totals(),
            window_quantiles_ns: d.window_quantiles(epoch, scratch),
        };
        let calls = [0, 1].map(|i| {
            agg.calls[i].as_deref_mut().map(|c| CallSnapshot {
                durations: dur(&mut c.durations),
                results: c.results,
            })
        });
        let fault_durations = [0, 1].map(|i| agg.fault_durations[i].as_deref_mut().map(&mut dur));
        let conns = agg.conns.as_deref_mut().map(|c| ConnSnapshot {
            outcomes: c.outcomes,
            window_ratio: c.window_ratio(epoch),
            untracked: c.untracked,
        });
        CgroupSnapshot {
            id,
            calls,
            fault_durations,
            conns,
            events: agg.events,
        }
    }
}
