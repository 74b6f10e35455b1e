//! Page faults: counts per cgroup in every mode (x86 exception tracepoints), and in the
//! fentry/kprobe modes the duration of `handle_mm_fault` with major/minor.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{fentry, fexit, kprobe, kretprobe, raw_tracepoint},
    programs::{FEntryContext, FExitContext, ProbeContext, RawTracePointContext, RetProbeContext},
};
use observer_common::{CallStart, Event, EventKind, FAULT_KERNEL, FAULT_MAJOR};

use crate::maps::{CALL_START, FAULT_CACHE, bump_faults, current_cgroup, emit};

/// `VM_FAULT_MAJOR` (`include/linux/mm_types.h`).
const VM_FAULT_MAJOR: u32 = 0x4;
/// `FAULT_FLAG_USER` (`include/linux/mm_types.h`).
const FAULT_FLAG_USER: u32 = 1 << 6;

/// Counts one fault of the current task's cgroup. Faults come in runs from one process, so
/// the count goes into a per-CPU cache of the last faulting cgroup (an array access) and is
/// moved to the per-cgroup hash only when another cgroup faults on this CPU. Measured with
/// `kernel.bpf_stats_enabled`: 126 ns per fault with a hash lookup per fault.
#[inline(always)]
fn count_fault(kernel: bool) {
    let cgroup_id = current_cgroup();
    let Some(cache) = FAULT_CACHE.get_ptr_mut(0) else {
        bump_faults(cgroup_id, |c| {
            if kernel {
                c.kernel += 1;
            } else {
                c.user += 1;
            }
        });
        return;
    };
    // SAFETY: a per-CPU value, used only by this CPU while preemption is disabled.
    let cache = unsafe { &mut *cache };
    if cache.cgroup_id != cgroup_id {
        let old = cache.counts;
        if old.user != 0 || old.kernel != 0 {
            bump_faults(cache.cgroup_id, |c| {
                c.user += old.user;
                c.kernel += old.kernel;
            });
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

#[inline(always)]
fn fault_entry(flags: u32) {
    // Whether the fault is a user fault rides in the timestamp's lowest bit (2 ns
    // resolution is plenty for a fault).
    // SAFETY: a helper without arguments.
    let ts = unsafe { bpf_ktime_get_ns() } & !1;
    let user = u64::from(flags & FAULT_FLAG_USER != 0);
    // Key faults apart from socket calls of the same thread with the top bit.
    let key = bpf_get_current_pid_tgid() | (1 << 63);
    let _ = CALL_START.insert(
        &key,
        &CallStart {
            ts: ts | user,
            sk: 0,
        },
        0,
    );
}

#[inline(always)]
fn fault_exit(ctx: &impl aya_ebpf::EbpfContext, ret: u32) {
    let key = bpf_get_current_pid_tgid() | (1 << 63);
    // SAFETY: a value of our own map, copied out at once.
    let Some(start) = (unsafe { CALL_START.get(&key) }).copied() else {
        return;
    };
    let _ = CALL_START.remove(&key);
    // SAFETY: a helper without arguments.
    let duration = unsafe { bpf_ktime_get_ns() }.saturating_sub(start.ts & !1);
    let major = ret & VM_FAULT_MAJOR != 0;
    let cgroup_id = current_cgroup();
    bump_faults(cgroup_id, |c| {
        if major {
            c.major += 1;
        } else {
            c.minor += 1;
        }
    });
    let mut result = 0;
    if major {
        result |= FAULT_MAJOR;
    }
    if start.ts & 1 == 0 {
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
    let flags: u32 = ctx.arg(2);
    fault_entry(flags);
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
    let flags: u32 = ctx.arg(2).unwrap_or(0);
    fault_entry(flags);
    0
}

#[kretprobe]
pub fn socklat_kretprobe_handle_mm_fault(ctx: RetProbeContext) -> u32 {
    let ret: u32 = ctx.ret();
    fault_exit(&ctx, ret);
    0
}
