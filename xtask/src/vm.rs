//! `cargo xtask vm-test`: the privileged tests on stock Debian kernels in QEMU (TCG), in
//! every probe mode the kernel supports (../shared/docs/kernels.md).
//!
//! Kernel images come from Debian's registry through a private apt configuration under
//! target/vm (the host's sources are never touched; the mirror is the one the host's apt
//! uses). Test binaries are built static and packed with busybox into an initramfs that
//! xtask writes itself (newc cpio, no root or mknod needed).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::build::{build_ebpf, ebpf_object};
use crate::toolchain::{apt_install, host_rustc_version, needs_workaround};
use crate::util::{is_root, root, run, step};

/// A kernel of the matrix: a label, the apt suite it comes from, and how to find it.
struct Kernel {
    label: &'static str,
    /// `linux-image-amd64` version prefix selecting the kernel (from `apt-cache policy`).
    meta_version_prefix: &'static str,
}

const KERNELS: &[Kernel] = &[
    Kernel {
        label: "5.10",
        meta_version_prefix: "5.10.",
    },
    Kernel {
        label: "6.1",
        meta_version_prefix: "6.1.",
    },
    Kernel {
        label: "6.12",
        meta_version_prefix: "",
    },
    Kernel {
        label: "7.3",
        meta_version_prefix: "7.3.",
    },
];

/// Cells that fail for a reason outside socklat's control, reported as such instead of
/// failing the run: (kernel label, mode, the only failures allowed, reason). Any other
/// failure in such a cell still fails the run.
const KNOWN_LIMITS: &[(&str, &str, &[&str], &str)] = &[(
    "5.10",
    "kprobe",
    // Missed returns lose recvmsg events, and with them the error of a failed receive that
    // marks its connection `error`.
    &["recvmsg count in ", " outcome error"],
    "kretprobe on 5.10 drops the returns of tcp_recvmsg calls beyond its default \
     maxactive (max(10, 2 x CPUs)) when more calls block at once, so recvmsg counts (and \
     the receive errors that mark a connection `error`) come out short; auto mode uses \
     fentry on this kernel",
)];

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

fn vm_dir() -> PathBuf {
    root().join("target/vm")
}

fn apt_args(dir: &Path) -> Vec<String> {
    vec![
        format!(
            "-oDir::Etc::SourceList={}",
            dir.join("sources.list").display()
        ),
        "-oDir::Etc::SourceParts=-".into(),
        format!("-oDir::State::Lists={}", dir.join("lists").display()),
        format!("-oDir::Cache={}", dir.join("cache").display()),
        "-oDir::State::status=/dev/null".into(),
        "-oDebug::NoLocking=1".into(),
    ]
}

/// The Debian mirror the host's apt uses (main archive and security), from its sources.
fn host_mirrors() -> Result<(String, String)> {
    let mut uris = Vec::new();
    for f in [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/apt/sources.list",
    ] {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for line in text.lines() {
            let line = line.trim();
            if let Some(u) = line.strip_prefix("URIs:") {
                uris.push(u.trim().to_string());
            } else if line.starts_with("deb ")
                && let Some(u) = line.split_whitespace().find(|w| w.starts_with("http"))
            {
                uris.push(u.to_string());
            }
        }
    }
    let main = uris
        .iter()
        .find(|u| u.trim_end_matches('/').ends_with("/debian"))
        .cloned()
        .context("no Debian mirror in the host's apt sources")?;
    let security = uris
        .iter()
        .find(|u| u.trim_end_matches('/').ends_with("/debian-security"))
        .cloned()
        .unwrap_or_else(|| main.replace("/debian", "/debian-security"));
    Ok((main, security))
}

