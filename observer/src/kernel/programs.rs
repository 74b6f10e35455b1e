//! The program table: every kernel program the daemon attaches, where it attaches, and
//! which programs make up one (signal, mode) on a kernel of a given shape. Program names
//! come from `observer_common::names::programs`; a unit test checks the table against the
//! built object.

use observer_common::names::programs as p;

use crate::probe_mode::ProbeMode;
use crate::signal::Signal;

/// Where a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// fentry on a kernel function.
    FEntry(&'static str),
    /// fexit on a kernel function.
    FExit(&'static str),
    /// kprobe on a kernel function.
    KProbe(&'static str),
    /// kretprobe on a kernel function.
    KRetProbe(&'static str),
    /// A raw tracepoint.
    RawTp(&'static str),
    /// A BTF-typed raw tracepoint (`tp_btf`): its arguments typed by the kernel's BTF.
    BtfTp(&'static str),
    /// The page-faults software perf event, one per online CPU, every fault sampled.
    PerfPageFaults,
    /// A classic tracepoint; its record must have `fields` at these offsets.
    Tp {
        category: &'static str,
        name: &'static str,
        fields: &'static [(&'static str, u32)],
    },
}

/// One program of the object and its hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Program {
    pub name: &'static str,
    pub hook: Hook,
}

const fn prog(name: &'static str, hook: Hook) -> Program {
    Program { name, hook }
}

impl Program {
    /// Whether it runs where a call ends (fexit, kretprobe, the tracepoint a socket call
    /// ends at), once per observed call, rather than where one starts.
    #[must_use]
    pub const fn ends_a_call(self) -> bool {
        matches!(
            self.hook,
            Hook::FExit(_) | Hook::KRetProbe(_) | Hook::BtfTp(_) | Hook::Tp { .. }
        )
    }
}

/// Fields of the sock_*_length records that the classic programs read, at their offsets
/// (also in observer-ebpf/src/tcp.rs).
const SOCK_LENGTH_FIELDS: &[(&str, u32)] =
    &[("sk", 8), ("family", 16), ("protocol", 18), ("ret", 20)];

pub const SYS_ENTER: Program = prog(p::SYS_ENTER, Hook::RawTp("sys_enter"));
pub const BTF_SOCK_SEND_LENGTH: Program =
    prog(p::BTF_SOCK_SEND_LENGTH, Hook::BtfTp("sock_send_length"));
pub const BTF_SOCK_RECV_LENGTH: Program =
    prog(p::BTF_SOCK_RECV_LENGTH, Hook::BtfTp("sock_recv_length"));
pub const SOCK_SEND_LENGTH: Program = prog(
    p::SOCK_SEND_LENGTH,
    Hook::Tp {
        category: "sock",
        name: "sock_send_length",
        fields: SOCK_LENGTH_FIELDS,
    },
);
pub const SOCK_RECV_LENGTH: Program = prog(
    p::SOCK_RECV_LENGTH,
    Hook::Tp {
        category: "sock",
        name: "sock_recv_length",
        fields: SOCK_LENGTH_FIELDS,
    },
);
pub const FENTRY_TCP_SENDMSG: Program = prog(p::FENTRY_TCP_SENDMSG, Hook::FEntry("tcp_sendmsg"));
pub const FEXIT_TCP_SENDMSG: Program = prog(p::FEXIT_TCP_SENDMSG, Hook::FExit("tcp_sendmsg"));
pub const FENTRY_TCP_RECVMSG: Program = prog(p::FENTRY_TCP_RECVMSG, Hook::FEntry("tcp_recvmsg"));
pub const FEXIT_TCP_RECVMSG4: Program = prog(p::FEXIT_TCP_RECVMSG4, Hook::FExit("tcp_recvmsg"));
pub const FEXIT_TCP_RECVMSG5: Program = prog(p::FEXIT_TCP_RECVMSG5, Hook::FExit("tcp_recvmsg"));
pub const FEXIT_TCP_RECVMSG6: Program = prog(p::FEXIT_TCP_RECVMSG6, Hook::FExit("tcp_recvmsg"));
pub const KPROBE_TCP_SENDMSG: Program = prog(p::KPROBE_TCP_SENDMSG, Hook::KProbe("tcp_sendmsg"));
pub const KRETPROBE_TCP_SENDMSG: Program =
    prog(p::KRETPROBE_TCP_SENDMSG, Hook::KRetProbe("tcp_sendmsg"));
pub const FENTRY_TCP_SENDPAGE: Program = prog(p::FENTRY_TCP_SENDPAGE, Hook::FEntry("tcp_sendpage"));
pub const FEXIT_TCP_SENDPAGE: Program = prog(p::FEXIT_TCP_SENDPAGE, Hook::FExit("tcp_sendpage"));
pub const KPROBE_TCP_SENDPAGE: Program = prog(p::KPROBE_TCP_SENDPAGE, Hook::KProbe("tcp_sendpage"));
pub const KRETPROBE_TCP_SENDPAGE: Program =
    prog(p::KRETPROBE_TCP_SENDPAGE, Hook::KRetProbe("tcp_sendpage"));
pub const KPROBE_TCP_RECVMSG: Program = prog(p::KPROBE_TCP_RECVMSG, Hook::KProbe("tcp_recvmsg"));
pub const KRETPROBE_TCP_RECVMSG: Program =
    prog(p::KRETPROBE_TCP_RECVMSG, Hook::KRetProbe("tcp_recvmsg"));
pub const INET_SOCK_SET_STATE: Program =
    prog(p::INET_SOCK_SET_STATE, Hook::RawTp("inet_sock_set_state"));
pub const TCP_RECEIVE_RESET: Program = prog(p::TCP_RECEIVE_RESET, Hook::RawTp("tcp_receive_reset"));
pub const TCP_SEND_RESET: Program = prog(p::TCP_SEND_RESET, Hook::RawTp("tcp_send_reset"));
pub const TCP_RETRANSMIT_SKB: Program =
    prog(p::TCP_RETRANSMIT_SKB, Hook::RawTp("tcp_retransmit_skb"));
pub const INET_SOCK_SET_STATE_NESTED: Program = prog(
    p::INET_SOCK_SET_STATE_NESTED,
    Hook::RawTp("inet_sock_set_state"),
);
pub const TCP_RECEIVE_RESET_NESTED: Program = prog(
    p::TCP_RECEIVE_RESET_NESTED,
    Hook::RawTp("tcp_receive_reset"),
);
pub const TCP_SEND_RESET_NESTED: Program =
    prog(p::TCP_SEND_RESET_NESTED, Hook::RawTp("tcp_send_reset"));
pub const TCP_RETRANSMIT_SKB_NESTED: Program = prog(
    p::TCP_RETRANSMIT_SKB_NESTED,
    Hook::RawTp("tcp_retransmit_skb"),
);
pub const PAGE_FAULT_USER: Program = prog(p::PAGE_FAULT_USER, Hook::RawTp("page_fault_user"));
pub const PAGE_FAULT_KERNEL: Program = prog(p::PAGE_FAULT_KERNEL, Hook::RawTp("page_fault_kernel"));
pub const PERF_PAGE_FAULT: Program = prog(p::PERF_PAGE_FAULT, Hook::PerfPageFaults);
pub const FENTRY_HANDLE_MM_FAULT: Program =
    prog(p::FENTRY_HANDLE_MM_FAULT, Hook::FEntry("handle_mm_fault"));
pub const FEXIT_HANDLE_MM_FAULT: Program =
    prog(p::FEXIT_HANDLE_MM_FAULT, Hook::FExit("handle_mm_fault"));
pub const KPROBE_HANDLE_MM_FAULT: Program =
    prog(p::KPROBE_HANDLE_MM_FAULT, Hook::KProbe("handle_mm_fault"));
pub const KRETPROBE_HANDLE_MM_FAULT: Program = prog(
    p::KRETPROBE_HANDLE_MM_FAULT,
    Hook::KRetProbe("handle_mm_fault"),
);

/// The twin programs: they run only the hits the kernel skips their first program for, so
/// their own skipped runs lose nothing and are not counted as misses.
pub const TWINS: &[Program] = &[
    INET_SOCK_SET_STATE_NESTED,
    TCP_RECEIVE_RESET_NESTED,
    TCP_SEND_RESET_NESTED,
    TCP_RETRANSMIT_SKB_NESTED,
];

/// Every program of the object.
pub const ALL: &[Program] = &[
    SYS_ENTER,
    BTF_SOCK_SEND_LENGTH,
    BTF_SOCK_RECV_LENGTH,
    SOCK_SEND_LENGTH,
    SOCK_RECV_LENGTH,
    FENTRY_TCP_SENDMSG,
    FEXIT_TCP_SENDMSG,
    FENTRY_TCP_RECVMSG,
    FEXIT_TCP_RECVMSG4,
    FEXIT_TCP_RECVMSG5,
    FEXIT_TCP_RECVMSG6,
    KPROBE_TCP_SENDMSG,
    KRETPROBE_TCP_SENDMSG,
    FENTRY_TCP_SENDPAGE,
    FEXIT_TCP_SENDPAGE,
    KPROBE_TCP_SENDPAGE,
    KRETPROBE_TCP_SENDPAGE,
    KPROBE_TCP_RECVMSG,
    KRETPROBE_TCP_RECVMSG,
    INET_SOCK_SET_STATE,
    TCP_RECEIVE_RESET,
    TCP_SEND_RESET,
    TCP_RETRANSMIT_SKB,
    INET_SOCK_SET_STATE_NESTED,
    TCP_RECEIVE_RESET_NESTED,
    TCP_SEND_RESET_NESTED,
    TCP_RETRANSMIT_SKB_NESTED,
    PAGE_FAULT_USER,
    PAGE_FAULT_KERNEL,
    PERF_PAGE_FAULT,
    FENTRY_HANDLE_MM_FAULT,
    FEXIT_HANDLE_MM_FAULT,
    KPROBE_HANDLE_MM_FAULT,
    KRETPROBE_HANDLE_MM_FAULT,
];

/// Whether the kernel programs know this architecture's syscall numbers (the tracepoint
/// mode of the socket call signals times from syscall entries, by number): the objects are
/// built per architecture (observer-ebpf/src/arch), and the daemon embeds its own's.
pub const SYSCALL_TABLE_KNOWN: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

/// The members of the kernel's `struct pt_regs` that say which syscall a task is in, at the
/// offsets the kernel programs read them (observer-ebpf/src/arch): the daemon checks them
/// against the running kernel's BTF before the tracepoint mode uses them.
pub const SYSCALL_REGS: &[(&str, u32)] = if cfg!(target_arch = "aarch64") {
    &[
        ("regs", 0),
        ("pstate", 264),
        ("orig_x0", 272),
        ("syscallno", 280),
    ]
} else {
    &[("ax", 80), ("orig_ax", 120)]
};

/// What kernel BTF told about the running kernel that decides which programs to attach.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelShape {
    /// Number of parameters of `tcp_recvmsg`.
    pub recvmsg_params: Option<u16>,
    /// The sock_*_length tracepoints exist in BTF and the socket offsets are known: the
    /// BTF-typed tracepoint programs can be used (cheaper than the classic ones: no record
    /// is built, the socket's fields are direct loads; no tracefs).
    pub btf_sock_length: bool,
    /// The x86 exception tracepoints `page_fault_user`/`page_fault_kernel` exist; elsewhere
    /// (arm64) faults are counted from the page-faults software perf event.
    pub fault_tracepoints: bool,
    /// A member of [`SYSCALL_REGS`] that the kernel's BTF puts elsewhere: (member, where the
    /// programs read it, where BTF has it); `None` when they agree (or BTF cannot say).
    pub syscall_regs_mismatch: Option<(&'static str, u32, Option<u32>)>,
    /// `tcp_sendpage(sk, page, offset, size, flags)` exists (Linux < 6.5): sendfile and
    /// splice send through it.
    pub tcp_sendpage: bool,
}

/// Programs that make up one (signal, mode) on a kernel of this shape; empty when the
/// signal has no probes in that mode.
#[must_use]
pub fn for_mode(signal: Signal, mode: ProbeMode, k: KernelShape) -> Vec<Program> {
    match (signal, mode) {
        (Signal::SendMsg, ProbeMode::Fentry) if k.tcp_sendpage => vec![
            FENTRY_TCP_SENDMSG,
            FEXIT_TCP_SENDMSG,
            FENTRY_TCP_SENDPAGE,
            FEXIT_TCP_SENDPAGE,
        ],
        (Signal::SendMsg, ProbeMode::Fentry) => vec![FENTRY_TCP_SENDMSG, FEXIT_TCP_SENDMSG],
        // fexit reads the return value after the last parameter; how many there are depends
        // on the kernel (see observer-ebpf/src/tcp.rs).
        (Signal::RecvMsg, ProbeMode::Fentry) => vec![
            FENTRY_TCP_RECVMSG,
            match k.recvmsg_params {
                Some(4) => FEXIT_TCP_RECVMSG4,
                Some(6) => FEXIT_TCP_RECVMSG6,
                _ => FEXIT_TCP_RECVMSG5,
            },
        ],
        (Signal::SendMsg, ProbeMode::Kprobe) if k.tcp_sendpage => vec![
            KPROBE_TCP_SENDMSG,
            KRETPROBE_TCP_SENDMSG,
            KPROBE_TCP_SENDPAGE,
            KRETPROBE_TCP_SENDPAGE,
        ],
        (Signal::SendMsg, ProbeMode::Kprobe) => vec![KPROBE_TCP_SENDMSG, KRETPROBE_TCP_SENDMSG],
        (Signal::RecvMsg, ProbeMode::Kprobe) => vec![KPROBE_TCP_RECVMSG, KRETPROBE_TCP_RECVMSG],
        (Signal::SendMsg, ProbeMode::Tracepoint) if k.btf_sock_length => {
            vec![SYS_ENTER, BTF_SOCK_SEND_LENGTH]
        }
        (Signal::RecvMsg, ProbeMode::Tracepoint) if k.btf_sock_length => {
            vec![SYS_ENTER, BTF_SOCK_RECV_LENGTH]
        }
        (Signal::SendMsg, ProbeMode::Tracepoint) => vec![SYS_ENTER, SOCK_SEND_LENGTH],
        (Signal::RecvMsg, ProbeMode::Tracepoint) => vec![SYS_ENTER, SOCK_RECV_LENGTH],
        // Connection lifecycle uses raw tracepoints in every mode, each with its twin for
        // the hits that interrupt it (observer-ebpf/src/nested.rs).
        (Signal::Connections, _) => {
            let mut v = vec![
                INET_SOCK_SET_STATE,
                TCP_RECEIVE_RESET,
                TCP_SEND_RESET,
                TCP_RETRANSMIT_SKB,
            ];
            v.extend_from_slice(TWINS);
            v
        }
        // Fault counts come from one source in every mode, so that they mean the same in
        // each (the exception tracepoints, else the perf event); fentry/kprobe add durations
        // and major/minor.
        (Signal::PageFaults, ProbeMode::Fentry) => {
            let mut v = fault_counts(k);
            v.extend([FENTRY_HANDLE_MM_FAULT, FEXIT_HANDLE_MM_FAULT]);
            v
        }
        (Signal::PageFaults, ProbeMode::Kprobe) => {
            let mut v = fault_counts(k);
            v.extend([KPROBE_HANDLE_MM_FAULT, KRETPROBE_HANDLE_MM_FAULT]);
            v
        }
        (Signal::PageFaults, ProbeMode::Tracepoint) => fault_counts(k),
        _ => Vec::new(),
    }
}

/// The programs that count page faults per cgroup on a kernel of this shape.
fn fault_counts(k: KernelShape) -> Vec<Program> {
    if k.fault_tracepoints {
        vec![PAGE_FAULT_USER, PAGE_FAULT_KERNEL]
    } else {
        vec![PERF_PAGE_FAULT]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every program of the table is used by some (signal, mode, shape), and none twice in
    /// the table.
    #[test]
    fn the_table_is_used_and_has_no_duplicates() {
        let mut names: Vec<&str> = ALL.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        let mut used = std::collections::BTreeSet::new();
        for signal in Signal::ALL {
            for mode in ProbeMode::Auto.candidates() {
                for recvmsg_params in [Some(4), Some(5), Some(6)] {
                    for btf_sock_length in [false, true] {
                        for fault_tracepoints in [false, true] {
                            for tcp_sendpage in [false, true] {
                                let shape = KernelShape {
                                    recvmsg_params,
                                    btf_sock_length,
                                    fault_tracepoints,
                                    tcp_sendpage,
                                    ..KernelShape::default()
                                };
                                used.extend(for_mode(signal, *mode, shape).iter().map(|p| p.name));
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(used.len(), ALL.len());
    }

    /// Page faults are counted from one source in every mode: the exception tracepoints
    /// where the kernel has them, else (arm64) the perf event, never both.
    #[test]
    fn faults_are_counted_from_one_source_in_every_mode() {
        for fault_tracepoints in [false, true] {
            let shape = KernelShape {
                fault_tracepoints,
                ..KernelShape::default()
            };
            for mode in ProbeMode::Auto.candidates() {
                let progs = for_mode(Signal::PageFaults, *mode, shape);
                let has = |p: Program| progs.contains(&p);
                assert_eq!(has(PAGE_FAULT_USER), fault_tracepoints, "{mode:?}");
                assert_eq!(has(PAGE_FAULT_KERNEL), fault_tracepoints, "{mode:?}");
                assert_eq!(has(PERF_PAGE_FAULT), !fault_tracepoints, "{mode:?}");
            }
        }
    }

    /// The embedded objects were built for the daemon's own architecture (the build script
    /// refuses others; this reads the marker the same way): an object of another one would
    /// load and attach, and its kprobe programs would read the wrong registers.
    #[cfg(feature = "ebpf")]
    #[test]
    fn the_objects_are_built_for_this_architecture() {
        let marker = format!("socklat-bpf-target-arch={}\0", std::env::consts::ARCH);
        for bytes in OBJECTS {
            assert!(
                bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "no {marker:?} in the object"
            );
        }
    }

    /// The table and the built object agree: every program the table names is in the object
    /// and every program of the object is in the table. Needs the object (the `ebpf`
    /// feature embeds it); no kernel and no privileges.
    #[cfg(feature = "ebpf")]
    #[test]
    fn the_table_and_the_objects_agree() {
        for bytes in OBJECTS {
            let object = aya_obj::Object::parse(bytes).expect("the embedded object parses");
            let mut in_object: Vec<&str> = object.programs.keys().map(String::as_str).collect();
            in_object.sort_unstable();
            let mut in_table: Vec<&str> = ALL.iter().map(|p| p.name).collect();
            in_table.sort_unstable();
            assert_eq!(in_object, in_table);
        }
    }

    /// Both embedded objects: per-thread state in an LRU hash and in task storage.
    #[cfg(feature = "ebpf")]
    const OBJECTS: [&[u8]; 2] = [
        crate::kernel::load::EMBEDDED_OBJECT,
        crate::kernel::load::EMBEDDED_TASK_STORAGE_OBJECT,
    ];

    /// The objects differ where they should: the task-storage one has three task storage
    /// maps (the per-thread starts) and the globals of the task's fields, the other three
    /// LRU hashes in their place and no such globals.
    #[cfg(feature = "ebpf")]
    #[test]
    fn the_objects_keep_per_thread_state_in_their_own_form() {
        use aya_obj::generated::bpf_map_type::{BPF_MAP_TYPE_LRU_HASH, BPF_MAP_TYPE_TASK_STORAGE};
        for (bytes, want) in OBJECTS
            .iter()
            .zip([BPF_MAP_TYPE_LRU_HASH, BPF_MAP_TYPE_TASK_STORAGE])
        {
            let object = aya_obj::Object::parse(bytes).expect("the embedded object parses");
            // The task's fields are read directly in the task-storage object only (the
            // daemon sets these globals where they exist).
            let has = |name: &str| {
                let mut n = name.as_bytes().to_vec();
                n.push(0);
                bytes.windows(n.len()).any(|w| w == n)
            };
            for global in [
                observer_common::names::OFF_TASK_CGROUPS,
                observer_common::names::OFF_CSS_DFL_CGRP,
            ] {
                assert_eq!(has(global), want == BPF_MAP_TYPE_TASK_STORAGE, "{global}");
            }
            for name in [
                observer_common::names::SYSCALL_START,
                observer_common::names::CALL_START,
                observer_common::names::FAULT_START,
            ] {
                let map = object
                    .maps
                    .get(name)
                    .unwrap_or_else(|| panic!("no map {name}"));
                assert_eq!(map.map_type(), want as u32, "{name}");
            }
        }
    }

    /// The object is built for BPF v3 (xtask pins `-Ctarget-cpu=v3`): no instruction of the
    /// v4 set, which verifiers before Linux 6.6 refuse (sign-extending loads and moves,
    /// signed division, unconditional byte swap, 32-bit-offset jumps).
    #[cfg(feature = "ebpf")]
    #[test]
    fn the_object_has_no_instruction_newer_than_v3() {
        const CLASS: u8 = 0x07;
        const LDX: u8 = 0x01;
        const ALU: u8 = 0x04;
        const JMP32: u8 = 0x06;
        const ALU64: u8 = 0x07;
        let mut checked = 0;
        for bytes in OBJECTS {
            let object = aya_obj::Object::parse(bytes).expect("the embedded object parses");
            for f in object.functions.values() {
                for insn in &f.instructions {
                    let (code, off) = (insn.code, insn.off);
                    let class = code & CLASS;
                    let op = code & 0xf0;
                    let v4 = match class {
                        LDX => code & 0xe0 == 0x80,
                        ALU | ALU64 => {
                            (op == 0xb0 && code & 0x08 != 0 && off != 0)
                                || ((op == 0x30 || op == 0x90) && off == 1)
                                || (class == ALU64 && op == 0xd0)
                        }
                        JMP32 => op == 0x00,
                        _ => false,
                    };
                    assert!(!v4, "{}: v4 instruction {code:#04x} off {off}", f.name);
                    checked += 1;
                }
            }
        }
        assert!(checked > 1000, "only {checked} instructions");
    }
}
