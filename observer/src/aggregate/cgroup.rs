//! Everything known about one cgroup (or about `_other`): its socket calls, connections and
//! page fault durations, recorded from decoded events.

use observer_common::{
    CallResult, Event, EventKind, FAULT_MAJOR, Outcome, close_untracked, split_close_result,
};

use super::connections::ConnAgg;
use super::duration::DurationAgg;
use crate::signal::Signal;

/// Results of socket calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallResults {
    pub ok: u64,
    pub eagain: u64,
    pub interrupted: u64,
    pub untimed: u64,
    pub error: u64,
}

impl CallResults {
    /// `(result label, count)` in exposition order.
    #[must_use]
    pub fn by_label(&self) -> [(&'static str, u64); 5] {
        [
            ("ok", self.ok),
            ("eagain", self.eagain),
            ("interrupted", self.interrupted),
            ("untimed", self.untimed),
            ("error", self.error),
        ]
    }
}

/// One socket call signal (sendmsg or recvmsg) in one cgroup.
pub struct CallAgg {
    pub durations: DurationAgg,
    pub results: CallResults,
}

/// Everything known about one cgroup (or about `_other`).
#[derive(Default)]
pub struct CgroupAgg {
    /// `[sendmsg, recvmsg]`.
    pub calls: [Option<Box<CallAgg>>; 2],
    pub conns: Option<Box<ConnAgg>>,
    /// Fault durations, `[minor, major]` (fentry/kprobe modes).
    pub fault_durations: [Option<Box<DurationAgg>>; 2],
    /// Events received per [`Signal`].
    pub events: [u64; Signal::ALL.len()],
}

impl CgroupAgg {
    /// Counts one closed connection.
    pub fn record_close(&mut self, outcome: Outcome, epoch: u64) {
        self.conns.get_or_insert_default().record(outcome, epoch);
    }

    /// Counts a close event's [`observer_common::CLOSE_UNTRACKED`] flag, when it has it
    /// (when it was received: a held close is counted later, in the same cgroup).
    pub fn note_untracked(&mut self, ev: &Event) {
        if close_untracked(ev.result) {
            self.conns.get_or_insert_default().untracked += 1;
        }
    }

    /// Records one event. `epoch` is the current window slice. False when the event's kind
    /// or outcome is unknown (a newer kernel object?): nothing is recorded then.
    #[inline]
    pub fn record(&mut self, ev: &Event, epoch: u64) -> bool {
        let (slot, signal) = match EventKind::from_u32(ev.kind) {
            Some(EventKind::SendMsg) => (0, Signal::SendMsg),
            Some(EventKind::RecvMsg) => (1, Signal::RecvMsg),
            Some(EventKind::PageFault) => {
                self.events[Signal::PageFaults as usize] += 1;
                let major = usize::from(ev.result & FAULT_MAJOR != 0);
                let d = self.fault_durations[major]
                    .get_or_insert_with(|| Box::new(DurationAgg::new(epoch)));
                d.advance(epoch);
                d.record(ev.value);
                return true;
            }
            Some(EventKind::ConnClose) => {
                let Some((outcome, _)) = split_close_result(ev.result) else {
                    return false;
                };
                self.events[Signal::Connections as usize] += 1;
                self.note_untracked(ev);
                self.record_close(outcome, epoch);
                return true;
            }
            // Resets are settled by the aggregator (they have no cgroup).
            Some(EventKind::ConnReset) | None => return false,
        };
        self.events[signal as usize] += 1;
        let call = self.calls[slot].get_or_insert_with(|| {
            Box::new(CallAgg {
                durations: DurationAgg::new(epoch),
                results: CallResults::default(),
            })
        });
        match CallResult::of(ev.result) {
            CallResult::Ok => {
                call.results.ok += 1;
                call.durations.advance(epoch);
                call.durations.record(ev.value);
            }
            CallResult::Again => call.results.eagain += 1,
            CallResult::Interrupted => call.results.interrupted += 1,
            CallResult::Untimed => call.results.untimed += 1,
            CallResult::Error => call.results.error += 1,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::SLICES;

    fn ev(kind: EventKind, ns: u64, result: i32) -> Event {
        Event {
            cgroup_id: 7,
            value: ns,
            kind: kind as u32,
            result,
        }
    }

    #[test]
    fn results_are_split_and_only_successes_are_timed() {
        let mut c = CgroupAgg::default();
        assert!(c.record(&ev(EventKind::SendMsg, 5000, 100), 0));
        assert!(c.record(&ev(EventKind::SendMsg, 1, -observer_common::EAGAIN), 0));
        assert!(c.record(&ev(EventKind::SendMsg, 9, -104), 0));
        // Interrupted by a signal (-EINTR, -ERESTARTSYS): counted apart, not timed.
        assert!(c.record(&ev(EventKind::SendMsg, 7, -4), 0));
        assert!(c.record(&ev(EventKind::SendMsg, 7, -512), 0));
        // Reached a TCP socket but could not be timed.
        assert!(c.record(&ev(EventKind::SendMsg, 0, observer_common::CALL_UNTIMED), 0));
        assert!(c.record(&ev(EventKind::RecvMsg, 7000, 0), 0));
        assert!(!c.record(
            &Event {
                kind: 99,
                ..Event::default()
            },
            0
        ));
        let send = c.calls[0].as_ref().unwrap();
        assert_eq!(
            send.results,
            CallResults {
                ok: 1,
                eagain: 1,
                interrupted: 2,
                untimed: 1,
                error: 1
            }
        );
        assert_eq!(send.durations.totals().count, 1);
        assert_eq!(c.calls[1].as_ref().unwrap().results.ok, 1);
        assert_eq!(c.events[Signal::SendMsg as usize], 6);
    }

    #[test]
    fn outcomes_and_the_window_ratio() {
        let mut c = CgroupAgg::default();
        let close = |o: Outcome| Event {
            cgroup_id: 7,
            value: 0,
            kind: EventKind::ConnClose as u32,
            result: o as i32,
        };
        for o in [
            Outcome::Normal,
            Outcome::Normal,
            Outcome::Refused,
            Outcome::ResetSent,
        ] {
            assert!(c.record(&close(o), 0));
        }
        assert!(!c.record(
            &Event {
                result: 99,
                ..close(Outcome::Normal)
            },
            0
        ));
        let conns = c.conns.as_mut().unwrap();
        assert_eq!(conns.outcomes[Outcome::Normal as usize], 2);
        assert_eq!(conns.outcomes[Outcome::Refused as usize], 1);
        assert_eq!(conns.window_ratio(0), Some(0.5));
        // Three slices later one more normal close: still inside the window.
        assert!(c.record(&close(Outcome::Normal), 3));
        assert_eq!(c.conns.as_mut().unwrap().window_ratio(3), Some(0.4));
        // Once the first slice leaves the window only the last close counts.
        assert_eq!(c.conns.as_mut().unwrap().window_ratio(SLICES), Some(0.0));
        // And with nothing closed in the window there is no ratio at all.
        assert_eq!(c.conns.as_mut().unwrap().window_ratio(3 + SLICES), None);
        assert_eq!(c.events[Signal::Connections as usize], 5);
    }
}
