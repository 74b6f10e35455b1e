//! Connection tracepoint hits that interrupt our own program. The kernel does not run a
//! program while it already runs on the same CPU (its recursion guard; the skipped run is
//! counted in `bpf_prog_info.recursion_misses`). A connection program running in process
//! context (a `connect()`, a `close()`) can be interrupted by a softirq that changes the
//! state of another connection (a timer, a segment received): without help, that second
//! connection's close or reset would be lost. So each connection hook has two programs on
//! the same tracepoint: the first does the work, and marks in `CONN_RUNNING` that it is
//! running on this CPU; the twin does the work only while that mark is set, which is
//! exactly when the kernel skips the first's run for the hit (a softirq does not nest in a
//! softirq, so there is one level of nesting at most). Whatever their order on the
//! tracepoint, each hit is handled once. The twin counts its runs in `NESTED_RUNS`, so the
//! daemon does not report the first's skipped runs that the twin made good as misses.

use observer_common::ConnHook;

use crate::maps::{CONN_RUNNING, NESTED_RUNS, atomic_add};

/// Runs `body` as the first program of `hook`, marked as running on this CPU.
#[inline(always)]
pub fn first(hook: ConnHook, body: impl FnOnce()) {
    let running = CONN_RUNNING.get_ptr_mut(hook as u32);
    if let Some(r) = running {
        // SAFETY: our own per-CPU map value; only programs on this CPU touch it.
        unsafe { r.write_volatile(1) };
    }
    body();
    if let Some(r) = running {
        // SAFETY: as above.
        unsafe { r.write_volatile(0) };
    }
}

/// Runs `body` as the twin of `hook`: only when the first program of `hook` is running on
/// this CPU (this hit interrupted it, and the kernel skips the first's run for it).
#[inline(always)]
pub fn twin(hook: ConnHook, body: impl FnOnce()) {
    let Some(r) = CONN_RUNNING.get_ptr(hook as u32) else {
        return;
    };
    // SAFETY: our own per-CPU map value.
    if unsafe { r.read_volatile() } == 0 {
        return;
    }
    if let Some(n) = NESTED_RUNS.get_ptr_mut(hook as u32) {
        atomic_add(n, 1);
    }
    body();
}
