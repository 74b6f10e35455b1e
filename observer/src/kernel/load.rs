//! Loading the kernel object: the socket offsets and the shape of the kernel from BTF, the
//! globals and map sizes, then attaching the enabled signals (see [`super::attach`]).

use std::fmt::Write as _;

use aya::{Btf, Ebpf, EbpfLoader};
use observer_common::names;

use super::attach::{Attacher, Choice};
use super::btf::{BtfError, SockOffsets, TaskOffsets};
use super::programs::KernelShape;
use crate::cli::Cli;
use crate::probe_mode::ProbeMode;
use crate::signal::Signal;

/// The kernel object with per-thread state in an LRU hash (every kernel), built by
/// `cargo xtask build-ebpf` and embedded at build time.
pub static EMBEDDED_OBJECT: &[u8] =
    aya::include_bytes_aligned!(env!("SOCKLAT_EMBEDDED_OBJECT_PATH"));

/// The same programs with per-thread state in task-local storage: cheaper per call, and
/// bounded by the threads that exist rather than by a table size. Linux >= 5.11 creates
/// the map (>= 5.12 lets every tracing program type use it); loaded first, the LRU object
/// where the kernel refuses it.
pub static EMBEDDED_TASK_STORAGE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(env!("SOCKLAT_EMBEDDED_TASK_STORAGE_OBJECT_PATH"));

/// Where the object keeps each thread's in-flight call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PerThreadForm {
    /// `BPF_MAP_TYPE_TASK_STORAGE`.
    TaskStorage,
    /// An LRU hash keyed by thread id.
    LruHash,
    /// The object given with --ebpf-object (whichever it was built with).
    Given,
}

impl PerThreadForm {
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::TaskStorage => "per-thread state in task-local storage",
            Self::LruHash => {
                "per-thread state in an LRU hash (the kernel refused task-local storage)"
            }
            Self::Given => "the kernel object given with --ebpf-object",
        }
    }
}

/// Why the object could not be loaded at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The kernel object given with --ebpf-object cannot be read.
    #[error("cannot read the kernel object {path}")]
    Object {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Creating maps or loading the object failed.
    #[error("cannot load the kernel object")]
    Load(#[source] Box<aya::EbpfError>),
}

/// The loaded object and what was attached.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub form: PerThreadForm,
    /// Whether the object keeps per-thread starts in LRU tables (sized by `--max-threads`).
    pub lru_threads: bool,
    pub choices: Vec<Choice>,
    /// Descriptors of the attached programs (twins aside), to read how often the kernel
    /// skipped them.
    pub programs: Vec<std::os::fd::OwnedFd>,
}

/// Bytes of kernel memory one entry of the connection table takes (an LRU hash of 8-byte
/// keys and 16-byte values: `memlock` of the map on Linux 6.18, 5 768 064 bytes for 65 536
/// entries).
pub const CONNECTION_ENTRY_BYTES: u64 = 88;
/// Bytes one entry of a per-thread LRU table takes (8-byte keys, 24-byte values); there are
/// three such tables.
pub const THREAD_ENTRY_BYTES: u64 = 96;

impl Loaded {
    /// The kernel's tables and their sizes (the `table` label of
    /// `socklat_kernel_table_capacity`).
    #[must_use]
    pub fn tables(&self, cli: &Cli) -> Vec<(&'static str, u64)> {
        let mut t = vec![("connections", u64::from(cli.max_connections))];
        if self.lru_threads {
            t.push(("threads", u64::from(cli.max_threads)));
        }
        t
    }

    /// The tables, with what they cost, for `--check` and the log.
    #[must_use]
    pub fn describe_tables(&self, cli: &Cli) -> String {
        let conns = u64::from(cli.max_connections);
        let mut s = format!(
            "connections {conns} entries ({})",
            crate::ring_budget::mib(conns * CONNECTION_ENTRY_BYTES)
        );
        if self.lru_threads {
            let threads = u64::from(cli.max_threads);
            let _ = write!(
                s,
                "; threads {threads} entries in each of 3 LRU tables ({})",
                crate::ring_budget::mib(3 * threads * THREAD_ENTRY_BYTES)
            );
        } else {
            s.push_str(
                "; per-thread state in task-local storage (no table: --max-threads does not apply)",
            );
        }
        s
    }
}

