//! Loads the kernel object and attaches, per signal, the best probe mode that works
//! (or the forced one). The only module besides `rings` that touches aya.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use aya::programs::{FEntry, FExit, KProbe, RawTracePoint, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use observer_common::names;

use crate::aggregate::Signal;
use crate::btf::SockOffsets;
use crate::cli::{Cli, ProbeMode};
use crate::error::Error;

/// The kernel object, built by `cargo xtask build-ebpf` and embedded at build time.
static EMBEDDED_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SOCKLAT_EMBEDDED_OBJECT_PATH"));

/// What was chosen for one signal, and why.
#[derive(Clone, Debug)]
pub struct Choice {
    pub signal: Signal,
    /// The mode in use, or `None` when nothing attached.
    pub mode: Option<ProbeMode>,
    /// Modes tried before, with the reason each was not used.
    pub rejected: Vec<(ProbeMode, String)>,
    /// What the chosen mode does not give (e.g. page fault durations in tracepoint mode).
    pub note: Option<&'static str>,
}

impl Choice {
    /// What was chosen and why, for the log and `--check`: the signal and mode on the
    /// first line, then one indented line per mode that was tried and not used.
    #[must_use]
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{:<12}{}",
            self.signal.name(),
            self.mode.map_or("NOT ATTACHED", ProbeMode::name)
        );
        if let Some(n) = self.note {
            let _ = write!(s, " ({n})");
        }
        for (m, why) in &self.rejected {
            let _ = write!(s, "\n    {} unavailable: {why}", m.name());
        }
        s
    }
}

/// The loaded object and what was attached.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub choices: Vec<Choice>,
    /// Descriptors of the attached programs, to read how often the kernel skipped them.
    pub programs: Vec<std::os::fd::OwnedFd>,
}

