//! The daemon's userspace pipeline alone: decode + aggregation of ring records, fed
//! synthetic events, on one core. Run by `cargo xtask bench` (or `cargo bench -p observer
//! --bench pipeline`); prints `@name value` lines that xtask reports.

#![expect(
    clippy::cast_precision_loss,
    reason = "benchmark arithmetic on small counts"
)]

use std::time::{Duration, Instant};

use observer::aggregate::Aggregator;
use observer_common::{Event, EventKind};

const CGROUPS: u64 = 64;
const BATCH: usize = 4096;

fn records(cgroup_id: u64, seed: u64) -> Vec<[u8; observer_common::EVENT_SIZE]> {
    let mut rng = observer::testutil::Rng(seed | 1);
    (0..BATCH)
        .map(|i| {
            let x = rng.next_u64();
            let kind = if i % 2 == 0 {
                EventKind::SendMsg
            } else {
                EventKind::RecvMsg
            };
            let result = if x.is_multiple_of(50) { -11 } else { 64 };
            Event {
                cgroup_id,
                value: 1_000 + x % 5_000_000,
                kind: kind as u32,
                result,
            }
            .to_bytes()
        })
        .collect()
}

fn main() {
    let mut agg = Aggregator::new(4096, Duration::from_mins(1));
    let per_cgroup: Vec<Vec<_>> = (1..=CGROUPS).map(|c| records(c, c * 7919)).collect();
    for c in 1..=CGROUPS {
        agg.admit(c);
    }
    let start = Instant::now();
    // Per-cgroup rings: one lookup per batch, decode + record per event.
    let mut n: u64 = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        for (i, recs) in per_cgroup.iter().enumerate() {
            let now = agg.now(start.elapsed());
            let mut sink = agg.sink(i as u64 + 1, now);
            for r in recs {
                sink.push(r);
            }
            n += recs.len() as u64;
        }
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    println!("@pipeline_per_cgroup_ring_events_per_sec {rate:.0}");

    // Shared ring: cgroup looked up per event.
    let mixed: Vec<[u8; observer_common::EVENT_SIZE]> = per_cgroup
        .iter()
        .flat_map(|v| v.iter().take(64).copied())
        .collect();
    let mut n: u64 = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        let now = agg.now(start.elapsed());
        for r in &mixed {
            agg.push_shared(r, now);
        }
        n += mixed.len() as u64;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    println!("@pipeline_shared_ring_events_per_sec {rate:.0}");
    // Keep the work observable.
    println!("@received {}", agg.intake().received);
}
