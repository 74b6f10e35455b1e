//! How the kernel side is attached: the modes of `--probe-mode` and `socklat_probe_info`.

use clap::ValueEnum;

/// A probe mode.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeMode {
    /// The best mode that loads and attaches, per signal: fentry, then kprobe, then tracepoint.
    Auto,
    /// fentry/fexit (BTF trampolines).
    Fentry,
    /// kprobe/kretprobe.
    Kprobe,
    /// Tracepoints only (Linux >= 6.3 for the socket call signals).
    Tracepoint,
}

impl ProbeMode {
    /// The mode's name as exported in `socklat_probe_info{mode}`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            ProbeMode::Auto => "auto",
            ProbeMode::Fentry => "fentry",
            ProbeMode::Kprobe => "kprobe",
            ProbeMode::Tracepoint => "tracepoint",
        }
    }

    /// The modes to try, best first, for this setting.
    #[must_use]
    pub const fn candidates(self) -> &'static [ProbeMode] {
        match self {
            ProbeMode::Auto => &[ProbeMode::Fentry, ProbeMode::Kprobe, ProbeMode::Tracepoint],
            ProbeMode::Fentry => &[ProbeMode::Fentry],
            ProbeMode::Kprobe => &[ProbeMode::Kprobe],
            ProbeMode::Tracepoint => &[ProbeMode::Tracepoint],
        }
    }
}
