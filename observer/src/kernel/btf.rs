//! A minimal reader of kernel BTF (/sys/kernel/btf/vmlinux): struct member offsets by name.
//!
//! Rust eBPF has no CO-RE field relocations, so the connection probes read socket fields at
//! offsets the daemon looks up here and hands to the kernel programs as globals.

use std::collections::HashMap;

/// Why kernel BTF could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The BTF file cannot be read.
    #[error("cannot read {path}")]
    Read {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The blob does not start with the little-endian BTF magic.
    #[error("not a little-endian BTF blob")]
    Magic,
    /// A section or record lies outside the blob.
    #[error("BTF truncated at byte {0}")]
    Truncated(usize),
    /// A type kind this reader does not know: its size, and so every later type's offset,
    /// is unknown.
    #[error("BTF type {id} has kind {kind}, which this reader does not know")]
    UnknownKind { id: u32, kind: u32 },
    /// A member the probes need is missing.
    #[error("kernel BTF has no usable struct {0}.{1}")]
    Missing(&'static str, &'static str),
}

/// Where the running kernel's BTF is.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

// BTF kinds (include/uapi/linux/btf.h). Every kind has a fixed record after the common
// header; a kind this list does not know stops the parse (its size is unknown).
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Clone, Debug)]
struct Member {
    name: u32,
    type_id: u32,
    /// Offset in bits; `None` for a bitfield.
    bit_offset: Option<u32>,
}

#[derive(Clone, Debug)]
struct Composite {
    members: Vec<Member>,
}

/// The struct and union types of a BTF blob.
pub struct Btf {
    strings: Vec<u8>,
    /// Type id -> composite (struct or union); other kinds are not kept.
    composites: HashMap<u32, Composite>,
    /// Struct name -> type ids with that name (the first complete one is used).
    by_name: HashMap<String, Vec<u32>>,
    /// Function name -> its prototype's type id.
    funcs: HashMap<String, u32>,
    /// Function prototype type id -> number of parameters.
    protos: HashMap<u32, u16>,
    /// Typedef names (`btf_trace_<tracepoint>` says a tracepoint exists).
    typedefs: std::collections::HashSet<String>,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Truncated(at))
}

