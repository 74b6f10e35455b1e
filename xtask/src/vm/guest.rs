//! What differs between the guests of each architecture: the QEMU machine and how the
//! guest reports its exit code, the console, and the busybox its initramfs runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

use super::vm_dir;
use crate::apt::{PrivateApt, extract};
use crate::arch::Arch;
use crate::toolchain::apt_install;
use crate::util::{root, run, step, succeeds};

/// The guests of one architecture.
pub struct Guest {
    pub arch: Arch,
    /// A static busybox for the architecture.
    pub busybox: PathBuf,
    /// aarch64: the static program that ends QEMU with an exit code (Arm semihosting).
    pub semiexit: Option<PathBuf>,
}

impl Guest {
    /// Installs QEMU for `arch` and finds (or downloads) what its initramfs needs.
    pub fn prepare(arch: Arch) -> Result<Self> {
        let have = |c: &str| succeeds(Command::new("sh").arg("-c").arg(format!("command -v {c}")));
        match arch {
            Arch::X86_64 => {
                if !have("qemu-system-x86_64") || !Path::new("/bin/busybox").exists() {
                    apt_install(
                        &["qemu-system-x86", "busybox-static"],
                        "QEMU and a static busybox for the x86_64 guests",
                    )?;
                }
                Ok(Self {
                    arch,
                    busybox: PathBuf::from("/bin/busybox"),
                    semiexit: None,
                })
            }
            Arch::Aarch64 => {
                if !have("qemu-system-aarch64") {
                    apt_install(&["qemu-system-arm"], "QEMU for the aarch64 guests")?;
                }
                let dir = vm_dir().join("aarch64");
                let busybox = dir.join("busybox");
                if !busybox.exists() {
                    // The arm64 build of the same static busybox, unpacked (not installed).
                    let apt = PrivateApt::new(arch)?;
                    let deb = apt.download("busybox-static")?;
                    let tmp = dir.join("busybox-deb");
                    extract(&deb, &tmp)?;
                    std::fs::rename(tmp.join("bin/busybox"), &busybox)?;
                    let _ = std::fs::remove_dir_all(tmp);
                }
                let semiexit = dir.join("semiexit");
                let source = root().join("xtask/src/vm/semiexit.S");
                if !semiexit.exists()
                    || std::fs::metadata(&source)?.modified()?
                        > std::fs::metadata(&semiexit)?.modified()?
                {
                    step("assembling semiexit (the aarch64 guests' exit code, by semihosting)");
                    // The cross linker of the aarch64 builds assembles it.
                    crate::cross::toolchain(arch)?;
                    run(Command::new("aarch64-linux-gnu-gcc")
                        .args(["-nostdlib", "-static", "-s", "-Wl,--build-id=none", "-o"])
                        .arg(&semiexit)
                        .arg(&source))?;
                }
                Ok(Self {
                    arch,
                    busybox,
                    semiexit: Some(semiexit),
                })
            }
        }
    }

    /// The QEMU command that boots `vmlinuz` with `initrd` (TCG, 2 CPUs, 1 GiB, no network
    /// card, serial console on stdout), ended after `timeout` seconds.
    ///
    /// `x86_64` reports its exit code by writing it to the `isa-debug-exit` port; arm64 by an
    /// Arm semihosting `SYS_EXIT` from user mode (`userspace=on`, QEMU >= 7.0): there
    /// `poweroff` and a panic both end QEMU with 0. `-cpu max,pauth-impdef=on`: every
    /// feature Debian's arm64 kernels use (pointer authentication, BTI), with QEMU's cheap
    /// pointer-authentication algorithm instead of QARMA, 3-5 times faster under TCG
    /// (measured, /work/notes/issue17.md).
    pub fn qemu(&self, vmlinuz: &Path, initrd: &Path, timeout: u64) -> Command {
        let mut c = Command::new("timeout");
        c.arg(timeout.to_string());
        match self.arch {
            Arch::X86_64 => {
                c.args(["qemu-system-x86_64", "-accel", "tcg"])
                    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
            }
            Arch::Aarch64 => {
                c.args(["qemu-system-aarch64", "-accel", "tcg", "-M", "virt"])
                    .args(["-cpu", "max,pauth-impdef=on"])
                    .args([
                        "-semihosting-config",
                        "enable=on,target=native,userspace=on",
                    ]);
            }
        }
        c.args([
            "-m",
            "1G",
            "-smp",
            "2",
            "-nographic",
            "-nic",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console={} panic=-1 quiet", self.console()));
        c
    }

    fn console(&self) -> &'static str {
        match self.arch {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }

    /// The end of `/init`: QEMU exits with 2 x `$rc` + 1.
    pub fn exit_script(&self) -> &'static str {
        match self.arch {
            Arch::X86_64 => {
                "printf \"\\\\$(printf %o $rc)\" | dd of=/dev/port bs=1 seek=244 2>/dev/null\npoweroff -f\n"
            }
            Arch::Aarch64 => "/bin/semiexit $((2 * rc + 1))\npoweroff -f\n",
        }
    }

    /// Files the initramfs needs besides the test payload: (guest path, host path).
    pub fn files(&self) -> Result<Vec<(&'static str, PathBuf)>> {
        let mut f = vec![("/bin/busybox", self.busybox.clone())];
        if let Some(s) = &self.semiexit {
            f.push(("/bin/semiexit", s.clone()));
        }
        for (_, p) in &f {
            if !p.exists() {
                bail!("{} missing", p.display());
            }
        }
        Ok(f)
    }
}
