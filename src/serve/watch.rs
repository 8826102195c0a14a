//! Detectors and actions acting live on the server's API: the replay's per-account features
//! and flag rule ([`crate::traffic::detect::flags`]) fed by every answered request, a detector
//! pass every `traffic.detectors.check_minutes` of simulated time over the accounts with new
//! requests, and a flagged account's `traffic.action` taken `action_delay_minutes` later, at
//! the first batch after it is due, so it holds from the next request on. On only with
//! `traffic.enabled`.
//!
//! Detectors that need the whole population's traffic (synchronised bursts, limit tracking)
//! or per-query state the server does not keep (PRADA's distances) cannot run live; a config
//! that turns one on is refused at start, naming it. The challenge action needs a challenge
//! process the server does not simulate, and is refused too.

use crate::api::Api;
use crate::error::{Error, Result};
use crate::experiment::config::ExperimentConfig;
use crate::traffic::action::{ban, fallback, throttle, Action};
use crate::traffic::detect::{flags, DetectorConfig, Features, Signals};
use crate::traffic::{kind_index, Query, N_KINDS};
use crate::world::{Kind, Prompt, Tier};

/// The live detectors' state.
pub struct LiveWatch {
    det: DetectorConfig,
    action: Action,
    throttle_factor: f64,
    reference: [f64; N_KINDS],
    /// Largest identity group (shared payment, IP or fingerprint) of each account's key.
    cluster: Vec<usize>,
    features: Vec<Features>,
    flagged: Vec<bool>,
    dirty: Vec<bool>,
    /// Simulated second of the last detector pass.
    last_pass: f64,
    /// Actions due: (simulated second, account).
    pending: Vec<(f64, u32)>,
}

/// The request's features as the replay's detectors count them.
pub fn query_of(prompt: &Prompt, minute: u32, account: u32) -> Query {
    Query {
        minute,
        account,
        kind: kind_index(prompt.kind),
        input_tokens: 0,
        output_tokens: 0,
        reasoning: matches!(prompt.kind, Kind::Skill(_, Tier::Hard)),
        voice: prompt.voice.is_some(),
        template: 0,
    }
}

impl LiveWatch {
    /// The live watch of `cfg` over accounts with these identities (None: `traffic.enabled`
    /// is false). Errors name a detector or action that cannot run live.
    pub fn new(
        cfg: &ExperimentConfig,
        identities: &[crate::api::Identity],
    ) -> Result<Option<LiveWatch>> {
        if !cfg.traffic.enabled {
            return Ok(None);
        }
        let det = cfg.traffic.detectors.clone();
        for (on, key) in [
            (det.prada_w.is_some(), "prada_w"),
            (det.sync_share.is_some(), "sync_share"),
            (det.limit_jump.is_some(), "limit_jump"),
        ] {
            if on {
                return Err(Error::Invalid(format!(
                    "traffic.detectors.{key} cannot run live in serve (it needs the whole \
                     population's traffic or per-query state the server does not keep): set \
                     it null (`--set traffic.detectors.{key}=null`); live: volume_per_day, \
                     min_entropy, skill_concentration, reasoning_share, mmd, cluster_size"
                )));
            }
        }
        if cfg.traffic.tiers.is_some() {
            return Err(Error::Invalid(
                "traffic.tiers act on calibrated scores, which serve does not compute: use \
                 traffic.action"
                    .into(),
            ));
        }
        if cfg.traffic.action == Action::Challenge {
            return Err(Error::Invalid(
                "traffic.action challenge is not simulated by serve: the replay draws a \
                 challenge's outcome from who is an attacker, which a server of real clients \
                 does not know, and no endpoint lets a client submit an identity; use ban, \
                 throttle, fallback_visible, fallback_silent or observe"
                    .into(),
            ));
        }
        Ok(Some(LiveWatch {
            det,
            action: cfg.traffic.action,
            throttle_factor: cfg.traffic.throttle_factor,
            reference: benign_reference(cfg.world.harm),
            cluster: clusters(identities),
            features: vec![Features::default(); identities.len()],
            flagged: vec![false; identities.len()],
            dirty: vec![false; identities.len()],
            last_pass: 0.0,
            pending: Vec::new(),
        }))
    }