impl Btf {
    /// Reads the running kernel's BTF.
    ///
    /// # Errors
    /// When it cannot be read or parsed.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        let bytes = std::fs::read(VMLINUX).map_err(|source| BtfError::Read {
            path: VMLINUX,
            source,
        })?;
        Self::parse(&bytes)
    }

    /// Parses a little-endian BTF blob.
    ///
    /// # Errors
    /// On a blob that is not BTF, is truncated, or has a type kind this reader does not know.
    pub fn parse(b: &[u8]) -> Result<Self, BtfError> {
        if b.len() < 24 || b[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Magic);
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let type_off = u32_at(b, 8)? as usize;
        let type_len = u32_at(b, 12)? as usize;
        let str_off = u32_at(b, 16)? as usize;
        let str_len = u32_at(b, 20)? as usize;
        let types = b
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Truncated(hdr_len + type_off))?;
        let strings = b
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Truncated(hdr_len + str_off))?
            .to_vec();
        let mut btf = Btf {
            strings,
            composites: HashMap::new(),
            by_name: HashMap::new(),
            funcs: HashMap::new(),
            protos: HashMap::new(),
            typedefs: std::collections::HashSet::new(),
        };
        let mut at = 0;
        let mut id = 1u32;
        while at + 12 <= types.len() {
            let name = u32_at(types, at)?;
            let info = u32_at(types, at + 4)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            at += 12;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                _ => return Err(BtfError::UnknownKind { id, kind }),
            };
            if kind == KIND_TYPEDEF {
                btf.typedefs.insert(btf.string(name).to_string());
            }
            if kind == KIND_FUNC {
                let n = btf.string(name).to_string();
                btf.funcs.insert(n, u32_at(types, at - 4)?);
            } else if kind == KIND_FUNC_PROTO {
                btf.protos
                    .insert(id, u16::try_from(vlen).unwrap_or(u16::MAX));
            }
            if kind == KIND_STRUCT || kind == KIND_UNION {
                let mut members = Vec::with_capacity(vlen);
                for m in 0..vlen {
                    let base = at + 12 * m;
                    let off = u32_at(types, base + 8)?;
                    let bit_offset = if kind_flag {
                        (off >> 24 == 0).then_some(off & 0x00ff_ffff)
                    } else {
                        Some(off)
                    };
                    members.push(Member {
                        name: u32_at(types, base)?,
                        type_id: u32_at(types, base + 4)?,
                        bit_offset,
                    });
                }
                if kind == KIND_STRUCT {
                    let n = btf.string(name).to_string();
                    if !n.is_empty() {
                        btf.by_name.entry(n).or_default().push(id);
                    }
                }
                btf.composites.insert(id, Composite { members });
            }
            at += extra;
            id += 1;
        }
        Ok(btf)
    }

    fn string(&self, off: u32) -> &str {
        let start = off as usize;
        let Some(rest) = self.strings.get(start..) else {
            return "";
        };
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Finds `member` in composite `id`, looking into anonymous struct/union members;
    /// returns its byte offset and type id.
    fn find(&self, id: u32, member: &str, depth: u32) -> Option<(u32, u32)> {
        let c = self.composites.get(&id)?;
        for m in &c.members {
            let name = self.string(m.name);
            if name == member {
                let bits = m.bit_offset?;
                return (bits % 8 == 0).then_some((bits / 8, m.type_id));
            }
            if name.is_empty()
                && depth < 8
                && let (Some(bits), Some((inner, t))) =
                    (m.bit_offset, self.find(m.type_id, member, depth + 1))
            {
                return Some((bits / 8 + inner, t));
            }
        }
        None
    }

    /// Byte offset of `member` in `struct name` (searching anonymous members); `None` when
    /// the struct or member does not exist or the member is a bitfield.
    #[must_use]
    pub fn offset(&self, name: &str, member: &str) -> Option<u32> {
        self.by_name
            .get(name)?
            .iter()
            .find_map(|&id| self.find(id, member, 0).map(|(off, _)| off))
    }

    /// Number of parameters of kernel function `name`.
    #[must_use]
    pub fn func_params(&self, name: &str) -> Option<u16> {
        self.protos.get(self.funcs.get(name)?).copied()
    }

    /// Whether the kernel has tracepoint `name` (its `btf_trace_<name>` typedef).
    #[must_use]
    pub fn has_tracepoint(&self, name: &str) -> bool {
        self.typedefs.contains(&format!("btf_trace_{name}"))
    }
}

/// Field offsets the connection probes need, from the running kernel's BTF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOffsets {
    pub sk_family: u32,
    /// The first of `sock.sk_type` and `sk_protocol`, which are adjacent u16s (checked: the
    /// probes read both at once).
    pub sk_type_protocol: u32,
    /// Whether `sk_type` comes first there.
    pub sk_type_first: bool,
    pub sk_err: u32,
    pub sk_cgrp_data: u32,
    /// Offset of the cgroup pointer inside `struct sock_cgroup_data`; before Linux 5.15 the
    /// pointer is the `val` word of a union, with tag bits (see the kernel program).
    pub cgrp_ptr: u32,
    pub cgrp_is_tagged_val: bool,
    pub cgroup_kn: u32,
    pub kn_id: u32,
    /// `sock_common.skc_state`.
    pub sk_state: u32,
    /// `sock_common.skc_flags`.
    pub sk_flags: u32,
    /// `sock.sk_shutdown`, `None` where it is a bitfield.
    pub sk_shutdown: Option<u32>,
    /// `tcp_sock.segs_out`.
    pub segs_out: u32,
    /// `sock_common.skc_daddr`, then `skc_rcv_saddr` (checked).
    pub skc_addrs: u32,
    /// `sock_common.skc_dport`, then `skc_num` (checked).
    pub skc_ports: u32,
    /// `sock_common.skc_v6_daddr`, then `skc_v6_rcv_saddr` (checked); `None` without IPv6.
    pub skc_v6_addrs: Option<u32>,
    /// `inet_sock.inet_sport`.
    pub inet_sport: u32,
    /// `sock_common.skc_net`.
    pub skc_net: u32,
    /// `net.ns.inum`.
    pub net_inum: u32,
    /// `sk_buff.data`.
    pub skb_data: u32,
}