/// Whether the object keeps per-thread starts in LRU hashes (an object given with
/// `--ebpf-object` may be either build).
fn per_thread_in_lru(bytes: &[u8]) -> bool {
    aya_obj::Object::parse(bytes).is_ok_and(|o| {
        o.maps.get(names::SYSCALL_START).is_some_and(|m| {
            m.map_type() == aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32
        })
    })
}

/// The socket field offsets for the connection probes and the shape of the kernel's
/// functions and tracepoints, from its BTF (parsed here, dropped before the programs load).
fn kernel_facts() -> (
    Result<SockOffsets, BtfError>,
    Option<TaskOffsets>,
    KernelShape,
) {
    match super::btf::Btf::from_sys_fs() {
        Ok(b) => {
            let offsets = SockOffsets::from_btf(&b);
            let task = TaskOffsets::from_btf(&b);
            let shape = KernelShape {
                recvmsg_params: b.func_params("tcp_recvmsg"),
                btf_sock_length: offsets.is_ok()
                    && b.has_tracepoint("sock_send_length")
                    && b.has_tracepoint("sock_recv_length"),
                fault_tracepoints: b.has_tracepoint("page_fault_user")
                    && b.has_tracepoint("page_fault_kernel"),
                syscall_regs_mismatch: super::programs::SYSCALL_REGS.iter().find_map(
                    |&(member, at)| {
                        let found = b.offset("pt_regs", member);
                        (found != Some(at)).then_some((member, at, found))
                    },
                ),
                tcp_sendpage: b.func_params("tcp_sendpage") == Some(5),
            };
            (offsets, task, shape)
        }
        // No BTF: fault counts as the architecture has them (the exception tracepoints of
        // x86 are raw tracepoints, which need no BTF).
        Err(e) => (
            Err(e),
            None,
            KernelShape {
                fault_tracepoints: cfg!(target_arch = "x86_64"),
                ..KernelShape::default()
            },
        ),
    }
}

/// The values of the kernel programs' globals.
struct Globals {
    enable_send: u32,
    enable_recv: u32,
    enable_conn: u32,
    sk_family: u64,
    sk_type_protocol: u64,
    sk_tcp_stream: u32,
    sk_err: u64,
    sk_cgrp: u64,
    cgrp_tagged: u64,
    cgroup_kn: u64,
    kn_id: u64,
    sk_state: u64,
    sk_flags: u64,
    sk_shutdown: u64,
    segs_out: u64,
    skc_addrs: u64,
    skc_ports: u64,
    skc_v6_addrs: u64,
    inet_sport: u64,
    skc_net: u64,
    net_inum: u64,
    skb_data: u64,
    task_cgroups: u64,
    css_dfl_cgrp: u64,
}

