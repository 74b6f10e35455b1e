//! Booting one guest under QEMU (TCG) with the initramfs, and reading back its verdicts
//! from the serial log (with the log's tail shown when something went wrong).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::guest::Guest;
use super::verdict::{SerialLog, Verdict};
use crate::util::step;

/// What one guest reported.
pub struct Outcome {
    /// The kernel release it ran (the label if it did not say).
    pub kernel: String,
    /// (mode, verdict) for each mode asked for.
    pub rows: Vec<(String, Verdict)>,
    /// From QEMU's start to its exit.
    pub elapsed: Duration,
}

/// Boots `guest` from `vmlinuz` with `initrd` for at most `timeout` seconds, with its serial
/// console in `log`; returns QEMU's exit code, the log's text and how long it ran.
pub fn run(
    guest: &Guest,
    vmlinuz: &Path,
    initrd: &Path,
    log: &Path,
    timeout: u64,
) -> Result<(i32, String, Duration)> {
    step(&format!(
        "booting {} ({}) under QEMU (TCG); serial log {}",
        vmlinuz.display(),
        guest.arch,
        log.display()
    ));
    let started = Instant::now();
    let status = guest
        .qemu(vmlinuz, initrd, timeout)
        .stdout(std::fs::File::create(log)?)
        .stderr(Stdio::null())
        .status()?;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    Ok((status.code().unwrap_or(-1), text, started.elapsed()))
}

/// Prints the last lines of a guest's serial log, after what went wrong.
pub fn show_tail(label: &str, text: &str, why: &str) {
    eprintln!("--- {label}: {why}; serial tail:");
    let lines: Vec<&str> = text.lines().collect();
    for l in &lines[lines.len().saturating_sub(60)..] {
        eprintln!("{l}");
    }
}

/// Boots kernel `label` of `guest`'s architecture and returns the verdicts of `modes`.
pub fn boot(
    guest: &Guest,
    label: &str,
    vmlinuz: &Path,
    initrd: &Path,
    log: &Path,
    timeout: u64,
    modes: &[String],
) -> Result<Outcome> {
    let (code, text, elapsed) = run(guest, vmlinuz, initrd, log, timeout)?;
    let serial = SerialLog(&text);
    let kernel = serial.kernel().unwrap_or(label).to_string();
    let rows: Vec<(String, Verdict)> = modes
        .iter()
        .map(|m| (m.clone(), serial.verdict(label, m)))
        .collect();
    println!(
        "--- {kernel} ({}): socklat --check (auto)\n{}",
        guest.arch,
        serial.auto_check()
    );
    // The guest's exit code is 2 x rc + 1: 1 and 3 mean it finished.
    println!(
        "--- {kernel} ({}): QEMU exit {code} after {:.1} s",
        guest.arch,
        elapsed.as_secs_f64()
    );
    if rows.iter().any(|(_, v)| v.is_failure()) || (code != 1 && code != 3) {
        show_tail(
            &format!("{label} ({})", guest.arch),
            &text,
            &format!("QEMU exit {code} after {:.1} s", elapsed.as_secs_f64()),
        );
    }
    Ok(Outcome {
        kernel,
        rows,
        elapsed,
    })
}
