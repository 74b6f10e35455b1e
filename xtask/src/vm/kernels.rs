//! The kernels of the matrix: which Debian packages hold them (per architecture),
//! downloaded once through a private apt configuration under target/vm, and their vmlinuz
//! extracted.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::vm_dir;
use crate::apt::PrivateApt;
use crate::arch::Arch;

/// A kernel of the matrix: a label and how to find it.
struct Kernel {
    label: &'static str,
    /// `linux-image-<arch>` version prefix selecting the kernel (from `apt-cache policy`);
    /// empty: the `linux-image-6.12-<arch>` metapackage instead.
    meta_version_prefix: &'static str,
}

/// The kernels the matrix knows, oldest first.
pub const LABELS: &[&str] = &["5.10", "6.1", "6.12", "7.3"];

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

/// Downloads (once) and extracts `arch`'s kernel images; returns label -> vmlinuz path
/// (a plain or compressed x86 bzImage, or an arm64 Image, which QEMU boots as it is).
pub fn download(arch: Arch, labels: &[String]) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut apt = None;
    for k in KERNELS
        .iter()
        .filter(|k| labels.iter().any(|l| l == k.label))
    {
        let vmlinuz = kernel_dir(arch, k.label).join("vmlinuz");
        if !vmlinuz.exists() {
            if apt.is_none() {
                apt = Some(PrivateApt::new(arch)?);
            }
            let apt = apt.as_ref().expect("just set");
            fetch(apt, arch, k, &vmlinuz)?;
        }
        out.push((k.label.to_string(), vmlinuz));
    }
    Ok(out)
}

/// target/vm/kernels/LABEL (`x86_64`) or target/vm/kernels-aarch64/LABEL.
fn kernel_dir(arch: Arch, label: &str) -> PathBuf {
    vm_dir()
        .join(format!("kernels{}", arch.suffix()))
        .join(label)
}

/// The versions of `linux-image-<arch>` the configured suites offer, in apt's order of
/// preference (newest first within a suite).
fn meta_versions(apt: &PrivateApt, arch: Arch) -> Result<Vec<String>> {
    Ok(apt
        .cache(&["policy", &format!("linux-image-{}", arch.debian())])?
        .lines()
        .filter_map(|l| {
            let l = l.trim().trim_start_matches("*** ");
            let v = l.split_whitespace().next()?;
            (v.chars().next()?.is_ascii_digit() && l.split_whitespace().count() == 2)
                .then(|| v.to_string())
        })
        .collect())
}

/// The packages that may hold kernel `k`'s image, best first: `linux-image-<ver>`, or since
/// 7.x the `linux-binary-<ver>` it depends on; for every version of the series the suites
/// offer (a mirror may lack the newest one's .deb: measured for arm64 5.10.0-46 in
/// bullseye-security, which answers 404, while 5.10.0-32 of bullseye downloads).
fn candidates(apt: &PrivateApt, arch: Arch, k: &Kernel) -> Result<Vec<String>> {
    let metas: Vec<String> = if k.meta_version_prefix.is_empty() {
        vec![format!("linux-image-6.12-{}", arch.debian())]
    } else {
        meta_versions(apt, arch)?
            .into_iter()
            .filter(|v| v.starts_with(k.meta_version_prefix))
            .map(|v| format!("linux-image-{}={v}", arch.debian()))
            .collect()
    };
    let mut out = Vec::new();
    for meta in metas {
        let image = image_of(apt, &meta)?;
        let binary = image.replace("linux-image-", "linux-binary-");
        let pkg = if apt.cache(&["depends", &image])?.contains(&binary) {
            binary
        } else {
            image
        };
        if !out.contains(&pkg) {
            out.push(pkg);
        }
    }
    if out.is_empty() {
        bail!(
            "no linux-image-{} {}* in the configured suites",
            arch.debian(),
            k.meta_version_prefix
        );
    }
    Ok(out)
}

/// The `linux-image-*` package the metapackage `pkg` depends on.
fn image_of(apt: &PrivateApt, pkg: &str) -> Result<String> {
    apt.cache(&["depends", pkg])?
        .lines()
        .find_map(|l| {
            let l = l.trim().trim_start_matches('|');
            let name = l.strip_prefix("Depends: ")?;
            name.starts_with("linux-image-").then(|| name.to_string())
        })
        .with_context(|| format!("cannot find the image package of {pkg}"))
}

/// Downloads the first candidate package of kernel `k` that the mirror has and extracts its
/// vmlinuz to `vmlinuz`.
fn fetch(apt: &PrivateApt, arch: Arch, k: &Kernel, vmlinuz: &std::path::Path) -> Result<()> {
    let mut errors = Vec::new();
    let deb = candidates(apt, arch, k)?
        .into_iter()
        .find_map(|pkg| match apt.download(&pkg) {
            Ok(deb) => Some(deb),
            Err(e) => {
                errors.push(format!("{pkg}: {e:#}"));
                None
            }
        })
        .with_context(|| format!("no kernel {} could be downloaded: {errors:?}", k.label))?;
    let kdir = kernel_dir(arch, k.label);
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
    Ok(())
}
