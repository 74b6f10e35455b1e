//! `cargo xtask vm-test`: the kernel matrix (the privileged tests on stock Debian kernels in
//! QEMU, for each architecture, in every probe mode; docs/kernels.md), its reruns and its
//! table.

pub mod bench;
mod guest;
pub mod guest_bench;
mod initramfs;
mod kernels;
mod qemu;
mod verdict;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};

use crate::arch::Arch;
use crate::build::{GUEST_TESTS, static_binaries_for};
use crate::util::{is_root, root, step};
use guest::Guest;
use verdict::{Cell, SerialLog};

/// Options of `cargo xtask vm-test`.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Kernels to boot (5.10, 6.1, 6.12, 7.3), for each architecture.
    #[arg(long, value_delimiter = ',', default_value = "5.10,6.1,6.12,7.3")]
    pub kernels: Vec<String>,
    /// Architectures of the guests (`x86_64`, `aarch64`).
    #[arg(long, value_delimiter = ',', default_value = "x86_64,aarch64")]
    pub arch: Vec<Arch>,
    /// Probe modes to test.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fentry,kprobe,tracepoint"
    )]
    pub modes: Vec<String>,
    /// Test binaries the aarch64 guests run (of privileged, connections, accuracy, resets).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "privileged,connections,accuracy,resets"
    )]
    pub aarch64_tests: Vec<String>,
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

/// The serial log of the latest boot of kernel `label` of `arch` (`serial-6.12.log`,
/// `serial-aarch64-6.12.log`).
fn serial_log(arch: Arch, label: &str) -> PathBuf {
    vm_dir().join(format!("serial{}-{label}.log", arch.suffix()))
}

