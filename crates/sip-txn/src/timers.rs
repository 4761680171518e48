use std::time::{Duration, Instant};

/// T1, T2 and T4 of RFC 3261 §17.1.1.1 / Table 4. Every other timer derives from these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate, 500 ms by default.
    pub t1: Duration,
    /// Maximum retransmit interval for non-INVITE requests and INVITE responses, 4 s.
    pub t2: Duration,
    /// Maximum time a message stays in the network, 5 s.
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl TimerConfig {
    /// 64*T1: Timers B, F, H, J, L and M.
    pub fn t1x64(&self) -> Duration {
        self.t1 * 64
    }
}

/// A fixed table of one-shot deadlines indexed by a small enum (quinn's pattern).
#[derive(Debug, Clone)]
pub(crate) struct TimerTable<const N: usize> {
    at: [Option<Instant>; N],
}

impl<const N: usize> Default for TimerTable<N> {
    fn default() -> Self {
        TimerTable { at: [None; N] }
    }
}

impl<const N: usize> TimerTable<N> {
    pub fn set(&mut self, i: usize, at: Instant) {
        self.at[i] = Some(at);
    }
    pub fn stop(&mut self, i: usize) {
        self.at[i] = None;
    }
    pub fn stop_all(&mut self) {
        self.at = [None; N];
    }
    pub fn next(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }
    /// Takes the earliest expired timer, if any.
    pub fn expired(&mut self, now: Instant) -> Option<usize> {
        let (i, _) = self
            .at
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.filter(|t| *t <= now).map(|t| (i, t)))
            .min_by_key(|(_, t)| *t)?;
        self.at[i] = None;
        Some(i)
    }
}