impl Globals {
    /// From the command line and the socket offsets (`None`: unknown, the connections
    /// signal is then off and the socket checks fall back to what records say).
    fn new(cli: &Cli, o: Option<&SockOffsets>, t: Option<TaskOffsets>) -> Self {
        let flag = |b: bool| u32::from(b);
        let off = |f: fn(&SockOffsets) -> u32| o.map_or(0, |o| u64::from(f(o)));
        Self {
            enable_send: flag(cli.enabled(Signal::SendMsg)),
            enable_recv: flag(cli.enabled(Signal::RecvMsg)),
            enable_conn: flag(cli.enabled(Signal::Connections) && o.is_some()),
            sk_family: o.map_or(16, |o| u64::from(o.sk_family)),
            sk_type_protocol: off(|o| o.sk_type_protocol),
            sk_tcp_stream: o.map_or(0, SockOffsets::tcp_stream_word),
            sk_err: off(|o| o.sk_err),
            sk_cgrp: off(|o| o.sk_cgrp_data + o.cgrp_ptr),
            cgrp_tagged: o.map_or(0, |o| u64::from(o.cgrp_is_tagged_val)),
            cgroup_kn: off(|o| o.cgroup_kn),
            kn_id: off(|o| o.kn_id),
            sk_state: off(|o| o.sk_state),
            sk_flags: off(|o| o.sk_flags),
            sk_shutdown: off(|o| o.sk_shutdown.unwrap_or(0)),
            segs_out: off(|o| o.segs_out),
            skc_addrs: off(|o| o.skc_addrs),
            skc_ports: off(|o| o.skc_ports),
            skc_v6_addrs: off(|o| o.skc_v6_addrs.unwrap_or(0)),
            inet_sport: off(|o| o.inet_sport),
            skc_net: off(|o| o.skc_net),
            net_inum: off(|o| o.net_inum),
            skb_data: off(|o| o.skb_data),
            // The direct loads end at the kernfs node's id: they need the socket offsets too.
            task_cgroups: t
                .filter(|_| o.is_some())
                .map_or(0, |t| u64::from(t.task_cgroups)),
            css_dfl_cgrp: t.map_or(0, |t| u64::from(t.css_dfl_cgrp)),
        }
    }

    /// Sets every global of the object (each must exist in it).
    fn set<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        loader
            .override_global(names::ENABLE_SEND, &self.enable_send, true)
            .override_global(names::ENABLE_RECV, &self.enable_recv, true)
            .override_global(names::ENABLE_CONN, &self.enable_conn, true)
            .override_global(names::OFF_SK_FAMILY, &self.sk_family, true)
            .override_global(names::OFF_SK_TYPE_PROTOCOL, &self.sk_type_protocol, true)
            .override_global(names::SK_TCP_STREAM, &self.sk_tcp_stream, true)
            .override_global(names::OFF_SK_ERR, &self.sk_err, true)
            .override_global(names::OFF_SK_CGRP, &self.sk_cgrp, true)
            .override_global(names::CGRP_TAGGED, &self.cgrp_tagged, true)
            .override_global(names::OFF_CGROUP_KN, &self.cgroup_kn, true)
            .override_global(names::OFF_KN_ID, &self.kn_id, true)
            .override_global(names::OFF_SK_STATE, &self.sk_state, true)
            .override_global(names::OFF_SK_FLAGS, &self.sk_flags, true)
            .override_global(names::OFF_SK_SHUTDOWN, &self.sk_shutdown, true)
            .override_global(names::OFF_SEGS_OUT, &self.segs_out, true)
            .override_global(names::OFF_SKC_ADDRS, &self.skc_addrs, true)
            .override_global(names::OFF_SKC_PORTS, &self.skc_ports, true)
            .override_global(names::OFF_SKC_V6_ADDRS, &self.skc_v6_addrs, true)
            .override_global(names::OFF_INET_SPORT, &self.inet_sport, true)
            .override_global(names::OFF_SKC_NET, &self.skc_net, true)
            .override_global(names::OFF_NET_INUM, &self.net_inum, true)
            .override_global(names::OFF_SKB_DATA, &self.skb_data, true)
            // Only the task-storage object reads the task's fields (a unit test checks that
            // it has these globals).
            .override_global(names::OFF_TASK_CGROUPS, &self.task_cgroups, false)
            .override_global(names::OFF_CSS_DFL_CGRP, &self.css_dfl_cgrp, false);
    }
}

