//! Everything that talks to the kernel's BPF side: reading its BTF, the program table,
//! loading the object and attaching programs, tracefs, capabilities, program info. Only
//! this module and the collector touch aya.

pub mod btf;
pub mod caps;
pub mod prog_info;
pub mod programs;
pub mod tracefs;

#[cfg(feature = "ebpf")]
pub mod attach;
#[cfg(feature = "ebpf")]
pub mod load;
