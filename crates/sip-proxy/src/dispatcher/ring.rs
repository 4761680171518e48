//! Consistent hashing over a set's destinations: a ring of virtual nodes (points) per
//! destination, in proportion to its weight. A key maps to the first point at or after its
//! hash whose destination is selectable. When a destination fails, only the keys that
//! mapped to it move, and because its points are interleaved with everyone else's they
//! spread over all the others instead of landing on one neighbour (kamailio issue 2361).

/// Stable 64-bit hash (FNV-1a, then a splitmix64 finaliser for avalanche).
pub fn hash_key(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &c in b {
        h ^= c as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The ring: sorted `(point, destination index)`.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    points: Vec<(u64, u32)>,
}

/// Virtual nodes for a destination of average weight.
const BASE_POINTS: u64 = 160;

impl Ring {
    /// Builds a ring for destinations identified by `ids` (their URIs) with `weights`.
    pub fn new(ids: &[&str], weights: &[u32]) -> Ring {
        let total: u64 = weights.iter().map(|&w| w.max(1) as u64).sum();
        let avg = (total / weights.len().max(1) as u64).max(1);
        let mut points = Vec::new();
        for (i, (id, &w)) in ids.iter().zip(weights).enumerate() {
            let n = (BASE_POINTS * w.max(1) as u64 / avg).clamp(8, 4096);
            for v in 0..n {
                points.push((hash_key(format!("{id}#{v}").as_bytes()), i as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// Destinations for `key` in ring order, distinct, keeping those `ok` accepts, at most
    /// `max` of them.
    pub fn lookup(&self, key: u64, max: usize, ok: impl Fn(usize) -> bool, out: &mut Vec<usize>) {
        if self.points.is_empty() || max == 0 {
            return;
        }
        let start = self.points.partition_point(|(p, _)| *p < key);
        let n = self.points.len();
        for k in 0..n {
            let d = self.points[(start + k) % n].1 as usize;
            if !out.contains(&d) && ok(d) {
                out.push(d);
                if out.len() >= max {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("sip:10.0.0.{i}:5060")).collect()
    }

    fn first(ring: &Ring, key: u64, down: Option<usize>) -> usize {
        let mut out = vec![];
        ring.lookup(key, 1, |d| Some(d) != down, &mut out);
        out[0]
    }

    #[test]
    fn a_failed_destinations_share_spreads_over_all_the_others() {
        let ids = ids(4);
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let ring = Ring::new(&refs, &[1, 1, 1, 1]);
        let mut moved_to = [0u32; 4];
        let mut moved = 0;
        let keys = 20_000u64;
        for k in 0..keys {
            let key = hash_key(format!("call-{k}").as_bytes());
            let before = first(&ring, key, None);
            let after = first(&ring, key, Some(2));
            if before != 2 {
                assert_eq!(before, after, "only the failed destination's keys move");
            } else {
                moved += 1;
                moved_to[after] += 1;
            }
        }
        assert!(
            (moved as f64 / keys as f64 - 0.25).abs() < 0.05,
            "share of 2: {moved}"
        );
        for d in [0, 1, 3] {
            let share = moved_to[d] as f64 / moved as f64;
            assert!(
                (share - 1.0 / 3.0).abs() < 0.08,
                "destination {d} took {share:.2} of the moved keys: {moved_to:?}"
            );
        }
    }

    #[test]
    fn weights_shape_the_share() {
        let ids = ids(2);
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let ring = Ring::new(&refs, &[1, 3]);
        let n = 20_000;
        let ones = (0..n)
            .filter(|k| first(&ring, hash_key(format!("k{k}").as_bytes()), None) == 1)
            .count();
        let share = ones as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.05, "{share}");
    }

    #[test]
    fn lookup_returns_distinct_fallbacks() {
        let ids = ids(3);
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let ring = Ring::new(&refs, &[1, 1, 1]);
        let mut out = vec![];
        ring.lookup(42, 5, |_| true, &mut out);
        out.sort();
        assert_eq!(out, vec![0, 1, 2]);
    }
}
