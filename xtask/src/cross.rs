//! Building the daemon and the test binaries for another architecture from this machine:
//! Debian's rustc (which can emit every target) with that architecture's prebuilt standard
//! library, and a cross linker with its static C library. xtask installs what is missing
//! as root on Debian, as it does for the kernel object's toolchain.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::apt::{PrivateApt, extract};
use crate::arch::Arch;
use crate::toolchain::{EbpfToolchain, apt_install, ebpf_toolchain};
use crate::util::{is_root, root, step, succeeds};

/// A compiler and linker for `arch`'s daemon.
pub struct Cross {
    /// The rustc to build with (`RUSTC`).
    pub rustc: PathBuf,
    /// Its version (for the rust-version workaround).
    pub version: (u32, u32),
    /// A sysroot holding the target's standard library, when the compiler's own has none.
    pub sysroot: Option<PathBuf>,
    /// The linker (`CARGO_TARGET_<TRIPLE>_LINKER`).
    pub linker: &'static str,
}

impl Cross {
    /// The cargo environment variable naming the linker of `arch`'s target.
    pub fn linker_var(arch: Arch) -> String {
        format!(
            "CARGO_TARGET_{}_LINKER",
            arch.triple().to_uppercase().replace('-', "_")
        )
    }
}

/// The cross linker and the Debian packages that give it and the target's static libc.
fn linker_of(arch: Arch) -> (&'static str, &'static [&'static str]) {
    match arch {
        Arch::Aarch64 => (
            "aarch64-linux-gnu-gcc",
            &["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"],
        ),
        Arch::X86_64 => (
            "x86_64-linux-gnu-gcc",
            &["gcc-x86-64-linux-gnu", "libc6-dev-amd64-cross"],
        ),
    }
}

/// Whether `rustc` has a standard library for `triple` (in its own sysroot, or `sysroot`).
fn has_std(rustc: &Path, triple: &str, sysroot: Option<&Path>) -> bool {
    let mut cmd = Command::new(rustc);
    if let Some(s) = sysroot {
        cmd.arg("--sysroot").arg(s);
    }
    let Ok(out) = cmd
        .args(["--print", "target-libdir", "--target", triple])
        .output()
    else {
        return false;
    };
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    out.status.success()
        && std::fs::read_dir(dir).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
        })
}

/// Finds (and, as root on Debian, installs) what builds static binaries for `arch`.
pub fn toolchain(arch: Arch) -> Result<Cross> {
    let (linker, packages) = linker_of(arch);
    let have_linker = || succeeds(Command::new(linker).arg("--version"));
    if !have_linker() {
        if is_root() && Path::new("/usr/bin/apt-get").exists() {
            apt_install(
                packages,
                &format!("a linker and static C library for {arch}"),
            )?;
        }
        if !have_linker() {
            bail!(
                "no {linker}: apt-get install {} (the linker of the {arch} builds)",
                packages.join(" ")
            );
        }
    }
    // Debian's rustc: its prebuilt bpf core builds the kernel objects already, and
    // Debian ships the same compiler's standard library for every architecture.
    let EbpfToolchain::Debian { rustc, version } = ebpf_toolchain()? else {
        let rustc = PathBuf::from("rustc");
        if has_std(&rustc, arch.triple(), None) {
            let version =
                crate::toolchain::host_rustc_version().context("cannot ask rustc its version")?;
            return Ok(Cross {
                rustc,
                version,
                sysroot: None,
                linker,
            });
        }
        bail!(
            "no standard library for {}: rustup target add {}",
            arch.triple(),
            arch.triple()
        );
    };
    if has_std(&rustc, arch.triple(), None) {
        // Debian multiarch (`dpkg --add-architecture`) put it into the compiler's sysroot.
        return Ok(Cross {
            rustc,
            version,
            sysroot: None,
            linker,
        });
    }
    let sysroot = private_sysroot(arch)?;
    if !has_std(&rustc, arch.triple(), Some(&sysroot)) {
        bail!(
            "{} has no standard library for {}",
            sysroot.display(),
            arch.triple()
        );
    }
    Ok(Cross {
        rustc,
        version,
        sysroot: Some(sysroot),
        linker,
    })
}

/// A sysroot of `arch`'s standard library for Debian's rustc under target/cross, from the
/// `libstd-rust-web-dev` package of exactly the installed `rustc-web` version (a
/// `Multi-Arch: same` package: another version's rlibs do not fit this compiler),
/// downloaded through a private apt configuration and unpacked there: the host's dpkg
/// (its architectures, its packages) is not touched.
fn private_sysroot(arch: Arch) -> Result<PathBuf> {
    let dir = root().join(format!("target/cross/{}", arch.debian()));
    let sysroot = dir.join("usr");
    let version = String::from_utf8(
        Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", "rustc-web"])
            .output()
            .context("dpkg-query rustc-web")?
            .stdout,
    )?;
    if version.is_empty() {
        bail!("rustc-web is not installed");
    }
    let stamp = dir.join("version");
    if std::fs::read_to_string(&stamp).is_ok_and(|v| v == version) {
        return Ok(sysroot);
    }
    step(&format!(
        "unpacking Debian's {} standard library for rustc {version} into {}",
        arch.triple(),
        dir.display()
    ));
    let apt = PrivateApt::new(arch)?;
    let deb = apt.download(&format!("libstd-rust-web-dev={version}"))?;
    let _ = std::fs::remove_dir_all(&dir);
    extract(&deb, &dir)?;
    std::fs::write(&stamp, &version)?;
    Ok(sysroot)
}
