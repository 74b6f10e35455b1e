//! Page faults: counts per cgroup in every mode (the x86 exception tracepoints where the
//! kernel has them, else the page-faults software perf event), and in the fentry/kprobe
//! modes the duration of `handle_mm_fault` with major/minor.

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_perf_event_data,
    helpers::bpf_ktime_get_ns,
    macros::{fentry, fexit, kprobe, kretprobe, perf_event, raw_tracepoint},
    programs::{
        FEntryContext, FExitContext, PerfEventContext, ProbeContext, RawTracePointContext,
        RetProbeContext,
    },
};
use observer_common::{
    CallStart, Event, EventKind, FAULT_KERNEL, FAULT_MAJOR, FaultCounts, StartTable,
};

use crate::current::Current;
use crate::maps::{FAULT_CACHE, FAULT_START, bump_faults, emit};
use crate::per_thread;

/// `VM_FAULT_MAJOR` (`include/linux/mm_types.h`, `enum vm_fault_reason`; the same values
/// from 5.10 on).
const VM_FAULT_MAJOR: u32 = 0x4;
/// `VM_FAULT_RETRY`: the fault must be retried (the mmap lock was dropped).
const VM_FAULT_RETRY: u32 = 0x400;
/// `VM_FAULT_COMPLETED` (5.17+): done, with the mmap lock already released.
const VM_FAULT_COMPLETED: u32 = 0x4000;
/// `FAULT_FLAG_USER` (`include/linux/mm_types.h`).
const FAULT_FLAG_USER: u32 = 1 << 6;

/// Counts one fault of the current task's cgroup. Faults come in runs from one process, so
/// the count goes into a per-CPU cache of the last faulting cgroup (an array access) and is
/// moved to the per-cgroup hash only when another cgroup faults on this CPU (a flush,
/// numbered per CPU: see `FaultCache`). Measured with
/// `kernel.bpf_stats_enabled`: 126 ns per fault with a hash lookup per fault.
#[inline(always)]
fn count_fault(kernel: bool) {
    let cgroup_id = Current::get().cgroup();
    let one = FaultCounts {
        user: u64::from(!kernel),
        kernel: u64::from(kernel),
        ..FaultCounts::default()
    };
    let Some(cache) = FAULT_CACHE.get_ptr_mut(0) else {
        bump_faults(cgroup_id, one, 0);
        return;
    };
    // SAFETY: a per-CPU value, used only by this CPU while preemption is disabled.
    let cache = unsafe { &mut *cache };
    if cache.cgroup_id != cgroup_id {
        let old = cache.counts;
        if old.user != 0 || old.kernel != 0 {
            // A flush: numbered, and its number stamped on the slot it adds to, so that a
            // daemon reading the hash meanwhile knows whether it saw these counts there.
            cache.flushes += 1;
            bump_faults(cache.cgroup_id, old, cache.flushes);
        }
        cache.cgroup_id = cgroup_id;
        cache.counts.user = 0;
        cache.counts.kernel = 0;
    }
    if kernel {
        cache.counts.kernel += 1;
    } else {
        cache.counts.user += 1;
    }
}

#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn socklat_page_fault_user(_ctx: RawTracePointContext) -> i32 {
    count_fault(false);
    0
}

#[raw_tracepoint(tracepoint = "page_fault_kernel")]
pub fn socklat_page_fault_kernel(_ctx: RawTracePointContext) -> i32 {
    count_fault(true);
    0
}

/// The `PERF_COUNT_SW_PAGE_FAULTS` software event, one per CPU with a sample period of 1:
/// where the exception tracepoints do not exist (arm64 has none: arch/arm64/mm/fault.c never
/// calls `trace_page_fault_*`). The architecture's fault handler counts it once per fault,
/// before its retry loop (`perf_sw_event` in `do_page_fault` on arm64, in
/// `do_user_addr_fault` on x86), in the faulting task's context; the sampled registers are
/// the faulting context's, and say whether it was user mode.
#[perf_event]
pub fn socklat_perf_page_fault(ctx: PerfEventContext) -> u32 {
    // SAFETY: the context of a perf event program is its `bpf_perf_event_data`, whose
    // registers the verifier lets the program read directly.
    let regs = unsafe { &(*ctx.as_ptr().cast::<bpf_perf_event_data>()).regs };
    count_fault(!crate::arch::user_mode(regs));
    0
}

