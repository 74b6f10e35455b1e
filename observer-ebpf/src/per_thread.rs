//! Per-thread state: the start of a thread's in-flight call. Two forms of one interface,
//! chosen when the object is built: task-local storage (`BPF_MAP_TYPE_TASK_STORAGE`,
//! Linux >= 5.11; the value hangs off the task, a lookup is a pointer walk), or, for
//! older kernels, an LRU hash keyed by `pid_tgid` (aya creates every map of an object, and
//! 5.10 cannot create a task storage map: the daemon embeds both objects and loads the
//! first that its kernel takes).

use observer_common::CallStart;

use crate::current::Current;

#[cfg(not(feature = "task-storage"))]
mod imp {
    use aya_ebpf::{btf_maps::LruHashMap, helpers::bpf_get_current_pid_tgid};
    use observer_common::{COUNTER_MAP_ENTRIES, CallStart};

    use crate::current::Current;

    /// `pid_tgid` -> the thread's call start (the map itself: its BTF is the definition).
    pub type PerThread = LruHashMap<u64, CallStart, COUNTER_MAP_ENTRIES>;

    /// The current thread's value, if it has one.
    #[inline(always)]
    pub fn get(map: &PerThread, _: &Current) -> Option<*mut CallStart> {
        map.get_ptr_mut(&bpf_get_current_pid_tgid())
    }

    /// Sets the current thread's value.
    #[inline(always)]
    pub fn set(map: &PerThread, _: &Current, v: &CallStart) {
        let _ = map.insert(&bpf_get_current_pid_tgid(), v, 0);
    }
}

#[cfg(feature = "task-storage")]
mod imp {
    use aya_ebpf::{
        bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, bpf_map_type},
        helpers::bpf_task_storage_get,
    };
    use observer_common::CallStart;

    use crate::current::Current;

    /// A task storage map definition in the layout aya reads from `.maps` (type, key,
    /// value, `max_entries` 0 and `BPF_F_NO_PREALLOC`, as the kernel requires).
    #[repr(C)]
    pub struct PerThread {
        r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize],
        key: *const i32,
        value: *const CallStart,
        max_entries: *const [i32; 0],
        map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
    }

    // SAFETY: the fields are placeholders the loader reads from BTF; they are never
    // dereferenced, so the definition has no state to share.
    unsafe impl Sync for PerThread {}

    impl PerThread {
        pub const fn new() -> Self {
            Self {
                r#type: core::ptr::null(),
                key: core::ptr::null(),
                value: core::ptr::null(),
                max_entries: core::ptr::null(),
                map_flags: core::ptr::null(),
            }
        }

        #[inline(always)]
        fn storage(&self, cur: &Current, create: bool, init: *mut CallStart) -> *mut CallStart {
            let map = core::ptr::from_ref(self).cast_mut().cast();
            let flags = if create {
                u64::from(BPF_LOCAL_STORAGE_GET_F_CREATE)
            } else {
                0
            };
            // SAFETY: `map` is this task storage map; the task is the current one (a BTF
            // pointer, as the helper wants); `init` is null or a valid value to copy.
            unsafe { bpf_task_storage_get(map, cur.task, init.cast(), flags) }.cast()
        }
    }

    /// The current thread's value, if it has one.
    #[inline(always)]
    pub fn get(map: &PerThread, cur: &Current) -> Option<*mut CallStart> {
        let p = map.storage(cur, false, core::ptr::null_mut());
        (!p.is_null()).then_some(p)
    }

    /// Sets the current thread's value (creating its storage with it).
    #[inline(always)]
    pub fn set(map: &PerThread, cur: &Current, v: &CallStart) {
        let mut init = *v;
        let p = map.storage(cur, true, &raw mut init);
        if !p.is_null() {
            // SAFETY: the current task's own storage, written only by this thread.
            unsafe { *p = *v };
        }
    }
}

pub use imp::{PerThread, get, set};

/// Updates the current thread's start in place where it has one (an update of an LRU
/// hash allocates a new element and unlinks the old one, several times a lookup), else
/// creates it.
#[inline(always)]
pub fn store(map: &PerThread, cur: &Current, f: impl Fn(&mut CallStart)) {
    if let Some(p) = get(map, cur) {
        // SAFETY: a value of our own map; only this thread writes its own entry.
        f(unsafe { &mut *p });
    } else {
        let mut v = CallStart::default();
        f(&mut v);
        set(map, cur, &v);
    }
}
