//! The counters the kernel keeps per CPU (lost events, page faults, retransmits, untracked
//! connections), summed over CPUs into one count per cgroup at scrape time.

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use aya::util::nr_cpus;
use observer_common::{FaultCache, FaultCounts, UNATTRIBUTED, names};

use crate::aggregate::KernelCounts;
use crate::error::Error;
use crate::idmap::IdMap;

/// The kernel's per-CPU counter maps.
pub struct KernelCounters {
    lost: PerCpuHashMap<MapData, u64, u64>,
    faults: PerCpuHashMap<MapData, u64, FaultCounts>,
    retransmits: PerCpuHashMap<MapData, u64, u64>,
    fault_cache: PerCpuArray<MapData, FaultCache>,
    conn_untracked: PerCpuArray<MapData, u64>,
    /// Highest fault counts shown per cgroup: the kernel moves counts from its per-CPU
    /// cache to the hash while we read, so a scrape may miss some; never show less.
    fault_floor: IdMap<FaultCounts>,
}

/// One reading of the counters, summed over CPUs.
#[derive(Default)]
pub struct Counts {
    /// Per cgroup.
    pub per_cgroup: IdMap<KernelCounts>,
    /// Events lost whose cgroup the kernel could not record.
    pub unattributed_lost: u64,
    /// Connections that closed with no state in the kernel's table.
    pub untracked_connections: u64,
}

impl KernelCounters {
    /// Takes the maps; makes the unattributed-loss slot exist, so the kernel can count into
    /// it.
    ///
    /// # Errors
    /// When the slot cannot be created.
    pub fn new(
        mut lost: PerCpuHashMap<MapData, u64, u64>,
        faults: PerCpuHashMap<MapData, u64, FaultCounts>,
        retransmits: PerCpuHashMap<MapData, u64, u64>,
        fault_cache: PerCpuArray<MapData, FaultCache>,
        conn_untracked: PerCpuArray<MapData, u64>,
    ) -> Result<Self, Error> {
        let cpus = nr_cpus().map_err(|(_, e)| Error::Io("nr_cpus", e))?;
        let zeros = PerCpuValues::try_from(vec![0u64; usize::try_from(cpus.get()).unwrap_or(1)])
            .map_err(|e| Error::Io("per-cpu values", e))?;
        lost.insert(&UNATTRIBUTED, zeros, 0)
            .map_err(|source| Error::Map {
                name: names::LOST_EVENTS,
                source,
            })?;
        Ok(Self {
            lost,
            faults,
            retransmits,
            fault_cache,
            conn_untracked,
            fault_floor: IdMap::default(),
        })
    }

    /// Reads every counter, summed over CPUs.
    pub fn read(&mut self) -> Counts {
        let mut faults: IdMap<FaultCounts> = IdMap::default();
        for (id, per_cpu) in self.faults.iter().flatten() {
            let f = faults.entry(id).or_default();
            for c in per_cpu.iter() {
                f.add(c);
            }
        }
        // Then the per-CPU caches (read after the hash: a count moving meanwhile is missed
        // once, never counted twice).
        if let Ok(per_cpu) = self.fault_cache.get(&0, 0) {
            for c in per_cpu.iter().filter(|c| c.cgroup_id != 0) {
                faults.entry(c.cgroup_id).or_default().add(&FaultCounts {
                    user: c.counts.user,
                    kernel: c.counts.kernel,
                    ..FaultCounts::default()
                });
            }
        }
        for (id, f) in &mut faults {
            let floor = self.fault_floor.entry(*id).or_default();
            *floor = floor.max(*f);
            *f = *floor;
        }
        let sum = |map: &PerCpuHashMap<MapData, u64, u64>| -> IdMap<u64> {
            map.iter()
                .flatten()
                .map(|(id, per_cpu)| (id, per_cpu.iter().sum()))
                .collect()
        };
        let mut lost = sum(&self.lost);
        let unattributed_lost = lost.remove(&UNATTRIBUTED).unwrap_or(0);
        let mut per_cgroup: IdMap<KernelCounts> = IdMap::default();
        for (id, f) in faults {
            per_cgroup.entry(id).or_default().faults = f;
        }
        for (id, n) in lost {
            per_cgroup.entry(id).or_default().lost = n;
        }
        for (id, n) in sum(&self.retransmits) {
            per_cgroup.entry(id).or_default().retransmits = n;
        }
        Counts {
            per_cgroup,
            unattributed_lost,
            untracked_connections: self.conn_untracked.get(&0, 0).map_or(0, |v| v.iter().sum()),
        }
    }

    /// Drops a dead cgroup's counters.
    pub fn forget(&mut self, id: u64) {
        let _ = self.lost.remove(&id);
        let _ = self.faults.remove(&id);
        let _ = self.retransmits.remove(&id);
        self.fault_floor.remove(&id);
    }
}
