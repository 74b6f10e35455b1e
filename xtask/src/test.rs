//! `cargo xtask test` (every test layer, in order, stopping at the first failure) and
//! `cargo xtask lint` (rustfmt and clippy pedantic, the kernel crate's included).

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

use crate::arch::Arch;
use crate::build::{build_ebpf, ebpf_crate_dir, for_ebpf_crate, userspace_cargo};
use crate::toolchain::{EbpfToolchain, apt_install, ebpf_toolchain};
use crate::util::{is_root, root, run, step};

/// Clippy pedantic (workspace lints) with warnings as errors, and rustfmt.
pub fn lint() -> Result<()> {
    step("rustfmt --check");
    run(Command::new("cargo")
        .current_dir(root())
        .args(["fmt", "--all", "--", "--check"]))?;
    step("clippy (workspace, no kernel object needed)");
    run(Command::new("cargo").current_dir(root()).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    build_ebpf()?;
    lint_ebpf()?;
    step("clippy (daemon with the ebpf feature)");
    run(userspace_cargo("clippy").args(["--all-targets", "--", "-D", "warnings"]))?;
    Ok(())
}

/// rustfmt and clippy pedantic for the kernel programs (a crate of their own, outside the
/// workspace). Clippy comes from Debian's `rust-web-clippy`, made for the rustc that builds
/// them; on the rustup path, from nightly.
fn lint_ebpf() -> Result<()> {
    step("rustfmt --check (kernel programs)");
    run(Command::new("cargo")
        .current_dir(ebpf_crate_dir())
        .args(["fmt", "--", "--check"]))?;
    // Both objects the daemon embeds (per-thread state in an LRU hash, and in task storage),
    // for each architecture's kernels (their code differs: syscall numbers, registers).
    for arch in Arch::ALL {
        for features in [&[][..], &["task-storage"][..]] {
            clippy_ebpf(arch, features)?;
        }
    }
    Ok(())
}

/// Clippy pedantic for the kernel programs for `arch` built with `features`.
fn clippy_ebpf(arch: Arch, features: &[&str]) -> Result<()> {
    step(&format!(
        "clippy pedantic (kernel programs for {arch}{})",
        if features.is_empty() {
            String::new()
        } else {
            format!(", features {}", features.join(","))
        }
    ));
    let args = ["-D", "warnings", "-W", "clippy::pedantic"].join("__CLIPPY_HACKERY__")
        + "__CLIPPY_HACKERY__";
    let toolchain = ebpf_toolchain()?;
    let nightly = matches!(toolchain, EbpfToolchain::Nightly { .. });
    let mut cmd;
    match toolchain {
        EbpfToolchain::Debian { rustc, .. } => {
            let driver = Path::new("/usr/bin/clippy-driver");
            if !driver.exists() {
                apt_install(
                    &["rust-web-clippy"],
                    "clippy for Debian's rustc, to lint the kernel programs",
                )?;
            }
            cmd = Command::new("cargo");
            cmd.env("RUSTC", rustc)
                .env("RUSTC_WORKSPACE_WRAPPER", driver)
                .env("RUSTC_BOOTSTRAP", "1")
                .env("CLIPPY_ARGS", args)
                .args(["check", "--ignore-rust-version"]);
        }
        EbpfToolchain::Nightly { .. } => {
            cmd = Command::new("rustup");
            cmd.args(["run", "nightly", "cargo", "clippy", "-Z", "build-std=core"]);
        }
    }
    for_ebpf_crate(
        &mut cmd,
        arch,
        root().join(format!("target/ebpf-clippy{}", arch.suffix())),
    );
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    if nightly {
        cmd.args(["--", "-D", "warnings", "-W", "clippy::pedantic"]);
    }
    run(&mut cmd)
}

/// Every test layer.
pub fn all() -> Result<()> {
    lint()?;
    step("unit tests: plain `cargo test` (no root, no kernel object)");
    run(Command::new("cargo")
        .current_dir(root())
        .args(["test", "--workspace"]))?;
    step("deploy/: Kubernetes schemas, checkov, cross-checks");
    crate::deploy::deploy_test()?;
    if !is_root() {
        bail!(
            "the privileged integration tests load BPF programs and need root: run `sudo -E cargo xtask test`"
        );
    }
    build_ebpf()?;
    step("unit tests against the kernel object (program table, instruction set; no root)");
    run(userspace_cargo("test").args(["--release", "--lib"]))?;
    step("privileged integration tests (real probes, real traffic, real cgroups)");
    run(userspace_cargo("test").args([
        "--release",
        "--test",
        "privileged",
        "--test",
        "connections",
        "--test",
        "operator",
        "--test",
        "reliability",
        "--test",
        "big_node",
        "--test",
        "accuracy",
        "--test",
        "resets",
        "--",
        "--test-threads=1",
    ]))?;
    step("container image: build, and socklat --check in it as the DaemonSet runs it");
    crate::deploy::image()?;
    step("kernel matrix: the privileged tests on stock kernels in QEMU, every probe mode");
    crate::vm::vm_test(&crate::vm::Opts::default())?;
    step("all test layers passed");
    Ok(())
}
