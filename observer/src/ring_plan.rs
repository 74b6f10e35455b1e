//! How rings grow within the ring memory budget ([`crate::ring_budget`]): how busy each
//! ring is ([`Heat`]), and what to do when a ring asks to grow ([`plan`]): grow it if the
//! budget has room, else make room by shrinking rings of colder cgroups (coldest first,
//! only those at most half as busy), else refuse. Pure: the collector applies the plan.

use crate::ring_budget::ring_cost;

pub use crate::ring_budget::INITIAL_RING_SIZE;
/// Bytes one event takes in a ring: an 8-byte record header and the 24-byte event.
pub const RECORD_BYTES: u64 = 32;
/// Rings replaced by smaller ones to make room exist next to their successors until they
/// are retired: the budget keeps room for this many initial rings for those, and growth
/// stops short of it, so that ring memory never exceeds the budget.
pub const SHRINK_RESERVE_RINGS: u64 = 8;

/// Bytes of the budget kept for replacements ([`SHRINK_RESERVE_RINGS`]).
#[must_use]
pub const fn reserve() -> u64 {
    SHRINK_RESERVE_RINGS * ring_cost(INITIAL_RING_SIZE)
}

/// How busy a ring is: records drained per second, smoothed over seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heat {
    this_second: u64,
    rate: u64,
}

impl Heat {
    /// Counts `n` records drained.
    pub fn add(&mut self, n: u64) {
        self.this_second += n;
    }

    /// Once a second: the smoothed rate takes in the second that ended (halving what came
    /// before, so a cgroup that went quiet cools within seconds).
    pub fn roll(&mut self) {
        self.rate = u64::midpoint(self.rate, self.this_second);
        self.this_second = 0;
    }

    /// Records per second now: the smoothed rate, or this second's count if higher (a
    /// burst counts at once).
    #[must_use]
    pub fn now(&self) -> u64 {
        self.rate.max(self.this_second)
    }
}

/// The ring size that `heat` records per second need: what they write in a quarter of a
/// second (the daemon drains every 50 ms, and at each quarter of a ring the kernel wakes
/// it), as a power of two from [`INITIAL_RING_SIZE`] to `max`.
#[must_use]
pub fn need(heat: u64, max: u32) -> u32 {
    let bytes = heat.saturating_mul(RECORD_BYTES) / 4;
    let size = u32::try_from(bytes.next_power_of_two()).unwrap_or(u32::MAX);
    size.clamp(INITIAL_RING_SIZE, max.max(INITIAL_RING_SIZE))
}

/// One ring as the planner sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingView {
    pub size: u32,
    pub heat: u64,
    /// Whether it may be replaced now (installed, not being replaced already, not just
    /// shrunk).
    pub movable: bool,
}

/// A ring (or a cgroup without one) that wants more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Its slot; `None` for a cgroup without a ring.
    pub slot: Option<usize>,
    /// Its ring's size now (0: none).
    pub size: u32,
    pub heat: u64,
    /// The size it asks for.
    pub target: u32,
}

/// What to do with a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Growth {
    /// Give it a ring of this size.
    To(u32),
    /// Not now: replace these rings (slot, new size) by smaller ones; the room they leave
    /// once retired goes to the next request.
    MakeRoom(Vec<(usize, u32)>),
    /// The budget has no room and no colder ring to take it from.
    Deny,
}

/// Decides a request, with `used` bytes of `budget` taken by the rings that exist (those
/// being retired included).
#[must_use]
pub fn plan(budget: u64, used: u64, rings: &[Option<RingView>], req: &Request) -> Growth {
    let ceiling = budget.saturating_sub(reserve());
    let smallest = if req.size == 0 {
        INITIAL_RING_SIZE
    } else {
        req.size.saturating_mul(2)
    };
    // The largest power of two from `smallest` to `target` that fits.
    let mut t = req.target;
    while t >= smallest && t > req.size {
        if used + ring_cost(t) <= ceiling {
            return Growth::To(t);
        }
        t /= 2;
    }
    // Room from colder rings, for one step (x4 from a ring, or a first ring), else x2.
    let steps = if req.size == 0 {
        vec![INITIAL_RING_SIZE]
    } else {
        vec![req.target.min(req.size.saturating_mul(4)), smallest]
    };
    for step in steps {
        if step <= req.size {
            continue;
        }
        let wanted = (used + ring_cost(step)).saturating_sub(ceiling);
        if let Some(victims) = room_from_colder(budget, used, rings, req, wanted) {
            return Growth::MakeRoom(victims);
        }
    }
    Growth::Deny
}

