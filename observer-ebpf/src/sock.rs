//! Reading a socket's fields: at offsets the daemon takes from kernel BTF and sets as
//! globals (Rust eBPF has no CO-RE relocations). Its cgroup, whether it is a TCP stream,
//! its state and flags, and the key of its connection (network namespace and 4-tuple),
//! which a timewait socket of the same connection shares.

use aya_ebpf::{Global, helpers::bpf_probe_read_kernel};

#[unsafe(no_mangle)]
static OFF_SK_FAMILY: Global<u64> = Global::new(16);
/// The first of `sock.sk_type` and `sk_protocol` (adjacent u16s since Linux 5.6, in an
/// order that differs between kernels): one 4-byte read gives both. 0 when unknown (no
/// BTF): the classic tracepoint programs then check the record's protocol only.
#[unsafe(no_mangle)]
static OFF_SK_TYPE_PROTOCOL: Global<u64> = Global::new(0);
/// What those 4 bytes hold for a TCP stream socket (set by the daemon from their order).
#[unsafe(no_mangle)]
static SK_TCP_STREAM: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_SK_ERR: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_SK_CGRP: Global<u64> = Global::new(0);
/// 1 before Linux 5.15, where `sock_cgroup_data` is a tagged `val` word (low bits set, or
/// zero, mean the root cgroup).
#[unsafe(no_mangle)]
static CGRP_TAGGED: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_CGROUP_KN: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_KN_ID: Global<u64> = Global::new(0);
/// `sock_common.skc_state` (u8).
#[unsafe(no_mangle)]
static OFF_SK_STATE: Global<u64> = Global::new(0);
/// `sock_common.skc_flags` (`SOCK_DEAD` bit 0, `SOCK_DONE` bit 1).
#[unsafe(no_mangle)]
static OFF_SK_FLAGS: Global<u64> = Global::new(0);
/// `sock.sk_shutdown` (u8); 0 when the kernel has it as a bitfield.
#[unsafe(no_mangle)]
static OFF_SK_SHUTDOWN: Global<u64> = Global::new(0);
/// `tcp_sock.segs_out` (u32).
#[unsafe(no_mangle)]
static OFF_SEGS_OUT: Global<u64> = Global::new(0);
/// `sock_common.skc_daddr`, followed by `skc_rcv_saddr`.
#[unsafe(no_mangle)]
static OFF_SKC_ADDRS: Global<u64> = Global::new(0);
/// `sock_common.skc_dport`, followed by `skc_num` (host order).
#[unsafe(no_mangle)]
static OFF_SKC_PORTS: Global<u64> = Global::new(0);
/// `sock_common.skc_v6_daddr`, followed by `skc_v6_rcv_saddr`.
#[unsafe(no_mangle)]
static OFF_SKC_V6_ADDRS: Global<u64> = Global::new(0);
/// `inet_sock.inet_sport` (network order): the local port, still there after CLOSE.
#[unsafe(no_mangle)]
static OFF_INET_SPORT: Global<u64> = Global::new(0);
/// `sock_common.skc_net` (a `struct net *`).
#[unsafe(no_mangle)]
static OFF_SKC_NET: Global<u64> = Global::new(0);
/// `net.ns.inum`: the network namespace's inode number.
#[unsafe(no_mangle)]
static OFF_NET_INUM: Global<u64> = Global::new(0);
/// `sk_buff.data`.
#[unsafe(no_mangle)]
static OFF_SKB_DATA: Global<u64> = Global::new(0);

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;
/// The root cgroup's id on cgroup v2.
const ROOT_CGROUP: u64 = 1;
const SOCK_DEAD: u64 = 1 << 0;
const SOCK_DONE: u64 = 1 << 1;
const RCV_SHUTDOWN: u8 = 1;
const TCP_FLAG_SYN: u8 = 0x02;

