//! The maps the collector takes out of the loaded object, each converted to its typed form
//! by one generic taker.

use aya::maps::{HashOfMaps, Map, MapData, MapError, RingBuf};
use observer_common::names;

use super::counters;
use crate::error::Error;

/// Maps the collector takes from the loaded object.
pub struct Maps {
    pub shared: RingBuf<MapData>,
    pub outer: HashOfMaps<MapData, u64, MapData>,
    /// The per-CPU counter maps, summed at scrape time.
    pub counters: counters::Maps,
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

/// Takes map `name` out of the object as a `T`.
fn take<T>(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(Error::MissingMap(name))?;
    T::try_from(map).map_err(|source| Error::Map { name, source })
}

impl Maps {
    /// Takes the collector's maps out of the loaded object.
    ///
    /// # Errors
    /// When a map is missing or of another type (an object from another build).
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, Error> {
        let logger = match aya_log::EbpfLogger::init(ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                log::warn!("kernel log messages unavailable: {e}");
                None
            }
        };
        Ok(Self {
            shared: take(ebpf, names::SHARED_RING)?,
            outer: take(ebpf, names::CGROUP_RINGS)?,
            counters: counters::Maps {
                lost: take(ebpf, names::LOST_EVENTS)?,
                faults: take(ebpf, names::FAULT_COUNTS)?,
                retransmits: take(ebpf, names::RETRANSMITS)?,
                fault_cache: take(ebpf, names::FAULT_CACHE)?,
                conn_counts: take(ebpf, names::CONN_COUNTS)?,
                starts_evicted: take(ebpf, names::STARTS_EVICTED)?,
                nested_runs: take(ebpf, names::NESTED_RUNS)?,
            },
            logger,
        })
    }
}
