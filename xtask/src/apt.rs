//! A private apt configuration under target/vm (the host's sources are never touched; the
//! mirror is the one the host's apt uses), per Debian architecture: the kernels of the
//! matrix, the guests' busybox and the Rust standard library of cross builds come from it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::arch::Arch;
use crate::util::{root, run, step};

/// The private apt configuration of one architecture.
pub struct PrivateApt {
    dir: PathBuf,
    args: Vec<String>,
}

impl PrivateApt {
    /// Writes the configuration (bullseye, bookworm, trixie-backports) for `arch`'s packages
    /// under target/vm/apt (`-aarch64` for arm64) and fetches its package lists once. With
    /// `APT::Architecture` set, `arch` is the native one of these apt runs: package names
    /// carry no `:arm64`, and no `dpkg --add-architecture` is needed.
    pub fn new(arch: Arch) -> Result<Self> {
        let dir = root().join(format!("target/vm/apt{}", arch.suffix()));
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
        let mut args = vec![
            format!(
                "-oDir::Etc::SourceList={}",
                dir.join("sources.list").display()
            ),
            "-oDir::Etc::SourceParts=-".into(),
            format!("-oDir::State::Lists={}", dir.join("lists").display()),
            format!("-oDir::Cache={}", dir.join("cache").display()),
            "-oDir::State::status=/dev/null".into(),
            "-oDebug::NoLocking=1".into(),
        ];
        if arch != Arch::host() {
            args.push(format!("-oAPT::Architecture={}", arch.debian()));
            args.push(format!("-oAPT::Architectures::={}", arch.debian()));
        }
        if !dir
            .join("lists")
            .read_dir()?
            .any(|e| e.is_ok_and(|e| e.path().is_file()))
        {
            step(&format!(
                "fetching Debian package lists ({}) into a private apt configuration",
                arch.debian()
            ));
            run(Command::new("apt-get").args(&args).args(["update", "-q"]))?;
        }
        Ok(Self { dir, args })
    }

    /// `apt-cache QUERY` with this configuration; its standard output.
    pub fn cache(&self, query: &[&str]) -> Result<String> {
        let out = Command::new("apt-cache")
            .args(&self.args)
            .args(query)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Downloads `pkg` (`name` or `name=version`) into this configuration's debs/ unless it
    /// is there; returns the .deb.
    pub fn download(&self, pkg: &str) -> Result<PathBuf> {
        let debs = self.dir.join("debs");
        // apt names the file NAME_VERSION_ARCH.deb, with an epoch's colon as %3a.
        let prefix = match pkg.split_once('=') {
            Some((name, version)) => format!("{name}_{}_", version.replace(':', "%3a")),
            None => format!("{pkg}_"),
        };
        let find = || -> Result<Option<PathBuf>> {
            Ok(std::fs::read_dir(&debs)?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name().is_some_and(|n| {
                        let n = n.to_string_lossy();
                        n.starts_with(&prefix) && n.ends_with(".deb")
                    })
                }))
        };
        if let Some(deb) = find()? {
            return Ok(deb);
        }
        step(&format!("downloading {pkg}"));
        run(Command::new("apt-get")
            .current_dir(&debs)
            .args(&self.args)
            .args(["download", "-q", pkg]))?;
        find()?.context("downloaded package not found")
    }
}

/// Extracts the files of `deb` under `dir` (`dpkg-deb -x`, no maintainer scripts).
pub fn extract(deb: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(dir)
        .status()?;
    if !status.success() {
        bail!("dpkg-deb -x {} failed", deb.display());
    }
    Ok(())
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
