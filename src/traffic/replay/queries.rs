//! One minute's queries: benign users and the campaign's accounts drawn, each query through
//! the API (admission, billing), counted, fed to the detectors' features and sampled into the
//! harvest.

use super::Replay;
use crate::api::limits::Ledger;
use crate::api::Code;
use crate::traffic::action;
use crate::traffic::{poisson, Query, ATTACK_BANK};
use rand::Rng;

impl Replay<'_> {
    /// This minute's benign and attacker queries, each through the API.
    pub(super) fn queries(&mut self, minute: u32) {
        let pop = &self.tr.population;
        let phase = std::f64::consts::TAU * ((minute % 1440) as f64 - 360.0) / 1440.0;
        let diurnal = (1.0 + pop.diurnal * phase.sin()).max(0.0);
        let n_benign = poisson(&mut self.rng, self.benign_per_minute * diurnal);
        let rate = self.attack_rate(minute, diurnal);
        let n_attack = poisson(&mut self.rng, rate * self.camp.active.len() as f64);
        let nb = self.crowd_templates;
        for i in 0..n_benign + n_attack {
            let q = if i >= n_benign {
                let active = &self.camp.active;
                let a = active[self.rng.random_range(0..active.len())];
                if self.camp.adapted {
                    // Benign-looking queries.
                    let t = self.rng.random_range(0..nb);
                    self.benign_bank.query(t, minute, a, false)
                } else {
                    let t = self.rng.random_range(0..self.attack_bank.len());
                    self.attack_bank.query(t, minute, a, true)
                }
            } else {
                let a = self.alias.sample(&mut self.rng) as u32;
                let t = self.benign_template(a as usize);
                self.benign_bank.query(t, minute, a, false)
            };
            self.query(&q, i >= n_benign);
        }
        if self.tr.campaign.reseller_share > 0.0 {
            let per_account = self.tr.campaign.daily_per_account / 1440.0;
            self.customer_queries(minute, per_account, diurnal);
        }
    }

    /// One query: admission, billing, counts, detector features, and the harvest sample.
    #[inline]
    pub(super) fn query(&mut self, q: &Query, attacker: bool) {
        let a = q.account as usize;
        let now = q.minute as f64 * 60.0;
        self.stats.queries += 1;
        let code = self.api.accounts.admit(a, now, q.input_tokens as f64);
        let fallback = self.api.accounts.on_fallback(a);
        if let Some(x) = self.export.as_mut() {
            x.write(q, &self.api.accounts.identity[a], code, attacker);
        }
        if code.answered() {
            let usage = Ledger {
                requests: 1,
                input_tokens: q.input_tokens as u64,
                output_tokens: q.output_tokens as u64,
                spend_usd: self.api.price(
                    a,
                    q.input_tokens as u64,
                    q.output_tokens as u64,
                    q.voice,
                ),
                ..Ledger::default()
            };
            self.api.accounts.bill(a, &usage);
            self.count_answered(q, attacker, fallback, usage.spend_usd);
        } else {
            self.count_unanswered(code, attacker, a);
            self.camp.refused |= attacker && code == Code::Refused;
        }
        if attacker && code == Code::Fallback && !self.watch.abandoned[a] {
            // Marked fallback answers are worthless to it: it drops the account.
            self.abandon(a);
            self.lose(a, q.minute);
        }
        if attacker {
            if let Some(h) = self.harvest.as_mut() {
                let (b, t) = (&self.attack_bank, q.template);
                let bank = if t & ATTACK_BANK != 0 {
                    b
                } else {
                    &self.benign_bank
                };
                let prompt = || bank.prompts[(t & !ATTACK_BANK) as usize].clone();
                h.record(q.minute, q.account, code, fallback, prompt);
            }
        }
    }

    pub(super) fn count_answered(&mut self, q: &Query, attacker: bool, fallback: bool, spend: f64) {
        let a = q.account as usize;
        match (attacker, fallback) {
            (true, false) => {
                self.stats.attacker_served += 1;
                self.day.attacker_served += 1;
            }
            (true, true) => self.stats.attacker_fallback += 1,
            (false, false) => {
                self.stats.benign_served += 1;
                self.day.benign_served += 1;
            }
            (false, true) => self.d.benign_degraded += 1,
        }
        if attacker {
            if let Some(h) = self.harvest.as_mut() {
                h.spend_usd += spend;
            }
        }
        let w = &mut self.watch;
        if w.features[a].observe(q) && self.tr.detectors.sync_share.is_some() {
            self.bursts.this_minute.push(q.account);
        }
        if let Some(s) = &self.spans {
            s.observe(q.minute, &mut w.features[a]);
        }
        if let Some(p) = w.prada.get_mut(a) {
            let (ab, bb) = (&self.attack_bank, &self.benign_bank);
            p.observe(q.template, |t: u32| {
                if t & ATTACK_BANK != 0 {
                    ab.emb[(t & !ATTACK_BANK) as usize]
                } else {
                    bb.emb[t as usize]
                }
            });
        }
        if !w.is_dirty[a] {
            w.is_dirty[a] = true;
            w.dirty.push(q.account);
        }
    }

    pub(super) fn count_unanswered(&mut self, code: Code, attacker: bool, a: usize) {
        if code == Code::Throttled {
            self.stats.throttled += 1;
            if !attacker && action::throttle::is_throttled(&self.api, a) {
                self.d.benign_throttled += 1;
            }
        } else {
            self.stats.blocked_banned += 1;
            if !attacker {
                self.stats.benign_blocked += 1;
            }
        }
    }
}