/// Runs the matrix and prints the table; fails if any non-skipped cell failed.
pub fn vm_test(o: &Opts) -> Result<()> {
    if !is_root() {
        bail!("the kernel matrix installs QEMU and needs root");
    }
    for t in &o.aarch64_tests {
        if !GUEST_TESTS.contains(&t.as_str()) {
            bail!("--aarch64-tests: no test binary {t} (the guests run {GUEST_TESTS:?})");
        }
    }
    let mut table = String::from("| kernel | arch | mode | result |\n|---|---|---|---|\n");
    let mut times = String::new();
    let mut failed = false;
    for &arch in &o.arch {
        let started = std::time::Instant::now();
        let guest = Guest::prepare(arch)?;
        let ks = kernels::download(arch, &o.kernels)?;
        let (daemon, mut tests) = static_binaries_for(arch)?;
        if arch == Arch::Aarch64 {
            tests.retain(|(name, _)| o.aarch64_tests.contains(name));
        }
        let payload = Payload {
            guest,
            daemon,
            tests,
        };
        let initrd = payload.initrd("", &o.modes)?;
        let mut guests = Duration::ZERO;
        for (label, vmlinuz) in &ks {
            let KernelRun {
                kernel,
                cells,
                took,
            } = run_kernel(&payload, label, vmlinuz, &initrd, o)?;
            guests += took;
            for (mode, cell) in &cells {
                failed |= cell.is_failure();
                let _ = writeln!(table, "| {kernel} | {arch} | {mode} | {cell} |");
            }
        }
        let _ = writeln!(
            times,
            "{arch}: {} kernels in {:.0} s of guests, {:.0} s with downloads and builds",
            ks.len(),
            guests.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
    }
    println!("\n{table}\n{times}");
    let _ = std::io::stdout().flush();
    if failed {
        bail!(
            "kernel matrix: some cells failed (serial logs in {})",
            vm_dir().display()
        );
    }
    Ok(())
}

/// What the guests of one architecture run.
struct Payload {
    guest: Guest,
    daemon: PathBuf,
    tests: Vec<(String, PathBuf)>,
}

impl Payload {
    /// Writes the initramfs that tests `modes` (target/vm/initrd{-aarch64}{name}.cpio.gz).
    fn initrd(&self, name: &str, modes: &[String]) -> Result<PathBuf> {
        let path = vm_dir().join(format!("initrd{}{name}.cpio.gz", self.guest.arch.suffix()));
        initramfs::write(&path, &self.guest, &self.daemon, &self.tests, modes)?;
        Ok(path)
    }
}

/// What one kernel's guests gave: its release, (mode, cell) per mode, and how long its
/// guests ran.
struct KernelRun {
    kernel: String,
    cells: Vec<(String, Cell)>,
    took: Duration,
}

/// Boots one kernel for every mode.
///
/// A failed cell is run once more in a fresh guest (one that runs only the failed modes):
/// TCG guests on a loaded host are not deterministic. The table keeps the first failure in
/// view; a broken probe fails both runs.
fn run_kernel(
    payload: &Payload,
    label: &str,
    vmlinuz: &Path,
    initrd: &Path,
    o: &Opts,
) -> Result<KernelRun> {
    let guest = &payload.guest;
    let log = serial_log(guest.arch, label);
    let out = qemu::boot(guest, label, vmlinuz, initrd, &log, o.timeout, &o.modes)?;
    let mut took = out.elapsed;
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
        let first_log =
            log.with_file_name(format!("serial{}-{label}-first.log", guest.arch.suffix()));
        std::fs::rename(&log, &first_log)?;
        step(&format!(
            "{label} ({}): {} failed; running {} again (first log: {})",
            guest.arch,
            failed_modes.join(", "),
            if failed_modes.len() == 1 {
                "it"
            } else {
                "them"
            },
            first_log.display()
        ));
        let again = qemu::boot(
            guest,
            label,
            vmlinuz,
            initrd,
            &log,
            o.timeout,
            &failed_modes,
        )?;
        took += again.elapsed;
        let mut again = again.rows;
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
    Ok(KernelRun {
        kernel: out.kernel,
        cells,
        took,
    })
}

/// What one guest printed when it ran a binary once (`@@check image`): its kernel, the
/// exit code and the output.
pub struct CheckRun {
    pub kernel: String,
    pub rc: Option<i32>,
    pub output: String,
    /// Then as the daemon: the `socklat_` lines of its first `/metrics` answer (0: none
    /// came) and its exit code after SIGTERM.
    pub serve: Option<(usize, i32)>,
    /// Where a first guest failed and this is its rerun: why, with the first serial log's
    /// path.
    pub first_failure: Option<String>,
}

impl CheckRun {
    fn of(label: &str, text: &str) -> Self {
        let serial = SerialLog(text);
        CheckRun {
            kernel: serial.kernel().unwrap_or(label).to_string(),
            rc: serial.checkrc("image"),
            output: serial.check_output("image"),
            serve: text.lines().find_map(|l| {
                let mut w = l.trim().strip_prefix("@@serve image ")?.split_whitespace();
                Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
            }),
            first_failure: None,
        }
    }
}

/// Runs `binary` with `args` and `env` in a guest of `arch` on each of `labels`' kernels,
/// set up as a `DaemonSet` pod sees the node: `--check`, then the daemon until its
/// `/metrics` on `port` answers (see [`initramfs::write_check`]). A guest whose run does
/// not `pass` is shown (QEMU's exit, the serial tail) and run once more in a fresh guest, as
/// the matrix reruns a failed cell: TCG guests on a loaded host are not deterministic; a
/// broken binary fails both, and the rerun's [`CheckRun::first_failure`] keeps the first
/// in view.
pub fn run_in_guests(
    arch: Arch,
    labels: &[String],
    binary: &Path,
    args: &[String],
    env: &[(String, String)],
    port: u16,
    passes: impl Fn(&CheckRun) -> bool,
) -> Result<Vec<CheckRun>> {
    let guest = Guest::prepare(arch)?;
    let initrd = vm_dir().join(format!("initrd-image{}.cpio.gz", arch.suffix()));
    initramfs::write_check(&initrd, &guest, binary, args, env, port)?;
    let mut runs = Vec::new();
    for (label, vmlinuz) in kernels::download(arch, labels)? {
        let log = vm_dir().join(format!("serial-image{}-{label}.log", arch.suffix()));
        let (code, text, elapsed) = qemu::run(&guest, &vmlinuz, &initrd, &log, 300)?;
        let run = CheckRun::of(&label, &text);
        if passes(&run) {
            runs.push(run);
            continue;
        }
        let why = format!(
            "QEMU exit {code} after {:.1} s, --check exit {:?}, serving {:?}",
            elapsed.as_secs_f64(),
            run.rc,
            run.serve
        );
        qemu::show_tail(&format!("{label} ({arch})"), &text, &why);
        let first_log =
            log.with_file_name(format!("serial-image{}-{label}-first.log", arch.suffix()));
        std::fs::rename(&log, &first_log)?;
        step(&format!(
            "{label} ({arch}): the image's binary failed; running it again (first log: {})",
            first_log.display()
        ));
        let (_, text, _) = qemu::run(&guest, &vmlinuz, &initrd, &log, 300)?;
        let mut again = CheckRun::of(&label, &text);
        again.first_failure = Some(format!("{why} (log {})", first_log.display()));
        runs.push(again);
    }
    Ok(runs)
}

/// Every kernel label of the matrix.
pub fn all_kernels() -> Vec<String> {
    kernels::LABELS.iter().map(|l| (*l).to_string()).collect()
}
