//! Building the kernel object, the daemon, and the static daemon and test binaries that
//! the guests and the container image run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::arch::Arch;
use crate::cross;
use crate::toolchain::{self, EbpfToolchain, needs_workaround};
use crate::util::{root, run, step};

/// The target directory of `arch`'s kernel object with per-thread state in an LRU hash.
fn ebpf_dir(arch: Arch) -> PathBuf {
    root().join(format!("target/ebpf{}", arch.suffix()))
}

/// The target directory of `arch`'s object with per-thread state in task-local storage.
fn ebpf_task_storage_dir(arch: Arch) -> PathBuf {
    root().join(format!("target/ebpf{}-task-storage", arch.suffix()))
}

/// Where `build-ebpf` leaves the kernel object of the host's architecture (per-thread state
/// in an LRU hash).
pub fn ebpf_object() -> PathBuf {
    ebpf_object_for(Arch::host())
}

/// Where `build-ebpf` leaves the host architecture's object with per-thread state in
/// task-local storage.
pub fn ebpf_task_storage_object() -> PathBuf {
    ebpf_task_storage_object_for(Arch::host())
}

/// Where `build-ebpf --arch ARCH` leaves the LRU object for kernels of `arch`
/// (`target/ebpf/...` for `x86_64`, `target/ebpf-aarch64/...`).
pub fn ebpf_object_for(arch: Arch) -> PathBuf {
    ebpf_dir(arch).join("bpfel-unknown-none/release/observer")
}

/// Where `build-ebpf --arch ARCH` leaves the task-storage object for kernels of `arch`.
pub fn ebpf_task_storage_object_for(arch: Arch) -> PathBuf {
    ebpf_task_storage_dir(arch).join("bpfel-unknown-none/release/observer")
}

/// The kernel programs' crate (a crate of its own, outside the workspace).
pub fn ebpf_crate_dir() -> PathBuf {
    root().join("observer-ebpf")
}

/// The BPF instruction set the object is built for, pinned so that a newer LLVM default
/// cannot emit instructions older verifiers refuse (v3: Linux >= 5.1; v4 needs 6.6).
pub const BPF_CPU: &str = "v3";

/// The cfg that selects the kernel's architecture (its syscall numbers and `pt_regs`) in
/// aya-ebpf and in our programs; without it aya-ebpf would take the build host's.
fn bpf_target_arch_cfg(arch: Arch) -> String {
    format!("--cfg=bpf_target_arch=\"{arch}\"")
}

/// What every cargo command on the kernel crate shares: its directory, none of the host's
/// `RUSTFLAGS` but the target architecture's cfg (aya-ebpf and our programs read it), a
/// release build for bpfel-unknown-none into `target_dir`.
pub fn for_ebpf_crate(cmd: &mut Command, arch: Arch, target_dir: PathBuf) -> &mut Command {
    cmd.current_dir(ebpf_crate_dir())
        .env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", bpf_target_arch_cfg(arch))
        .args([
            "--release",
            "--target",
            "bpfel-unknown-none",
            "--target-dir",
        ])
        .arg(target_dir)
}

/// Builds the kernel objects (observer-ebpf) for bpfel-unknown-none and kernels of the
/// host's architecture: with per-thread state in an LRU hash (every kernel) and in
/// task-local storage (Linux >= 5.11). Returns the first.
pub fn build_ebpf() -> Result<PathBuf> {
    build_ebpf_for(Arch::host())
}

/// The same for kernels of `arch` (one pair of objects per architecture: the kprobe
/// programs read arguments from its registers, the tracepoint mode uses its syscall
/// numbers).
pub fn build_ebpf_for(arch: Arch) -> Result<PathBuf> {
    build_ebpf_in(arch, &ebpf_dir(arch), &[])?;
    build_ebpf_in(arch, &ebpf_task_storage_dir(arch), &["task-storage"])?;
    let obj = ebpf_object_for(arch);
    step(&format!(
        "kernel objects for {arch}: {} and {}",
        obj.display(),
        ebpf_task_storage_object_for(arch).display()
    ));
    Ok(obj)
}

/// Builds a variant of the kernel object with the crate's `features` (the benchmarks'
/// ablations) into a target directory of its own; returns the object's path.
pub fn build_ebpf_variant(name: &str, features: &[&str]) -> Result<PathBuf> {
    let dir = root().join("target/ebpf-variants").join(name);
    build_ebpf_in(Arch::host(), &dir, features)?;
    Ok(dir.join("bpfel-unknown-none/release/observer"))
}

