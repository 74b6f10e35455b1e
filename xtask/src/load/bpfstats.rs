//! The kernel's own accounting of BPF program runs (`kernel.bpf_stats_enabled`): run counts
//! and run time per program, read before and after a load.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use observer::kernel::prog_info;

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled` set to 1 while this lives, and back to what it was after.
pub struct StatsEnabled {
    before: String,
}

impl StatsEnabled {
    /// Turns the accounting on.
    pub fn on() -> Result<Self> {
        let before = std::fs::read_to_string(SYSCTL).context(SYSCTL)?;
        std::fs::write(SYSCTL, "1").context(SYSCTL)?;
        Ok(Self {
            before: before.trim().to_string(),
        })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, &self.before);
    }
}

/// (run time ns, runs) per program id, with its name.
pub type Snapshot = BTreeMap<u32, (String, u64, u64)>;

/// Every loaded program's counts now.
pub fn snapshot() -> Result<Snapshot> {
    Ok(prog_info::all()
        .context("list BPF programs")?
        .into_iter()
        .map(|p| (p.id, (p.name, p.run_time_ns, p.run_cnt)))
        .collect())
}

/// What each program that exists in `after` spent between the snapshots:
/// name -> (run time ns, runs), programs of the same name summed.
pub fn between(before: &Snapshot, after: &Snapshot) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (id, (name, t, n)) in after {
        let (t0, n0) = before.get(id).map_or((0, 0), |(_, t, n)| (*t, *n));
        let e = out.entry(name.clone()).or_default();
        e.0 += t - t0.min(*t);
        e.1 += n - n0.min(*n);
    }
    out
}
