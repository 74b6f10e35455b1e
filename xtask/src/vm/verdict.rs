//! What a guest's serial log says: the kernel it ran, its `socklat --check` output, and the
//! verdict of each probe mode (with the known limitations that excuse some failures).

use std::fmt;

use observer::probe_mode::ProbeMode;

/// Cells that fail for a reason outside socklat's control, reported as such instead of
/// failing the run: (kernel label, mode, the only failures allowed, reason). Any other
/// failure in such a cell still fails the run.
const KNOWN_LIMITS: &[(&str, &str, &[&str], &str)] = &[(
    "5.10",
    "kprobe",
    // Missed returns lose recvmsg events, and with them the error of a failed receive that
    // marks its connection `error` (the connection test says "error: G of N error and M
    // normal in ...").
    &["recvmsg count in ", " outcome error", " error and "],
    "kretprobe on 5.10 drops the returns of tcp_recvmsg calls beyond its default \
     maxactive (max(10, 2 x CPUs)) when more calls block at once, so recvmsg counts (and \
     the receive errors that mark a connection `error`) come out short; auto mode uses \
     fentry on x86_64 5.10, but arm64 5.10 cannot attach fentry, so kprobe is what auto \
     mode runs there",
)];

/// The result of one probe mode on one kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every test binary passed.
    Pass { binaries: usize },
    /// The mode does not attach on this kernel: the first `MODE unavailable: ...` line of
    /// its `--check`, or "mode does not attach" if there is none.
    Skipped(String),
    /// Tests failed, but only in the ways a [`KNOWN_LIMITS`] entry allows; its reason.
    KnownLimitation(&'static str),
    /// Tests failed: `TEST RC` of every test binary.
    Fail(Vec<String>),
    /// No test binary reported (the guest hung, panicked or was cut short).
    Missing,
}

impl Verdict {
    /// Whether the cell fails the run (not a pass, a stated skip or a known limitation).
    pub fn is_failure(&self) -> bool {
        matches!(self, Verdict::Fail(_) | Verdict::Missing)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Pass { binaries } => write!(f, "pass ({binaries} test binaries)"),
            Verdict::Skipped(why) => write!(f, "skipped: {why}"),
            Verdict::KnownLimitation(why) => write!(f, "known limitation, tests fail: {why}"),
            Verdict::Fail(results) => write!(f, "FAIL ({})", results.join(", ")),
            Verdict::Missing => f.write_str("no verdict"),
        }
    }
}

/// A cell of the table: the verdict, and the first run's when the cell was run again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub verdict: Verdict,
    pub first_run: Option<Verdict>,
}

impl Cell {
    pub fn new(verdict: Verdict) -> Self {
        Self {
            verdict,
            first_run: None,
        }
    }

    /// The cell after a second run whose verdict is `again`.
    pub fn rerun(self, again: Verdict) -> Self {
        Self {
            verdict: again,
            first_run: Some(self.verdict),
        }
    }

    /// A cell fails the run when its last run failed.
    pub fn is_failure(&self) -> bool {
        self.verdict.is_failure()
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.first_run {
            None => write!(f, "{}", self.verdict),
            Some(first) if self.verdict.is_failure() => {
                write!(f, "{}; first run: {first}", self.verdict)
            }
            Some(first) => write!(f, "{} on the second run; first run: {first}", self.verdict),
        }
    }
}

/// A guest's serial log, as written by the `/init` of `initramfs.rs`.
pub struct SerialLog<'a>(pub &'a str);

