//! Attaching programs: one path per program type, and the choice per signal of the best
//! probe mode that attaches (or the forced one), with the reasons the others did not.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use aya::programs::{
    BtfTracePoint, FEntry, FExit, KProbe, ProgramError, RawTracePoint, TracePoint,
};
use aya::{Btf, Ebpf};

use super::programs::{self, Hook, KernelShape, Program};
use super::tracefs::{self, TracefsError};
use crate::probe_mode::ProbeMode;
use crate::report::chain;
use crate::signal::Signal;

/// Why a program or a mode did not attach.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// fentry/fexit need the kernel's BTF.
    #[error("no kernel BTF (/sys/kernel/btf/vmlinux)")]
    NoBtf,
    /// The object lacks a program of the table (built from another source?).
    #[error("program {0} missing from the kernel object")]
    MissingProgram(&'static str),
    /// The kernel refused to load or attach the program.
    #[error("{hook}")]
    Program {
        hook: String,
        #[source]
        source: ProgramError,
    },
    /// A classic tracepoint cannot be used.
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    /// The signal has no probes in this mode.
    #[error("{signal} has no {mode} probes")]
    NoProbes {
        signal: &'static str,
        mode: &'static str,
    },
    /// The tracepoint mode times socket calls from syscall entries, by number: it knows
    /// the syscall tables of these architectures only.
    #[error(
        "the tracepoint mode knows the syscall numbers of x86_64 only, not of {0}: use fentry or kprobe"
    )]
    NoSyscallTable(&'static str),
    /// The signal needs what the kernel's BTF did not give.
    #[error(transparent)]
    Btf(#[from] super::btf::BtfError),
}

/// What was chosen for one signal, and why.
#[derive(Clone, Debug)]
pub struct Choice {
    pub signal: Signal,
    /// The mode in use, or `None` when nothing attached.
    pub mode: Option<ProbeMode>,
    /// Modes tried before, with the reason each was not used (the error and its sources).
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
            let _ = write!(s, "\n    {}", m.rejected_line(why));
        }
        s
    }
}

