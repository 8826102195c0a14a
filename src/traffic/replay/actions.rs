//! The actions a flag leads to (ban, fallback, throttle, challenge) taking effect on an
//! account, a challenge's outcome, and the campaign's reaction to an action.

use super::{Event, Replay};
use crate::api::Status;
use crate::traffic::action::{self, Action};
use std::cmp::Reverse;

impl Replay<'_> {
    /// Tier level `k`'s action on account `a`, and with cluster escalation on a `ban` or
    /// `challenge` level the same at once for every account sharing an identity with it.
    pub(super) fn tier_act(&mut self, a: usize, minute: u32, k: usize) {
        let Some(t) = &self.tr.tiers else { return };
        let action = t.levels[k].action;
        self.act(a, minute, action);
        if !(t.escalate_cluster && matches!(action, Action::Ban | Action::Challenge)) {
            return;
        }
        let id = self.api.accounts.identity[a];
        for m in self.clusters.members(&id) {
            let m = m as usize;
            if m == a
                || self.watch.tier[m] as usize > k
                || self.api.accounts.status[m] == Status::Banned
            {
                continue;
            }
            self.watch.tier[m] = (k + 1) as u8;
            self.watch.tier_at[m] = minute;
            self.act(m, minute, action);
            self.after_action(m, minute);
        }
    }

    /// `action` takes effect on account `a`.
    pub(super) fn act(&mut self, a: usize, minute: u32, action: Action) {
        let now = minute as f64 * 60.0;
        self.watch.actioned[a] = true;
        self.actions.push((minute, a as u32));
        let attacker = self.watch.attacker[a];
        if attacker {
            self.day.attacker_actions += 1;
            let days = minute as f64 / 1440.0;
            self.d.days_to_first_action.get_or_insert(days);
            if let Some(c) = self.change_minute.filter(|&c| minute >= c) {
                let after = (minute - c) as f64 / 1440.0;
                self.d
                    .days_to_first_action_after_change
                    .get_or_insert(after);
            }
        } else {
            self.day.benign_actions += 1;
        }
        let tr = self.tr;
        match action {
            Action::Observe => {}
            Action::Ban => action::ban::ban(&mut self.api, a),
            Action::FallbackVisible => action::fallback::route(&mut self.api, a, true),
            Action::FallbackSilent => action::fallback::route(&mut self.api, a, false),
            Action::Throttle => {
                action::throttle::throttle(&mut self.api, a, tr.throttle_factor, now)
            }
            Action::Challenge => {
                let due = action::challenge::challenge(&mut self.api, a, &tr.challenge, minute);
                self.pending.push(Reverse((due, Event::Resolve, a as u32)));
                if attacker {
                    self.d.challenged_attackers += 1;
                    self.d.attacker_challenge_usd += tr.challenge.attacker_cost_usd;
                } else {
                    self.d.challenged_benign += 1;
                }
            }
        }
    }

    /// A challenge's outcome.
    pub(super) fn resolve(&mut self, a: usize) {
        let attacker = self.watch.attacker[a];
        let pass = action::challenge::resolve(
            &mut self.api,
            a,
            attacker,
            &self.tr.challenge,
            &mut self.rng,
        );
        if !attacker && !pass {
            self.d.benign_dropped += 1;
        }
    }

    /// The campaign's reaction to an action on its account `a`: (adaptive) it abandons a
    /// throttled account; a banned one is lost.
    pub(super) fn after_action(&mut self, a: usize, minute: u32) {
        if !self.watch.attacker[a] {
            return;
        }
        if self.tr.campaign.adaptive && action::throttle::is_throttled(&self.api, a) {
            self.abandon(a);
        }
        if self.api.accounts.status[a] == Status::Banned || self.watch.abandoned[a] {
            self.lose(a, minute);
        }
    }
}
