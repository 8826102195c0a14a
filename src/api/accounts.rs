//! The API's accounts, struct-of-arrays: tier, identity, status, limits and ledger per account,
//! the access defenses applied at sign-up, and the admission every request goes through.
//! The request path (`Api::serve`, `Api::score`) and the traffic replay share this one state.

use super::limits::{Bucket, Ledger};
use super::{Code, Identity, TierSpec};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Access defenses: who may open accounts and send requests at all.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Regions whose requests are refused. Benign users live in regions 0..8; attacker accounts
    /// not on residential proxies appear in region 8 (datacenter / proxy ranges).
    pub blocked_regions: Vec<u16>,
    /// At most this many accounts per payment instrument; later sign-ups are refused.
    pub max_accounts_per_payment: Option<usize>,
    /// Accounts younger than this many days are held to the first (free) tier's limits.
    pub tier_gate_days: f64,
    /// ... and until they have spent this much (USD).
    pub tier_gate_spend_usd: f64,
}

impl AccessConfig {
    pub fn gates(&self) -> bool {
        self.tier_gate_days > 0.0 || self.tier_gate_spend_usd > 0.0
    }
}

/// Where an account stands with the provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Active,
    /// Sign-up refused: too many accounts on its payment instrument.
    SignupRefused,
    /// Its region is blocked.
    RegionBlocked,
    Banned,
    /// Suspended until it passes an identity challenge.
    Challenged,
    /// Answered by the weaker fallback model; `visible`: marked by [`Code::Fallback`].
    Fallback {
        visible: bool,
    },
}

/// Every account, one entry per field (indexed by `AccountId`).
#[derive(Clone, Debug, Default)]
pub struct Accounts {
    pub tier: Vec<u16>,
    pub created_at: Vec<f64>,
    pub identity: Vec<Identity>,
    pub status: Vec<Status>,
    /// Multiplier on the account's limits (below 1 once throttled).
    pub factor: Vec<f64>,
    /// Held to the first tier's limits by the tier gate.
    pub gated: Vec<bool>,
    /// Requests, input tokens, output tokens per minute.
    pub buckets: Vec<[Bucket; 3]>,
    pub ledger: Vec<Ledger>,
    per_payment: HashMap<u32, usize>,
}

impl Accounts {
    pub fn len(&self) -> usize {
        self.tier.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tier.is_empty()
    }

    /// Open an account at `now` (simulated seconds); the access defenses decide its status.
    pub fn open(
        &mut self,
        tiers: &[TierSpec],
        access: &AccessConfig,
        tier: usize,
        now: f64,
        identity: Identity,
    ) -> u32 {
        let n = self.per_payment.entry(identity.payment).or_default();
        *n += 1;
        let status = if access.max_accounts_per_payment.is_some_and(|m| *n > m) {
            Status::SignupRefused
        } else if access.blocked_regions.contains(&identity.region) {
            Status::RegionBlocked
        } else {
            Status::Active
        };
        let gated = access.gates();
        let t = &tiers[if gated { 0 } else { tier }];
        self.tier.push(tier as u16);
        self.created_at.push(now);
        self.identity.push(identity);
        self.status.push(status);
        self.factor.push(1.0);
        self.gated.push(gated);
        self.buckets.push([
            Bucket::full(t.rpm, now),
            Bucket::full(t.input_tpm, now),
            Bucket::full(t.output_tpm, now),
        ]);
        self.ledger.push(Ledger::default());
        (self.len() - 1) as u32
    }

    /// Admit one request of `input` tokens at `now`: the account's status, then its limits.
    /// Takes the request and its input from the buckets when admitted (the output is taken
    /// when billed). A throttled request is counted in the ledger and costs nothing.
    #[inline]
    pub fn admit(&mut self, a: usize, now: f64, input: f64) -> Code {
        self.admit_with(a, now, input, true)
    }

    /// Admission for a request that produces no output (scoring): the output limit does not
    /// apply.
    pub fn admit_input(&mut self, a: usize, now: f64, input: f64) -> Code {
        self.admit_with(a, now, input, false)
    }

    #[inline]
    fn admit_with(&mut self, a: usize, now: f64, input: f64, output: bool) -> Code {
        let Some(&status) = self.status.get(a) else {
            return Code::Refused;
        };
        match status {
            Status::Banned | Status::SignupRefused => return Code::Refused,
            Status::RegionBlocked => return Code::RegionBlocked,
            Status::Challenged => return Code::Challenged,
            Status::Active | Status::Fallback { .. } => {}
        }
        let b = &mut self.buckets[a];
        if !(b[0].has(now, 1.0) && b[1].has(now, input) && (!output || b[2].has(now, 0.0))) {
            self.ledger[a].throttled += 1;
            return Code::Throttled;
        }
        b[0].take(1.0);
        b[1].take(input);
        match status {
            Status::Fallback { visible: true } => Code::Fallback,
            _ => Code::Ok,
        }
    }

