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

    /// The line `--check` prints for a mode that was tried and not used (also read back by
    /// the kernel matrix, see [`ProbeMode::rejected_in`]).
    #[must_use]
    pub fn rejected_line(self, reason: &str) -> String {
        format!("{} unavailable: {reason}", self.name())
    }

    /// The mode a (trimmed) line of `--check` says was rejected, if it is such a line.
    #[must_use]
    pub fn rejected_in(line: &str) -> Option<ProbeMode> {
        let (name, _) = line.split_once(" unavailable: ")?;
        [ProbeMode::Fentry, ProbeMode::Kprobe, ProbeMode::Tracepoint]
            .into_iter()
            .find(|m| m.name() == name)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_lines_read_back() {
        for m in [ProbeMode::Fentry, ProbeMode::Kprobe, ProbeMode::Tracepoint] {
            let line = m.rejected_line("no kernel BTF (/sys/kernel/btf/vmlinux)");
            assert_eq!(ProbeMode::rejected_in(&line), Some(m));
        }
        assert_eq!(ProbeMode::rejected_in("sendmsg     fentry"), None);
        assert_eq!(ProbeMode::rejected_in("auto unavailable: x"), None);
    }
}