/// `CallStart::nr` of a fault: it was taken in user mode.
const START_USER: i64 = 1;
/// `CallStart::nr` of a fault: a call for it returned `VM_FAULT_RETRY`, and the fault is
/// being retried (another `handle_mm_fault` call for the same address follows).
const START_RETRYING: i64 = 2;

/// `handle_mm_fault(vma, address, flags, regs)` entered.
#[inline(always)]
fn fault_entry(address: u64, flags: u32) {
    // SAFETY: a helper without arguments.
    let ts = unsafe { bpf_ktime_get_ns() };
    let user = if flags & FAULT_FLAG_USER != 0 {
        START_USER
    } else {
        0
    };
    per_thread::store(&FAULT_START, StartTable::Fault, &Current::get(), |start| {
        if start.ts != 0 && start.nr & START_RETRYING != 0 && start.sk == address {
            // The same fault, retried (the per-VMA lock's fallback to mmap_lock since 6.4,
            // or after waiting for I/O): one fault, timed from its first entry.
            return;
        }
        *start = CallStart {
            ts,
            sk: address,
            nr: user,
        };
    });
}

/// `handle_mm_fault` returned `ret` (a `vm_fault_t`).
#[inline(always)]
fn fault_exit(ctx: &impl aya_ebpf::EbpfContext, ret: u32) {
    let cur = Current::get();
    let Some(start) = per_thread::get(&FAULT_START, &cur) else {
        per_thread::missing(StartTable::Fault, &cur, || true);
        return;
    };
    // SAFETY: a value of our own map; only this thread writes its own entry.
    let start = unsafe { &mut *start };
    if start.ts == 0 {
        return;
    }
    if ret & VM_FAULT_RETRY != 0 && ret & VM_FAULT_COMPLETED == 0 {
        // Not done: the architecture's fault handler calls handle_mm_fault again for this
        // address (or gives up on a fatal signal, as the kernel's own fault counters do).
        start.nr |= START_RETRYING;
        return;
    }
    // Used: the entry stays for the thread's next fault (updated in place).
    let start = core::mem::take(start);
    // SAFETY: a helper without arguments.
    let duration = unsafe { bpf_ktime_get_ns() }.saturating_sub(start.ts);
    let major = ret & VM_FAULT_MAJOR != 0;
    let cgroup_id = cur.cgroup();
    bump_faults(
        cgroup_id,
        FaultCounts {
            major: u64::from(major),
            minor: u64::from(!major),
            ..FaultCounts::default()
        },
        0,
    );
    let mut result = 0;
    if major {
        result |= FAULT_MAJOR;
    }
    if start.nr & START_USER == 0 {
        result |= FAULT_KERNEL;
    }
    emit(
        ctx,
        Event {
            cgroup_id,
            value: duration,
            kind: EventKind::PageFault as u32,
            result,
        },
    );
}

// vm_fault_t handle_mm_fault(struct vm_area_struct *vma, unsigned long address,
//                            unsigned int flags, struct pt_regs *regs)
#[fentry(function = "handle_mm_fault")]
pub fn socklat_fentry_handle_mm_fault(ctx: FEntryContext) -> i32 {
    fault_entry(ctx.arg(1), ctx.arg(2));
    0
}

#[fexit(function = "handle_mm_fault")]
pub fn socklat_fexit_handle_mm_fault(ctx: FExitContext) -> i32 {
    let ret: u32 = ctx.arg(4);
    fault_exit(&ctx, ret);
    0
}

#[kprobe]
pub fn socklat_kprobe_handle_mm_fault(ctx: ProbeContext) -> u32 {
    fault_entry(ctx.arg(1).unwrap_or(0), ctx.arg(2).unwrap_or(0));
    0
}

#[kretprobe]
pub fn socklat_kretprobe_handle_mm_fault(ctx: RetProbeContext) -> u32 {
    let ret: u32 = ctx.ret();
    fault_exit(&ctx, ret);
    0
}
