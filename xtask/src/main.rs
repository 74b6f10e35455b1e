//! Developer commands: `cargo xtask <command>`, parsed here and dispatched to the module
//! of each.

mod bench;
mod build;
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
    /// Build the kernel object (observer-ebpf) for bpfel-unknown-none; installs missing
    /// toolchain pieces as root on Debian, or says what to install.
    BuildEbpf,
    /// Build the kernel object and the release daemon.
    Build,
    /// Build everything and start the daemon as root: `cargo xtask run -- [daemon flags]`.
    Run {
        /// Flags passed to the daemon.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Every test layer but the kernel matrix: lints, unit tests, privileged integration
    /// tests (root).
    Test,
    /// The privileged tests on stock Debian kernels (5.10, 6.1, 6.12, 7.3) in QEMU, in every
    /// probe mode each supports; prints a kernel x mode table.
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
        Cmd::BuildEbpf => build::build_ebpf().map(drop),
        Cmd::Build => build::build_daemon().map(drop),
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
