//! Building the kernel object and the daemon.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

use crate::toolchain::{self, EbpfToolchain, needs_workaround};
use crate::util::{root, run, step};

/// Where `build-ebpf` leaves the kernel object.
pub fn ebpf_object() -> PathBuf {
    root().join("target/ebpf/bpfel-unknown-none/release/observer")
}

/// Builds the kernel object (observer-ebpf) for bpfel-unknown-none.
pub fn build_ebpf() -> Result<PathBuf> {
    let tc = toolchain::ebpf_toolchain()?;
    toolchain::ensure_bpf_linker(&tc)?;
    let root = root();
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
            if needs_workaround(*version) {
                cmd.arg("--ignore-rust-version");
            }
        }
        EbpfToolchain::Nightly { version } => {
            step("building the kernel object with rustup nightly and -Z build-std=core");
            cmd = Command::new("rustup");
            cmd.args(["run", "nightly", "cargo", "build", "-Z", "build-std=core"])
                .env_remove("RUSTC");
            if needs_workaround(*version) {
                cmd.arg("--ignore-rust-version");
            }
        }
    }
    cmd.current_dir(root.join("observer-ebpf"))
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", "bpf-linker")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf",
        )
        .args([
            "--release",
            "--target",
            "bpfel-unknown-none",
            "--target-dir",
        ])
        .arg(root.join("target/ebpf"));
    run(&mut cmd)?;
    let obj = ebpf_object();
    step(&format!("kernel object: {}", obj.display()));
    Ok(obj)
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

/// A cargo command for the daemon crate with the `ebpf` feature, with the rust-version
/// workaround applied only when the compiler needs it.
pub fn userspace_cargo(subcommand: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root()).arg(subcommand);
    if toolchain::host_rustc_version().is_some_and(needs_workaround) {
        // aya 0.16 declares rust-version 1.98 and calls Option::map_or_default (stable in
        // 1.98); older compilers build it with the feature enabled.
        cmd.arg("--ignore-rust-version")
            .env("RUSTC_BOOTSTRAP", "1")
            .env(
                "RUSTFLAGS",
                "-Zcrate-attr=feature(result_option_map_or_default)",
            );
    }
    cmd.env("CARGO_TARGET_DIR", userspace_target_dir())
        .env("SOCKLAT_EMBED_OBJECT", ebpf_object())
        .args(["-p", "observer", "--features", "ebpf"]);
    cmd
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