/// Downloads (once) and extracts the kernel images; returns label -> vmlinuz path.
fn kernels(labels: &[String]) -> Result<Vec<(String, PathBuf)>> {
    let dir = vm_dir().join("apt");
    std::fs::create_dir_all(dir.join("lists/partial"))?;
    std::fs::create_dir_all(dir.join("cache/archives/partial"))?;
    std::fs::create_dir_all(dir.join("debs"))?;
    let (main, security) = host_mirrors()?;
    let key = "[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]";
    let sources = format!(
        "deb {key} {main} bookworm main\ndeb {key} {security} bookworm-security main\n\
         deb {key} {main} bullseye main\ndeb {key} {security} bullseye-security main\n\
         deb {key} {main} trixie-backports main\n"
    );
    std::fs::write(dir.join("sources.list"), sources)?;
    let args = apt_args(&dir);
    if !dir
        .join("lists")
        .read_dir()?
        .any(|e| e.is_ok_and(|e| e.path().is_file()))
    {
        step("fetching Debian package lists for the kernel matrix (private apt configuration)");
        run(Command::new("apt-get").args(&args).args(["update", "-q"]))?;
    }
    let policy = String::from_utf8_lossy(
        &Command::new("apt-cache")
            .args(&args)
            .args(["policy", "linux-image-amd64"])
            .output()?
            .stdout,
    )
    .into_owned();
    let versions: Vec<String> = policy
        .lines()
        .filter_map(|l| {
            let l = l.trim().trim_start_matches("*** ");
            let v = l.split_whitespace().next()?;
            (v.chars().next()?.is_ascii_digit() && l.split_whitespace().count() == 2)
                .then(|| v.to_string())
        })
        .collect();
    let mut out = Vec::new();
    for k in KERNELS
        .iter()
        .filter(|k| labels.iter().any(|l| l == k.label))
    {
        let image = if k.label == "6.12" {
            depends(&args, "linux-image-6.12-amd64")?
        } else {
            let v = versions
                .iter()
                .find(|v| v.starts_with(k.meta_version_prefix))
                .with_context(|| format!("no linux-image-amd64 {}*", k.meta_version_prefix))?;
            depends(&args, &format!("linux-image-amd64={v}"))?
        };
        // Since 7.x the image is in linux-binary-<ver>, which linux-image-<ver> depends on.
        let binary = image.replace("linux-image-", "linux-binary-");
        let pkg_list = String::from_utf8_lossy(
            &Command::new("apt-cache")
                .args(&args)
                .args(["depends", &image])
                .output()?
                .stdout,
        )
        .into_owned();
        let pkg = if pkg_list.contains(&binary) {
            binary
        } else {
            image.clone()
        };
        let kdir = vm_dir().join("kernels").join(k.label);
        let vmlinuz = kdir.join("vmlinuz");
        if !vmlinuz.exists() {
            step(&format!("downloading {pkg} (kernel {})", k.label));
            let debs = dir.join("debs");
            run(Command::new("apt-get")
                .current_dir(&debs)
                .args(&args)
                .args(["download", "-q", &pkg]))?;
            let deb = std::fs::read_dir(&debs)?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pkg}_")))
                })
                .context("downloaded package not found")?;
            std::fs::create_dir_all(&kdir)?;
            let tar = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' --wildcards './boot/vmlinuz-*' './usr/lib/modules/*/vmlinuz' 2>/dev/null; \
                     f=$(find '{}' -name 'vmlinuz*' -type f | head -1); test -n \"$f\" && mv \"$f\" '{}'",
                    deb.display(),
                    kdir.display(),
                    kdir.display(),
                    vmlinuz.display()
                ))
                .status()?;
            if !tar.success() || !vmlinuz.exists() {
                bail!("no vmlinuz in {}", deb.display());
            }
        }
        out.push((k.label.to_string(), vmlinuz));
    }
    Ok(out)
}

fn depends(args: &[String], pkg: &str) -> Result<String> {
    let out = Command::new("apt-cache")
        .args(args)
        .args(["depends", pkg])
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let l = l.trim().trim_start_matches('|');
            let name = l.strip_prefix("Depends: ")?;
            name.starts_with("linux-image-").then(|| name.to_string())
        })
        .with_context(|| format!("cannot find the image package of {pkg}"))
}

/// Static test binaries and daemon; returns (daemon, [test binaries]).
pub fn static_binaries() -> Result<(PathBuf, Vec<(String, PathBuf)>)> {
    build_ebpf()?;
    step("building static test binaries and daemon for the guests");
    let target_dir = vm_dir().join("build");
    let mut flags = String::from("-C target-feature=+crt-static");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root()).arg("test");
    if host_rustc_version().is_some_and(needs_workaround) {
        flags.insert_str(0, "-Zcrate-attr=feature(result_option_map_or_default) ");
        cmd.arg("--ignore-rust-version").env("RUSTC_BOOTSTRAP", "1");
    }
    cmd.env("RUSTFLAGS", flags)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("SOCKLAT_EMBED_OBJECT", ebpf_object())
        .args(["--release", "-p", "observer", "--features", "ebpf"])
        .args([
            "--target",
            "x86_64-unknown-linux-gnu",
            "--test",
            "privileged",
            "--test",
            "connections",
        ])
        .args(["--no-run", "--message-format", "json"]);
    let out = cmd.output().context("cargo test --no-run")?;
    if !out.status.success() {
        bail!(
            "static build failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut tests = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if !line.contains("\"executable\":\"") || !line.contains("\"kind\":[\"test\"]") {
            continue;
        }
        let exe = line
            .split("\"executable\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("");
        let name = line
            .split("\"name\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("");
        if !exe.is_empty() {
            tests.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    let daemon = target_dir.join("x86_64-unknown-linux-gnu/release/socklat");
    if !daemon.exists() || tests.is_empty() {
        bail!("static binaries missing after the build");
    }
    Ok((daemon, tests))
}

/// A gzip'd newc cpio archive written without root: directories, files, symlinks.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Self {
        Self {
            out: Vec::new(),
            ino: 1,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        let name = name.trim_start_matches('/');
        let mut h = String::new();
        let _ = write!(
            h,
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.ino += 1;
        self.out.extend_from_slice(h.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
        self.out.extend_from_slice(data);
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, &[]);
    }

    /// A file and every directory above it.
    fn file(&mut self, name: &str, data: &[u8], exec: bool) {
        let mut path = String::new();
        let parts: Vec<&str> = name.trim_start_matches('/').split('/').collect();
        for p in &parts[..parts.len() - 1] {
            path.push('/');
            path.push_str(p);
            self.dir(&path);
        }
        self.entry(name, if exec { 0o100_755 } else { 0o100_644 }, data);
    }

    fn finish(mut self, path: &Path) -> Result<()> {
        self.entry("TRAILER!!!", 0, &[]);
        let raw = path.with_extension("");
        std::fs::write(&raw, &self.out)?;
        run(Command::new("gzip").arg("-f").arg("-1").arg(&raw))?;
        let gz = PathBuf::from(format!("{}.gz", raw.display()));
        if gz != path {
            std::fs::rename(gz, path)?;
        }
        Ok(())
    }
}

/// The guest's /init: mounts what the daemon needs, then for each mode asks `socklat
/// --check` whether the mode attaches here and, if so, runs the test binaries in it.
fn init_script(daemon: &Path, tests: &[(String, PathBuf)], modes: &[String]) -> String {
    let mut s = String::from(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexport PATH=/bin\n\
         mkdir -p /proc /sys /dev /tmp /run\nmount -t proc proc /proc\nmount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\nmount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null\n\
         mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null\nmount -t bpf bpf /sys/fs/bpf 2>/dev/null\n\
         mount -t cgroup2 cgroup2 /sys/fs/cgroup\nip link set lo up\nexport SOCKLAT_VM=1 RUST_BACKTRACE=0\n\
         echo \"@@kernel $(uname -r)\"\nrc=0\n",
    );
    let d = daemon.display();
    let _ = writeln!(
        s,
        "echo '@@check auto'; {d} --check 2>&1; echo \"@@checkrc auto $?\""
    );
    for m in modes {
        let _ = writeln!(
            s,
            "echo '@@check {m}'; {d} --check --probe-mode {m} 2>&1 | tee /tmp/check-{m}; c=$?"
        );
        let _ = writeln!(s, "if {d} --check --probe-mode {m} >/dev/null 2>&1; then");
        for (name, exe) in tests {
            let _ = writeln!(
                s,
                "  SOCKLAT_TEST_MODE={m} {} --test-threads=1 2>&1; r=$?; echo \"@@result {m} {name} $r\"; [ $r = 0 ] || rc=1",
                exe.display()
            );
        }
        let _ = writeln!(s, "else echo \"@@skip {m}\"; fi");
    }
    s.push_str("echo \"@@done $rc\"\nprintf \"\\\\$(printf %o $rc)\" | dd of=/dev/port bs=1 seek=244 2>/dev/null\npoweroff -f\n");
    s
}

/// Whether a cell's verdict is a failure (not a pass, a stated skip or a known limitation).
fn is_failure(verdict: &str) -> bool {
    !verdict.starts_with("pass")
        && !verdict.starts_with("skipped")
        && !verdict.starts_with("known limitation")
}

struct Outcome {
    kernel: String,
    rows: Vec<(String, String)>,
}

/// The result of one mode on one kernel, from the guest's serial log.
fn verdict(text: &str, label: &str, m: &str) -> String {
    let skipped = text.lines().any(|l| l.trim() == format!("@@skip {m}"));
    let results: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("@@result {m} ")))
        .collect();
    if skipped {
        let check = text
            .split(&format!("@@check {m}"))
            .nth(1)
            .unwrap_or("")
            .lines()
            .filter(|l| {
                l.trim_start().starts_with("tracepoint unavailable")
                    || l.trim_start().starts_with("fentry unavailable")
                    || l.trim_start().starts_with("kprobe unavailable")
            })
            .map(str::trim)
            .take(1)
            .collect::<Vec<_>>()
            .join("; ");
        format!(
            "skipped: {}",
            if check.is_empty() {
                "mode does not attach"
            } else {
                &check
            }
        )
    } else if results.is_empty() {
        "no verdict".to_string()
    } else if results.iter().all(|r| r.ends_with(" 0")) {
        format!("pass ({} test binaries)", results.len())
    } else if let Some((_, _, _, why)) = KNOWN_LIMITS.iter().find(|(k, md, allowed, _)| {
        let section = text
            .split(&format!("@@check {m}"))
            .nth(1)
            .and_then(|s| s.split("@@check ").next())
            .unwrap_or("");
        *k == label
            && *md == m
            && allowed
                .iter()
                .map(|a| section.matches(a).count())
                .sum::<usize>()
                >= section.matches("panicked at").count()
    }) {
        format!("known limitation, tests fail: {why}")
    } else {
        format!("FAIL ({})", results.join(", "))
    }
}

fn boot(
    label: &str,
    vmlinuz: &Path,
    initrd: &Path,
    timeout: u64,
    modes: &[String],
) -> Result<Outcome> {
    let log = vm_dir().join(format!("serial-{label}.log"));
    step(&format!(
        "booting {label} under QEMU (TCG); serial log {}",
        log.display()
    ));
    let started = Instant::now();
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
        .stderr(std::process::Stdio::null())
        .status()?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let kernel = text
        .lines()
        .find_map(|l| l.find("@@kernel ").map(|i| l[i + 9..].trim()))
        .unwrap_or(label)
        .to_string();
    let mut rows = Vec::new();
    for m in modes {
        rows.push((m.clone(), verdict(&text, label, m)));
    }
    let code = status.code().unwrap_or(-1);
    // `socklat --check` in auto mode, as the guest saw it.
    let auto: Vec<&str> = text
        .split("@@check auto")
        .nth(1)
        .unwrap_or("")
        .lines()
        .take_while(|l| !l.contains("@@checkrc"))
        .filter(|l| !l.trim_start().starts_with('['))
        .collect();
    println!(
        "--- {kernel}: socklat --check (auto)\n{}",
        auto.join("\n").trim()
    );
    let bad = rows
        .iter()
        .any(|(_, v)| v.starts_with("FAIL") || v.starts_with("no verdict"));
    if bad || (code != 1 && code != 3) {
        eprintln!(
            "--- {label}: QEMU exit {code} after {:?}; serial tail:",
            started.elapsed()
        );
        let lines: Vec<&str> = text.lines().collect();
        for l in &lines[lines.len().saturating_sub(60)..] {
            eprintln!("{l}");
        }
    }
    Ok(Outcome { kernel, rows })
}

/// Runs the matrix and prints the table; fails if any non-skipped cell failed.
pub fn vm_test(o: &Opts) -> Result<()> {
    if !is_root() {
        bail!("the kernel matrix installs QEMU and needs root");
    }
    let have = |c: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {c}"))
            .output()
            .is_ok_and(|x| x.status.success())
    };
    if !have("qemu-system-x86_64") || !Path::new("/bin/busybox").exists() {
        apt_install(
            &["qemu-system-x86", "busybox-static"],
            "QEMU and a static busybox for the guests",
        )?;
    }
    let ks = kernels(&o.kernels)?;
    let (daemon, tests) = static_binaries()?;
    let initrd = vm_dir().join("initrd.cpio.gz");
    let mut cpio = Cpio::new();
    cpio.dir("/bin");
    cpio.file("/bin/busybox", &std::fs::read("/bin/busybox")?, true);
    cpio.file(
        "/init",
        init_script(&daemon, &tests, &o.modes).as_bytes(),
        true,
    );
    cpio.file(&daemon.to_string_lossy(), &std::fs::read(&daemon)?, true);
    for (_, exe) in &tests {
        cpio.file(&exe.to_string_lossy(), &std::fs::read(exe)?, true);
    }
    cpio.finish(&initrd)?;
    let mut table = String::from("| kernel | mode | result |\n|---|---|---|\n");
    let mut failed = false;
    for (label, vmlinuz) in &ks {
        let mut out = boot(label, vmlinuz, &initrd, o.timeout, &o.modes)?;
        // A failed cell is run once more in a fresh guest: TCG guests on a loaded host
        // are not deterministic. The table keeps the first failure in view; a broken probe
        // fails both runs.
        let failed_modes: Vec<String> = out
            .rows
            .iter()
            .filter(|(_, v)| is_failure(v))
            .map(|(m, _)| m.clone())
            .collect();
        if !failed_modes.is_empty() {
            let first_log = vm_dir().join(format!("serial-{label}-first.log"));
            std::fs::rename(vm_dir().join(format!("serial-{label}.log")), &first_log)?;
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
            let again = boot(label, vmlinuz, &initrd, o.timeout, &failed_modes)?;
            for (mode, v) in &mut out.rows {
                if let Some((_, v2)) = again.rows.iter().find(|(m, _)| m == mode) {
                    *v = if is_failure(v2) {
                        format!("{v2}; first run: {v}")
                    } else {
                        format!("{v2} on the second run; first run: {v}")
                    };
                }
            }
        }
        for (mode, verdict) in &out.rows {
            failed |= is_failure(verdict);
            let _ = writeln!(table, "| {} | {mode} | {verdict} |", out.kernel);
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
