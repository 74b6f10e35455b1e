//! The counters the kernel keeps per CPU (lost events, page faults, retransmits, entries of
//! the connection table, evicted call starts, runs of the twin programs), summed over CPUs at scrape time: per cgroup,
//! or for the whole node.

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use aya::util::nr_cpus;
use observer_common::{
    ConnHook, ConnTableCounts, FaultCache, FaultCounts, FaultSlot, StartTable, UNATTRIBUTED, names,
};

use crate::aggregate::{KernelCounts, sum_faults};
use crate::error::Error;
use crate::idmap::IdMap;

/// The kernel's per-CPU counter maps.
pub struct Maps {
    pub lost: PerCpuHashMap<MapData, u64, u64>,
    pub faults: PerCpuHashMap<MapData, u64, FaultSlot>,
    pub retransmits: PerCpuHashMap<MapData, u64, u64>,
    pub fault_cache: PerCpuArray<MapData, FaultCache>,
    pub conn_counts: PerCpuArray<MapData, ConnTableCounts>,
    pub starts_evicted: PerCpuArray<MapData, u64>,
    pub nested_runs: PerCpuArray<MapData, u64>,
}

/// The kernel's per-CPU counters, read.
pub struct KernelCounters {
    maps: Maps,
    /// Entries the connection table holds (`--max-connections`).
    conn_capacity: u64,
    /// The most connection entries known evicted so far (see [`Counts::connections_evicted`]).
    conn_evicted: u64,
    /// Highest fault counts shown per cgroup: a reading that catches the kernel halfway
    /// through moving counts from a per-CPU cache to the hash misses them once (see
    /// `aggregate::sum_faults`); never show less.
    fault_floor: IdMap<FaultCounts>,
}

/// One reading of the counters, summed over CPUs.
#[derive(Default)]
pub struct Counts {
    /// Per cgroup.
    pub per_cgroup: IdMap<KernelCounts>,
    /// Events lost whose cgroup the kernel could not record.
    pub unattributed_lost: u64,
    /// Connection states the full table evicted, at least: the entries made beyond those
    /// removed at CLOSE and beyond the table's size, the highest that was so far (entries
    /// in the table never exceed its size; the kernel's LRU frees up to 128 entries per
    /// CPU ahead of need, which this bound does not see).
    pub connections_evicted: u64,
    /// In-flight call starts evicted, per [`StartTable`].
    pub starts_evicted: [u64; StartTable::ALL.len()],
}

impl KernelCounters {
    /// Takes the maps; makes the unattributed-loss slot exist, so the kernel can count into
    /// it.
    ///
    /// # Errors
    /// When the slot cannot be created.
    pub fn new(mut maps: Maps, max_connections: u32) -> Result<Self, Error> {
        let cpus = nr_cpus().map_err(|(_, e)| Error::Io("nr_cpus", e))?;
        let zeros = PerCpuValues::try_from(vec![0u64; usize::try_from(cpus.get()).unwrap_or(1)])
            .map_err(|e| Error::Io("per-cpu values", e))?;
        maps.lost
            .insert(&UNATTRIBUTED, zeros, 0)
            .map_err(|source| Error::Map {
                name: names::LOST_EVENTS,
                source,
            })?;
        Ok(Self {
            maps,
            conn_capacity: u64::from(max_connections),
            conn_evicted: 0,
            fault_floor: IdMap::default(),
        })
    }

    /// The connection table's counts summed over CPUs, and the evictions they prove.
    fn connections_evicted(&mut self) -> u64 {
        let (mut inserted, mut removed) = (0u64, 0u64);
        if let Ok(per_cpu) = self.maps.conn_counts.get(&0, 0) {
            for c in per_cpu.iter() {
                inserted += c.inserted;
                removed += c.removed;
            }
        }
        let beyond = inserted
            .saturating_sub(removed)
            .saturating_sub(self.conn_capacity);
        self.conn_evicted = self.conn_evicted.max(beyond);
        self.conn_evicted
    }

    /// Reads every counter, summed over CPUs.
    pub fn read(&mut self) -> Counts {
        // The caches, the hash, the caches again (see `aggregate::sum_faults`).
        let caches = |m: &PerCpuArray<MapData, FaultCache>| {
            m.get(&0, 0).map(|v| v.to_vec()).unwrap_or_default()
        };
        let before = caches(&self.maps.fault_cache);
        let hash: Vec<(u64, PerCpuValues<FaultSlot>)> = self.maps.faults.iter().flatten().collect();
        let after = caches(&self.maps.fault_cache);
        let mut faults = sum_faults(&before, hash.iter().map(|(id, v)| (*id, &v[..])), &after);
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
        let mut lost = sum(&self.maps.lost);
        let unattributed_lost = lost.remove(&UNATTRIBUTED).unwrap_or(0);
        let mut per_cgroup: IdMap<KernelCounts> = IdMap::default();
        for (id, f) in faults {
            per_cgroup.entry(id).or_default().faults = f;
        }
        for (id, n) in lost {
            per_cgroup.entry(id).or_default().lost = n;
        }
        for (id, n) in sum(&self.maps.retransmits) {
            per_cgroup.entry(id).or_default().retransmits = n;
        }
        let mut starts_evicted = [0; StartTable::ALL.len()];
        for (t, n) in StartTable::ALL.iter().zip(&mut starts_evicted) {
            *n = self
                .maps
                .starts_evicted
                .get(&(*t as u32), 0)
                .map_or(0, |v| v.iter().sum());
        }
        Counts {
            per_cgroup,
            unattributed_lost,
            connections_evicted: self.connections_evicted(),
            starts_evicted,
        }
    }

    /// Connection tracepoint hits the twin programs ran because the kernel skipped their
    /// first program for them (counted in the first's recursion misses, yet not lost).
    pub fn nested_runs(&self) -> u64 {
        ConnHook::ALL
            .iter()
            .map(|h| {
                self.maps
                    .nested_runs
                    .get(&(*h as u32), 0)
                    .map_or(0, |v| v.iter().sum::<u64>())
            })
            .sum()
    }

    /// Drops a dead cgroup's counters.
    pub fn forget(&mut self, id: u64) {
        let _ = self.maps.lost.remove(&id);
        let _ = self.maps.faults.remove(&id);
        let _ = self.maps.retransmits.remove(&id);
        self.fault_floor.remove(&id);
    }
}