enum Attach {
    FEntry(&'static str),
    FExit(&'static str),
    KProbe(&'static str),
    RawTp(&'static str),
    Tp(&'static str, &'static str),
}

/// What BTF told about the running kernel that decides which programs to attach.
#[derive(Clone, Copy, Debug, Default)]
struct KernelShape {
    /// Number of parameters of `tcp_recvmsg`.
    recvmsg_params: Option<u16>,
    /// The sock_*_length tracepoints exist and the socket offsets are known: the raw
    /// tracepoint programs can be used (cheaper than the classic ones, no tracefs).
    raw_sock_length: bool,
}

/// Programs that make up one (signal, mode) on a kernel of this shape.
fn programs(signal: Signal, mode: ProbeMode, k: KernelShape) -> Vec<(&'static str, Attach)> {
    use Attach::{FEntry, FExit, KProbe, RawTp, Tp};
    let recvmsg_params = k.recvmsg_params;
    match (signal, mode) {
        (Signal::SendMsg, ProbeMode::Fentry) => vec![
            ("socklat_fentry_tcp_sendmsg", FEntry("tcp_sendmsg")),
            ("socklat_fexit_tcp_sendmsg", FExit("tcp_sendmsg")),
        ],
        (Signal::RecvMsg, ProbeMode::Fentry) => vec![
            ("socklat_fentry_tcp_recvmsg", FEntry("tcp_recvmsg")),
            // fexit reads the return value after the last parameter; how many there are
            // depends on the kernel (see observer-ebpf/src/tcp.rs).
            match recvmsg_params {
                Some(4) => ("socklat_fexit_tcp_recvmsg4", FExit("tcp_recvmsg")),
                Some(6) => ("socklat_fexit_tcp_recvmsg6", FExit("tcp_recvmsg")),
                _ => ("socklat_fexit_tcp_recvmsg5", FExit("tcp_recvmsg")),
            },
        ],
        (Signal::SendMsg, ProbeMode::Kprobe) => vec![
            ("socklat_kprobe_tcp_sendmsg", KProbe("tcp_sendmsg")),
            ("socklat_kretprobe_tcp_sendmsg", KProbe("tcp_sendmsg")),
        ],
        (Signal::RecvMsg, ProbeMode::Kprobe) => vec![
            ("socklat_kprobe_tcp_recvmsg", KProbe("tcp_recvmsg")),
            ("socklat_kretprobe_tcp_recvmsg", KProbe("tcp_recvmsg")),
        ],
        (Signal::SendMsg, ProbeMode::Tracepoint) if k.raw_sock_length => vec![
            ("socklat_sys_enter", RawTp("sys_enter")),
            ("socklat_raw_sock_send_length", RawTp("sock_send_length")),
        ],
        (Signal::RecvMsg, ProbeMode::Tracepoint) if k.raw_sock_length => vec![
            ("socklat_sys_enter", RawTp("sys_enter")),
            ("socklat_raw_sock_recv_length", RawTp("sock_recv_length")),
        ],
        (Signal::SendMsg, ProbeMode::Tracepoint) => vec![
            ("socklat_sys_enter", RawTp("sys_enter")),
            ("socklat_sock_send_length", Tp("sock", "sock_send_length")),
        ],
        (Signal::RecvMsg, ProbeMode::Tracepoint) => vec![
            ("socklat_sys_enter", RawTp("sys_enter")),
            ("socklat_sock_recv_length", Tp("sock", "sock_recv_length")),
        ],
        // Connection lifecycle uses raw tracepoints in every mode.
        (Signal::Connections, _) => vec![
            ("socklat_inet_sock_set_state", RawTp("inet_sock_set_state")),
            ("socklat_tcp_receive_reset", RawTp("tcp_receive_reset")),
            ("socklat_tcp_send_reset", RawTp("tcp_send_reset")),
            ("socklat_tcp_retransmit_skb", RawTp("tcp_retransmit_skb")),
        ],
        // Fault counts come from the exception tracepoints in every mode, so that they
        // mean the same everywhere; fentry/kprobe add durations and major/minor.
        (Signal::PageFaults, m) => {
            let mut v = vec![
                ("socklat_page_fault_user", RawTp("page_fault_user")),
                ("socklat_page_fault_kernel", RawTp("page_fault_kernel")),
            ];
            match m {
                ProbeMode::Fentry => {
                    v.push(("socklat_fentry_handle_mm_fault", FEntry("handle_mm_fault")));
                    v.push(("socklat_fexit_handle_mm_fault", FExit("handle_mm_fault")));
                }
                ProbeMode::Kprobe => {
                    v.push(("socklat_kprobe_handle_mm_fault", KProbe("handle_mm_fault")));
                    v.push((
                        "socklat_kretprobe_handle_mm_fault",
                        KProbe("handle_mm_fault"),
                    ));
                }
                _ => {}
            }
            v
        }
        _ => Vec::new(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let _ = write!(s, ": {inner}");
        src = inner.source();
    }
    // Verifier logs are long; the first lines say what failed.
    if s.len() > 400 {
        s.truncate(400);
        s.push_str("...");
    }
    s
}

struct Attacher<'a> {
    ebpf: &'a mut Ebpf,
    btf: Option<&'a Btf>,
    attached: BTreeSet<&'static str>,
    shape: KernelShape,
}

impl Attacher<'_> {
    fn attach_one(&mut self, prog: &'static str, how: &Attach) -> Result<(), String> {
        if self.attached.contains(prog) {
            return Ok(());
        }
        let p = self
            .ebpf
            .program_mut(prog)
            .ok_or_else(|| format!("program {prog} missing from the kernel object"))?;
        let r: Result<(), String> = match how {
            Attach::FEntry(f) => {
                let btf = self.btf.ok_or("no kernel BTF (/sys/kernel/btf/vmlinux)")?;
                let p: &mut FEntry = p.try_into().map_err(|e| error_chain(&e))?;
                p.load(f, btf)
                    .and_then(|()| p.attach().map(drop))
                    .map_err(|e| format!("fentry {f}: {}", error_chain(&e)))
            }
            Attach::FExit(f) => {
                let btf = self.btf.ok_or("no kernel BTF (/sys/kernel/btf/vmlinux)")?;
                let p: &mut FExit = p.try_into().map_err(|e| error_chain(&e))?;
                p.load(f, btf)
                    .and_then(|()| p.attach().map(drop))
                    .map_err(|e| format!("fexit {f}: {}", error_chain(&e)))
            }
            Attach::KProbe(f) => {
                let p: &mut KProbe = p.try_into().map_err(|e| error_chain(&e))?;
                p.load()
                    .and_then(|()| p.attach(f, 0).map(drop))
                    .map_err(|e| format!("kprobe {f}: {}", error_chain(&e)))
            }
            Attach::RawTp(tp) => {
                let p: &mut RawTracePoint = p.try_into().map_err(|e| error_chain(&e))?;
                p.load()
                    .and_then(|()| p.attach(tp).map(drop))
                    .map_err(|e| format!("raw tracepoint {tp}: {}", error_chain(&e)))
            }
            Attach::Tp(cat, name) => {
                check_sock_length_format(cat, name)?;
                let p: &mut TracePoint = p.try_into().map_err(|e| error_chain(&e))?;
                p.load()
                    .and_then(|()| p.attach(cat, name).map(drop))
                    .map_err(|e| format!("tracepoint {cat}:{name}: {}", error_chain(&e)))
            }
        };
        if r.is_ok() {
            self.attached.insert(prog);
        } else {
            self.unload(prog);
        }
        r
    }

    fn unload(&mut self, prog: &'static str) {
        if let Some(p) = self.ebpf.program_mut(prog) {
            let _ = match p {
                aya::programs::Program::FEntry(p) => p.unload(),
                aya::programs::Program::FExit(p) => p.unload(),
                aya::programs::Program::KProbe(p) => p.unload(),
                aya::programs::Program::RawTracePoint(p) => p.unload(),
                aya::programs::Program::TracePoint(p) => p.unload(),
                _ => Ok(()),
            };
        }
        self.attached.remove(prog);
    }

    /// Attaches every program of (signal, mode), or none of those it newly attached.
    fn attach_mode(&mut self, signal: Signal, mode: ProbeMode) -> Result<(), String> {
        let progs = programs(signal, mode, self.shape);
        if progs.is_empty() {
            return Err(format!("{} has no {} probes", signal.name(), mode.name()));
        }
        let mut newly = Vec::new();
        for (prog, how) in &progs {
            let was = self.attached.contains(prog);
            if let Err(e) = self.attach_one(prog, how) {
                for p in newly {
                    self.unload(p);
                }
                return Err(e);
            }
            if !was {
                newly.push(*prog);
            }
        }
        Ok(())
    }
}

/// Where tracefs is (classic tracepoints need it); mounts it when absent and allowed.
fn tracefs() -> Result<&'static Path, String> {
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(p).join("events").is_dir() {
            return Ok(Path::new(p));
        }
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: valid NUL-terminated strings; mount(2) does not keep the pointers.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 && Path::new("/sys/kernel/tracing/events").is_dir() {
        log::info!("mounted tracefs at /sys/kernel/tracing");
        return Ok(Path::new("/sys/kernel/tracing"));
    }
    Err(
        "tracefs is not mounted: mount -t tracefs tracefs /sys/kernel/tracing \
         (in a container, mount the host's /sys/kernel/tracing)"
            .into(),
    )
}

/// The kernel program reads `family`, `protocol` and `ret` at fixed offsets of the
/// sock_*_length record; refuse to attach if this kernel lays the record out otherwise.
fn check_sock_length_format(cat: &str, name: &str) -> Result<(), String> {
    let path = tracefs()?
        .join("events")
        .join(cat)
        .join(name)
        .join("format");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("no tracepoint {cat}:{name} in this kernel (needs Linux >= 6.3)")
        } else {
            format!("cannot read {}: {e}", path.display())
        }
    })?;
    for (field, offset) in [("family", 16), ("protocol", 18), ("ret", 20)] {
        let ok = text
            .lines()
            .any(|l| l.contains(&format!(" {field};")) && l.contains(&format!("offset:{offset};")));
        if !ok {
            return Err(format!(
                "{cat}:{name} has an unexpected record layout ({field} not at offset {offset})"
            ));
        }
    }
    Ok(())
}