    /// Count an answered request of `account` at simulated second `now`.
    pub fn observe(&mut self, account: u32, prompt: &Prompt, now: f64) {
        self.count(query_of(prompt, (now / 60.0) as u32, account));
    }

    /// Count a request replayed from the ledger (its kind and reasoning flag as recorded).
    pub fn observe_recorded(&mut self, account: u32, kind: u8, reasoning: bool, now: f64) {
        self.count(Query {
            minute: (now / 60.0) as u32,
            account,
            kind,
            input_tokens: 0,
            output_tokens: 0,
            reasoning,
            voice: false,
            template: 0,
        });
    }

    fn count(&mut self, q: Query) {
        let a = q.account as usize;
        self.features[a].observe(&q);
        self.dirty[a] = true;
    }

    /// Whether an account was flagged (its action taken or pending).
    pub fn flagged(&self, account: u32) -> bool {
        self.flagged.get(account as usize).copied().unwrap_or(false)
    }

    /// Mark an account as already actioned (restored from the ledger).
    pub fn restore_action(&mut self, account: u32) {
        if let Some(f) = self.flagged.get_mut(account as usize) {
            *f = true;
        }
    }

    /// At simulated second `now`: a detector pass if one is due (flags schedule actions),
    /// then every action that is due taken on `api`. Returns the actions taken.
    pub fn tick(&mut self, now: f64, api: &mut Api) -> Vec<(u32, Action)> {
        let every = self.det.check_minutes.max(1) as f64 * 60.0;
        if now >= self.last_pass + every {
            self.last_pass = (now / every).floor() * every;
            let delay = self.det.action_delay_minutes as f64 * 60.0;
            for a in 0..self.features.len() {
                if !std::mem::take(&mut self.dirty[a]) || self.flagged[a] {
                    continue;
                }
                let sig = Signals {
                    cluster: self.cluster[a],
                    prada_w: None,
                    jump_window_done: false,
                };
                if flags(&self.det, &self.features[a], &sig, &self.reference) != 0 {
                    self.flagged[a] = true;
                    self.pending.push((now + delay, a as u32));
                }
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|p| p.0 <= now);
        self.pending = later;
        due.into_iter()
            .map(|(_, a)| {
                apply(api, a, self.action, self.throttle_factor, now);
                (a, self.action)
            })
            .collect()
    }
}

/// Take `action` on account `a` of `api` at simulated second `now`.
pub fn apply(api: &mut Api, a: u32, action: Action, throttle_factor: f64, now: f64) {
    let a = a as usize;
    match action {
        Action::Ban => ban::ban(api, a),
        Action::FallbackVisible => fallback::route(api, a, true),
        Action::FallbackSilent => fallback::route(api, a, false),
        Action::Throttle => throttle::throttle(api, a, throttle_factor, now),
        Action::Observe | Action::Challenge => {}
    }
}

/// The benign mix's share of each prompt kind (20,000 draws of a fixed seed), the reference
/// the entropy and shift detectors compare an account with.
fn benign_reference(harm: crate::world::Harm) -> [f64; N_KINDS] {
    let mix = crate::world::Mix::benign().in_world(harm);
    let mut rng = crate::rng::derive_rng(0, "serve/reference");
    let n = 20_000;
    let mut r = [0.0; N_KINDS];
    for _ in 0..n {
        r[kind_index(mix.sample(&mut rng).kind) as usize] += 1.0 / n as f64;
    }
    r
}

/// Each account's largest identity group: accounts sharing its payment instrument, IP or
/// fingerprint (itself included).
fn clusters(ids: &[crate::api::Identity]) -> Vec<usize> {
    use std::collections::HashMap;
    let mut counts: [HashMap<u32, usize>; 3] = Default::default();
    for id in ids {
        for (m, v) in counts
            .iter_mut()
            .zip([id.payment, id.ip_asn, id.fingerprint])
        {
            *m.entry(v).or_default() += 1;
        }
    }
    ids.iter()
        .map(|id| {
            [id.payment, id.ip_asn, id.fingerprint]
                .iter()
                .zip(&counts)
                .map(|(v, m)| m[v])
                .max()
                .unwrap_or(1)
        })
        .collect()
}
