//! The ring memory budget: what a ring buffer costs in the daemon's memory cgroup, the
//! `--ring-memory` setting, and the default derived from the memory cgroup's limit.
//!
//! Ring pages are charged to the memory cgroup of the process that creates the ring (the
//! daemon) when the ring is made, whatever the daemon maps of it: a budget on them is what
//! keeps a daemon with hundreds of busy cgroups under its pod's limit. How rings grow and
//! shrink within the budget is the ring plan (`ring_plan.rs`).

use std::fmt::Write as _;

/// Size of a cgroup's first ring. Rings grow (x4, up to `--ring-size`) each time the kernel
/// has to wake the daemon because one is a quarter full, so quiet cgroups keep small rings.
pub const INITIAL_RING_SIZE: u32 = 8 * 1024;

/// Bytes a ring of `size` data bytes costs, measured in a memory cgroup on Linux 6.18
/// (`/work/notes` of issue 18: 200 rings of each size, created and mapped as the daemon
/// does): the data pages, three meta pages (the ring's header, consumer and producer
/// pages), the map and its page array, and the page tables of the double mapping. An upper
/// bound: 8 KiB rings measured 22 282 bytes, 256 KiB 279 183, 1 MiB 1 074 790.
#[must_use]
pub const fn ring_cost(size: u32) -> u64 {
    let size = size as u64;
    size + 16 * 1024 + size / 64
}

/// Bytes of heap the daemon keeps per tracked cgroup under load (its histograms, counters
/// and labels), reserved by the default budget for every cgroup `--max-cgroups` allows
/// (measured: README, "Memory on big nodes").
pub const HEAP_PER_CGROUP: u64 = 64 * 1024;
/// Bytes reserved by the default budget for scrapes in flight (snapshots, rendering,
/// compression buffers) and allocator slack.
pub const HEAP_RESERVE: u64 = 24 << 20;

/// `--ring-memory`: `auto`, or a number of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingMemory {
    /// Derived from the memory cgroup's limit (see [`auto_budget`]).
    Auto,
    /// This many bytes for the shared ring and every per-cgroup ring together.
    Bytes(u64),
}

impl RingMemory {
    /// Parses `auto`, or bytes with an optional `K`, `M` or `G` suffix (KiB, MiB, GiB).
    ///
    /// # Errors
    /// One line naming the problem.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t == "auto" {
            return Ok(Self::Auto);
        }
        let (num, mult) = match t.char_indices().last() {
            Some((i, 'K')) => (&t[..i], 1u64 << 10),
            Some((i, 'M')) => (&t[..i], 1 << 20),
            Some((i, 'G')) => (&t[..i], 1 << 30),
            _ => (t, 1),
        };
        let n: u64 = num.parse().map_err(|_| {
            format!("'{s}' is not auto or a size in bytes (e.g. 96M, 1G or 100663296)")
        })?;
        n.checked_mul(mult)
            .map(Self::Bytes)
            .ok_or_else(|| format!("'{s}' is too large"))
    }
}

/// What the daemon knows of its memory cgroup when it sets its budget.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryFacts {
    /// The limit that applies to the daemon (its memory cgroup's or an ancestor's).
    pub limit: Option<u64>,
    /// Bytes charged to its memory cgroup once the kernel object is loaded: kernel maps
    /// (which grow with the CPUs and the table sizes), the shared ring, the heap after
    /// start-up, the binary's pages.
    pub in_use: Option<u64>,
}

/// The budget in force and how it was set (for `--check` and the log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Bytes for all rings together: the shared ring and the per-cgroup rings.
    pub bytes: u64,
    pub how: String,
}

/// Why a budget cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BudgetError {
    /// `--ring-memory` leaves no room for the shared ring, which is made at load.
    #[error(
        "--ring-memory {given} is less than the shared ring takes ({shared} bytes with \
         --ring-size {ring_size}): give at least {shared}, or auto"
    )]
    BelowSharedRing {
        given: u64,
        shared: u64,
        ring_size: u32,
    },
}

/// `n` bytes in MiB, for messages.
#[must_use]
pub fn mib(n: u64) -> String {
    #[expect(clippy::cast_precision_loss, reason = "a size for people to read")]
    let m = n as f64 / f64::from(1u32 << 20);
    format!("{m:.1} MiB")
}

/// The bytes reserved for the daemon's heap by the default budget with `max_cgroups`.
#[must_use]
pub fn heap_reserve(max_cgroups: u32) -> u64 {
    HEAP_RESERVE + HEAP_PER_CGROUP * u64::from(max_cgroups)
}

/// The budget from the setting: a number as given (at least the shared ring), or, for
/// `auto`, the memory limit minus what the daemon used once loaded minus the heap reserve
/// of [`heap_reserve`] (the shared ring is in both what is used and the budget, so it is
/// added back); with no limit, room for every cgroup's largest ring. An `auto` budget too
/// small for any per-cgroup ring keeps the shared ring alone (events of every cgroup then
/// go through it).
///
/// # Errors
/// When a given budget is below the shared ring's cost.
pub fn budget(
    setting: RingMemory,
    facts: &MemoryFacts,
    max_cgroups: u32,
    ring_size: u32,
    shared_size: u32,
) -> Result<Budget, BudgetError> {
    let shared = ring_cost(shared_size);
    match setting {
        RingMemory::Bytes(given) if given < shared => Err(BudgetError::BelowSharedRing {
            given,
            shared,
            ring_size,
        }),
        RingMemory::Bytes(given) => {
            let mut how = "--ring-memory".to_string();
            if let Some(limit) = facts.limit
                && given > limit
            {
                let _ = write!(
                    how,
                    "; above the memory limit ({}): the kernel may kill the daemon",
                    mib(limit)
                );
            }
            Ok(Budget { bytes: given, how })
        }
        RingMemory::Auto => Ok(auto_budget(facts, max_cgroups, ring_size, shared)),
    }
}

