//! What socklat observes: the four signals of `--signals` and `socklat_events_total{signal}`.

/// One observed signal. The discriminant indexes per-signal counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    SendMsg = 0,
    RecvMsg = 1,
    Connections = 2,
    PageFaults = 3,
}

impl Signal {
    /// Every signal, in exposition order.
    pub const ALL: [Signal; 4] = [
        Signal::SendMsg,
        Signal::RecvMsg,
        Signal::Connections,
        Signal::PageFaults,
    ];

    /// The name used by `--signals` and the `signal` label.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Signal::SendMsg => "sendmsg",
            Signal::RecvMsg => "recvmsg",
            Signal::Connections => "connections",
            Signal::PageFaults => "pagefaults",
        }
    }

    /// Parses one signal name.
    ///
    /// # Errors
    /// One line naming the unknown signal and the known ones.
    pub fn parse(s: &str) -> Result<Signal, String> {
        Signal::ALL
            .into_iter()
            .find(|sig| sig.name() == s.trim())
            .ok_or_else(|| {
                format!("unknown signal '{s}': use sendmsg, recvmsg, connections, pagefaults")
            })
    }
}
