//! Finding (and, as root on Debian, installing) what builds the kernel object, and the
//! rust-version workaround for compilers older than aya's 1.98.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{is_root, run, step, succeeds};

/// aya 0.16's `rust-version`.
pub const AYA_RUST_VERSION: (u32, u32) = (1, 98);
/// Debian packages of the Debian toolchain path (toolchain.md).
pub const DEBIAN_PACKAGES: &[&str] = &["rustc-web", "libstd-rust-web-dev-bpf", "llvm-22-dev"];
/// The bpf-linker matching Debian's LLVM 22.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// How the eBPF crate gets built.
#[derive(Debug, Clone)]
pub enum EbpfToolchain {
    /// Debian's rustc with its prebuilt bpf `core` (no build-std).
    Debian { rustc: PathBuf, version: (u32, u32) },
    /// rustup nightly with rust-src and `-Z build-std=core`.
    Nightly { version: (u32, u32) },
}

/// `rustc 1.95.0 (...)` -> (1, 95).
pub fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text.split_whitespace().nth(1)?;
    let mut it = v.split(['.', '-']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn version_of(cmd: &mut Command) -> Option<(u32, u32)> {
    let out = cmd.arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| parse_version(&String::from_utf8_lossy(&out.stdout)))
        .flatten()
}

fn sysroot(cmd: &mut Command) -> Option<PathBuf> {
    let out = cmd.args(["--print", "sysroot"]).output().ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn debian_toolchain() -> Option<EbpfToolchain> {
    let rustc = PathBuf::from("/usr/bin/rustc");
    if !rustc.exists() {
        return None;
    }
    let root = sysroot(&mut Command::new(&rustc))?;
    if !root.join("lib/rustlib/bpfel-unknown-none").is_dir() {
        return None;
    }
    Some(EbpfToolchain::Debian {
        version: version_of(&mut Command::new(&rustc))?,
        rustc,
    })
}

fn nightly_toolchain() -> Option<EbpfToolchain> {
    let root = sysroot(Command::new("rustup").args(["run", "nightly", "rustc"]))?;
    if !root.join("lib/rustlib/src/rust/library/core").is_dir() {
        return None;
    }
    Some(EbpfToolchain::Nightly {
        version: version_of(Command::new("rustup").args(["run", "nightly", "rustc"]))?,
    })
}

fn have_apt() -> bool {
    Path::new("/usr/bin/apt-get").exists()
}

/// Installs Debian packages (as root), saying what and why.
pub fn apt_install(packages: &[&str], why: &str) -> Result<()> {
    step(&format!("installing {} ({why})", packages.join(" ")));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages))
}

const HOW_TO: &str = "\
To build the kernel object you need one of:
  * Debian/Ubuntu: apt-get install rustc-web libstd-rust-web-dev-bpf llvm-22-dev, then
      LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker@0.13.0 --locked --no-default-features --features llvm-22
  * rustup: rustup toolchain install nightly --component rust-src; cargo install bpf-linker
(run `cargo xtask build-ebpf` as root on Debian and it installs the first itself)";

/// Finds a toolchain for the eBPF crate, installing Debian's as root where possible.
pub fn ebpf_toolchain() -> Result<EbpfToolchain> {
    if let Some(t) = debian_toolchain() {
        return Ok(t);
    }
    if let Some(t) = nightly_toolchain() {
        return Ok(t);
    }
    if is_root() && have_apt() {
        apt_install(
            DEBIAN_PACKAGES,
            "Debian's rustc with a prebuilt bpf core, and LLVM 22 for bpf-linker",
        )?;
        if let Some(t) = debian_toolchain() {
            return Ok(t);
        }
    }
    bail!("no toolchain can build bpfel-unknown-none objects.\n{HOW_TO}")
}

fn bpf_linker_works() -> bool {
    succeeds(Command::new("bpf-linker").arg("--version"))
}

/// Makes sure `bpf-linker` is on PATH, installing it for the Debian path.
pub fn ensure_bpf_linker(tc: &EbpfToolchain) -> Result<()> {
    if bpf_linker_works() {
        return Ok(());
    }
    match tc {
        EbpfToolchain::Debian { .. } => {
            if !Path::new("/usr/lib/llvm-22/bin/llvm-config").exists() {
                if is_root() && have_apt() {
                    apt_install(&["llvm-22-dev"], "LLVM 22, which bpf-linker links against")?;
                } else {
                    bail!("bpf-linker needs LLVM 22: apt-get install llvm-22-dev\n{HOW_TO}");
                }
            }
            step(&format!(
                "installing bpf-linker {BPF_LINKER_VERSION} against /usr/lib/llvm-22 (about a minute)"
            ));
            run(Command::new("cargo")
                .env("LLVM_PREFIX", "/usr/lib/llvm-22")
                .args([
                    "install",
                    &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                    "--locked",
                ])
                .args(["--no-default-features", "--features", "llvm-22"]))
            .context("cargo install bpf-linker")?;
        }
        EbpfToolchain::Nightly { .. } => {
            step("installing bpf-linker");
            run(Command::new("cargo").args(["install", "bpf-linker"]))
                .context(format!("cargo install bpf-linker failed.\n{HOW_TO}"))?;
        }
    }
    if !bpf_linker_works() {
        bail!("bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH");
    }
    Ok(())
}

/// The host cargo's rustc version (`rustc` on PATH, as cargo would run it).
pub fn host_rustc_version() -> Option<(u32, u32)> {
    version_of(&mut Command::new(
        std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()),
    ))
}

/// Whether a compiler of this version needs the rust-version workaround for aya 0.16.
#[must_use]
pub fn needs_workaround(v: (u32, u32)) -> bool {
    v < AYA_RUST_VERSION
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("rustc 1.95.0 (59807616e 2026-04-14)"),
            Some((1, 95))
        );
        assert_eq!(
            parse_version("rustc 1.97.0-nightly (e50aa6fba 2026-05-19)"),
            Some((1, 97))
        );
        assert_eq!(parse_version("garbage"), None);
        assert!(needs_workaround((1, 95)));
        assert!(needs_workaround((1, 97)));
        assert!(!needs_workaround((1, 98)));
        assert!(!needs_workaround((2, 0)));
    }
}
