//! Names of maps, programs and globals, shared so that neither side spells them twice.
//! (Program names are the kernel programs' function names; a unit test of the daemon checks
//! that its program table and the built object agree.)

/// Hash of maps: cgroup id -> that cgroup's ring buffer.
pub const CGROUP_RINGS: &str = "CGROUP_RINGS";
/// Ring buffer for cgroups without their own ring (and the daemon's news of new cgroups).
pub const SHARED_RING: &str = "SHARED_RING";
/// Per-CPU hash: cgroup id -> events a full ring could not take.
pub const LOST_EVENTS: &str = "LOST_EVENTS";
/// Per-CPU hash: cgroup id -> [`super::FaultCounts`].
pub const FAULT_COUNTS: &str = "FAULT_COUNTS";
/// Per-CPU array of one [`super::ConnTableCounts`]: entries made and removed in
/// `CONNECTIONS`.
pub const CONN_COUNTS: &str = "CONN_COUNTS";
/// LRU hash: socket address -> [`super::ConnState`] (its size: `--max-connections`).
pub const CONNECTIONS: &str = "CONNECTIONS";
/// Per-CPU array, one u64 per [`super::StartTable`]: in-flight call starts the per-thread
/// LRU table evicted before their call returned (always 0 with task-local storage).
pub const STARTS_EVICTED: &str = "STARTS_EVICTED";
/// Array of u64 bit sets, [`super::THREAD_SEEN_WORDS`] per [`super::StartTable`] (LRU object
/// only): the thread ids that have had an entry in that table since the programs loaded.
pub const THREADS_SEEN: &str = "THREADS_SEEN";
/// Per-CPU array of one [`super::FaultCache`].
pub const FAULT_CACHE: &str = "FAULT_CACHE";
/// Per-CPU array, one u32 per [`super::ConnHook`]: 1 while that hook's first program runs
/// on the CPU.
pub const CONN_RUNNING: &str = "CONN_RUNNING";
/// Per-CPU array, one u64 per [`super::ConnHook`]: tracepoint hits that hook's twin program
/// ran because the first was running on the CPU (the kernel skipped the first's run).
pub const NESTED_RUNS: &str = "NESTED_RUNS";
/// Per-CPU hash: cgroup id -> retransmitted segments.
pub const RETRANSMITS: &str = "RETRANSMITS";
/// Per thread (task storage or LRU hash): the in-flight send/recv-family syscall.
pub const SYSCALL_START: &str = "SYSCALL_START";
/// Per thread: the in-flight `tcp_sendmsg` / `tcp_recvmsg` call (fentry, kprobe modes).
pub const CALL_START: &str = "CALL_START";
/// Per thread: the in-flight page fault handler call (fentry, kprobe modes).
pub const FAULT_START: &str = "FAULT_START";

