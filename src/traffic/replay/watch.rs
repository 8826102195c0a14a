//! The watch: per-account simulation state beside the API's (ground truth, detector
//! features and flags), and the detectors' pass over the accounts active since the last one.

use super::{Event, Replay};
use crate::traffic::detect::prada::PradaState;
use crate::traffic::detect::{flags, score, Features, Signals};
use std::cmp::Reverse;

/// Per-account simulation state beside the API's (ground truth and detector state).
#[derive(Default)]
pub(super) struct Watch {
    pub(super) attacker: Vec<bool>,
    /// Campaign accounts that also carry real customers' queries (proxy resellers).
    pub(super) reseller: Vec<bool>,
    /// Identity-group size, cached when the account opens (and for the accounts open at the
    /// start, once their groups are complete): looking it up at every detector pass costs
    /// three hash lookups per judged account and took the full-scale replay from 31 s to 47 s.
    pub(super) cluster: Vec<u32>,
    pub(super) features: Vec<Features>,
    pub(super) prada: Vec<PradaState>,
    pub(super) flagged: Vec<bool>,
    /// Tier level reached (0: none, k: `traffic.tiers.levels[k - 1]`) and the minute it was.
    pub(super) tier: Vec<u8>,
    pub(super) tier_at: Vec<u32>,
    pub(super) actioned: Vec<bool>,
    /// Throttled (adaptive campaign) or fallback-marked accounts the campaign stopped using.
    pub(super) abandoned: Vec<bool>,
    pub(super) regrow_scheduled: Vec<bool>,
    pub(super) is_dirty: Vec<bool>,
    /// Accounts with queries since the last detector pass.
    pub(super) dirty: Vec<u32>,
}

impl Watch {
    pub(super) fn push(&mut self, attacker: bool, cluster: usize, prada: bool) {
        self.attacker.push(attacker);
        self.cluster.push(cluster as u32);
        self.features.push(Features::default());
        self.tier.push(0);
        self.tier_at.push(0);
        if prada {
            self.prada.push(PradaState::default());
        }
        for v in [
            &mut self.reseller,
            &mut self.flagged,
            &mut self.actioned,
            &mut self.abandoned,
            &mut self.regrow_scheduled,
            &mut self.is_dirty,
        ] {
            v.push(false);
        }
    }
}

impl Replay<'_> {
    /// Every `check_minutes`: lift tier gates, then ask each detector about the accounts
    /// active since the last pass; a flag schedules the action after the configured delay.
    pub(super) fn detector_pass(&mut self, minute: u32) {
        let now = minute as f64 * 60.0;
        if self.tr.access.gates() {
            let api = &mut self.api;
            api.accounts
                .lift_gates(&api.config.tiers, &self.tr.access, now);
        }
        let det = &self.tr.detectors;
        let jump_done = self.spans.is_some_and(|s| minute >= s.end);
        let w = &mut self.watch;
        let mut dirty = std::mem::take(&mut w.dirty);
        for &a in &dirty {
            let a = a as usize;
            w.is_dirty[a] = false;
            let signals = Signals {
                cluster: w.cluster[a] as usize,
                prada_w: w
                    .prada
                    .get_mut(a)
                    .filter(|p| p.samples() >= det.prada_min)
                    .and_then(|p| p.judge()),
                jump_window_done: jump_done,
            };
            let f = &w.features[a];
            if self.book.on {
                let s = score::scores(det, f, &signals, &self.reference, &self.book.avail);
                self.book.update(a, &s, minute, f.total);
            }
            if let (Some(t), Some(j)) = (&self.tr.tiers, self.tier_score) {
                tier_pass(t, j, &self.book, w, &mut self.pending, a, minute, det);
                continue;
            }
            if !w.flagged[a] && flags(det, f, &signals, &self.reference) != 0 {
                w.flagged[a] = true;
                let at = minute.saturating_add(det.action_delay_minutes);
                self.pending.push(Reverse((at, Event::Act, a as u32)));
            }
        }
        dirty.clear();
        w.dirty = dirty;
    }
}

/// Tiers at a detector pass: account `a` moves to the highest level its score has reached,
/// unless it changed level less than the cooldown ago; the level's action is scheduled.
#[allow(clippy::too_many_arguments)]
fn tier_pass(
    t: &crate::traffic::Tiers,
    j: usize,
    book: &score::ScoreBook,
    w: &mut Watch,
    pending: &mut std::collections::BinaryHeap<Reverse<(u32, Event, u32)>>,
    a: usize,
    minute: u32,
    det: &crate::traffic::detect::DetectorConfig,
) {
    let Some(cal) = book.cal.as_ref() else {
        return;
    };
    let mut v = cal.value(j, &book.max[a]);
    if j == score::LOGISTIC {
        v = 1.0 / (1.0 + (-v).exp());
    }
    let level = t.levels.iter().filter(|l| v >= l.at).count();
    let cooled = w.tier[a] == 0 || minute >= w.tier_at[a].saturating_add(t.cooldown_minutes);
    if level > w.tier[a] as usize && cooled {
        w.tier[a] = level as u8;
        w.tier_at[a] = minute;
        w.flagged[a] = true;
        let at = minute.saturating_add(det.action_delay_minutes);
        pending.push(Reverse((at, Event::Tier((level - 1) as u8), a as u32)));
    }
}
