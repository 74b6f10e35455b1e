//! Developer commands: `cargo xtask <command>`, parsed here and dispatched to the module
//! of each.

mod apt;
mod arch;
mod bench;
mod build;
mod cross;
mod deploy;
mod load;
mod run;
mod soak;
mod test;
mod toolchain;
mod util;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "socklat developer commands")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the kernel objects (observer-ebpf) for bpfel-unknown-none, for kernels of each
    /// `--arch` (default: this machine's); installs missing toolchain pieces as root on
    /// Debian, or says what to install.
    BuildEbpf {
        /// Architectures of the kernels the objects are for (`x86_64`, `aarch64`).
        #[arg(long, value_delimiter = ',')]
        arch: Vec<arch::Arch>,
    },
    /// Build the kernel objects and the release daemon; with `--arch`, a static daemon for
    /// each architecture named (cross-built from this machine, with that architecture's
    /// kernel objects embedded): `target/vm/build{,-aarch64}/<triple>/release/socklat`.
    Build {
        /// Architectures of static daemons to build (`x86_64`, `aarch64`).
        #[arg(long, value_delimiter = ',')]
        arch: Vec<arch::Arch>,
    },
    /// Build everything and start the daemon as root: `cargo xtask run -- [daemon flags]`.
    Run {
        /// Flags passed to the daemon.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Every test layer but the kernel matrix: lints, unit tests, privileged integration
    /// tests (root).
    Test,
    /// The privileged tests on stock Debian kernels (5.10, 6.1, 6.12, 7.3; `x86_64` and `aarch64`
    /// guests) in QEMU, in every probe mode each supports; prints a kernel x mode table.
    VmTest(vm::Opts),
    /// The kernel cost of each probe mode inside the kernel-matrix guests (QEMU TCG): the
    /// pinned ping-pong socklat/none per mode in one boot, and ns per observed call.
    VmBench(vm::bench::Opts),
    /// (internal) the guest's half of vm-bench.
    #[command(hide = true)]
    GuestBench(vm::guest_bench::Opts),
    /// Benchmarks: overhead ratios measured side by side, pipeline rate, memory.
    Bench(bench::Opts),
    /// Soak: load plus cgroup churn for N minutes; reports the memory slope and scrape time.
    Soak(soak::Opts),
    /// (internal) the client process of the memory benchmark.
    #[command(hide = true)]
    BenchClient {
        addr: String,
        requests: usize,
        /// Requests sent before their responses are read (a burst of socket calls).
        #[arg(long, default_value_t = 1)]
        depth: usize,
    },
    /// Clippy (pedantic, workspace level, warnings denied) and rustfmt.
    Lint,
    /// Validate deploy/: Kubernetes schemas, checkov, cross-checks of the manifests.
    DeployTest,
    /// Build the container image (podman, from a static build) and run `socklat --check`
    /// in it with the `DaemonSet`'s capabilities and mounts (root).
    Image,
}

fn main() {
    if let Err(e) = dispatch(Args::parse().cmd) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::BuildEbpf { arch } => {
            let archs = if arch.is_empty() {
                vec![arch::Arch::host()]
            } else {
                arch
            };
            archs
                .into_iter()
                .try_for_each(|a| build::build_ebpf_for(a).map(drop))
        }
        Cmd::Build { arch } if arch.is_empty() => build::build_daemon().map(drop),
        Cmd::Build { arch } => arch
            .into_iter()
            .try_for_each(|a| build::static_daemon(a).map(drop)),
        Cmd::Run { args } => run::run_daemon(&args),
        Cmd::Test => test::all(),
        Cmd::Lint => test::lint(),
        Cmd::DeployTest => deploy::deploy_test(),
        Cmd::Image => deploy::image(),
        Cmd::Bench(o) => bench::bench(&o),
        Cmd::Soak(o) => soak::soak(&o),
        Cmd::VmTest(o) => vm::vm_test(&o),
        Cmd::VmBench(o) => vm::bench::vm_bench(&o),
        Cmd::GuestBench(o) => vm::guest_bench::run(&o),
        Cmd::BenchClient {
            addr,
            requests,
            depth,
        } => load::traffic::client(&addr, requests, depth),
    }
}
