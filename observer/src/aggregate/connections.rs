//! Connection outcomes of one cgroup: counts since start, and (closed, abnormal) per window
//! slice for the abnormal-connection ratio.

use std::collections::VecDeque;

use observer_common::Outcome;

use super::SLICES;

/// Connection outcomes of one cgroup: counts since start, and (closed, abnormal) per
/// window slice for the abnormal-connection ratio.
#[derive(Default)]
pub struct ConnAgg {
    pub outcomes: [u64; Outcome::ALL.len()],
    /// Closes of connections the kernel's table held no state for (evicted, or opened
    /// before the daemon started): classified from their final state only.
    pub untracked: u64,
    slices: VecDeque<(u64, u64, u64)>,
}

impl ConnAgg {
    /// Records one closed connection.
    pub fn record(&mut self, outcome: Outcome, epoch: u64) {
        self.outcomes[outcome as usize] += 1;
        let abnormal = u64::from(outcome != Outcome::Normal);
        match self.slices.back_mut() {
            Some((e, closed, ab)) if *e == epoch => {
                *closed += 1;
                *ab += abnormal;
            }
            _ => self.slices.push_back((epoch, 1, abnormal)),
        }
        self.forget_before(epoch);
    }

    fn forget_before(&mut self, epoch: u64) {
        while self
            .slices
            .front()
            .is_some_and(|(e, _, _)| e + SLICES <= epoch)
        {
            self.slices.pop_front();
        }
    }

    /// Abnormal / closed over the window; `None` when nothing closed in it.
    pub fn window_ratio(&mut self, epoch: u64) -> Option<f64> {
        self.forget_before(epoch);
        let (closed, abnormal) = self
            .slices
            .iter()
            .fold((0u64, 0u64), |(c, a), (_, sc, sa)| (c + sc, a + sa));
        #[expect(clippy::cast_precision_loss, reason = "connection counts")]
        let ratio = (closed > 0).then(|| abnormal as f64 / closed as f64);
        ratio
    }
}
