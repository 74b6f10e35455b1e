//! `IdMap`: a `HashMap` keyed by cgroup id with a hasher cheap enough for the event path.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A fast hasher for cgroup ids (already well-spread u64 inode numbers); `SipHash` would
/// cost more than the rest of the per-event path.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }
}

/// `HashMap` keyed by cgroup id.
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
