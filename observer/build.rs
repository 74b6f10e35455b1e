//! Embeds the kernel objects when the `ebpf` feature is on. They are built by
//! `cargo xtask build-ebpf`; `SOCKLAT_EMBED_OBJECT` and `SOCKLAT_EMBED_OBJECT_TASK_STORAGE`
//! name them (xtask sets them), or the default output paths of that command are used.

use std::path::PathBuf;

/// Embeds the object named by `var` (default: `default` under the workspace's target
/// directory) as `rustc-env` `out`.
fn embed(var: &str, default: &str, out: &str) {
    println!("cargo::rerun-if-env-changed={var}");
    let path = std::env::var_os(var).map_or_else(
        || {
            let manifest =
                PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
            manifest.join("../target").join(default)
        },
        PathBuf::from,
    );
    if !path.is_file() {
        println!(
            "cargo::error=the kernel object {} does not exist: run `cargo xtask build-ebpf` first (or `cargo xtask build`)",
            path.display()
        );
        return;
    }
    println!("cargo::rerun-if-changed={}", path.display());
    println!("cargo::rustc-env={out}={}", path.display());
}

fn main() {
    if std::env::var_os("CARGO_FEATURE_EBPF").is_none() {
        return;
    }
    // The object with per-thread state in an LRU hash (every kernel), and the one with
    // task-local storage (Linux >= 5.11), built by `cargo xtask build-ebpf`.
    embed(
        "SOCKLAT_EMBED_OBJECT",
        "ebpf/bpfel-unknown-none/release/observer",
        "SOCKLAT_EMBEDDED_OBJECT_PATH",
    );
    embed(
        "SOCKLAT_EMBED_OBJECT_TASK_STORAGE",
        "ebpf-task-storage/bpfel-unknown-none/release/observer",
        "SOCKLAT_EMBEDDED_TASK_STORAGE_OBJECT_PATH",
    );
}
