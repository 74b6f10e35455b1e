//! The load that `cargo xtask bench` and `cargo xtask soak` measure the daemon under, the
//! observers they measure, and what they read back. Loads go to loopback only.

pub mod bpfstats;
pub mod cgroups;
pub mod measure;
pub mod memcg;
pub mod observers;
pub mod scrape;
mod sys;
pub mod traffic;