/// Global: 1 when the sendmsg signal is enabled.
pub const ENABLE_SEND: &str = "ENABLE_SEND";
/// Global: 1 when the recvmsg signal is enabled.
pub const ENABLE_RECV: &str = "ENABLE_RECV";
/// Global: 1 when the connections signal is enabled (marks call errors on connections).
pub const ENABLE_CONN: &str = "ENABLE_CONN";
/// Global: offset of `sock_common.skc_family` (kernel BTF).
pub const OFF_SK_FAMILY: &str = "OFF_SK_FAMILY";
/// Global: offset of the first of `sock.sk_type` and `sk_protocol`, adjacent u16s
/// (their order differs between kernels).
pub const OFF_SK_TYPE_PROTOCOL: &str = "OFF_SK_TYPE_PROTOCOL";
/// Global: the 4 bytes at `OFF_SK_TYPE_PROTOCOL` of a `SOCK_STREAM` socket of protocol
/// TCP, as a little-endian u32.
pub const SK_TCP_STREAM: &str = "SK_TCP_STREAM";
/// Global: offset of `sock.sk_err` (kernel BTF).
pub const OFF_SK_ERR: &str = "OFF_SK_ERR";
/// Global: offset of the cgroup pointer in `sock.sk_cgrp_data` (kernel BTF).
pub const OFF_SK_CGRP: &str = "OFF_SK_CGRP";
/// Global: 1 where `sock_cgroup_data` is a tagged word (before Linux 5.15).
pub const CGRP_TAGGED: &str = "CGRP_TAGGED";
/// Global: offset of `cgroup.kn` (kernel BTF).
pub const OFF_CGROUP_KN: &str = "OFF_CGROUP_KN";
/// Global: offset of `kernfs_node.id` (kernel BTF).
pub const OFF_KN_ID: &str = "OFF_KN_ID";
/// Global: offset of `sock_common.skc_state`.
pub const OFF_SK_STATE: &str = "OFF_SK_STATE";
/// Global: offset of `sock_common.skc_flags`.
pub const OFF_SK_FLAGS: &str = "OFF_SK_FLAGS";
/// Global: offset of `sock.sk_shutdown` (0: a bitfield on this kernel).
pub const OFF_SK_SHUTDOWN: &str = "OFF_SK_SHUTDOWN";
/// Global: offset of `tcp_sock.segs_out`.
pub const OFF_SEGS_OUT: &str = "OFF_SEGS_OUT";
/// Global: offset of `sock_common.skc_daddr` (then `skc_rcv_saddr`).
pub const OFF_SKC_ADDRS: &str = "OFF_SKC_ADDRS";
/// Global: offset of `sock_common.skc_dport` (then `skc_num`).
pub const OFF_SKC_PORTS: &str = "OFF_SKC_PORTS";
/// Global: offset of `sock_common.skc_v6_daddr` (then `skc_v6_rcv_saddr`).
pub const OFF_SKC_V6_ADDRS: &str = "OFF_SKC_V6_ADDRS";
/// Global: offset of `inet_sock.inet_sport`.
pub const OFF_INET_SPORT: &str = "OFF_INET_SPORT";
/// Global: offset of `sock_common.skc_net`.
pub const OFF_SKC_NET: &str = "OFF_SKC_NET";
/// Global: offset of `net.ns.inum`.
pub const OFF_NET_INUM: &str = "OFF_NET_INUM";
/// Global: offset of `sk_buff.data`.
pub const OFF_SKB_DATA: &str = "OFF_SKB_DATA";
/// Global: offset of `task_struct.cgroups` (task-storage object only; 0: use the helper).
pub const OFF_TASK_CGROUPS: &str = "OFF_TASK_CGROUPS";
/// Global: offset of `css_set.dfl_cgrp` (task-storage object only).
pub const OFF_CSS_DFL_CGRP: &str = "OFF_CSS_DFL_CGRP";

