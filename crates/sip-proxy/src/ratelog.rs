//! Log lines about what peers send are rate-limited: a flood of malformed or forged packets
//! must not become a flood of log lines. Each kind of line is written at most once a second,
//! with the number of lines not written since.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// The kinds of limited lines.
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub enum Kind {
    Malformed,
    ForgedResponse,
    ForeignSource,
    ForgedRoute,
}

const KINDS: usize = 4;

/// One limiter per kind.
#[derive(Debug, Default)]
pub struct LogLimit {
    epoch: OnceLock<Instant>,
    /// The second (since `epoch`, plus one) a line of the kind was last written.
    last: [AtomicU64; KINDS],
    /// Lines not written since.
    skipped: [AtomicU64; KINDS],
}

impl LogLimit {
    /// `Some(lines skipped since the last one)` when a line of `kind` may be written at `now`.
    pub fn allow(&self, now: Instant, kind: Kind) -> Option<u64> {
        let k = kind as usize;
        let epoch = *self.epoch.get_or_init(|| now);
        let sec = now.saturating_duration_since(epoch).as_secs() + 1;
        let last = self.last[k].load(Ordering::Relaxed);
        if last == sec
            || self.last[k]
                .compare_exchange(last, sec, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.skipped[k].fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.skipped[k].swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_line_a_second_per_kind_with_the_count_skipped() {
        let l = LogLimit::default();
        let t = Instant::now();
        assert_eq!(l.allow(t, Kind::Malformed), Some(0));
        for _ in 0..1000 {
            assert_eq!(
                l.allow(t + Duration::from_millis(500), Kind::Malformed),
                None
            );
        }
        assert_eq!(l.allow(t, Kind::ForgedRoute), Some(0), "kinds are apart");
        assert_eq!(
            l.allow(t + Duration::from_millis(1000), Kind::Malformed),
            Some(1000)
        );
        assert_eq!(
            l.allow(t + Duration::from_millis(1999), Kind::Malformed),
            None
        );
    }
}
