//! The attacker's side of a replay: its accounts' schedule (opening, regrowth after a loss),
//! how it paces them (before and after a limit change, once adapted), and when it stops.

use super::{Event, Replay};
use crate::api::{Identity, Status};
use crate::rng::SimRng;
use crate::traffic::{LimitResponse, Pacing, DATACENTER_REGION};
use rand::Rng;
use std::cmp::Reverse;

/// The attacker's side: its accounts and how it paces them.
pub(super) struct Campaign {
    /// Accounts it sends from now.
    pub(super) active: Vec<u32>,
    /// Every account it opened.
    pub(super) all: Vec<u32>,
    /// One of its accounts got a refusal this minute: it stops using it.
    pub(super) refused: bool,
    /// Scheduled or regrowing accounts not yet open.
    pub(super) due: usize,
    /// An adaptive campaign changes its behaviour after its first lost account.
    pub(super) adapted: bool,
    pub(super) next_identity: u32,
    pub(super) identities_rng: SimRng,
    /// Active accounts that are proxy resellers (`traffic.campaign.reseller_share`).
    pub(super) resellers_active: usize,
}

impl Replay<'_> {
    /// The campaign's accounts: those due on day 0 open now, the rest on their schedule.
    pub(super) fn open_campaign(&mut self) {
        for k in 0..self.att.accounts {
            match self.tr.campaign.opens_at(k) {
                0 => self.open_attacker(k, 0.0),
                at => {
                    self.camp.due += 1;
                    self.pending.push(Reverse((at, Event::Activate, k as u32)));
                }
            }
        }
    }

    /// Open the campaign's `k`-th account (identity group `k / identity_sharing`).
    pub(super) fn open_attacker(&mut self, k: usize, now: f64) {
        let camp = &self.tr.campaign;
        let group = (k / camp.identity_sharing.max(1)) as u32;
        let rng = &mut self.camp.identities_rng;
        let identity = Identity {
            payment: 1_000_000 + group,
            ip_asn: 1_000_000 + group,
            fingerprint: 1_000_000 + group,
            region: if rng.random_bool(camp.proxy_share.clamp(0.0, 1.0)) {
                rng.random_range(0..8)
            } else {
                DATACENTER_REGION
            },
            verified: false,
        };
        self.open_campaign_account(identity, now);
    }

    pub(super) fn open_campaign_account(&mut self, identity: Identity, now: f64) {
        let tier = self.api.config.tier_index(&self.att.tier).unwrap_or(0);
        let a = self.open(true, tier, identity, now);
        self.d.attacker_accounts_opened += 1;
        // Resellers spread evenly over the opening order: the i-th account is one when the
        // running count of `share * accounts` steps up at it.
        let (i, share) = (self.camp.all.len() as f64, self.tr.campaign.reseller_share);
        let reseller = ((i + 1.0) * share).floor() > (i * share).floor();
        self.watch.reseller[a as usize] = reseller;
        self.camp.all.push(a);
        if self.api.accounts.status[a as usize] == Status::Active {
            self.camp.active.push(a);
            self.camp.resellers_active += reseller as usize;
        }
    }

    /// This minute's queries of the resellers' customers: benign prompts on random active
    /// reseller accounts, at `customer_share / (1 - customer_share)` of the campaign's pace
    /// per account, on the benign daily cycle.
    pub(super) fn customer_queries(&mut self, minute: u32, per_account: f64, diurnal: f64) {
        if self.camp.resellers_active == 0 {
            return;
        }
        let cs = self.tr.campaign.reseller_customer_share.clamp(0.0, 0.95);
        let rate = per_account * cs / (1.0 - cs) * diurnal;
        let n = crate::traffic::poisson(&mut self.rng, rate * self.camp.resellers_active as f64);
        for _ in 0..n {
            // A uniform active account until a reseller (there is at least one).
            let a = loop {
                let a = self.camp.active[self.rng.random_range(0..self.camp.active.len())];
                if self.watch.reseller[a as usize] {
                    break a;
                }
            };
            let t = self.rng.random_range(0..self.crowd_templates);
            let q = self.benign_bank.query(t, minute, a, false);
            self.query(&q, false);
        }
    }

    /// A replacement for lost account `a`: its identity, or a fresh one once adapted.
    pub(super) fn regrow(&mut self, a: usize, now: f64) {
        let mut identity = self.api.accounts.identity[a];
        identity.verified = false;
        if self.camp.adapted {
            self.camp.next_identity += 1;
            let n = self.camp.next_identity;
            (identity.payment, identity.ip_asn, identity.fingerprint) = (n, n, n);
        }
        self.d.regrown += 1;
        self.open_campaign_account(identity, now);
    }

    /// The campaign stops using account `a` (it leaves the active set at the minute's end).
    pub(super) fn abandon(&mut self, a: usize) {
        self.watch.abandoned[a] = true;
        self.camp.refused = true;
    }

    /// A lost account may be regrown, and an adaptive campaign adapts after its first loss.
    pub(super) fn lose(&mut self, a: usize, minute: u32) {
        if self.watch.regrow_scheduled[a] {
            return;
        }
        let camp = &self.tr.campaign;
        self.watch.regrow_scheduled[a] = true;
        self.camp.adapted |= camp.adaptive;
        if let Some(h) = camp.regrow_hours {
            self.camp.due += 1;
            let at = minute + (h * 60.0).round() as u32;
            self.pending.push(Reverse((at, Event::Regrow, a as u32)));
        }
    }

    /// Record when the campaign has no account left and none coming.
    pub(super) fn check_stopped(&mut self) {
        if self.camp.active.is_empty()
            && self.camp.due == 0
            && self.stop_at.is_none()
            && self.att.accounts > 0
        {
            self.stop_at = Some(self.stats.attacker_served);
        }
    }

    /// The campaign's pace per account per minute at `minute` (before pacing), after its
    /// response to any limit change.
    pub(super) fn attack_rate(&self, minute: u32, diurnal: f64) -> f64 {
        let camp = &self.tr.campaign;
        let f = self.tr.limit_change.as_ref().map_or(1.0, |c| c.factor);
        let since = self
            .change_minute
            .filter(|&c| minute >= c)
            .map(|c| minute - c);
        let scale = match (camp.limit_response, since) {
            (_, None) | (LimitResponse::Ignore, _) => 1.0,
            (LimitResponse::Jump, Some(_)) => f,
            (LimitResponse::Ramp, Some(m)) => {
                let ramp = (camp.ramp_days * 1440.0).max(1.0);
                1.0 + (f - 1.0) * (m as f64 / ramp).min(1.0)
            }
        };
        let per_minute = scale * camp.daily_per_account / 1440.0;
        let pacing = if self.camp.adapted {
            Pacing::BenignLike
        } else {
            camp.pacing
        };
        let burst = camp.burst_minutes.max(1);
        match pacing {
            Pacing::Random => per_minute,
            Pacing::BenignLike => per_minute * diurnal,
            Pacing::Synchronized if minute.is_multiple_of(burst) => per_minute * burst as f64,
            Pacing::Synchronized => 0.0,
        }
    }
}
