//! `cargo xtask vm-test`: the kernel matrix (the privileged tests on stock Debian kernels in
//! QEMU, in every probe mode; docs/kernels.md), its reruns and its table.

pub mod bench;
pub mod guest_bench;
mod initramfs;
mod kernels;
mod qemu;
mod verdict;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

use crate::build::static_binaries;
use crate::toolchain::apt_install;
use crate::util::{is_root, root, step, succeeds};
use verdict::Cell;

/// Options of `cargo xtask vm-test`.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Kernels to boot (5.10, 6.1, 6.12, 7.3).
    #[arg(long, value_delimiter = ',', default_value = "5.10,6.1,6.12,7.3")]
    pub kernels: Vec<String>,
    /// Probe modes to test.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fentry,kprobe,tracepoint"
    )]
    pub modes: Vec<String>,
    /// Seconds a guest may run before it counts as hung.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

impl Default for Opts {
    fn default() -> Self {
        <Self as clap::FromArgMatches>::from_arg_matches(
            &<Self as clap::Args>::augment_args(clap::Command::new("vm-test"))
                .get_matches_from(["vm-test"]),
        )
        .expect("the defaults parse")
    }
}

/// Where the matrix keeps its downloads, builds and logs.
fn vm_dir() -> PathBuf {
    root().join("target/vm")
}

/// The serial log of the latest boot of kernel `label`.
fn serial_log(label: &str) -> PathBuf {
    vm_dir().join(format!("serial-{label}.log"))
}

/// Installs QEMU and a static busybox for the guests where missing.
fn ensure_qemu() -> Result<()> {
    let have = |c: &str| succeeds(Command::new("sh").arg("-c").arg(format!("command -v {c}")));
    if !have("qemu-system-x86_64") || !Path::new("/bin/busybox").exists() {
        apt_install(
            &["qemu-system-x86", "busybox-static"],
            "QEMU and a static busybox for the guests",
        )?;
    }
    Ok(())
}

/// Runs the matrix and prints the table; fails if any non-skipped cell failed.
pub fn vm_test(o: &Opts) -> Result<()> {
    if !is_root() {
        bail!("the kernel matrix installs QEMU and needs root");
    }
    ensure_qemu()?;
    let ks = kernels::download(&o.kernels)?;
    let (daemon, tests) = static_binaries()?;
    let initrd = vm_dir().join("initrd.cpio.gz");
    initramfs::write(&initrd, &daemon, &tests, &o.modes)?;
    let mut table = String::from("| kernel | mode | result |\n|---|---|---|\n");
    let mut failed = false;
    for (label, vmlinuz) in &ks {
        let (kernel, cells) = run_kernel(label, vmlinuz, &initrd, o)?;
        for (mode, cell) in &cells {
            failed |= cell.is_failure();
            let _ = writeln!(table, "| {kernel} | {mode} | {cell} |");
        }
    }
    println!("\n{table}");
    let _ = std::io::stdout().flush();
    if failed {
        bail!(
            "kernel matrix: some cells failed (serial logs in {})",
            vm_dir().display()
        );
    }
    Ok(())
}

/// Boots one kernel for every mode; returns its release and (mode, cell) per mode.
///
/// A failed cell is run once more in a fresh guest: TCG guests on a loaded host are not
/// deterministic. The table keeps the first failure in view; a broken probe fails both
/// runs.
fn run_kernel(
    label: &str,
    vmlinuz: &Path,
    initrd: &Path,
    o: &Opts,
) -> Result<(String, Vec<(String, Cell)>)> {
    let out = qemu::boot(label, vmlinuz, initrd, o.timeout, &o.modes)?;
    let mut cells: Vec<(String, Cell)> = out
        .rows
        .into_iter()
        .map(|(m, v)| (m, Cell::new(v)))
        .collect();
    let failed_modes: Vec<String> = cells
        .iter()
        .filter(|(_, c)| c.is_failure())
        .map(|(m, _)| m.clone())
        .collect();
    if !failed_modes.is_empty() {
        let first_log = vm_dir().join(format!("serial-{label}-first.log"));
        std::fs::rename(serial_log(label), &first_log)?;
        step(&format!(
            "{label}: {} failed; running {} again (first log: {})",
            failed_modes.join(", "),
            if failed_modes.len() == 1 {
                "it"
            } else {
                "them"
            },
            first_log.display()
        ));
        let mut again = qemu::boot(label, vmlinuz, initrd, o.timeout, &failed_modes)?.rows;
        cells = cells
            .into_iter()
            .map(
                |(mode, cell)| match again.iter().position(|(m, _)| *m == mode) {
                    Some(i) => {
                        let (_, v) = again.swap_remove(i);
                        (mode, cell.rerun(v))
                    }
                    None => (mode, cell),
                },
            )
            .collect();
    }
    Ok((out.kernel, cells))
}