/// Reads a `T` at `base + off`.
#[inline(always)]
pub fn read<T>(base: u64, off: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copes with any address (it returns an error).
    unsafe { bpf_probe_read_kernel((base + off) as *const T).ok() }
}

/// The cgroup id of a socket: `sk->sk_cgrp_data` -> cgroup -> kernfs node -> id, the value
/// `bpf_sk_cgroup_id` would give.
#[inline(always)]
pub fn cgroup(sk: u64) -> u64 {
    let Some(cgrp) = read::<u64>(sk, OFF_SK_CGRP.load()) else {
        return ROOT_CGROUP;
    };
    if cgrp == 0 || (CGRP_TAGGED.load() != 0 && cgrp & 3 != 0) {
        return ROOT_CGROUP;
    }
    let Some(kn) = read::<u64>(cgrp, OFF_CGROUP_KN.load()) else {
        return ROOT_CGROUP;
    };
    read::<u64>(kn, OFF_KN_ID.load()).unwrap_or(ROOT_CGROUP)
}

/// `cgroup.kn` and `kernfs_node.id` (0 and 0 when unknown).
#[cfg(feature = "task-storage")]
#[inline(always)]
pub fn cgroup_kn_offsets() -> (u64, u64) {
    (OFF_CGROUP_KN.load(), OFF_KN_ID.load())
}

/// Whether the BTF-typed socket `sk` is a TCP stream socket of IPv4 or IPv6: direct loads
/// of its u16 members (the offsets are read-only globals, constants to the verifier, which
/// checks each load against `struct sock` and makes it fault-safe), no helper call.
#[inline(always)]
#[expect(
    clippy::cast_ptr_alignment,
    clippy::cast_possible_truncation,
    reason = "the members are u16s at their BTF offsets, offsets inside a struct"
)]
pub fn is_tcp_btf(sk: *const u8) -> bool {
    let off = OFF_SK_TYPE_PROTOCOL.load() as usize;
    // SAFETY: `sk` is a BTF pointer to a `struct sock`; each load is of one u16 member at
    // its BTF offset (volatile: one load per member, which the verifier requires).
    let (family, first, second) = unsafe {
        (
            sk.add(OFF_SK_FAMILY.load() as usize)
                .cast::<u16>()
                .read_volatile(),
            sk.add(off).cast::<u16>().read_volatile(),
            sk.add(off + 2).cast::<u16>().read_volatile(),
        )
    };
    (family == AF_INET || family == AF_INET6)
        && (u32::from(first) | (u32::from(second) << 16)) == SK_TCP_STREAM.load()
}

/// Whether `sk` is a TCP stream socket of IPv4 or IPv6 (a raw socket of protocol TCP is
/// not: its type is `SOCK_RAW`).
#[inline(always)]
pub fn is_tcp(sk: u64) -> bool {
    let family = read::<u16>(sk, OFF_SK_FAMILY.load()).unwrap_or(0);
    (family == AF_INET || family == AF_INET6) && is_stream_of_tcp(sk)
}

/// Whether `sk`'s type is `SOCK_STREAM` and its protocol TCP (one read of both).
#[inline(always)]
pub fn is_stream_of_tcp(sk: u64) -> bool {
    read::<u32>(sk, OFF_SK_TYPE_PROTOCOL.load()) == Some(SK_TCP_STREAM.load())
}

/// Whether the socket type can be checked (the offsets came from BTF).
#[inline(always)]
pub fn knows_sk_type() -> bool {
    OFF_SK_TYPE_PROTOCOL.load() != 0
}

/// `sk_err`.
#[inline(always)]
pub fn err(sk: u64) -> i32 {
    read::<i32>(sk, OFF_SK_ERR.load()).unwrap_or(0)
}

/// `skc_state` (also of a timewait socket).
#[inline(always)]
pub fn state(sk: u64) -> i32 {
    i32::from(read::<u8>(sk, OFF_SK_STATE.load()).unwrap_or(0))
}

