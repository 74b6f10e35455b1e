//! Booting one guest under QEMU (TCG) with the initramfs, and reading back its verdicts
//! from the serial log (with the log's tail shown when something went wrong).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Result;

use super::serial_log;
use super::verdict::{SerialLog, Verdict};
use crate::util::step;

/// What one guest reported.
pub struct Outcome {
    /// The kernel release it ran (the label if it did not say).
    pub kernel: String,
    /// (mode, verdict) for each mode asked for.
    pub rows: Vec<(String, Verdict)>,
}

/// Boots kernel `label` from `vmlinuz` with `initrd` for at most `timeout` seconds; returns
/// the serial log's text and QEMU's exit code (the guest's is 2 x rc + 1, isa-debug-exit).
pub fn run(label: &str, vmlinuz: &Path, initrd: &Path, timeout: u64) -> Result<(String, i32)> {
    let log = serial_log(label);
    step(&format!(
        "booting {label} under QEMU (TCG); serial log {}",
        log.display()
    ));
    let status = Command::new("timeout")
        .arg(timeout.to_string())
        .args([
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "1G",
            "-smp",
            "2",
            "-nographic",
            "-nic",
            "none",
        ])
        .args([
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdout(std::fs::File::create(&log)?)
        .stderr(Stdio::null())
        .status()?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    Ok((text, status.code().unwrap_or(-1)))
}

/// Prints the last lines of a guest's serial log, after what went wrong.
pub fn show_tail(label: &str, text: &str, why: &str) {
    eprintln!("--- {label}: {why}; serial tail:");
    let lines: Vec<&str> = text.lines().collect();
    for l in &lines[lines.len().saturating_sub(60)..] {
        eprintln!("{l}");
    }
}

/// Boots kernel `label` from `vmlinuz` with `initrd` for at most `timeout` seconds and
/// returns the verdicts of `modes`.
pub fn boot(
    label: &str,
    vmlinuz: &Path,
    initrd: &Path,
    timeout: u64,
    modes: &[String],
) -> Result<Outcome> {
    let started = Instant::now();
    let (text, code) = run(label, vmlinuz, initrd, timeout)?;
    let serial = SerialLog(&text);
    let kernel = serial.kernel().unwrap_or(label).to_string();
    let rows: Vec<(String, Verdict)> = modes
        .iter()
        .map(|m| (m.clone(), serial.verdict(label, m)))
        .collect();
    println!(
        "--- {kernel}: socklat --check (auto)\n{}",
        serial.auto_check()
    );
    if rows.iter().any(|(_, v)| v.is_failure()) || (code != 1 && code != 3) {
        show_tail(
            label,
            &text,
            &format!("QEMU exit {code} after {:?}", started.elapsed()),
        );
    }
    Ok(Outcome { kernel, rows })
}
