//! `cargo xtask test`: every test layer, in order, stopping at the first failure.

use std::process::Command;

use anyhow::{Result, bail};

use crate::build::{build_ebpf, userspace_cargo};
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
    step("clippy (daemon with the ebpf feature)");
    run(userspace_cargo("clippy").args(["--all-targets", "--", "-D", "warnings"]))?;
    Ok(())
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
