//! What a replay produces: traffic totals, the detection outcome and its day-by-day
//! timeline, and the API as the campaign left it.

use super::Replay;
use crate::api::Api;
use crate::traffic::detect::score::{self, ScoreOutcome};
use crate::traffic::harvest::HarvestLog;
use serde::Serialize;

/// Traffic totals of a replay.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplayStats {
    pub queries: u64,
    /// Attacker queries the teacher answered.
    pub attacker_served: u64,
    /// Attacker queries the fallback model answered (visible or silent).
    pub attacker_fallback: u64,
    /// Benign queries the teacher answered.
    pub benign_served: u64,
    pub throttled: u64,
    /// Queries refused, challenged or region-blocked.
    pub blocked_banned: u64,
    pub benign_blocked: u64,
    pub wall_seconds: f64,
}

/// Detection outcome of a replay.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DetectionStats {
    /// Simulated days to the first action on an attacker account (None: never).
    pub days_to_first_action: Option<f64>,
    /// Days from the limit change to the first action on an attacker account after it.
    pub days_to_first_action_after_change: Option<f64>,
    /// Attacker queries served before the last attacker account was lost (all if never).
    pub harvested_before_stop: u64,
    /// Share of attacker accounts actioned (banned, throttled, challenged or rerouted).
    pub recall: f64,
    /// Share of benign accounts actioned.
    pub false_positive_rate: f64,
    /// Benign queries refused because their account was banned or suspended.
    pub benign_blocked: u64,
    /// Benign queries throttled on accounts a throttle action had cut.
    pub benign_throttled: u64,
    /// Benign queries answered by the fallback model.
    pub benign_degraded: u64,
    /// Challenges sent to attacker / benign accounts.
    pub challenged_attackers: u64,
    pub challenged_benign: u64,
    /// Challenged benign users who gave up.
    pub benign_dropped: u64,
    /// What the attacker paid: API spend and identity challenges, USD.
    pub attacker_spend_usd: f64,
    pub attacker_challenge_usd: f64,
    /// Attacker accounts opened (initial, scheduled and regrown) and what they and their
    /// identities cost, USD.
    pub attacker_accounts_opened: u64,
    pub attacker_accounts_usd: f64,
    /// Accounts regrown after a loss.
    pub regrown: u64,
    /// Per simulated day.
    pub timeline: Vec<DayPoint>,
}

/// One simulated day of a replay.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct DayPoint {
    pub day: u32,
    pub attacker_served: u64,
    pub benign_served: u64,
    /// Actions taken that day on attacker / benign accounts.
    pub attacker_actions: u64,
    pub benign_actions: u64,
    /// Attacker accounts able to send at the end of the day.
    pub attacker_accounts_active: u64,
}

/// What a replay produced: its totals, detection outcome, harvest sample, and the API as the
/// campaign left it (for later calls on the same accounts).
pub struct Outcome {
    pub stats: ReplayStats,
    pub detection: DetectionStats,
    pub harvest: Option<HarvestLog>,
    pub api: Api,
    /// The attacker's accounts, in opening order.
    pub attacker_accounts: Vec<u32>,
    /// Minute of each action taken, and the account.
    pub actions: Vec<(u32, u32)>,
    /// Queries the campaign planned (before limit changes and detection).
    pub planned: f64,
    /// Every score's detection at the calibrated operating points (empty without a
    /// calibration: `Replay::with_calibration`).
    pub scores: Vec<ScoreOutcome>,
    /// Lines written by `Replay::with_export`, or its first write error (None: no export).
    pub exported: Option<std::io::Result<u64>>,
}

impl Replay<'_> {
    /// Totals and rates at the end of the window.
    pub(super) fn finish(mut self) -> Outcome {
        self.day.attacker_accounts_active = self.camp.active.len() as u64;
        self.d.timeline.push(std::mem::take(&mut self.day));
        let acc = &self.api.accounts;
        let w = &self.watch;
        let identities: std::collections::HashSet<u32> = self
            .camp
            .all
            .iter()
            .map(|&a| acc.identity[a as usize].payment)
            .collect();
        let camp = &self.tr.campaign;
        self.d.attacker_accounts_usd = self.d.attacker_accounts_opened as f64
            * self.att.account_cost_usd
            + identities.len() as f64 * camp.identity_cost_usd;
        let count = |att: bool| (0..acc.len()).filter(|&a| w.attacker[a] == att).count();
        let actioned = |att: bool| {
            (0..acc.len())
                .filter(|&a| w.attacker[a] == att && w.actioned[a])
                .count()
        };
        let (attackers, benign) = (count(true), count(false));
        self.d.recall = if attackers == 0 {
            f64::NAN
        } else {
            actioned(true) as f64 / attackers as f64
        };
        self.d.false_positive_rate = actioned(false) as f64 / benign.max(1) as f64;
        self.d.harvested_before_stop = self.stop_at.unwrap_or(self.stats.attacker_served);
        self.d.benign_blocked = self.stats.benign_blocked;
        self.d.attacker_spend_usd = self
            .camp
            .all
            .iter()
            .map(|&a| acc.ledger[a as usize].spend_usd)
            .sum();
        let total: Vec<u32> = w.features.iter().map(|f| f.total).collect();
        let groups = benign_groups(&self.tr.population, acc.len());
        let names: Vec<&str> = groups.0.iter().map(String::as_str).collect();
        let g = score::Groups {
            names: &names,
            group: &groups.1,
        };
        let split = (names.len() > 1).then_some(&g);
        let scores = score::outcomes(&self.book, &w.attacker, &total, split);
        let exported = self.export.take().map(|x| x.finish());
        Outcome {
            exported,
            scores,
            stats: self.stats,
            detection: self.d,
            harvest: self.harvest,
            attacker_accounts: self.camp.all,
            actions: self.actions,
            planned: self.planned,
            api: self.api,
        }
    }
}

/// The benign groups of a replay's accounts: the crowd (the first `users`), then each segment
/// kind's accounts, opened after the crowd's in the order configured; later accounts (the
/// campaign's) are in no group.
fn benign_groups(pop: &crate::traffic::PopulationConfig, n: usize) -> (Vec<String>, Vec<u8>) {
    let mut names = vec!["crowd".to_string()];
    let mut group = vec![u8::MAX; n];
    let users = pop.users.min(n);
    group[..users].fill(0);
    let mut at = users;
    for seg in &pop.segments {
        let name = seg.kind.name().to_string();
        let gi = match names.iter().position(|x| *x == name) {
            Some(i) => i,
            None => {
                names.push(name);
                names.len() - 1
            }
        };
        let end = (at + seg.accounts).min(n);
        group[at..end].fill(gi as u8);
        at = end;
    }
    (names, group)
}
