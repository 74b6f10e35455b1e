//! The kernels of the matrix: which Debian packages hold them, downloaded once through a
//! private apt configuration under target/vm, and their vmlinuz extracted.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::vm_dir;
use crate::util::{run, step};

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

/// Downloads (once) and extracts the kernel images; returns label -> vmlinuz path.
pub fn download(labels: &[String]) -> Result<Vec<(String, PathBuf)>> {
    let dir = vm_dir().join("apt");
    let args = apt_config(&dir)?;
    let versions = meta_versions(&args)?;
    let mut out = Vec::new();
    for k in KERNELS
        .iter()
        .filter(|k| labels.iter().any(|l| l == k.label))
    {
        let pkg = package(&args, k, &versions)?;
        let vmlinuz = fetch_vmlinuz(&args, &dir.join("debs"), &pkg, k.label)?;
        out.push((k.label.to_string(), vmlinuz));
    }
    Ok(out)
}

/// Writes the private apt configuration (bullseye, bookworm, trixie-backports) under `dir`
/// and fetches its package lists once; returns the apt options that select it. The host's
/// sources are never touched; the mirror is the one the host's apt uses.
fn apt_config(dir: &Path) -> Result<Vec<String>> {
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
    let args = apt_args(dir);
    if !dir
        .join("lists")
        .read_dir()?
        .any(|e| e.is_ok_and(|e| e.path().is_file()))
    {
        step("fetching Debian package lists for the kernel matrix (private apt configuration)");
        run(Command::new("apt-get").args(&args).args(["update", "-q"]))?;
    }
    Ok(args)
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

/// `apt-cache` with our configuration; returns its standard output.
fn apt_cache(args: &[String], query: &[&str]) -> Result<String> {
    let out = Command::new("apt-cache").args(args).args(query).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The versions of `linux-image-amd64` the configured suites offer.
fn meta_versions(args: &[String]) -> Result<Vec<String>> {
    Ok(apt_cache(args, &["policy", "linux-image-amd64"])?
        .lines()
        .filter_map(|l| {
            let l = l.trim().trim_start_matches("*** ");
            let v = l.split_whitespace().next()?;
            (v.chars().next()?.is_ascii_digit() && l.split_whitespace().count() == 2)
                .then(|| v.to_string())
        })
        .collect())
}

/// The package holding kernel `k`'s image: `linux-image-<ver>`, or since 7.x the
/// `linux-binary-<ver>` it depends on.
fn package(args: &[String], k: &Kernel, versions: &[String]) -> Result<String> {
    let image = if k.label == "6.12" {
        image_of(args, "linux-image-6.12-amd64")?
    } else {
        let v = versions
            .iter()
            .find(|v| v.starts_with(k.meta_version_prefix))
            .with_context(|| format!("no linux-image-amd64 {}*", k.meta_version_prefix))?;
        image_of(args, &format!("linux-image-amd64={v}"))?
    };
    let binary = image.replace("linux-image-", "linux-binary-");
    Ok(
        if apt_cache(args, &["depends", &image])?.contains(&binary) {
            binary
        } else {
            image
        },
    )
}

/// The `linux-image-*` package the metapackage `pkg` depends on.
fn image_of(args: &[String], pkg: &str) -> Result<String> {
    apt_cache(args, &["depends", pkg])?
        .lines()
        .find_map(|l| {
            let l = l.trim().trim_start_matches('|');
            let name = l.strip_prefix("Depends: ")?;
            name.starts_with("linux-image-").then(|| name.to_string())
        })
        .with_context(|| format!("cannot find the image package of {pkg}"))
}

/// Downloads `pkg` into `debs` and extracts its vmlinuz to target/vm/kernels/LABEL/vmlinuz,
/// unless that is there already.
fn fetch_vmlinuz(args: &[String], debs: &Path, pkg: &str, label: &str) -> Result<PathBuf> {
    let kdir = vm_dir().join("kernels").join(label);
    let vmlinuz = kdir.join("vmlinuz");
    if vmlinuz.exists() {
        return Ok(vmlinuz);
    }
    step(&format!("downloading {pkg} (kernel {label})"));
    run(Command::new("apt-get")
        .current_dir(debs)
        .args(args)
        .args(["download", "-q", pkg]))?;
    let deb = std::fs::read_dir(debs)?
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
    Ok(vmlinuz)
}
