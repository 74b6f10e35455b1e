//! Per-thread state: the start of a thread's in-flight call. Two forms of one interface,
//! chosen when the object is built: task-local storage (`BPF_MAP_TYPE_TASK_STORAGE`,
//! Linux >= 5.11; the value hangs off the task, a lookup is a pointer walk), or, for
//! older kernels, an LRU hash keyed by `pid_tgid` (aya creates every map of an object, and
//! 5.10 cannot create a task storage map: the daemon embeds both objects and loads the
//! first that its kernel takes).

use observer_common::{CallStart, StartTable};

use crate::current::Current;

#[cfg(not(feature = "task-storage"))]
mod imp {
    use aya_ebpf::{
        btf_maps::{Array, LruHashMap},
        helpers::bpf_get_current_pid_tgid,
        macros::btf_map,
    };
    use observer_common::{COUNTER_MAP_ENTRIES, CallStart, StartTable, THREAD_SEEN_WORDS};

    use crate::current::Current;
    use crate::maps::{STARTS_EVICTED, atomic_add};

    /// `pid_tgid` -> the thread's call start (the map itself: its BTF is the definition).
    /// Its size is set by the daemon at load time (`--max-threads`).
    pub type PerThread = LruHashMap<u64, CallStart, COUNTER_MAP_ENTRIES>;

    /// Per table, one bit per thread id: set when that thread id got an entry in the table.
    /// Entries are never deleted, only evicted, so a thread whose bit is set and that has
    /// no entry lost it to the LRU (see [`missing`]).
    #[btf_map]
    static THREADS_SEEN: Array<u64, { 3 * THREAD_SEEN_WORDS as usize }> = Array::new();

    /// The word and bit of thread `tid` in `table`'s part of [`THREADS_SEEN`].
    #[inline(always)]
    fn seen_bit(table: StartTable, tid: u32) -> Option<(*mut u64, u64)> {
        let word = THREADS_SEEN.get_ptr_mut(table as u32 * THREAD_SEEN_WORDS + tid / 64)?;
        Some((word, 1u64 << (tid % 64)))
    }

    /// The current thread's id (the low half of `pid_tgid`).
    #[inline(always)]
    #[expect(clippy::cast_possible_truncation, reason = "the low 32 bits")]
    fn tid() -> u32 {
        bpf_get_current_pid_tgid() as u32
    }

    /// The current thread's value, if it has one.
    #[inline(always)]
    pub fn get(map: &PerThread, _: &Current) -> Option<*mut CallStart> {
        map.get_ptr_mut(&bpf_get_current_pid_tgid())
    }

    /// Sets the current thread's value, and notes that its thread id had an entry.
    #[inline(always)]
    pub fn set(map: &PerThread, table: StartTable, _: &Current, v: &CallStart) {
        if map.insert(&bpf_get_current_pid_tgid(), v, 0).is_err() {
            return;
        }
        if let Some((word, bit)) = seen_bit(table, tid()) {
            // SAFETY: a u64 of our own map; only this thread sets its own bit (two threads
            // of one word add distinct bits, atomically).
            if unsafe { *word } & bit == 0 {
                atomic_add(word, bit);
            }
        }
    }

    /// The current thread's call returned and found no start in `table`: if its thread id
    /// had an entry there since we loaded, and `in_call` says that the thread is in a call
    /// whose entry we record, that entry was stored at the call's start (the thread's
    /// calls since its first entry all began after it) and the LRU evicted it before the
    /// return. Otherwise the call began before the programs were attached. Thread ids are
    /// unique among live threads, so a reused id cannot pass for an older thread.
    #[inline(always)]
    pub fn missing(table: StartTable, _: &Current, in_call: impl Fn() -> bool) {
        let Some((word, bit)) = seen_bit(table, tid()) else {
            return;
        };
        // SAFETY: a u64 of our own map, read once.
        if unsafe { *word } & bit != 0
            && in_call()
            && let Some(n) = STARTS_EVICTED.get_ptr_mut(table as u32)
        {
            atomic_add(n, 1);
        }
    }
}

#[cfg(feature = "task-storage")]
mod imp {
    use aya_ebpf::{
        bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, bpf_map_type},
        helpers::bpf_task_storage_get,
    };
    use observer_common::{CallStart, StartTable};

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
    pub fn set(map: &PerThread, _: StartTable, cur: &Current, v: &CallStart) {
        let mut init = *v;
        let p = map.storage(cur, true, &raw mut init);
        if !p.is_null() {
            // SAFETY: the current task's own storage, written only by this thread.
            unsafe { *p = *v };
        }
    }

    /// Task storage lives as long as its task: no start is ever evicted.
    #[inline(always)]
    pub fn missing(_: StartTable, _: &Current, _: impl Fn() -> bool) {}
}

pub use imp::{PerThread, get, missing};

/// Updates the current thread's start in place where it has one (an update of an LRU
/// hash allocates a new element and unlinks the old one, several times a lookup), else
/// creates it.
#[inline(always)]
pub fn store(map: &PerThread, table: StartTable, cur: &Current, f: impl Fn(&mut CallStart)) {
    if let Some(p) = get(map, cur) {
        // SAFETY: a value of our own map; only this thread writes its own entry.
        f(unsafe { &mut *p });
    } else {
        let mut v = CallStart::default();
        f(&mut v);
        imp::set(map, table, cur, &v);
    }
}
