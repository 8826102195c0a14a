//! Identity challenge: the account is suspended until its holder submits an identity. The
//! outcome is drawn when it is due: attacker accounts pass at the rate a purchased or forged
//! identity passes, benign users may give up; a failed or abandoned challenge loses the
//! account, a passed one leaves it active and verified.

use super::super::ChallengeConfig;
use crate::api::{Api, Status};
use crate::rng::SimRng;
use rand::Rng;

/// Suspend the account; returns the minute its outcome is due.
pub fn challenge(api: &mut Api, a: usize, cfg: &ChallengeConfig, minute: u32) -> u32 {
    api.accounts.status[a] = Status::Challenged;
    minute + (cfg.hours * 60.0).round() as u32
}

/// Draw and apply the outcome; returns whether the account passed.
pub fn resolve(
    api: &mut Api,
    a: usize,
    attacker: bool,
    cfg: &ChallengeConfig,
    rng: &mut SimRng,
) -> bool {
    let pass = if attacker {
        rng.random_bool(cfg.attacker_pass.clamp(0.0, 1.0))
    } else {
        !rng.random_bool(cfg.benign_dropoff.clamp(0.0, 1.0))
    };
    let acc = &mut api.accounts;
    if pass {
        acc.status[a] = Status::Active;
        acc.identity[a].verified = true;
    } else {
        acc.status[a] = Status::Banned;
    }
    pass
}
