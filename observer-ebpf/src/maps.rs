//! Maps shared by all programs, and `emit`, the one way an event reaches the daemon.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    btf_maps::{HashOfMaps, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    helpers::bpf_ringbuf_query,
    macros::btf_map,
};
use aya_log_ebpf::warn;
use observer_common::{
    COUNTER_MAP_ENTRIES, ConnHook, ConnState, ConnTableCounts, DEFAULT_MAX_CGROUPS,
    DEFAULT_RING_SIZE, Event, FaultCache, FaultCounts, FaultSlot, StartTable, UNATTRIBUTED,
};

use crate::per_thread::PerThread;

/// A per-cgroup ring; the daemon creates one per admitted cgroup.
pub type Ring = RingBuf<Event, DEFAULT_RING_SIZE>;

/// cgroup id -> that cgroup's ring (created and inserted by the daemon).
#[btf_map]
pub static CGROUP_RINGS: HashOfMaps<u64, Ring, DEFAULT_MAX_CGROUPS> = HashOfMaps::new();

/// Events of cgroups that have no ring of their own; the daemon learns of new cgroups here.
/// Its size is set by the daemon at load time.
#[btf_map]
pub static SHARED_RING: Ring = RingBuf::new();

/// cgroup id -> events that a full ring could not take.
#[btf_map]
pub static LOST_EVENTS: PerCpuHashMap<u64, u64, COUNTER_MAP_ENTRIES> = PerCpuHashMap::new();

/// cgroup id -> page fault counters (see `FaultSlot`).
#[btf_map]
pub static FAULT_COUNTS: PerCpuHashMap<u64, FaultSlot, COUNTER_MAP_ENTRIES> = PerCpuHashMap::new();

/// The last faulting cgroup's counts, per CPU (see `FaultCache`).
#[btf_map]
pub static FAULT_CACHE: PerCpuArray<FaultCache, 1> = PerCpuArray::new();

/// socket address -> what we know of that TCP connection (cleaned at CLOSE; LRU bounds
/// what connections that never close, or that we saw only half of, can hold). Its size is
/// set by the daemon at load time (`--max-connections`).
#[btf_map]
pub static CONNECTIONS: LruHashMap<u64, ConnState, COUNTER_MAP_ENTRIES> = LruHashMap::new();

/// Entries made in and removed from `CONNECTIONS`: the daemon derives how many the full
/// table evicted. (A connection that reaches CLOSE with no state here is reported with
/// `CLOSE_UNTRACKED`: it is still classified, from its final state only.)
#[btf_map]
pub static CONN_COUNTS: PerCpuArray<ConnTableCounts, 1> = PerCpuArray::new();

/// Per `StartTable`: call starts the per-thread LRU table evicted before their call
/// returned (see `per_thread::missing`; always 0 with task-local storage).
#[btf_map]
pub static STARTS_EVICTED: PerCpuArray<u64, { StartTable::ALL.len() }> = PerCpuArray::new();

/// Per connection hook, per CPU: 1 while the hook's first program runs (see `nested`).
#[btf_map]
pub static CONN_RUNNING: PerCpuArray<u32, { ConnHook::ALL.len() }> = PerCpuArray::new();

/// Per connection hook, per CPU: hits the hook's twin program ran because the first was
/// running on the CPU (see `nested`).
#[btf_map]
pub static NESTED_RUNS: PerCpuArray<u64, { ConnHook::ALL.len() }> = PerCpuArray::new();

/// cgroup id -> retransmitted segments.
#[btf_map]
pub static RETRANSMITS: PerCpuHashMap<u64, u64, COUNTER_MAP_ENTRIES> = PerCpuHashMap::new();

/// Per thread: entry of the current send/recv-family syscall (tracepoint mode).
#[btf_map]
pub static SYSCALL_START: PerThread = PerThread::new();

/// Per thread: entry of the current `tcp_sendmsg` / `tcp_recvmsg` call (fentry and kprobe
/// modes).
#[btf_map]
pub static CALL_START: PerThread = PerThread::new();

/// Per thread: entry of the current page fault handler call (fentry and kprobe modes).
#[btf_map]
pub static FAULT_START: PerThread = PerThread::new();

/// `BPF_NOEXIST`: insert only a key the map does not hold.
pub const BPF_NOEXIST: u64 = 1;
/// Bytes one record takes in a ring: an 8-byte header and the event, rounded up to 8.
const RECORD: u64 = (8 + core::mem::size_of::<Event>() as u64).next_multiple_of(8);
/// A quarter of the smallest ring (one 4 KiB page).
const MIN_QUARTER: u64 = 4096 / 4;

/// Sends one event to its cgroup's ring, or to the shared ring when the cgroup has none
/// yet or its own ring is full (the daemon then gives it a bigger one). Only when both are
/// full is the event lost, and then it is counted per cgroup in `LOST_EVENTS`.
#[inline(always)]
pub fn emit<C>(ctx: &C, event: Event)
where
    C: aya_ebpf::EbpfContext,
{
    let cgroup_id = event.cgroup_id;
    if cfg!(feature = "no-ring") {
        return;
    }
    // SAFETY: the daemon only inserts rings and removes them for dead cgroups; a ring that
    // is removed while we hold it stays alive until this program returns (RCU).
    if !cfg!(feature = "ablate-cgroup-ring")
        && let Some(ring) = unsafe { CGROUP_RINGS.get(&cgroup_id) }
        && put(ring, event)
    {
        return;
    }
    if !put(&SHARED_RING, event) {
        count_lost(ctx, cgroup_id);
    }
}

