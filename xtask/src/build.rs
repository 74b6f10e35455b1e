//! Building the kernel object, the daemon, and the static daemon and test binaries that
//! the guests and the container image run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::toolchain::{self, EbpfToolchain, needs_workaround};
use crate::util::{root, run, step};

/// Where `build-ebpf` leaves the kernel object (per-thread state in an LRU hash).
pub fn ebpf_object() -> PathBuf {
    root().join("target/ebpf/bpfel-unknown-none/release/observer")
}

/// Where `build-ebpf` leaves the object with per-thread state in task-local storage.
pub fn ebpf_task_storage_object() -> PathBuf {
    root().join("target/ebpf-task-storage/bpfel-unknown-none/release/observer")
}

/// The kernel programs' crate (a crate of its own, outside the workspace).
pub fn ebpf_crate_dir() -> PathBuf {
    root().join("observer-ebpf")
}

/// The architecture whose kernel the object is built for (its syscall numbers and
/// `pt_regs`): the one xtask runs on.
pub const BPF_TARGET_ARCH: &str = std::env::consts::ARCH;

/// The BPF instruction set the object is built for, pinned so that a newer LLVM default
/// cannot emit instructions older verifiers refuse (v3: Linux >= 5.1; v4 needs 6.6).
pub const BPF_CPU: &str = "v3";

/// What every cargo command on the kernel crate shares: its directory, none of the host's
/// `RUSTFLAGS` but the target architecture's cfg (aya-ebpf and our programs read it), a
/// release build for bpfel-unknown-none into `target_dir`.
pub fn for_ebpf_crate(cmd: &mut Command, target_dir: PathBuf) -> &mut Command {
    cmd.current_dir(ebpf_crate_dir())
        .env_remove("RUSTFLAGS")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{BPF_TARGET_ARCH}\""),
        )
        .args([
            "--release",
            "--target",
            "bpfel-unknown-none",
            "--target-dir",
        ])
        .arg(target_dir)
}

/// Builds the kernel objects (observer-ebpf) for bpfel-unknown-none: with per-thread state
/// in an LRU hash (every kernel) and in task-local storage (Linux >= 5.11). Returns the
/// first.
pub fn build_ebpf() -> Result<PathBuf> {
    build_ebpf_in(&root().join("target/ebpf"), &[])?;
    build_ebpf_in(&root().join("target/ebpf-task-storage"), &["task-storage"])?;
    let obj = ebpf_object();
    step(&format!(
        "kernel objects: {} and {}",
        obj.display(),
        ebpf_task_storage_object().display()
    ));
    Ok(obj)
}

/// Builds a variant of the kernel object with the crate's `features` (the benchmarks'
/// ablations) into a target directory of its own; returns the object's path.
pub fn build_ebpf_variant(name: &str, features: &[&str]) -> Result<PathBuf> {
    let dir = root().join("target/ebpf-variants").join(name);
    build_ebpf_in(&dir, features)?;
    Ok(dir.join("bpfel-unknown-none/release/observer"))
}

/// Builds the kernel object with `features` into `target_dir`.
fn build_ebpf_in(target_dir: &Path, features: &[&str]) -> Result<()> {
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
    for_ebpf_crate(&mut cmd, target_dir.to_path_buf()).env(
        "CARGO_ENCODED_RUSTFLAGS",
        [
            format!("--cfg=bpf_target_arch=\"{BPF_TARGET_ARCH}\""),
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
/// rust-version workaround applied only when the compiler needs it.
fn workspace_cargo(subcommand: &str, target_dir: PathBuf, rustflags: Option<&str>) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root()).arg(subcommand);
    let mut flags = rustflags.map(str::to_string);
    if toolchain::host_rustc_version().is_some_and(needs_workaround) {
        cmd.arg("--ignore-rust-version").env("RUSTC_BOOTSTRAP", "1");
        flags = Some(match flags {
            Some(f) => format!("{WORKAROUND_RUSTFLAGS} {f}"),
            None => WORKAROUND_RUSTFLAGS.to_string(),
        });
    }
    if let Some(f) = flags {
        cmd.env("RUSTFLAGS", f);
    }
    cmd.env("CARGO_TARGET_DIR", target_dir);
    cmd
}

/// A cargo command for the daemon crate with the `ebpf` feature in `target_dir` (see
/// [`workspace_cargo`]).
fn daemon_cargo(subcommand: &str, target_dir: PathBuf, rustflags: Option<&str>) -> Command {
    let mut cmd = workspace_cargo(subcommand, target_dir, rustflags);
    cmd.env("SOCKLAT_EMBED_OBJECT", ebpf_object())
        .env(
            "SOCKLAT_EMBED_OBJECT_TASK_STORAGE",
            ebpf_task_storage_object(),
        )
        .args(["-p", "observer", "--features", "ebpf"]);
    cmd
}

/// A cargo command for the daemon crate with the `ebpf` feature, in
/// [`userspace_target_dir`].
pub fn userspace_cargo(subcommand: &str) -> Command {
    daemon_cargo(subcommand, userspace_target_dir(), None)
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

/// Where the static builds go (their flags differ from every other build's).
fn static_target_dir() -> PathBuf {
    root().join("target/vm/build")
}

/// Static test binaries and daemon; returns (daemon, [(test name, test binary)]).
pub fn static_binaries() -> Result<(PathBuf, Vec<(String, PathBuf)>)> {
    build_ebpf()?;
    step("building static test binaries and daemon for the guests");
    let target_dir = static_target_dir();
    let out = daemon_cargo(
        "test",
        target_dir.clone(),
        Some("-C target-feature=+crt-static"),
    )
    .args([
        "--release",
        "--target",
        "x86_64-unknown-linux-gnu",
        "--test",
        "privileged",
        "--test",
        "connections",
        "--test",
        "accuracy",
        "--test",
        "resets",
    ])
    .args(["--no-run", "--message-format", "json"])
    .output()
    .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!(
            "static build failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tests = test_executables(&String::from_utf8_lossy(&out.stdout));
    let daemon = target_dir.join("x86_64-unknown-linux-gnu/release/socklat");
    if !daemon.exists() || tests.is_empty() {
        bail!("static binaries missing after the build");
    }
    Ok((daemon, tests))
}

/// xtask itself, static: the driver of `vm-bench` inside the guests.
pub fn static_xtask() -> Result<PathBuf> {
    step("building a static xtask for the guests");
    let target_dir = static_target_dir();
    run(workspace_cargo(
        "build",
        target_dir.clone(),
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
