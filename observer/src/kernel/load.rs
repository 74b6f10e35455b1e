//! Loading the kernel object: the socket offsets and the shape of the kernel from BTF, the
//! globals and map sizes, then attaching the enabled signals (see [`super::attach`]).

use aya::{Btf, Ebpf, EbpfLoader};
use observer_common::names;

use super::attach::{Attacher, Choice};
use super::btf::SockOffsets;
use super::programs::KernelShape;
use crate::cli::Cli;
use crate::probe_mode::ProbeMode;
use crate::signal::Signal;

/// The kernel object, built by `cargo xtask build-ebpf` and embedded at build time.
pub static EMBEDDED_OBJECT: &[u8] =
    aya::include_bytes_aligned!(env!("SOCKLAT_EMBEDDED_OBJECT_PATH"));

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
    pub choices: Vec<Choice>,
    /// Descriptors of the attached programs, to read how often the kernel skipped them.
    pub programs: Vec<std::os::fd::OwnedFd>,
}

/// Loads the object and attaches the enabled signals. Fails only for errors that leave
/// nothing to run (no object, no privileges); a signal that cannot attach is reported in
/// its [`Choice`].
///
/// # Errors
/// When the object cannot be read or loaded.
pub fn load(cli: &Cli, shared_ring_size: u32) -> Result<Loaded, LoadError> {
    let bytes_owned;
    let bytes: &[u8] = match &cli.ebpf_object {
        Some(p) => {
            bytes_owned = std::fs::read(p).map_err(|source| LoadError::Object {
                path: p.clone(),
                source,
            })?;
            &bytes_owned
        }
        None => EMBEDDED_OBJECT,
    };
    // Socket field offsets for the connection probes, and the shape of tcp_recvmsg, from
    // kernel BTF (parsed here, dropped before the programs load).
    let (offsets, shape) = match super::btf::Btf::from_sys_fs() {
        Ok(b) => {
            let offsets = SockOffsets::from_btf(&b);
            let shape = KernelShape {
                recvmsg_params: b.func_params("tcp_recvmsg"),
                raw_sock_length: offsets.is_ok()
                    && b.has_tracepoint("sock_send_length")
                    && b.has_tracepoint("sock_recv_length"),
            };
            (offsets, shape)
        }
        Err(e) => (Err(e), KernelShape::default()),
    };
    let o = offsets.as_ref().ok().copied().unwrap_or(SockOffsets {
        sk_family: 16,
        sk_type_protocol: 0,
        sk_type_first: false,
        sk_err: 0,
        sk_cgrp_data: 0,
        cgrp_ptr: 0,
        cgrp_is_tagged_val: false,
        cgroup_kn: 0,
        kn_id: 0,
    });
    let flag = |b: bool| u32::from(b);
    let enable_conn = flag(cli.enabled(Signal::Connections) && offsets.is_ok());
    let mut ebpf = EbpfLoader::new()
        .override_global(names::ENABLE_CONN, &enable_conn, true)
        .override_global(names::OFF_SK_FAMILY, &u64::from(o.sk_family), true)
        .override_global(
            names::OFF_SK_TYPE_PROTOCOL,
            &u64::from(o.sk_type_protocol),
            true,
        )
        .override_global(names::SK_TCP_STREAM, &o.tcp_stream_word(), true)
        .override_global(names::OFF_SK_ERR, &u64::from(o.sk_err), true)
        .override_global(
            names::OFF_SK_CGRP,
            &u64::from(o.sk_cgrp_data + o.cgrp_ptr),
            true,
        )
        .override_global(names::CGRP_TAGGED, &u64::from(o.cgrp_is_tagged_val), true)
        .override_global(names::OFF_CGROUP_KN, &u64::from(o.cgroup_kn), true)
        .override_global(names::OFF_KN_ID, &u64::from(o.kn_id), true)
        .override_global(
            names::ENABLE_SEND,
            &flag(cli.enabled(Signal::SendMsg)),
            true,
        )
        .override_global(
            names::ENABLE_RECV,
            &flag(cli.enabled(Signal::RecvMsg)),
            true,
        )
        .map_max_entries(names::CGROUP_RINGS, cli.max_cgroups)
        .map_max_entries(names::SHARED_RING, shared_ring_size)
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
        log::info!("probe: {}", choice.describe());
        choices.push(choice);
    }
    let names = attacher.attached();
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