fn auto_budget(facts: &MemoryFacts, max_cgroups: u32, ring_size: u32, shared: u64) -> Budget {
    let Some(limit) = facts.limit else {
        let bytes = shared + u64::from(max_cgroups) * ring_cost(ring_size);
        return Budget {
            bytes,
            how: format!(
                "auto, no memory limit: every cgroup's ring at --ring-size ({max_cgroups} x \
                 {ring_size} bytes) and the shared ring"
            ),
        };
    };
    let in_use = facts.in_use.unwrap_or(0);
    let reserve = heap_reserve(max_cgroups);
    let room = limit.saturating_sub(in_use).saturating_sub(reserve);
    let bytes = room + shared;
    let mut how = format!(
        "auto: memory limit {} - in use after loading {} - {} heap reserve ({} KiB per cgroup \
         of --max-cgroups {max_cgroups}, {} for scrapes) + the shared ring {}",
        mib(limit),
        mib(in_use),
        mib(reserve),
        HEAP_PER_CGROUP >> 10,
        mib(HEAP_RESERVE),
        mib(shared)
    );
    if room < ring_cost(INITIAL_RING_SIZE) {
        let _ = write!(
            how,
            "; no room for per-cgroup rings: every event goes through the shared ring (raise \
             the limit or lower --max-cgroups)"
        );
    }
    Budget { bytes, how }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse() {
        assert_eq!(RingMemory::parse("auto"), Ok(RingMemory::Auto));
        assert_eq!(RingMemory::parse("96M"), Ok(RingMemory::Bytes(96 << 20)));
        assert_eq!(RingMemory::parse("1G"), Ok(RingMemory::Bytes(1 << 30)));
        assert_eq!(RingMemory::parse("512K"), Ok(RingMemory::Bytes(512 << 10)));
        assert_eq!(RingMemory::parse("4096"), Ok(RingMemory::Bytes(4096)));
        assert!(
            RingMemory::parse("lots")
                .unwrap_err()
                .contains("auto or a size")
        );
        assert!(RingMemory::parse("-1M").is_err());
        assert!(
            RingMemory::parse("99999999999999G")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn costs_cover_what_was_measured() {
        // Measured charges (see `ring_cost`): the model is an upper bound within 12%.
        for (size, measured) in [
            (8192u32, 22_282u64),
            (32_768, 47_186),
            (262_144, 279_183),
            (1 << 20, 1_074_790),
        ] {
            let c = ring_cost(size);
            assert!(c >= measured, "{size}: {c} < {measured}");
            assert!(c * 100 <= measured * 112, "{size}: {c} vs {measured}");
        }
    }

    /// The `DaemonSet`'s limit: the budget is what is left after the loaded daemon and its
    /// heap reserve.
    #[test]
    fn auto_budget_leaves_the_heap_its_room() {
        let facts = MemoryFacts {
            limit: Some(192 << 20),
            in_use: Some(36 << 20),
        };
        let shared = 1 << 20;
        let b = budget(RingMemory::Auto, &facts, 1024, 256 << 10, shared).unwrap();
        let want = (192u64 << 20) - (36 << 20) - heap_reserve(1024) + ring_cost(shared);
        assert_eq!(b.bytes, want);
        assert!(b.how.contains("memory limit 192.0 MiB"), "{}", b.how);
        // A limit below what the daemon needs keeps the shared ring alone.
        let tight = MemoryFacts {
            limit: Some(72 << 20),
            in_use: Some(36 << 20),
        };
        let b = budget(RingMemory::Auto, &tight, 1024, 256 << 10, shared).unwrap();
        assert_eq!(b.bytes, ring_cost(shared));
        assert!(b.how.contains("no room for per-cgroup rings"), "{}", b.how);
        // No limit: room for every cgroup's largest ring.
        let b = budget(
            RingMemory::Auto,
            &MemoryFacts::default(),
            10,
            1 << 20,
            4 << 20,
        )
        .unwrap();
        assert_eq!(b.bytes, ring_cost(4 << 20) + 10 * ring_cost(1 << 20));
    }

    #[test]
    fn a_given_budget_must_hold_the_shared_ring() {
        let e = budget(
            RingMemory::Bytes(1 << 20),
            &MemoryFacts::default(),
            1024,
            256 << 10,
            1 << 20,
        )
        .unwrap_err();
        assert!(e.to_string().contains("less than the shared ring"), "{e}");
        let b = budget(
            RingMemory::Bytes(300 << 20),
            &MemoryFacts {
                limit: Some(192 << 20),
                in_use: None,
            },
            1024,
            256 << 10,
            1 << 20,
        )
        .unwrap();
        assert_eq!(b.bytes, 300 << 20);
        assert!(b.how.contains("above the memory limit"), "{}", b.how);
    }
}