impl<'a> SerialLog<'a> {
    /// The kernel release the guest printed (`@@kernel`).
    pub fn kernel(&self) -> Option<&'a str> {
        self.0
            .lines()
            .find_map(|l| l.find("@@kernel ").map(|i| l[i + 9..].trim()))
    }

    /// `socklat --check` in auto mode as the guest printed it, without kernel log lines.
    pub fn auto_check(&self) -> String {
        self.check_output("auto")
    }

    /// What the guest printed after `@@check NAME` up to its `@@checkrc`, without kernel
    /// log lines.
    pub fn check_output(&self, name: &str) -> String {
        let lines: Vec<&str> = self
            .after_check(name)
            .lines()
            .take_while(|l| !l.contains("@@checkrc"))
            .filter(|l| !l.trim_start().starts_with('['))
            .collect();
        lines.join("\n").trim().to_string()
    }

    /// The exit code of the `@@check NAME` run (`@@checkrc NAME RC`).
    pub fn checkrc(&self, name: &str) -> Option<i32> {
        self.0.lines().find_map(|l| {
            l.trim()
                .strip_prefix(&format!("@@checkrc {name} "))
                .and_then(|rc| rc.trim().parse().ok())
        })
    }

    /// Everything after mode `m`'s `@@check` marker (empty if there is none).
    fn after_check(&self, m: &str) -> &'a str {
        self.0.split(&format!("@@check {m}")).nth(1).unwrap_or("")
    }

    /// Mode `m`'s section: from its `@@check` marker to the next one.
    fn section(&self, m: &str) -> &'a str {
        self.after_check(m).split("@@check ").next().unwrap_or("")
    }

    /// The verdict of mode `m` on the kernel of label `label`.
    pub fn verdict(&self, label: &str, m: &str) -> Verdict {
        let skipped = self.0.lines().any(|l| l.trim() == format!("@@skip {m}"));
        let results: Vec<&str> = self
            .0
            .lines()
            .filter_map(|l| l.trim().strip_prefix(&format!("@@result {m} ")))
            .collect();
        if skipped {
            let why = self
                .after_check(m)
                .lines()
                .map(str::trim)
                .find(|l| unavailable(l).is_some())
                .unwrap_or("mode does not attach");
            Verdict::Skipped(why.to_string())
        } else if results.is_empty() {
            Verdict::Missing
        } else if results.iter().all(|r| r.ends_with(" 0")) {
            Verdict::Pass {
                binaries: results.len(),
            }
        } else if let Some(why) = self.known_limitation(label, m) {
            Verdict::KnownLimitation(why)
        } else {
            Verdict::Fail(results.iter().map(|r| (*r).to_string()).collect())
        }
    }

    /// The reason of the [`KNOWN_LIMITS`] entry for this cell, if every test failure in
    /// mode `m`'s section is one that the entry allows.
    fn known_limitation(&self, label: &str, m: &str) -> Option<&'static str> {
        let section = self.section(m);
        KNOWN_LIMITS
            .iter()
            .find(|(k, md, allowed, _)| {
                *k == label
                    && *md == m
                    && allowed
                        .iter()
                        .map(|a| section.matches(a).count())
                        .sum::<usize>()
                        >= section.matches("panicked at").count()
            })
            .map(|(_, _, _, why)| *why)
    }
}

/// `MODE unavailable: ...` (a trimmed `--check` line explaining why a mode was rejected,
/// in the daemon's format): the mode.
fn unavailable(line: &str) -> Option<&'static str> {
    ProbeMode::rejected_in(line).map(ProbeMode::name)
}

#[cfg(test)]
mod tests {
    use super::{Cell, SerialLog, Verdict};

    /// A 6.1 guest: fentry and kprobe pass, tracepoint is skipped (no sock_*_length
    /// before 6.3).
    const LOG_6_1: &str = "\
[    0.000000] Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org)
@@kernel 6.1.0-57-amd64
@@check auto
socklat 0.1.0 --check (probe mode auto)
cgroup v2 at /sys/fs/cgroup
  sendmsg     fentry
[    2.512000] random: crng init done
  recvmsg     fentry
  connections tracepoint
  pagefaults  fentry
@@checkrc auto 0
@@check fentry
socklat 0.1.0 --check (probe mode fentry)
cgroup v2 at /sys/fs/cgroup
  sendmsg     fentry
  recvmsg     fentry
  connections tracepoint
  pagefaults  fentry

running 9 tests
test result: ok. 9 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out
@@result fentry privileged 0

running 4 tests
test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out
@@result fentry connections 0
@@check kprobe
socklat 0.1.0 --check (probe mode kprobe)
cgroup v2 at /sys/fs/cgroup
  sendmsg     kprobe
  recvmsg     kprobe
  connections tracepoint
  pagefaults  kprobe
@@result kprobe privileged 0
@@result kprobe connections 0
@@check tracepoint
socklat 0.1.0 --check (probe mode tracepoint)
cgroup v2 at /sys/fs/cgroup
  sendmsg     NOT ATTACHED
      tracepoint unavailable: tracepoint sock:sock_send_length: not in this kernel (added in 6.3)
  recvmsg     NOT ATTACHED
      tracepoint unavailable: tracepoint sock:sock_recv_length: not in this kernel (added in 6.3)
  connections tracepoint
  pagefaults  tracepoint (counts only: no durations or major/minor)
@@skip tracepoint
@@done 0
";

    /// A 5.10 guest whose kprobe tests fail only in the ways its known limitation allows.
    const LOG_5_10: &str = "\
@@kernel 5.10.0-46-amd64
@@check auto
socklat 0.1.0 --check (probe mode auto)
  sendmsg     fentry
@@checkrc auto 0
@@check kprobe
socklat 0.1.0 --check (probe mode kprobe)
  sendmsg     kprobe
  recvmsg     kprobe
thread 'recvmsg_counts' panicked at observer/tests/privileged.rs:211:9:
recvmsg count in cgroup /sys/fs/cgroup/t1: 171 < 200
thread 'outcomes' panicked at observer/tests/connections.rs:98:5:
connection 127.0.0.1:40000 outcome error not counted
@@result kprobe privileged 101
@@result kprobe connections 101
@@check tracepoint
@@result tracepoint privileged 0
";