/// Rings to shrink, coldest first, that free `wanted` bytes once retired; `None` if the
/// colder rings cannot free that much. Each replacement's new ring must fit in the budget
/// next to the rings that exist (the reserve is for them).
fn room_from_colder(
    budget: u64,
    used: u64,
    rings: &[Option<RingView>],
    req: &Request,
    wanted: u64,
) -> Option<Vec<(usize, u32)>> {
    let mut colder: Vec<(usize, RingView)> = rings
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.map(|r| (i, r)))
        .filter(|(i, r)| {
            Some(*i) != req.slot
                && r.movable
                && r.size > INITIAL_RING_SIZE
                && r.heat.saturating_mul(2) < req.heat
        })
        .collect();
    colder.sort_by_key(|(_, r)| (r.heat, std::cmp::Reverse(r.size)));
    let mut freed = 0;
    let mut transient = 0;
    let mut out = Vec::new();
    for (i, r) in colder {
        if freed >= wanted {
            break;
        }
        let mut new = need(r.heat, r.size);
        if new >= r.size || used + transient + ring_cost(new) > budget {
            new = INITIAL_RING_SIZE;
        }
        if used + transient + ring_cost(new) > budget {
            break;
        }
        transient += ring_cost(new);
        freed += ring_cost(r.size) - ring_cost(new);
        out.push((i, new));
    }
    (freed >= wanted && !out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u32 = 1024;

    #[expect(
        clippy::unnecessary_wraps,
        reason = "a slot of the table the planner takes"
    )]
    fn ring(size: u32, heat: u64) -> Option<RingView> {
        Some(RingView {
            size,
            heat,
            movable: true,
        })
    }

    fn used(rings: &[Option<RingView>]) -> u64 {
        rings.iter().flatten().map(|r| ring_cost(r.size)).sum()
    }

    #[test]
    fn heat_counts_bursts_at_once_and_cools_within_seconds() {
        let mut h = Heat::default();
        h.add(10_000);
        assert_eq!(h.now(), 10_000);
        h.roll();
        assert_eq!(h.now(), 5_000);
        for _ in 0..4 {
            h.roll();
        }
        assert!(h.now() < 400, "{h:?}");
        assert_eq!(need(0, 256 * K), INITIAL_RING_SIZE);
        assert_eq!(need(40_000, 256 * K), 256 * K);
        assert_eq!(need(10_000_000, 256 * K), 256 * K);
        assert_eq!(need(4_000, 256 * K), 32 * K);
    }

    #[test]
    fn a_ring_grows_as_far_as_the_budget_allows() {
        let rings = vec![ring(8 * K, 50_000), ring(8 * K, 10)];
        let u = used(&rings);
        let req = Request {
            slot: Some(0),
            size: 8 * K,
            heat: 50_000,
            target: 32 * K,
        };
        assert_eq!(plan(u64::MAX, u, &rings, &req), Growth::To(32 * K));
        // Room for 16 KiB only: it gets that.
        let budget = u + ring_cost(16 * K) + reserve();
        assert_eq!(plan(budget, u, &rings, &req), Growth::To(16 * K));
        // No room, and the other ring is at its first size: refused.
        let budget = u + reserve();
        assert_eq!(plan(budget, u, &rings, &req), Growth::Deny);
    }

    /// The budget is full of grown rings: a hot ring makes room by shrinking the coldest
    /// rings first, never one that is more than half as busy, and each replacement fits in
    /// the budget (the reserve is for them).
    #[test]
    fn room_comes_from_the_coldest_rings() {
        let rings = vec![
            ring(8 * K, 80_000),   // 0: asks
            ring(256 * K, 100),    // 1: coldest
            ring(256 * K, 2_000),  // 2
            ring(256 * K, 60_000), // 3: more than half as busy: kept
            None,
            ring(8 * K, 0), // 5: already small
        ];
        let u = used(&rings);
        let budget = u + reserve();
        let req = Request {
            slot: Some(0),
            size: 8 * K,
            heat: 80_000,
            target: 256 * K,
        };
        // x4 (32 KiB) needs less than one cold ring frees: only the coldest shrinks.
        assert_eq!(
            plan(budget, u, &rings, &req),
            Growth::MakeRoom(vec![(1, INITIAL_RING_SIZE)])
        );
        // A bigger step: the next coldest too, to the size its rate needs.
        let req = Request {
            size: 128 * K,
            target: 512 * K,
            ..req
        };
        let mut r2 = rings.clone();
        r2[0] = ring(128 * K, 80_000);
        let u = used(&r2);
        match plan(u + reserve(), u, &r2, &req) {
            Growth::MakeRoom(v) => {
                assert_eq!(v[0], (1, INITIAL_RING_SIZE));
                assert_eq!(v[1], (2, need(2_000, 256 * K)));
                assert!(v.iter().all(|(i, _)| *i != 3 && *i != 0), "{v:?}");
            }
            other => panic!("{other:?}"),
        }
        // Nobody colder than half its rate: refused.
        let req = Request { heat: 150, ..req };
        assert_eq!(plan(u + reserve(), u, &r2, &req), Growth::Deny);
    }

    /// A new cgroup with no ring, the budget full: a first ring if a colder cgroup can give
    /// room, else none (its events stay on the shared ring).
    #[test]
    fn a_cgroup_without_a_ring_takes_room_from_colder_ones() {
        let rings = vec![ring(256 * K, 10), ring(256 * K, 5_000)];
        let u = used(&rings);
        let req = Request {
            slot: None,
            size: 0,
            heat: 3_000,
            target: INITIAL_RING_SIZE,
        };
        assert_eq!(
            plan(
                u + reserve() + ring_cost(INITIAL_RING_SIZE),
                u,
                &rings,
                &req
            ),
            Growth::To(INITIAL_RING_SIZE)
        );
        assert_eq!(
            plan(u + reserve(), u, &rings, &req),
            Growth::MakeRoom(vec![(0, INITIAL_RING_SIZE)])
        );
        let cold = Request { heat: 10, ..req };
        assert_eq!(plan(u + reserve(), u, &rings, &cold), Growth::Deny);
    }

    /// Rings in transition (being replaced, just shrunk) are not taken from.
    #[test]
    fn rings_that_are_not_movable_are_left_alone() {
        let rings = vec![
            ring(8 * K, 80_000),
            Some(RingView {
                size: 256 * K,
                heat: 0,
                movable: false,
            }),
        ];
        let u = used(&rings);
        let req = Request {
            slot: Some(0),
            size: 8 * K,
            heat: 80_000,
            target: 32 * K,
        };
        assert_eq!(plan(u + reserve(), u, &rings, &req), Growth::Deny);
    }
}