/// (`SOCK_DEAD`, `SOCK_DONE`): closed by the application; the peer's FIN came.
#[inline(always)]
pub fn dead_done(sk: u64) -> (bool, bool) {
    let f = read::<u64>(sk, OFF_SK_FLAGS.load()).unwrap_or(0);
    (f & SOCK_DEAD != 0, f & SOCK_DONE != 0)
}

/// Whether the socket can receive no more (`RCV_SHUTDOWN`).
#[inline(always)]
pub fn rcv_shutdown(sk: u64) -> bool {
    let off = OFF_SK_SHUTDOWN.load();
    off != 0 && read::<u8>(sk, off).unwrap_or(0) & RCV_SHUTDOWN != 0
}

/// Segments the socket sent.
#[inline(always)]
pub fn segs_out(sk: u64) -> u32 {
    read::<u32>(sk, OFF_SEGS_OUT.load()).unwrap_or(0)
}

/// Whether the TCP segment `skb` (as `tcp_v4_send_reset` gets it: `data` at the TCP
/// header) is a SYN.
#[inline(always)]
pub fn is_syn(skb: u64) -> bool {
    let off = OFF_SKB_DATA.load();
    if skb == 0 || off == 0 {
        return false;
    }
    read::<u64>(skb, off)
        .and_then(|data| read::<u8>(data, 13))
        .is_some_and(|flags| flags & TCP_FLAG_SYN != 0)
}

/// Which local port to key a socket by: a full socket's `inet_sport` (its `skc_num` is 0
/// once it is unhashed at CLOSE), or a timewait socket's `skc_num`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Full,
    TimeWait,
}

/// The key of a connection end: its network namespace and 4-tuple (IPv4 as v4-mapped
/// IPv6, so that a v6 socket and a v4 peer agree), local side first, or remote first with
/// `reversed` (the key the peer's end of the same connection has). Never 0.
#[inline(always)]
pub fn key(sk: u64, kind: Kind, reversed: bool) -> u64 {
    let family = read::<u16>(sk, OFF_SK_FAMILY.load()).unwrap_or(0);
    let net = read::<u64>(sk, OFF_SKC_NET.load()).unwrap_or(0);
    let inum = read::<u32>(net, OFF_NET_INUM.load()).unwrap_or(0);
    let ports = read::<[u16; 2]>(sk, OFF_SKC_PORTS.load()).unwrap_or([0; 2]);
    let rport = ports[0];
    let lport = match kind {
        Kind::TimeWait => ports[1].to_be(),
        Kind::Full => read::<u16>(sk, OFF_INET_SPORT.load()).unwrap_or(0),
    };
    // [remote, local] addresses, each as 4 words of an IPv6 address.
    let mut addrs = [[0u32; 4]; 2];
    if family == AF_INET6 {
        addrs = read::<[[u32; 4]; 2]>(sk, OFF_SKC_V6_ADDRS.load()).unwrap_or(addrs);
    } else {
        let v4 = read::<[u32; 2]>(sk, OFF_SKC_ADDRS.load()).unwrap_or([0; 2]);
        let mapped = u32::from_be(0xffff);
        addrs = [[0, 0, mapped, v4[0]], [0, 0, mapped, v4[1]]];
    }
    let (local, remote) = if reversed {
        ((addrs[0], rport), (addrs[1], lport))
    } else {
        ((addrs[1], lport), (addrs[0], rport))
    };
    let mut h = mix(0x9e37_79b9_7f4a_7c15, u64::from(inum));
    for (a, port) in [local, remote] {
        h = mix(h, (u64::from(a[0]) << 32) | u64::from(a[1]));
        h = mix(h, (u64::from(a[2]) << 32) | u64::from(a[3]));
        h = mix(h, u64::from(port));
    }
    h | 1
}

#[inline(always)]
fn mix(h: u64, v: u64) -> u64 {
    (h ^ v).wrapping_mul(0x0100_0000_01b3).rotate_left(29)
}