/// Loads the object and attaches the enabled signals. Fails only for errors that leave
/// nothing to run (no object, no privileges); a signal that cannot attach is reported in
/// its [`Choice`].
#[expect(
    clippy::too_many_lines,
    reason = "globals, load and per-signal attach in one readable sequence"
)]
pub fn load(cli: &Cli, shared_ring_size: u32) -> Result<Loaded, Error> {
    let bytes_owned;
    let bytes: &[u8] = match &cli.ebpf_object {
        Some(p) => {
            bytes_owned = std::fs::read(p).map_err(|source| Error::Object {
                path: p.clone(),
                source,
            })?;
            &bytes_owned
        }
        None => EMBEDDED_OBJECT,
    };
    let enable_send = u32::from(cli.enabled(Signal::SendMsg));
    let enable_recv = u32::from(cli.enabled(Signal::RecvMsg));
    // Socket field offsets for the connection probes, and the shape of tcp_recvmsg, from
    // kernel BTF.
    let kernel_btf = crate::btf::Btf::from_sys_fs();
    let offsets = kernel_btf
        .as_ref()
        .map_err(Clone::clone)
        .and_then(SockOffsets::from_btf);
    let recvmsg_params = kernel_btf
        .as_ref()
        .ok()
        .and_then(|b| b.func_params("tcp_recvmsg"));
    let o = offsets.as_ref().ok().copied().unwrap_or(SockOffsets {
        sk_family: 16,
        sk_protocol: 0,
        sk_err: 0,
        sk_cgrp_data: 0,
        cgrp_ptr: 0,
        cgrp_is_tagged_val: false,
        cgroup_kn: 0,
        kn_id: 0,
    });
    let enable_conn = u32::from(cli.enabled(Signal::Connections) && offsets.is_ok());
    let off_sk_family = u64::from(o.sk_family);
    let off_sk_protocol = u64::from(o.sk_protocol);
    let off_sk_err = u64::from(o.sk_err);
    let off_sk_cgrp = u64::from(o.sk_cgrp_data + o.cgrp_ptr);
    let cgrp_tagged = u64::from(o.cgrp_is_tagged_val);
    let off_cgroup_kn = u64::from(o.cgroup_kn);
    let off_kn_id = u64::from(o.kn_id);
    let mut ebpf = EbpfLoader::new()
        .override_global(names::ENABLE_CONN, &enable_conn, true)
        .override_global(names::OFF_SK_FAMILY, &off_sk_family, true)
        .override_global(names::OFF_SK_PROTOCOL, &off_sk_protocol, true)
        .override_global(names::OFF_SK_ERR, &off_sk_err, true)
        .override_global(names::OFF_SK_CGRP, &off_sk_cgrp, true)
        .override_global(names::CGRP_TAGGED, &cgrp_tagged, true)
        .override_global(names::OFF_CGROUP_KN, &off_cgroup_kn, true)
        .override_global(names::OFF_KN_ID, &off_kn_id, true)
        .override_global(names::ENABLE_SEND, &enable_send, true)
        .override_global(names::ENABLE_RECV, &enable_recv, true)
        .map_max_entries(names::CGROUP_RINGS, cli.max_cgroups)
        .map_max_entries(names::SHARED_RING, shared_ring_size)
        .load(bytes)
        .map_err(|e| Error::Load(error_chain(&e)))?;

    let btf = Btf::from_sys_fs().ok();
    let mut attacher = Attacher {
        ebpf: &mut ebpf,
        btf: btf.as_ref(),
        attached: BTreeSet::new(),
        shape: KernelShape {
            recvmsg_params,
            raw_sock_length: offsets.is_ok()
                && kernel_btf.as_ref().is_ok_and(|b| {
                    b.has_tracepoint("sock_send_length") && b.has_tracepoint("sock_recv_length")
                }),
        },
    };
    let mut choices = Vec::new();
    for signal in Signal::ALL {
        if !cli.enabled(signal) {
            continue;
        }
        if signal == Signal::Connections {
            // Tracepoints in every mode; they need socket offsets from BTF.
            let mut choice = Choice {
                signal,
                mode: None,
                rejected: Vec::new(),
                note: None,
            };
            match &offsets {
                Ok(_) => match attacher.attach_mode(signal, ProbeMode::Tracepoint) {
                    Ok(()) => choice.mode = Some(ProbeMode::Tracepoint),
                    Err(why) => choice.rejected.push((ProbeMode::Tracepoint, why)),
                },
                Err(why) => choice.rejected.push((ProbeMode::Tracepoint, why.clone())),
            }
            log::info!("probe: {}", choice.describe());
            choices.push(choice);
            continue;
        }
        let modes: &[ProbeMode] = match cli.probe_mode {
            ProbeMode::Auto => &[ProbeMode::Fentry, ProbeMode::Kprobe, ProbeMode::Tracepoint],
            ProbeMode::Fentry => &[ProbeMode::Fentry],
            ProbeMode::Kprobe => &[ProbeMode::Kprobe],
            ProbeMode::Tracepoint => &[ProbeMode::Tracepoint],
        };
        let mut choice = Choice {
            signal,
            mode: None,
            rejected: Vec::new(),
            note: None,
        };
        for &mode in modes {
            match attacher.attach_mode(signal, mode) {
                Ok(()) => {
                    choice.mode = Some(mode);
                    if signal == Signal::PageFaults && mode == ProbeMode::Tracepoint {
                        choice.note = Some("counts only: no durations or major/minor");
                    }
                    break;
                }
                Err(why) => choice.rejected.push((mode, why)),
            }
        }
        log::info!("probe: {}", choice.describe());
        choices.push(choice);
    }
    let names: Vec<&'static str> = attacher.attached.iter().copied().collect();
    let programs = names
        .iter()
        .filter_map(|name| {
            let fd = ebpf.program(name)?.fd().ok()?;
            std::os::fd::AsFd::as_fd(fd).try_clone_to_owned().ok()
        })
        .collect();
    Ok(Loaded {
        ebpf,
        choices,
        programs,
    })
}

/// How often the kernel skipped a program instead of running it
/// (`bpf_prog_info.recursion_misses`, Linux >= 5.12; 0 before). A fentry/fexit program is
/// skipped when it is already running on the CPU, e.g. preempted inside it: the call it
/// would have timed is then missing, and this makes that visible.
#[must_use]
pub fn recursion_misses(prog: std::os::fd::BorrowedFd<'_>) -> u64 {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // SAFETY: a plain C struct of integers and arrays, for which all-zero is valid (and what
    // the kernel expects in the fields it does not fill).
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoByFd {
        bpf_fd: u32::try_from(prog.as_raw_fd()).unwrap_or(u32::MAX),
        info_len: u32::try_from(size_of_val(&info)).unwrap_or(0),
        info: (&raw mut info) as u64,
    };
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD writes at most `info_len` bytes into `info`, which
    // lives until the call returns; `attr` is the command's documented layout.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw mut attr,
            size_of::<InfoByFd>(),
        )
    };
    if rc == 0 { info.recursion_misses } else { 0 }
}