/// Writes one event into `ring`; false when it is full.
#[inline(always)]
fn put(ring: &Ring, event: Event) -> bool {
    // reserve + submit measured cheaper here than bpf_ringbuf_output (342 vs 567 ns/run).
    let Some(mut entry) = ring.reserve(0) else {
        return false;
    };
    entry.write(event);
    if cfg!(feature = "ablate-wakeup") {
        entry.submit(u64::from(BPF_RB_NO_WAKEUP));
        return true;
    }
    let ptr = core::ptr::from_ref(ring).cast_mut().cast();
    // SAFETY: `ring` is a ring buffer map; the query only reads its positions.
    let avail = unsafe { bpf_ringbuf_query(ptr, u64::from(BPF_RB_AVAIL_DATA)) };
    // Wake the daemon when this record makes the ring a quarter, half or three quarters
    // full (the available data counts every record reserved so far, ours included), and
    // past three quarters (the daemon is behind, or records reserved at once on other CPUs
    // hid a crossing from each other). Otherwise the daemon polls every 50 ms. Waking it
    // per event costs a context switch per event on a busy node (measured: 0.51 of
    // baseline loopback throughput with per-event wakeups, 0.80 without); each wakeup is an
    // IRQ-work interrupt. Ring sizes are powers of two of a page or more: a record that
    // crosses no multiple of a quarter page crosses no quarter of any ring, and the ring's
    // size is asked for only when it does (one record in 32).
    let flags = if avail & (MIN_QUARTER - 1) >= RECORD {
        BPF_RB_NO_WAKEUP
    } else {
        // SAFETY: as above.
        let size = unsafe { bpf_ringbuf_query(ptr, u64::from(BPF_RB_RING_SIZE)) };
        let quarter = size / 4;
        if (avail >= quarter && avail & (quarter - 1) < RECORD) || avail >= 3 * quarter {
            BPF_RB_FORCE_WAKEUP
        } else {
            BPF_RB_NO_WAKEUP
        }
    };
    entry.submit(u64::from(flags));
    true
}

/// Adds `v` to the counter at `p` with one atomic instruction (`lock xadd`, `BPF_ATOMIC |
/// BPF_ADD`, every kernel): a per-CPU counter is also incremented by programs that run in
/// softirq, or that preempt a fentry program (which runs preemptible), on the same CPU, and
/// a plain load-add-store between them would lose one of the increments.
#[inline(always)]
pub fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: `p` points to a u64 in a map value (the verifier checks it); the instruction
    // adds `v` to it atomically and touches nothing else.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {v}",
            p = in(reg) p,
            v = in(reg) v,
            options(nostack)
        );
    }
}

#[inline(always)]
fn count_lost<C: aya_ebpf::EbpfContext>(ctx: &C, cgroup_id: u64) {
    if let Some(n) = LOST_EVENTS.get_ptr_mut(&cgroup_id) {
        atomic_add(n, 1);
        return;
    }
    if LOST_EVENTS.insert(&cgroup_id, &1, BPF_NOEXIST).is_ok() {
        warn!(
            ctx,
            "socklat: ring full for cgroup {}, counting lost events", cgroup_id
        );
        return;
    }
    // Another program created the entry between our lookup and insert, or the map is full.
    if let Some(n) = LOST_EVENTS.get_ptr_mut(&cgroup_id) {
        atomic_add(n, 1);
    } else if let Some(n) = LOST_EVENTS.get_ptr_mut(&UNATTRIBUTED) {
        atomic_add(n, 1);
    } else {
        let _ = LOST_EVENTS.insert(&UNATTRIBUTED, &1, 0);
    }
}

/// Counts one entry made in `CONNECTIONS` (`removed` false) or removed at CLOSE (true).
#[inline(always)]
pub fn count_conn(removed: bool) {
    if let Some(c) = CONN_COUNTS.get_ptr_mut(0) {
        // SAFETY: field pointers into our own map value.
        let field = unsafe {
            if removed {
                &raw mut (*c).removed
            } else {
                &raw mut (*c).inserted
            }
        };
        atomic_add(field, 1);
    }
}

/// Adds one to a per-CPU per-cgroup counter, creating it when absent.
#[inline(always)]
pub fn bump(map: &PerCpuHashMap<u64, u64, COUNTER_MAP_ENTRIES>, cgroup_id: u64) {
    for _ in 0..2 {
        if let Some(n) = map.get_ptr_mut(&cgroup_id) {
            atomic_add(n, 1);
            return;
        }
        if map.insert(&cgroup_id, &1, BPF_NOEXIST).is_ok() {
            return;
        }
    }
}

/// Adds `add` to a cgroup's per-CPU fault counters, creating them when absent; `flush`, when
/// not 0, is the number of the cache flush this is (`FaultSlot::flush`).
#[inline(always)]
pub fn bump_faults(cgroup_id: u64, add: FaultCounts, flush: u64) {
    for _ in 0..2 {
        if let Some(c) = FAULT_COUNTS.get_ptr_mut(&cgroup_id) {
            // SAFETY: field pointers into our own map value.
            unsafe {
                // The stamp before the counts: a reader that catches the flush half done
                // misses these counts once (the daemon's floor) rather than counting them
                // twice (which its floor would keep).
                if flush != 0 {
                    core::ptr::write_volatile(&raw mut (*c).flush, flush);
                }
                for (field, v) in [
                    (&raw mut (*c).counts.user, add.user),
                    (&raw mut (*c).counts.kernel, add.kernel),
                    (&raw mut (*c).counts.major, add.major),
                    (&raw mut (*c).counts.minor, add.minor),
                ] {
                    if v != 0 {
                        atomic_add(field, v);
                    }
                }
            }
            return;
        }
        let slot = FaultSlot { counts: add, flush };
        if FAULT_COUNTS.insert(&cgroup_id, &slot, BPF_NOEXIST).is_ok() {
            return;
        }
        // EEXIST: another program inserted it first; go round once more and add to it.
    }
}
