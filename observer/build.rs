//! Embeds the kernel objects when the `ebpf` feature is on. They are built by
//! `cargo xtask build-ebpf --arch ARCH`, one pair per architecture of the kernels they run
//! on; `SOCKLAT_EMBED_OBJECT` and `SOCKLAT_EMBED_OBJECT_TASK_STORAGE` name them (xtask sets
//! them), or the default output paths of that command for the daemon's target architecture
//! are used. An object built for another architecture is refused: its kprobe programs
//! would load there and read the wrong registers.

use std::path::PathBuf;

/// The marker the kernel objects carry (observer-ebpf/src/arch/mod.rs).
const MARKER: &[u8] = b"socklat-bpf-target-arch=";

/// The architecture a kernel object says it was built for.
fn object_arch(bytes: &[u8]) -> Option<String> {
    let at = bytes.windows(MARKER.len()).position(|w| w == MARKER)? + MARKER.len();
    let rest = &bytes[at..];
    let end = rest.iter().position(|&b| b == 0)?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

/// Embeds the object named by `var` (default: `default` under the workspace's target
/// directory) as `rustc-env` `out`, if it was built for `arch`.
fn embed(var: &str, default: &str, out: &str, arch: &str) {
    println!("cargo::rerun-if-env-changed={var}");
    let path = std::env::var_os(var).map_or_else(
        || {
            let manifest =
                PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
            manifest.join("../target").join(default)
        },
        PathBuf::from,
    );
    let Ok(bytes) = std::fs::read(&path) else {
        println!(
            "cargo::error=the kernel object {} does not exist: run `cargo xtask build-ebpf --arch {arch}` first (or `cargo xtask build`)",
            path.display()
        );
        return;
    };
    match object_arch(&bytes) {
        Some(built) if built == arch => {}
        built => {
            println!(
                "cargo::error=the kernel object {} was built for {} kernels, and this daemon is built for {arch}: run `cargo xtask build-ebpf --arch {arch}` and embed its objects",
                path.display(),
                built.as_deref().unwrap_or("unknown")
            );
            return;
        }
    }
    println!("cargo::rerun-if-changed={}", path.display());
    println!("cargo::rustc-env={out}={}", path.display());
}

fn main() {
    if std::env::var_os("CARGO_FEATURE_EBPF").is_none() {
        return;
    }
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").expect("set by cargo");
    // xtask's output paths: target/ebpf... for x86_64, target/ebpf-aarch64... for aarch64.
    let dir = if arch == "x86_64" {
        "ebpf".to_string()
    } else {
        format!("ebpf-{arch}")
    };
    // The object with per-thread state in an LRU hash (every kernel), and the one with
    // task-local storage (Linux >= 5.11), built by `cargo xtask build-ebpf`.
    embed(
        "SOCKLAT_EMBED_OBJECT",
        &format!("{dir}/bpfel-unknown-none/release/observer"),
        "SOCKLAT_EMBEDDED_OBJECT_PATH",
        &arch,
    );
    embed(
        "SOCKLAT_EMBED_OBJECT_TASK_STORAGE",
        &format!("{dir}-task-storage/bpfel-unknown-none/release/observer"),
        "SOCKLAT_EMBEDDED_TASK_STORAGE_OBJECT_PATH",
        &arch,
    );
}
