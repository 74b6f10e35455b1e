//! Types and constants shared by the kernel programs (`observer-ebpf`) and the daemon
//! (`observer`). Everything that crosses the kernel boundary is defined here once,
//! `#[repr(C)]` and without implicit padding.
#![no_std]

mod calls;
mod conn;
mod event;
mod faults;
pub mod names;

pub use calls::*;
pub use conn::*;
pub use event::*;
pub use faults::*;

/// Compile-time size of a per-cgroup ring in the object; the daemon may create rings of
/// another size (`--ring-size`).
pub const DEFAULT_RING_SIZE: usize = 256 * 1024;
/// Compile-time capacity of the outer ring map; the daemon sets it from `--max-cgroups`.
pub const DEFAULT_MAX_CGROUPS: usize = 1024;
/// Compile-time capacity of the per-cgroup counter maps.
pub const COUNTER_MAP_ENTRIES: usize = 65536;
/// Key under which losses that could not be attributed to their cgroup are counted.
pub const UNATTRIBUTED: u64 = u64::MAX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_roundtrip() {
        let e = Event {
            cgroup_id: 0x1122_3344_5566_7788,
            value: 42,
            kind: EventKind::RecvMsg as u32,
            result: -EAGAIN,
        };
        assert_eq!(Event::from_bytes(&e.to_bytes()), Some(e));
    }

    #[test]
    fn truncated_or_oversized_records_are_refused() {
        let bytes = Event::default().to_bytes();
        assert_eq!(Event::from_bytes(&bytes[..EVENT_SIZE - 1]), None);
        let mut long = [0u8; EVENT_SIZE + 8];
        long[..EVENT_SIZE].copy_from_slice(&bytes);
        assert_eq!(Event::from_bytes(&long), None);
        assert_eq!(Event::from_bytes(&[]), None);
    }

    #[test]
    fn call_results_are_classified() {
        assert_eq!(CallResult::of(0), CallResult::Ok);
        assert_eq!(CallResult::of(1 << 20), CallResult::Ok);
        assert_eq!(CallResult::of(-EAGAIN), CallResult::Again);
        for ret in [-4, -512, -513, -514, -515, -516] {
            assert_eq!(CallResult::of(ret), CallResult::Interrupted, "{ret}");
            assert!(!CallResult::marks_connection(ret));
        }
        for ret in [-104, -32, -511, -517, -1] {
            assert_eq!(CallResult::of(ret), CallResult::Error, "{ret}");
            assert!(CallResult::marks_connection(ret));
        }
        assert_eq!(CallResult::of(CALL_UNTIMED), CallResult::Untimed);
        assert!(!CallResult::marks_connection(CALL_UNTIMED));
    }

    fn closing(old: i32) -> Closing {
        Closing {
            old,
            segs_out: 3,
            ..Closing::default()
        }
    }

    /// The outcome rules of docs/design.md, case by case (what the kernel sees at CLOSE in
    /// each, measured on 6.18: /work/notes of issue 14 and the connection tests).
    #[test]
    #[expect(clippy::too_many_lines, reason = "one table of cases")]
    fn connection_ends_are_classified_by_their_cause() {
        use errno::*;
        use tcp::*;
        let cases: [(Closing, Outcome, Hold); 16] = [
            // connects
            (
                Closing {
                    flags: CONN_RST_RECEIVED,
                    ..closing(SYN_SENT)
                },
                Outcome::Refused,
                Hold::None,
            ),
            (
                Closing {
                    err: ECONNREFUSED,
                    ..closing(SYN_SENT)
                },
                Outcome::Refused,
                Hold::None,
            ),
            (
                Closing {
                    err: EHOSTUNREACH,
                    ..closing(SYN_SENT)
                },
                Outcome::Unreachable,
                Hold::None,
            ),
            (
                Closing {
                    err: ENETUNREACH,
                    ..closing(SYN_SENT)
                },
                Outcome::Unreachable,
                Hold::None,
            ),
            (
                Closing {
                    err: ETIMEDOUT,
                    ..closing(SYN_SENT)
                },
                Outcome::ConnectTimeout,
                Hold::None,
            ),
            // abandoned by the application with its SYN out
            (closing(SYN_SENT), Outcome::ConnectTimeout, Hold::None),
            // no free local port: no SYN ever left
            (
                Closing {
                    segs_out: 0,
                    ..closing(SYN_SENT)
                },
                Outcome::Error,
                Hold::None,
            ),
            // established connections
            (
                Closing {
                    flags: CONN_RST_SENT,
                    ..closing(FIN_WAIT2)
                },
                Outcome::ResetSent,
                Hold::None,
            ),
            (
                Closing {
                    flags: CONN_RST_RECEIVED,
                    ..closing(ESTABLISHED)
                },
                Outcome::ResetReceived,
                Hold::None,
            ),
            // our own abort on data after close(): a reset of ours follows
            (
                Closing {
                    flags: CONN_RST_RECEIVED,
                    err: ECONNRESET,
                    dead: true,
                    rcv_shutdown: true,
                    ..closing(FIN_WAIT2)
                },
                Outcome::ResetReceived,
                Hold::Sync,
            ),
            (
                Closing {
                    err: ETIMEDOUT,
                    ..closing(ESTABLISHED)
                },
                Outcome::Timeout,
                Hold::None,
            ),
            (
                Closing {
                    flags: CONN_CALL_ERROR,
                    ..closing(ESTABLISHED)
                },
                Outcome::Error,
                Hold::Sync,
            ),
            (closing(ESTABLISHED), Outcome::ResetSent, Hold::None),
            (closing(LAST_ACK), Outcome::Normal, Hold::Sync),
            (
                Closing {
                    dead: true,
                    ..closing(FIN_WAIT2)
                },
                Outcome::Normal,
                Hold::TimeWait,
            ),
            (
                Closing {
                    dead: true,
                    done: true,
                    ..closing(FIN_WAIT2)
                },
                Outcome::Normal,
                Hold::Sync,
            ),
        ];
        for (c, outcome, hold) in cases {
            assert_eq!(classify(&c), (outcome, hold), "{c:?}");
            assert_eq!(
                split_close_result(close_result(outcome, hold)),
                Some((outcome, hold))
            );
        }
        assert_eq!(split_close_result(99), None);
        assert_eq!(split_close_result(3 << 8), None);
    }

    #[test]
    fn untracked_closes_keep_their_outcome_and_hold() {
        let r = close_result(Outcome::Error, Hold::Sync) | CLOSE_UNTRACKED;
        assert_eq!(split_close_result(r), Some((Outcome::Error, Hold::Sync)));
        assert!(close_untracked(r));
        assert!(!close_untracked(close_result(Outcome::Error, Hold::Sync)));
        assert_eq!(split_close_result(1 << 17), None);
    }

    #[test]
    fn outcomes_round_trip() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::from_i32(o as i32), Some(o));
        }
    }

    #[test]
    fn unknown_kinds_are_not_mapped() {
        assert_eq!(EventKind::from_u32(0), None);
        assert_eq!(EventKind::from_u32(99), None);
        assert_eq!(EventKind::from_u32(2), Some(EventKind::RecvMsg));
    }
}