/// Builds the kernel object for `arch` with `features` into `target_dir`.
fn build_ebpf_in(arch: Arch, target_dir: &Path, features: &[&str]) -> Result<()> {
    let tc = toolchain::ebpf_toolchain()?;
    toolchain::ensure_bpf_linker(&tc)?;
    let mut cmd;
    match &tc {
        EbpfToolchain::Debian { rustc, version } => {
            step(&format!(
                "building the kernel object with Debian's rustc {}.{} and its prebuilt bpf core",
                version.0, version.1
            ));
            cmd = Command::new("cargo");
            cmd.env("RUSTC", rustc)
                // aya-ebpf uses feature(asm_experimental_arch) on bpf.
                .env("RUSTC_BOOTSTRAP", "1")
                .arg("build");
        }
        EbpfToolchain::Nightly { .. } => {
            step("building the kernel object with rustup nightly and -Z build-std=core");
            cmd = Command::new("rustup");
            cmd.args(["run", "nightly", "cargo", "build", "-Z", "build-std=core"])
                .env_remove("RUSTC");
        }
    }
    let (EbpfToolchain::Debian { version, .. } | EbpfToolchain::Nightly { version }) = tc;
    if needs_workaround(version) {
        cmd.arg("--ignore-rust-version");
    }
    cmd.env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", "bpf-linker");
    for_ebpf_crate(&mut cmd, arch, target_dir.to_path_buf()).env(
        "CARGO_ENCODED_RUSTFLAGS",
        [
            bpf_target_arch_cfg(arch),
            "-Cdebuginfo=2".to_string(),
            "-Clink-arg=--btf".to_string(),
            format!("-Ctarget-cpu={BPF_CPU}"),
        ]
        .join("\x1f"),
    );
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    run(&mut cmd)
}

/// The target directory of userspace builds with the `ebpf` feature: a separate one when
/// the rust-version workaround changes the flags, so that plain `cargo` builds are not
/// invalidated by ours (and the other way round).
pub fn userspace_target_dir() -> PathBuf {
    if toolchain::host_rustc_version().is_some_and(needs_workaround) {
        root().join("target/compat")
    } else {
        root().join("target")
    }
}

/// Flags that let compilers older than aya's `rust-version` build it: aya 0.16 declares
/// rust-version 1.98 and calls `Option::map_or_default` (stable in 1.98); older compilers
/// build it with the feature enabled (with `--ignore-rust-version` and `RUSTC_BOOTSTRAP`).
const WORKAROUND_RUSTFLAGS: &str = "-Zcrate-attr=feature(result_option_map_or_default)";

/// A cargo command in the workspace in `target_dir`, with `rustflags` (if any) and the
/// rust-version workaround applied only when the compiler needs it; built by `cross`'s
/// compiler and linker (for `arch`) when given.
fn workspace_cargo(
    subcommand: &str,
    target_dir: PathBuf,
    arch: Arch,
    cross: Option<&cross::Cross>,
    rustflags: Option<&str>,
) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root()).arg(subcommand);
    let mut flags: Vec<String> = rustflags.map(str::to_string).into_iter().collect();
    let version = match cross {
        Some(c) => {
            cmd.env("RUSTC", &c.rustc)
                .env(cross::Cross::linker_var(arch), c.linker);
            if let Some(s) = &c.sysroot {
                // Target crates only (cargo is given --target): build scripts and proc-macros
                // keep the compiler's own sysroot.
                flags.push(format!("--sysroot={}", s.display()));
            }
            Some(c.version)
        }
        None => toolchain::host_rustc_version(),
    };
    if version.is_some_and(needs_workaround) {
        cmd.arg("--ignore-rust-version").env("RUSTC_BOOTSTRAP", "1");
        flags.insert(0, WORKAROUND_RUSTFLAGS.to_string());
    }
    if !flags.is_empty() {
        cmd.env("RUSTFLAGS", flags.join(" "));
    }
    cmd.env("CARGO_TARGET_DIR", target_dir);
    cmd
}

/// A cargo command for the daemon crate with the `ebpf` feature in `target_dir`, embedding
/// `arch`'s kernel objects (see [`workspace_cargo`]).
fn daemon_cargo(
    subcommand: &str,
    target_dir: PathBuf,
    arch: Arch,
    cross: Option<&cross::Cross>,
    rustflags: Option<&str>,
) -> Command {
    let mut cmd = workspace_cargo(subcommand, target_dir, arch, cross, rustflags);
    cmd.env("SOCKLAT_EMBED_OBJECT", ebpf_object_for(arch))
        .env(
            "SOCKLAT_EMBED_OBJECT_TASK_STORAGE",
            ebpf_task_storage_object_for(arch),
        )
        .args(["-p", "observer", "--features", "ebpf"]);
    cmd
}

/// A cargo command for the daemon crate with the `ebpf` feature, in
/// [`userspace_target_dir`].
pub fn userspace_cargo(subcommand: &str) -> Command {
    daemon_cargo(subcommand, userspace_target_dir(), Arch::host(), None, None)
}