/// The error and its sources on one line, cut short: verifier logs are long, and their
/// first lines say what failed.
fn reason(e: &AttachError) -> String {
    let mut s = chain(e);
    if s.len() > 400 {
        let mut end = 400;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// Attaches programs of a loaded object, each at most once.
pub struct Attacher<'a> {
    pub ebpf: &'a mut Ebpf,
    pub btf: Option<&'a Btf>,
    pub shape: KernelShape,
    attached: BTreeSet<&'static str>,
}

impl<'a> Attacher<'a> {
    #[must_use]
    pub fn new(ebpf: &'a mut Ebpf, btf: Option<&'a Btf>, shape: KernelShape) -> Self {
        Self {
            ebpf,
            btf,
            shape,
            attached: BTreeSet::new(),
        }
    }

    /// Names of the programs attached so far.
    #[must_use]
    pub fn attached(&self) -> Vec<&'static str> {
        self.attached.iter().copied().collect()
    }

    fn attach_one(&mut self, prog: Program) -> Result<(), AttachError> {
        if self.attached.contains(prog.name) {
            return Ok(());
        }
        if let Hook::Tp {
            category,
            name,
            fields,
        } = prog.hook
        {
            tracefs::check_layout(category, name, fields)?;
        }
        let btf = self.btf;
        let name = prog.name;
        let wrong_type = |source| program_error(name, source);
        let p = self
            .ebpf
            .program_mut(prog.name)
            .ok_or(AttachError::MissingProgram(prog.name))?;
        let (hook, r) = match prog.hook {
            Hook::FEntry(f) => {
                let btf = btf.ok_or(AttachError::NoBtf)?;
                let p: &mut FEntry = p.try_into().map_err(wrong_type)?;
                (
                    format!("fentry {f}"),
                    p.load(f, btf).and_then(|()| p.attach().map(drop)),
                )
            }
            Hook::FExit(f) => {
                let btf = btf.ok_or(AttachError::NoBtf)?;
                let p: &mut FExit = p.try_into().map_err(wrong_type)?;
                (
                    format!("fexit {f}"),
                    p.load(f, btf).and_then(|()| p.attach().map(drop)),
                )
            }
            Hook::KProbe(f) | Hook::KRetProbe(f) => {
                let p: &mut KProbe = p.try_into().map_err(wrong_type)?;
                (
                    format!(
                        "{} {f}",
                        if matches!(prog.hook, Hook::KProbe(_)) {
                            "kprobe"
                        } else {
                            "kretprobe"
                        }
                    ),
                    p.load().and_then(|()| p.attach(f, 0).map(drop)),
                )
            }
            Hook::RawTp(tp) => {
                let p: &mut RawTracePoint = p.try_into().map_err(wrong_type)?;
                (
                    format!("raw tracepoint {tp}"),
                    p.load().and_then(|()| p.attach(tp).map(drop)),
                )
            }
            Hook::BtfTp(tp) => {
                let btf = btf.ok_or(AttachError::NoBtf)?;
                let p: &mut BtfTracePoint = p.try_into().map_err(wrong_type)?;
                (
                    format!("tp_btf {tp}"),
                    p.load(tp, btf).and_then(|()| p.attach().map(drop)),
                )
            }
            Hook::Tp { category, name, .. } => {
                let p: &mut TracePoint = p.try_into().map_err(wrong_type)?;
                (
                    format!("tracepoint {category}:{name}"),
                    p.load().and_then(|()| p.attach(category, name).map(drop)),
                )
            }
        };
        match r {
            Ok(()) => {
                self.attached.insert(prog.name);
                Ok(())
            }
            Err(source) => {
                self.unload(prog.name);
                Err(program_error(&hook, source))
            }
        }
    }

    fn unload(&mut self, prog: &'static str) {
        if let Some(p) = self.ebpf.program_mut(prog) {
            let _ = match p {
                aya::programs::Program::FEntry(p) => p.unload(),
                aya::programs::Program::FExit(p) => p.unload(),
                aya::programs::Program::KProbe(p) => p.unload(),
                aya::programs::Program::RawTracePoint(p) => p.unload(),
                aya::programs::Program::BtfTracePoint(p) => p.unload(),
                aya::programs::Program::TracePoint(p) => p.unload(),
                _ => Ok(()),
            };
        }
        self.attached.remove(prog);
    }

    /// Attaches every program of (signal, mode), or none of those it newly attached.
    ///
    /// # Errors
    /// The first program that did not attach, and why.
    pub fn attach_mode(&mut self, signal: Signal, mode: ProbeMode) -> Result<(), AttachError> {
        if mode == ProbeMode::Tracepoint
            && matches!(signal, Signal::SendMsg | Signal::RecvMsg)
            && !programs::SYSCALL_TABLE_KNOWN
        {
            return Err(AttachError::NoSyscallTable(std::env::consts::ARCH));
        }
        let progs = programs::for_mode(signal, mode, self.shape);
        if progs.is_empty() {
            return Err(AttachError::NoProbes {
                signal: signal.name(),
                mode: mode.name(),
            });
        }
        let mut newly = Vec::new();
        for prog in progs {
            let was = self.attached.contains(prog.name);
            if let Err(e) = self.attach_one(prog) {
                for p in newly {
                    self.unload(p);
                }
                return Err(e);
            }
            if !was {
                newly.push(prog.name);
            }
        }
        Ok(())
    }

    /// Attaches `signal` in the first of `modes` that works; the [`Choice`] says which, and
    /// why the ones before did not.
    pub fn choose(&mut self, signal: Signal, modes: &[ProbeMode]) -> Choice {
        let mut choice = Choice {
            signal,
            mode: None,
            rejected: Vec::new(),
            note: None,
        };
        for &mode in modes {
            match self.attach_mode(signal, mode) {
                Ok(()) => {
                    choice.mode = Some(mode);
                    if signal == Signal::PageFaults && mode == ProbeMode::Tracepoint {
                        choice.note = Some("counts only: no durations or major/minor");
                    }
                    break;
                }
                Err(e) => choice.rejected.push((mode, reason(&e))),
            }
        }
        choice
    }
}

fn program_error(hook: &str, source: ProgramError) -> AttachError {
    AttachError::Program {
        hook: hook.to_string(),
        source,
    }
}