    /// Bill an admitted request: its output (hidden reasoning included) from the output bucket,
    /// its usage into the ledger.
    #[inline]
    pub fn bill(&mut self, a: usize, usage: &Ledger) {
        let out = usage.output_tokens + usage.hidden_reasoning_tokens;
        self.buckets[a][2].take(out as f64);
        self.ledger[a].add(usage);
    }

    /// Whether the account's answers come from the fallback model.
    pub fn on_fallback(&self, a: usize) -> bool {
        matches!(self.status.get(a), Some(Status::Fallback { .. }))
    }

    /// Set the account's limits to `tiers` (its own tier, or the first while gated) times its
    /// factor.
    pub fn set_limits(&mut self, a: usize, tiers: &[TierSpec], now: f64) {
        let t = &tiers[if self.gated[a] {
            0
        } else {
            self.tier[a] as usize
        }];
        let f = self.factor[a];
        for (b, lim) in self.buckets[a]
            .iter_mut()
            .zip([t.rpm, t.input_tpm, t.output_tpm])
        {
            b.set_limit(lim * f, now);
        }
    }

    /// Lift the tier gate of accounts old enough and with enough spend.
    pub fn lift_gates(&mut self, tiers: &[TierSpec], access: &AccessConfig, now: f64) {
        for a in 0..self.len() {
            if self.gated[a]
                && now - self.created_at[a] >= access.tier_gate_days * 86_400.0
                && self.ledger[a].spend_usd >= access.tier_gate_spend_usd
            {
                self.gated[a] = false;
                self.set_limits(a, tiers, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiConfig;

    #[test]
    fn sign_up_defenses_and_status_codes() {
        let api = ApiConfig::default();
        let access = AccessConfig {
            blocked_regions: vec![8],
            max_accounts_per_payment: Some(1),
            ..Default::default()
        };
        let mut acc = Accounts::default();
        let id = |payment, region| Identity {
            payment,
            region,
            ..Default::default()
        };
        let a = acc.open(&api.tiers, &access, 1, 0.0, id(1, 0)) as usize;
        let twin = acc.open(&api.tiers, &access, 1, 0.0, id(1, 0)) as usize;
        let dc = acc.open(&api.tiers, &access, 1, 0.0, id(2, 8)) as usize;
        assert_eq!(acc.admit(a, 0.0, 10.0), Code::Ok);
        assert_eq!(acc.admit(twin, 0.0, 10.0), Code::Refused);
        assert_eq!(acc.admit(dc, 0.0, 10.0), Code::RegionBlocked);
        assert_eq!(acc.admit(99, 0.0, 10.0), Code::Refused);
        acc.status[a] = Status::Challenged;
        assert_eq!(acc.admit(a, 0.0, 10.0), Code::Challenged);
        acc.status[a] = Status::Fallback { visible: true };
        assert_eq!(acc.admit(a, 0.0, 10.0), Code::Fallback);
        acc.status[a] = Status::Fallback { visible: false };
        assert_eq!(acc.admit(a, 0.0, 10.0), Code::Ok);
        assert!(acc.on_fallback(a));
        // Refused requests are neither counted nor billed.
        assert_eq!(acc.ledger[twin], Ledger::default());
    }

    #[test]
    fn the_tier_gate_holds_new_accounts_to_the_first_tier_until_age_and_spend() {
        let api = ApiConfig::default();
        let access = AccessConfig {
            tier_gate_days: 1.0,
            tier_gate_spend_usd: 1.0,
            ..Default::default()
        };
        let mut acc = Accounts::default();
        let a = acc.open(&api.tiers, &access, 2, 0.0, Identity::default()) as usize;
        assert_eq!(acc.buckets[a][0].cap, api.tiers[0].rpm);
        acc.lift_gates(&api.tiers, &access, 2.0 * 86_400.0);
        assert!(acc.gated[a], "no spend yet");
        acc.ledger[a].spend_usd = 2.0;
        acc.lift_gates(&api.tiers, &access, 0.5 * 86_400.0);
        assert!(acc.gated[a], "too young");
        acc.lift_gates(&api.tiers, &access, 2.0 * 86_400.0);
        assert!(!acc.gated[a]);
        assert_eq!(acc.buckets[a][0].cap, api.tiers[2].rpm);
    }
}