/// Loads the object and attaches the enabled signals: the embedded task-storage object
/// first, the LRU one where the kernel cannot create its map or its programs may not use
/// it. Fails only for errors that leave nothing to run (no object, no privileges); a signal
/// that cannot attach is reported in its [`Choice`].
///
/// # Errors
/// When the object cannot be read or loaded.
pub fn load(cli: &Cli, shared_ring_size: u32) -> Result<Loaded, LoadError> {
    if let Some(p) = &cli.ebpf_object {
        let bytes = std::fs::read(p).map_err(|source| LoadError::Object {
            path: p.clone(),
            source,
        })?;
        let loaded = load_object(cli, shared_ring_size, &bytes, PerThreadForm::Given)?;
        for c in &loaded.choices {
            log::info!("probe: {}", c.describe());
        }
        return Ok(loaded);
    }
    let first = load_object(
        cli,
        shared_ring_size,
        EMBEDDED_TASK_STORAGE_OBJECT,
        PerThreadForm::TaskStorage,
    );
    let refused = match &first {
        Err(e) => Some(crate::report::chain(e)),
        Ok(l) => l
            .choices
            .iter()
            .flat_map(|c| &c.rejected)
            .find(|(_, why)| why.contains("task_storage"))
            .map(|(_, why)| why.clone()),
    };
    let loaded = match refused {
        None => first,
        Some(why) => {
            log::info!("task-local storage refused ({why}); loading the LRU hash object");
            drop(first);
            load_object(
                cli,
                shared_ring_size,
                EMBEDDED_OBJECT,
                PerThreadForm::LruHash,
            )
        }
    }?;
    log::info!("kernel object: {}", loaded.form.describe());
    for c in &loaded.choices {
        log::info!("probe: {}", c.describe());
    }
    Ok(loaded)
}

/// Loads one object and attaches the enabled signals.
fn load_object(
    cli: &Cli,
    shared_ring_size: u32,
    bytes: &[u8],
    form: PerThreadForm,
) -> Result<Loaded, LoadError> {
    let (offsets, task, shape) = kernel_facts();
    let g = Globals::new(cli, offsets.as_ref().ok(), task);
    let mut loader = EbpfLoader::new();
    g.set(&mut loader);
    // aya has no user-space type for task storage maps; only the programs use them.
    loader.allow_unsupported_maps();
    loader
        .map_max_entries(names::CGROUP_RINGS, cli.max_cgroups)
        .map_max_entries(names::SHARED_RING, shared_ring_size)
        .map_max_entries(names::CONNECTIONS, cli.max_connections);
    // Task storage maps must keep 0 entries; the LRU tables take `--max-threads`.
    let lru_threads = match form {
        PerThreadForm::LruHash => true,
        PerThreadForm::TaskStorage => false,
        PerThreadForm::Given => per_thread_in_lru(bytes),
    };
    if lru_threads {
        for name in [names::SYSCALL_START, names::CALL_START, names::FAULT_START] {
            loader.map_max_entries(name, cli.max_threads);
        }
    }
    let mut ebpf = loader
        .load(bytes)
        .map_err(|e| LoadError::Load(Box::new(e)))?;

    let btf = Btf::from_sys_fs().ok();
    let mut attacher = Attacher::new(&mut ebpf, btf.as_ref(), shape);
    let mut choices = Vec::new();
    for signal in Signal::ALL {
        if !cli.enabled(signal) {
            continue;
        }
        let choice = match (signal, &offsets) {
            // Tracepoints in every mode; they need socket offsets from BTF.
            (Signal::Connections, Err(e)) => Choice {
                signal,
                mode: None,
                rejected: vec![(ProbeMode::Tracepoint, crate::report::chain(e))],
                note: None,
            },
            (Signal::Connections, Ok(_)) => attacher.choose(signal, &[ProbeMode::Tracepoint]),
            _ => attacher.choose(signal, cli.probe_mode.candidates()),
        };
        choices.push(choice);
    }
    let names = attacher.attached();
    let programs = names
        .iter()
        .filter(|name| !super::programs::TWINS.iter().any(|t| t.name == **name))
        .filter_map(|name| {
            let fd = ebpf.program(name)?.fd().ok()?;
            std::os::fd::AsFd::as_fd(fd).try_clone_to_owned().ok()
        })
        .collect();
    Ok(Loaded {
        ebpf,
        form,
        lru_threads,
        choices,
        programs,
    })
}