/// Program names (the functions of `observer-ebpf`).
pub mod programs {
    /// Raw `sys_enter`: entry of the send/recv-family syscalls (tracepoint mode).
    pub const SYS_ENTER: &str = "socklat_sys_enter";
    /// BTF-typed tracepoint `sock_send_length` (tracepoint mode, with BTF).
    pub const BTF_SOCK_SEND_LENGTH: &str = "socklat_btf_sock_send_length";
    /// BTF-typed tracepoint `sock_recv_length` (tracepoint mode, with BTF).
    pub const BTF_SOCK_RECV_LENGTH: &str = "socklat_btf_sock_recv_length";
    /// Classic tracepoint `sock:sock_send_length` (tracepoint mode without BTF).
    pub const SOCK_SEND_LENGTH: &str = "socklat_sock_send_length";
    /// Classic tracepoint `sock:sock_recv_length` (tracepoint mode without BTF).
    pub const SOCK_RECV_LENGTH: &str = "socklat_sock_recv_length";
    /// fentry `tcp_sendmsg`.
    pub const FENTRY_TCP_SENDMSG: &str = "socklat_fentry_tcp_sendmsg";
    /// fexit `tcp_sendmsg`.
    pub const FEXIT_TCP_SENDMSG: &str = "socklat_fexit_tcp_sendmsg";
    /// fentry `tcp_recvmsg`.
    pub const FENTRY_TCP_RECVMSG: &str = "socklat_fentry_tcp_recvmsg";
    /// fexit `tcp_recvmsg` with 4 parameters (Linux 7.x).
    pub const FEXIT_TCP_RECVMSG4: &str = "socklat_fexit_tcp_recvmsg4";
    /// fexit `tcp_recvmsg` with 5 parameters (Linux 5.19 .. 6.x).
    pub const FEXIT_TCP_RECVMSG5: &str = "socklat_fexit_tcp_recvmsg5";
    /// fexit `tcp_recvmsg` with 6 parameters (before Linux 5.19).
    pub const FEXIT_TCP_RECVMSG6: &str = "socklat_fexit_tcp_recvmsg6";
    /// kprobe `tcp_sendmsg`.
    pub const KPROBE_TCP_SENDMSG: &str = "socklat_kprobe_tcp_sendmsg";
    /// kretprobe `tcp_sendmsg`.
    pub const KRETPROBE_TCP_SENDMSG: &str = "socklat_kretprobe_tcp_sendmsg";
    /// fentry `tcp_sendpage` (Linux < 6.5: sendfile and splice to a TCP socket).
    pub const FENTRY_TCP_SENDPAGE: &str = "socklat_fentry_tcp_sendpage";
    /// fexit `tcp_sendpage`.
    pub const FEXIT_TCP_SENDPAGE: &str = "socklat_fexit_tcp_sendpage";
    /// kprobe `tcp_sendpage`.
    pub const KPROBE_TCP_SENDPAGE: &str = "socklat_kprobe_tcp_sendpage";
    /// kretprobe `tcp_sendpage`.
    pub const KRETPROBE_TCP_SENDPAGE: &str = "socklat_kretprobe_tcp_sendpage";
    /// kprobe `tcp_recvmsg`.
    pub const KPROBE_TCP_RECVMSG: &str = "socklat_kprobe_tcp_recvmsg";
    /// kretprobe `tcp_recvmsg`.
    pub const KRETPROBE_TCP_RECVMSG: &str = "socklat_kretprobe_tcp_recvmsg";
    /// Raw tracepoint `inet_sock_set_state`.
    pub const INET_SOCK_SET_STATE: &str = "socklat_inet_sock_set_state";
    /// Raw tracepoint `tcp_receive_reset`.
    pub const TCP_RECEIVE_RESET: &str = "socklat_tcp_receive_reset";
    /// Raw tracepoint `tcp_send_reset`.
    pub const TCP_SEND_RESET: &str = "socklat_tcp_send_reset";
    /// Raw tracepoint `tcp_retransmit_skb`.
    pub const TCP_RETRANSMIT_SKB: &str = "socklat_tcp_retransmit_skb";
    /// Twin of [`INET_SOCK_SET_STATE`]: runs the hits the kernel skips it for (nested).
    pub const INET_SOCK_SET_STATE_NESTED: &str = "socklat_inet_sock_set_state_nested";
    /// Twin of [`TCP_RECEIVE_RESET`].
    pub const TCP_RECEIVE_RESET_NESTED: &str = "socklat_tcp_receive_reset_nested";
    /// Twin of [`TCP_SEND_RESET`].
    pub const TCP_SEND_RESET_NESTED: &str = "socklat_tcp_send_reset_nested";
    /// Twin of [`TCP_RETRANSMIT_SKB`].
    pub const TCP_RETRANSMIT_SKB_NESTED: &str = "socklat_tcp_retransmit_skb_nested";
    /// Raw tracepoint `page_fault_user` (x86).
    pub const PAGE_FAULT_USER: &str = "socklat_page_fault_user";
    /// Raw tracepoint `page_fault_kernel` (x86).
    pub const PAGE_FAULT_KERNEL: &str = "socklat_page_fault_kernel";
    /// Perf event program on the page-faults software event (where the exception
    /// tracepoints do not exist: arm64).
    pub const PERF_PAGE_FAULT: &str = "socklat_perf_page_fault";
    /// fentry `handle_mm_fault`.
    pub const FENTRY_HANDLE_MM_FAULT: &str = "socklat_fentry_handle_mm_fault";
    /// fexit `handle_mm_fault`.
    pub const FEXIT_HANDLE_MM_FAULT: &str = "socklat_fexit_handle_mm_fault";
    /// kprobe `handle_mm_fault`.
    pub const KPROBE_HANDLE_MM_FAULT: &str = "socklat_kprobe_handle_mm_fault";
    /// kretprobe `handle_mm_fault`.
    pub const KRETPROBE_HANDLE_MM_FAULT: &str = "socklat_kretprobe_handle_mm_fault";
}
