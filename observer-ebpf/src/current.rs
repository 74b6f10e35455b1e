//! The current task, fetched once per program run: its cgroup and the syscall it is in
//! (and, through [`crate::per_thread`], its in-flight call). In the task-storage object
//! (Linux >= 5.12) the task's BTF pointer is taken once and its fields are direct loads,
//! which the verifier checks against the kernel's BTF: no helper call each (a call and its
//! return are tens of ns on kernels with return-thunk mitigations). In the LRU object (for
//! 5.10, whose kprobe programs cannot have a BTF task pointer) helpers give each.

#[cfg(feature = "task-storage")]
use aya_ebpf::Global;
use aya_ebpf::{
    bindings::task_struct,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_task_btf, bpf_task_pt_regs},
};

/// `task_struct.cgroups` (a `struct css_set *`); 0 when unknown (the helper is used then).
#[cfg(feature = "task-storage")]
#[unsafe(no_mangle)]
static OFF_TASK_CGROUPS: Global<u64> = Global::new(0);
/// `css_set.dfl_cgrp` (the task's cgroup v2 cgroup).
#[cfg(feature = "task-storage")]
#[unsafe(no_mangle)]
static OFF_CSS_DFL_CGRP: Global<u64> = Global::new(0);

/// The task the program runs for.
pub struct Current {
    #[cfg(feature = "task-storage")]
    pub task: *mut task_struct,
}

impl Current {
    #[inline(always)]
    pub fn get() -> Self {
        Self {
            // SAFETY: a helper without arguments, valid in every tracing program.
            #[cfg(feature = "task-storage")]
            task: unsafe { bpf_get_current_task_btf() },
        }
    }

    #[cfg(feature = "task-storage")]
    #[inline(always)]
    fn task(&self) -> *mut task_struct {
        self.task
    }

    #[cfg(not(feature = "task-storage"))]
    #[inline(always)]
    #[expect(
        clippy::unused_self,
        reason = "the same interface as the task-storage form"
    )]
    fn task(&self) -> *mut task_struct {
        // SAFETY: a helper without arguments (Linux >= 5.11; the tracepoint mode, the only
        // user, needs 6.3).
        unsafe { bpf_get_current_task_btf() }
    }

    /// The task's cgroup v2 id: `task->cgroups->dfl_cgrp->kn->id`, what
    /// `bpf_get_current_cgroup_id` gives.
    #[inline(always)]
    #[cfg_attr(
        not(feature = "task-storage"),
        expect(
            clippy::unused_self,
            reason = "the same interface as the task-storage form"
        )
    )]
    pub fn cgroup(&self) -> u64 {
        #[cfg(feature = "task-storage")]
        if OFF_TASK_CGROUPS.load() != 0 {
            let (kn, id) = crate::sock::cgroup_kn_offsets();
            // SAFETY: BTF pointer loads of pointer members and of the u64 id, at offsets the
            // daemon took from BTF (read-only globals: constants to the verifier, which
            // checks each load against the member's type and makes it fault-safe).
            unsafe {
                let base = self.task.cast::<u8>();
                let cgroups: *const u8 = load(base, OFF_TASK_CGROUPS.load());
                let cgrp: *const u8 = load(cgroups, OFF_CSS_DFL_CGRP.load());
                let kn: *const u8 = load(cgrp, kn);
                return load(kn, id);
            }
        }
        // SAFETY: a helper without arguments, valid in every tracing program.
        unsafe { bpf_get_current_cgroup_id() }
    }

    /// The number of the syscall the task is in, or -1 when it is in none (how the saved
    /// user registers say so depends on the architecture: [`crate::arch::syscall_in`]).
    #[inline(always)]
    pub fn syscall(&self) -> i64 {
        // SAFETY: bpf_task_pt_regs takes a BTF task pointer and gives a BTF pointer to its
        // saved user registers: the verifier turns loads through it into fault-safe ones (and
        // checks them against the BTF type), no helper call needed for them.
        unsafe { crate::arch::syscall_in(bpf_task_pt_regs(self.task())) }
    }
}

/// The member at `base + off`.
///
/// # Safety
/// `base` is a BTF pointer and `off` the offset of a member of type `T` in its type.
#[cfg(feature = "task-storage")]
#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "offsets inside a struct")]
unsafe fn load<T>(base: *const u8, off: u64) -> T {
    // SAFETY: as the caller promises (volatile: one load of the member, as the verifier
    // checks it).
    unsafe { base.add(off as usize).cast::<T>().read_volatile() }
}
