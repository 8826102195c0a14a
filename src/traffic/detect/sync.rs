//! Synchronised timing: burst minutes, when far more accounts are active than in the last
//! quarter hour, and accounts whose active minutes are mostly bursts (one central scheduler).

use super::{DetectorConfig, Features};
use std::collections::VecDeque;

/// Minutes of history a burst is judged against.
pub const WINDOW: usize = 15;

/// Accounts active this minute and the last [`WINDOW`] minutes' counts.
#[derive(Default)]
pub struct Bursts {
    pub this_minute: Vec<u32>,
    recent: VecDeque<usize>,
}

impl Bursts {
    /// Close a minute: if it was a burst, count it for every account active in it.
    pub fn close_minute(&mut self, cfg: &DetectorConfig, features: &mut [Features]) {
        if self.recent.len() >= WINDOW {
            let mut window = [0usize; WINDOW];
            for (w, &c) in window.iter_mut().zip(&self.recent) {
                *w = c;
            }
            let median = *window.select_nth_unstable(WINDOW / 2).1 as f64;
            let n = self.this_minute.len() as f64;
            if n > median + cfg.burst_z * median.max(1.0).sqrt()
                && n > median * (1.0 + cfg.burst_rel)
            {
                for &a in &self.this_minute {
                    features[a as usize].burst_minutes += 1;
                }
            }
        }
        self.recent.push_back(self.this_minute.len());
        if self.recent.len() > WINDOW {
            self.recent.pop_front();
        }
        self.this_minute.clear();
    }
}

/// Share of today's active minutes that were bursts.
pub fn burst_share(f: &Features) -> f64 {
    f.burst_minutes as f64 / f.active_minutes.max(1) as f64
}

pub fn fires(max_share: f64, min_active: u32, f: &Features) -> bool {
    f.active_minutes >= min_active && burst_share(f) > max_share
}