    /// An arm64 5.10 guest's kprobe cell (CI, 2026-12-01): the same missed returns, as the
    /// connection test words them (a failed receive missed, so its connection closed
    /// `normal`).
    const LOG_5_10_ARM64: &str = "\
@@kernel 5.10.0-32-arm64
@@check kprobe
socklat 0.1.0 --check (probe mode kprobe)
  sendmsg     kprobe
  recvmsg     kprobe
thread 'outcomes_are_exact_per_cgroup_on_both_sides' (111) panicked at observer/tests/connections.rs:311:9:
error: 2 of 3 error and 1 normal in /socklat-test-106-error, 0 probe runs skipped
@@result kprobe connections 101
@@result kprobe resets 0
thread 'per_cgroup_counts_and_quantiles_match_the_clients_measurements' (259) panicked at observer/tests/privileged.rs:196:13:
recvmsg count in /socklat-test-211-fast: 316 counted + 0 lost + 0 skipped runs for 400 calls
@@result kprobe privileged 101
@@result kprobe accuracy 0
";

    /// The same cell with one failure the limitation does not allow.
    const LOG_5_10_OTHER_FAILURE: &str = "\
@@kernel 5.10.0-46-amd64
@@check kprobe
thread 'recvmsg_counts' panicked at observer/tests/privileged.rs:211:9:
recvmsg count in cgroup /sys/fs/cgroup/t1: 171 < 200
thread 'sendmsg_counts' panicked at observer/tests/privileged.rs:180:9:
sendmsg count in cgroup /sys/fs/cgroup/t1: 0 < 200
@@result kprobe privileged 101
@@result kprobe connections 0
";

    /// Skipped modes whose `--check` says why.
    const LOG_SKIPS: &str = "\
@@kernel 7.3.0-1-amd64
@@check fentry
socklat 0.1.0 --check (probe mode fentry)
  sendmsg     NOT ATTACHED
      fentry unavailable: fentry tcp_sendmsg: the BPF_PROG_LOAD syscall returned Operation not permitted (os error 1)
@@skip fentry
@@check kprobe
socklat 0.1.0 --check (probe mode kprobe)
  sendmsg     NOT ATTACHED
      kprobe unavailable: kprobe tcp_sendmsg: `/sys/bus/event_source/devices/kprobe/type`: No such file or directory (os error 2)
@@skip kprobe
@@done 0
";

    /// A skipped mode whose `--check` does not say why.
    const LOG_SKIP_NO_REASON: &str = "\
@@kernel 6.12.38-1-amd64
@@check tracepoint
Error: cannot load the kernel object
@@skip tracepoint
@@done 0
";

    /// A guest that died in the middle of its first mode.
    const LOG_NO_VERDICT: &str = "\
[    0.000000] Linux version 6.12.38+deb13-amd64
@@kernel 6.12.38+deb13-amd64
@@check auto
socklat 0.1.0 --check (probe mode auto)
  sendmsg     fentry
@@checkrc auto 0
@@check fentry
running 9 tests
[   41.000000] Kernel panic - not syncing: Fatal exception
";

    const LOG_FAIL: &str = "\
@@kernel 6.12.38+deb13-amd64
@@check fentry
thread 'sendmsg_counts' panicked at observer/tests/privileged.rs:180:9:
sendmsg count in cgroup /sys/fs/cgroup/t1: 190 < 200
@@result fentry privileged 101
@@result fentry connections 0
";

    const LIMITATION_5_10: &str = "kretprobe on 5.10 drops the returns of tcp_recvmsg calls \
        beyond its default maxactive (max(10, 2 x CPUs)) when more calls block at once, so \
        recvmsg counts (and the receive errors that mark a connection `error`) come out \
        short; auto mode uses fentry on x86_64 5.10, but arm64 5.10 cannot attach fentry, so \
        kprobe is what auto mode runs there";

    /// The verdict, its table text and whether it fails the run.
    fn check(log: &str, label: &str, mode: &str, want: &Verdict, text: &str, failure: bool) {
        let v = SerialLog(log).verdict(label, mode);
        assert_eq!(&v, want, "{label} {mode}");
        assert_eq!(v.to_string(), text, "{label} {mode}");
        assert_eq!(v.is_failure(), failure, "{label} {mode}");
    }

