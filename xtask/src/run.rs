//! `cargo xtask run`: builds everything and replaces xtask with the daemon, as root
//! directly or through `sudo -n`.

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{Result, bail};

use crate::build::build_daemon;
use crate::util::{is_root, step};

/// Builds the daemon and execs it with `args`; returns only if it cannot start.
pub fn run_daemon(args: &[String]) -> Result<()> {
    let bin = build_daemon()?;
    let mut cmd = if is_root() {
        Command::new(&bin)
    } else if Command::new("sudo")
        .arg("-n")
        .arg("true")
        .status()
        .is_ok_and(|s| s.success())
    {
        let mut c = Command::new("sudo");
        c.arg(&bin);
        c
    } else {
        bail!(
            "the daemon needs root (or CAP_BPF and CAP_PERFMON): run `sudo {} {}`",
            bin.display(),
            args.join(" ")
        );
    };
    step(&format!("starting {} {}", bin.display(), args.join(" ")));
    let err = cmd.args(args).exec();
    bail!("cannot start {}: {err}", bin.display())
}
