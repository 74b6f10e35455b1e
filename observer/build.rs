//! Embeds the kernel object when the `ebpf` feature is on. The object is built by
//! `cargo xtask build-ebpf`; `SOCKLAT_EMBED_OBJECT` names it (xtask sets it), or the default
//! output path of that command is used.

use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-env-changed=SOCKLAT_EMBED_OBJECT");
    if std::env::var_os("CARGO_FEATURE_EBPF").is_none() {
        return;
    }
    let path = std::env::var_os("SOCKLAT_EMBED_OBJECT").map_or_else(
        || {
            let manifest =
                PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
            manifest.join("../target/ebpf/bpfel-unknown-none/release/observer")
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
    println!(
        "cargo::rustc-env=SOCKLAT_EMBEDDED_OBJECT_PATH={}",
        path.display()
    );
}
