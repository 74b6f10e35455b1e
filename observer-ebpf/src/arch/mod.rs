//! What differs between the architectures the kernel programs are built for, chosen at
//! build time (`--cfg bpf_target_arch="..."`, set by xtask; aya-ebpf reads it too for the
//! kprobe argument registers): the syscall numbers of the send/recv family, how a task's
//! saved user registers say which syscall it is in, and whether sampled registers were
//! taken in user mode. The daemon embeds the objects of its own architecture.

#[cfg(bpf_target_arch = "aarch64")]
mod aarch64;
#[cfg(bpf_target_arch = "aarch64")]
pub use aarch64::{nr, syscall_in, user_mode};

#[cfg(bpf_target_arch = "x86_64")]
mod x86_64;
#[cfg(bpf_target_arch = "x86_64")]
pub use x86_64::{nr, syscall_in, user_mode};

#[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
compile_error!(
    "socklat's kernel programs know x86_64 and aarch64: build them with \
     `cargo xtask build-ebpf --arch x86_64|aarch64`"
);

/// The architecture the object is built for, as bytes that the daemon's build script looks
/// for in the object (it refuses to embed an object of another architecture: the kprobe
/// programs of one read the wrong registers on the other, and the verifier cannot tell).
#[unsafe(no_mangle)]
#[used]
static SOCKLAT_BPF_TARGET_ARCH: [u8; MARKER.len()] = *MARKER;

#[cfg(bpf_target_arch = "aarch64")]
const MARKER: &[u8; 32] = b"socklat-bpf-target-arch=aarch64\0";
#[cfg(bpf_target_arch = "x86_64")]
const MARKER: &[u8; 31] = b"socklat-bpf-target-arch=x86_64\0";