    #[test]
    fn pass() {
        let two = Verdict::Pass { binaries: 2 };
        check(
            LOG_6_1,
            "6.1",
            "fentry",
            &two,
            "pass (2 test binaries)",
            false,
        );
        check(
            LOG_6_1,
            "6.1",
            "kprobe",
            &two,
            "pass (2 test binaries)",
            false,
        );
        let one = Verdict::Pass { binaries: 1 };
        check(
            LOG_5_10,
            "5.10",
            "tracepoint",
            &one,
            "pass (1 test binaries)",
            false,
        );
    }

    #[test]
    fn skipped_with_each_reason() {
        for (log, mode, why) in [
            (
                LOG_6_1,
                "tracepoint",
                "tracepoint unavailable: tracepoint sock:sock_send_length: not in this kernel (added in 6.3)",
            ),
            (
                LOG_SKIPS,
                "fentry",
                "fentry unavailable: fentry tcp_sendmsg: the BPF_PROG_LOAD syscall returned Operation not permitted (os error 1)",
            ),
            (
                LOG_SKIPS,
                "kprobe",
                "kprobe unavailable: kprobe tcp_sendmsg: `/sys/bus/event_source/devices/kprobe/type`: No such file or directory (os error 2)",
            ),
            (LOG_SKIP_NO_REASON, "tracepoint", "mode does not attach"),
        ] {
            let want = Verdict::Skipped(why.to_string());
            check(log, "7.3", mode, &want, &format!("skipped: {why}"), false);
        }
    }

    #[test]
    fn known_limitation_only_where_it_applies() {
        let text = format!("known limitation, tests fail: {LIMITATION_5_10}");
        check(
            LOG_5_10,
            "5.10",
            "kprobe",
            &Verdict::KnownLimitation(super::KNOWN_LIMITS[0].3),
            &text,
            false,
        );
        assert_eq!(super::KNOWN_LIMITS[0].3, LIMITATION_5_10);
        // The same failures on another kernel are failures.
        let both = Verdict::Fail(vec!["privileged 101".into(), "connections 101".into()]);
        check(
            LOG_5_10,
            "6.1",
            "kprobe",
            &both,
            "FAIL (privileged 101, connections 101)",
            true,
        );
    }

    #[test]
    fn known_limitation_as_the_connection_test_words_it() {
        let text = format!("known limitation, tests fail: {LIMITATION_5_10}");
        check(
            LOG_5_10_ARM64,
            "5.10",
            "kprobe",
            &Verdict::KnownLimitation(super::KNOWN_LIMITS[0].3),
            &text,
            false,
        );
    }

    #[test]
    fn fail() {
        let want = Verdict::Fail(vec!["privileged 101".into(), "connections 0".into()]);
        let text = "FAIL (privileged 101, connections 0)";
        check(LOG_5_10_OTHER_FAILURE, "5.10", "kprobe", &want, text, true);
        check(LOG_FAIL, "6.12", "fentry", &want, text, true);
    }

    #[test]
    fn no_verdict() {
        check(
            LOG_NO_VERDICT,
            "6.12",
            "fentry",
            &Verdict::Missing,
            "no verdict",
            true,
        );
        check(
            LOG_5_10,
            "5.10",
            "fentry",
            &Verdict::Missing,
            "no verdict",
            true,
        );
    }

    #[test]
    fn kernel_and_auto_check() {
        let log = SerialLog(LOG_6_1);
        assert_eq!(log.kernel(), Some("6.1.0-57-amd64"));
        assert_eq!(
            log.auto_check(),
            "socklat 0.1.0 --check (probe mode auto)\ncgroup v2 at /sys/fs/cgroup\n  \
             sendmsg     fentry\n  recvmsg     fentry\n  connections tracepoint\n  \
             pagefaults  fentry"
        );
        assert_eq!(SerialLog(LOG_SKIPS).auto_check(), "");
        assert_eq!(SerialLog("no markers").kernel(), None);
        assert_eq!(log.checkrc("auto"), Some(0));
        assert_eq!(log.checkrc("fentry"), None);
    }

    #[test]
    fn rerun_cells() {
        let fail = Verdict::Fail(vec!["privileged 101".into()]);
        let first = Cell::new(fail.clone());
        assert!(first.is_failure());
        assert_eq!(first.to_string(), "FAIL (privileged 101)");
        let passed = first.clone().rerun(Verdict::Pass { binaries: 2 });
        assert!(!passed.is_failure());
        assert_eq!(
            passed.to_string(),
            "pass (2 test binaries) on the second run; first run: FAIL (privileged 101)"
        );
        let failed = first.rerun(Verdict::Missing);
        assert!(failed.is_failure());
        assert_eq!(
            failed.to_string(),
            "no verdict; first run: FAIL (privileged 101)"
        );
    }
}
