//! socklat's kernel programs. Thin probe wrappers live in one file per concern; each
//! wrapper calls a `try_*` body and ignores its error (a probe must never fail the traced
//! code path). Losses are counted in `maps::LOST_EVENTS`, never silent.
#![no_std]
#![no_main]
// `maps::atomic_add` is one BPF instruction in inline assembly.
#![feature(asm_experimental_arch)]
// Linted with clippy pedantic by `cargo xtask lint` (Debian's clippy for its rustc). These
// two are how eBPF code is written: every helper is inlined on purpose (one program, no
// BPF-to-BPF calls to reason about), and aya's program macros hand over the context by
// value.
#![allow(clippy::inline_always, clippy::needless_pass_by_value)]

mod arch;
mod conn;
mod current;
mod faults;
mod maps;
mod nested;
mod per_thread;
mod sock;
mod tcp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: eBPF programs cannot panic at run time; the verifier rejects any path that
    // would reach here, so this is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