/// Builds the kernel object and the release daemon; returns the binary's path.
pub fn build_daemon() -> Result<PathBuf> {
    build_ebpf()?;
    step("building the daemon (release)");
    run(userspace_cargo("build").args(["--release", "--bin", "socklat"]))?;
    let bin = userspace_target_dir().join("release/socklat");
    step(&format!("daemon: {}", bin.display()));
    Ok(bin)
}

/// Where the static builds of `arch` go (their flags differ from every other build's).
fn static_target_dir(arch: Arch) -> PathBuf {
    root().join(format!("target/vm/build{}", arch.suffix()))
}

/// The static release daemon for `arch` (with `arch`'s kernel objects), cross-built when
/// `arch` is not this machine's; returns its path.
pub fn static_daemon(arch: Arch) -> Result<PathBuf> {
    build_ebpf_for(arch)?;
    let cross = if arch == Arch::host() {
        None
    } else {
        Some(cross::toolchain(arch)?)
    };
    step(&format!("building the static daemon for {arch}"));
    let target_dir = static_target_dir(arch);
    run(daemon_cargo(
        "build",
        target_dir.clone(),
        arch,
        cross.as_ref(),
        Some("-C target-feature=+crt-static"),
    )
    .args(["--release", "--target", arch.triple(), "--bin", "socklat"]))?;
    let bin = target_dir.join(format!("{}/release/socklat", arch.triple()));
    step(&format!("static daemon for {arch}: {}", bin.display()));
    Ok(bin)
}

/// Static binaries for the host's architecture (see [`static_binaries_for`]).
pub fn static_binaries() -> Result<(PathBuf, Vec<(String, PathBuf)>)> {
    static_binaries_for(Arch::host())
}

/// The test binaries the guests run.
pub const GUEST_TESTS: &[&str] = &["privileged", "connections", "accuracy", "resets"];

/// Static binaries for `arch` (the daemon with `arch`'s kernel objects, and the test
/// binaries the guests run); returns (daemon, [(test name, test binary)]).
pub fn static_binaries_for(arch: Arch) -> Result<(PathBuf, Vec<(String, PathBuf)>)> {
    build_ebpf_for(arch)?;
    let cross = if arch == Arch::host() {
        None
    } else {
        Some(cross::toolchain(arch)?)
    };
    step(&format!(
        "building static test binaries and daemon for {arch} guests"
    ));
    let target_dir = static_target_dir(arch);
    let cargo = || {
        let mut cmd = daemon_cargo(
            "test",
            target_dir.clone(),
            arch,
            cross.as_ref(),
            Some("-C target-feature=+crt-static"),
        );
        cmd.args(["--release", "--target", arch.triple(), "--no-run"]);
        for t in GUEST_TESTS {
            cmd.args(["--test", t]);
        }
        cmd
    };
    let out = cargo()
        .args(["--message-format", "json"])
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        // The compiler's messages went into the JSON: build again to show them as text.
        let _ = cargo().status();
        bail!("static build for {arch} failed");
    }
    let tests = test_executables(&String::from_utf8_lossy(&out.stdout));
    let daemon = target_dir.join(format!("{}/release/socklat", arch.triple()));
    if !daemon.exists() || tests.is_empty() {
        bail!("static binaries for {arch} missing after the build");
    }
    Ok((daemon, tests))
}

/// xtask itself, static: the driver of `vm-bench` inside the guests.
pub fn static_xtask() -> Result<PathBuf> {
    step("building a static xtask for the guests");
    let target_dir = static_target_dir(Arch::host());
    run(workspace_cargo(
        "build",
        target_dir.clone(),
        Arch::host(),
        None,
        Some("-C target-feature=+crt-static"),
    )
    .args([
        "--release",
        "--target",
        "x86_64-unknown-linux-gnu",
        "-p",
        "xtask",
    ]))?;
    Ok(target_dir.join("x86_64-unknown-linux-gnu/release/xtask"))
}

/// The (name, executable) of every test target in cargo's JSON messages.
fn test_executables(messages: &str) -> Vec<(String, PathBuf)> {
    let field = |line: &str, key: &str| {
        line.split(key)
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("")
            .to_string()
    };
    messages
        .lines()
        .filter(|l| l.contains("\"executable\":\"") && l.contains("\"kind\":[\"test\"]"))
        .map(|l| (field(l, "\"name\":\""), field(l, "\"executable\":\"")))
        .filter(|(_, exe)| !exe.is_empty())
        .map(|(name, exe)| (name, PathBuf::from(exe)))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn test_executables_from_cargo_messages() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"observer_common"},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"kind":["test"],"crate_types":["bin"],"name":"privileged"},"executable":"/t/privileged-1a"}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"socklat"},"executable":"/t/socklat"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(
            super::test_executables(messages),
            [("privileged".to_string(), "/t/privileged-1a".into())]
        );
    }
}