/// Offsets of the current task's way to its cgroup v2 cgroup (`task->cgroups->dfl_cgrp`),
/// for the direct loads of the task-storage object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskOffsets {
    /// `task_struct.cgroups`.
    pub task_cgroups: u32,
    /// `css_set.dfl_cgrp`.
    pub css_dfl_cgrp: u32,
}

impl TaskOffsets {
    /// Looks the offsets up; `None` when either member is missing.
    #[must_use]
    pub fn from_btf(btf: &Btf) -> Option<Self> {
        Some(Self {
            task_cgroups: btf.offset("task_struct", "cgroups")?,
            css_dfl_cgrp: btf.offset("css_set", "dfl_cgrp")?,
        })
    }
}

impl SockOffsets {
    /// The 4 bytes at `sk_type_protocol` of a TCP stream socket, as a little-endian u32.
    #[must_use]
    pub fn tcp_stream_word(&self) -> u32 {
        const SOCK_STREAM: u32 = 1;
        const IPPROTO_TCP: u32 = 6;
        if self.sk_type_first {
            SOCK_STREAM | (IPPROTO_TCP << 16)
        } else {
            IPPROTO_TCP | (SOCK_STREAM << 16)
        }
    }

    /// Looks the offsets up.
    ///
    /// # Errors
    /// Naming the member that is missing.
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        let need =
            |s: &'static str, m: &'static str| btf.offset(s, m).ok_or(BtfError::Missing(s, m));
        let (sk_type, sk_protocol) = (need("sock", "sk_type")?, need("sock", "sk_protocol")?);
        if sk_type.abs_diff(sk_protocol) != 2 {
            return Err(BtfError::Missing("sock", "sk_type next to sk_protocol"));
        }
        let pair = |s: &'static str, a: &'static str, b: &'static str, gap: u32| {
            let first = need(s, a)?;
            if need(s, b)? == first + gap {
                Ok(first)
            } else {
                Err(BtfError::Missing(s, b))
            }
        };
        let (cgrp_ptr, tagged) = match btf.offset("sock_cgroup_data", "cgroup") {
            Some(o) => (o, false),
            None => (need("sock_cgroup_data", "val")?, true),
        };
        Ok(Self {
            sk_family: need("sock_common", "skc_family")?,
            sk_type_protocol: sk_type.min(sk_protocol),
            sk_type_first: sk_type < sk_protocol,
            sk_err: need("sock", "sk_err")?,
            sk_cgrp_data: need("sock", "sk_cgrp_data")?,
            cgrp_ptr,
            cgrp_is_tagged_val: tagged,
            cgroup_kn: need("cgroup", "kn")?,
            kn_id: need("kernfs_node", "id")?,
            sk_state: need("sock_common", "skc_state")?,
            sk_flags: need("sock_common", "skc_flags")?,
            sk_shutdown: btf.offset("sock", "sk_shutdown"),
            segs_out: need("tcp_sock", "segs_out")?,
            skc_addrs: pair("sock_common", "skc_daddr", "skc_rcv_saddr", 4)?,
            skc_ports: pair("sock_common", "skc_dport", "skc_num", 2)?,
            skc_v6_addrs: pair("sock_common", "skc_v6_daddr", "skc_v6_rcv_saddr", 16).ok(),
            inet_sport: need("inet_sock", "inet_sport")?,
            skc_net: need("sock_common", "skc_net")?,
            net_inum: need("net", "ns")? + need("ns_common", "inum")?,
            skb_data: need("sk_buff", "data")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny BTF blob: int, struct inner { int a; int b; }, struct outer { int x;
    /// union { struct inner in; int y; }; int bf:3 (bitfield) }.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0a\0b\0inner\0x\0in\0y\0outer\0bf\0".to_vec();
        let s = |name: &str| -> u32 {
            let pos = strings
                .windows(name.len() + 2)
                .position(|w| {
                    w[0] == 0 && &w[1..=name.len()] == name.as_bytes() && w[name.len() + 1] == 0
                })
                .unwrap();
            u32::try_from(pos + 1).unwrap()
        };
        let mut t = Vec::new();
        let mut push = |v: &[u32]| v.iter().for_each(|x| t.extend_from_slice(&x.to_le_bytes()));
        // 1: int (size 4) + int encoding word
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: struct inner, 2 members
        push(&[s("inner"), (KIND_STRUCT << 24) | 2, 8]);
        push(&[s("a"), 1, 0]);
        push(&[s("b"), 1, 32]);
        // 3: anonymous union { inner in; int y; }
        push(&[0, (KIND_UNION << 24) | 2, 8]);
        push(&[s("in"), 2, 0]);
        push(&[s("y"), 1, 0]);
        // 4: struct outer with kind_flag (bitfield encoding), 3 members
        push(&[s("outer"), (1 << 31) | (KIND_STRUCT << 24) | 3, 24]);
        push(&[s("x"), 1, 0]);
        push(&[0, 3, 64]);
        push(&[s("bf"), 1, (3 << 24) | 128]);
        let mut b = vec![0x9f, 0xeb, 1, 0];
        let hdr_len = 24u32;
        for v in [
            hdr_len,
            0,
            u32::try_from(t.len()).unwrap(),
            u32::try_from(t.len()).unwrap(),
            u32::try_from(strings.len()).unwrap(),
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn member_offsets_including_anonymous_members() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.offset("inner", "b"), Some(4));
        assert_eq!(btf.offset("outer", "x"), Some(0));
        assert_eq!(btf.offset("outer", "y"), Some(8));
        assert_eq!(btf.offset("outer", "in"), Some(8));
        assert_eq!(btf.offset("outer", "bf"), None, "bitfields are refused");
        assert_eq!(btf.offset("outer", "nope"), None);
        assert_eq!(btf.offset("nope", "x"), None);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(matches!(
            Btf::parse(b"not btf at all, not at all."),
            Err(BtfError::Magic)
        ));
        let mut b = blob();
        b.truncate(30);
        assert!(matches!(Btf::parse(&b), Err(BtfError::Truncated(_))));
    }

    /// A kind the reader does not know stops the parse: skipping it with a guessed size
    /// would read every later type at a wrong offset.
    #[test]
    fn an_unknown_kind_is_an_error() {
        let mut b = blob();
        // Type 1 (the int) becomes kind 31.
        let at = 24 + 4;
        b[at..at + 4].copy_from_slice(&(31u32 << 24).to_le_bytes());
        assert!(matches!(
            Btf::parse(&b),
            Err(BtfError::UnknownKind { id: 1, kind: 31 })
        ));
    }

    /// On a machine with kernel BTF, the socket offsets resolve (and are plausible).
    #[test]
    fn running_kernel_socket_offsets() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("no /sys/kernel/btf/vmlinux here: skipped");
            return;
        };
        let o = SockOffsets::from_btf(&btf).unwrap();
        assert_eq!(
            o.sk_family, 16,
            "skc_family has been at offset 16 of sock_common for years"
        );
        assert!(o.sk_type_protocol > o.sk_family && o.sk_cgrp_data > 0);
        assert_eq!(btf.func_params("tcp_sendmsg"), Some(3));
        let n = btf.func_params("tcp_recvmsg").unwrap();
        assert!((4..=6).contains(&n), "tcp_recvmsg has {n} parameters");
    }
}
