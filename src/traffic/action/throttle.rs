//! Throttle: the account's rate limits are cut to a share of its tier's (a tier gate on it is
//! lifted, so the cut applies to its own tier).

use crate::api::Api;

pub fn throttle(api: &mut Api, a: usize, factor: f64, now: f64) {
    let acc = &mut api.accounts;
    acc.factor[a] = factor;
    acc.gated[a] = false;
    acc.set_limits(a, &api.config.tiers, now);
}

/// Whether a throttle action has cut the account's limits.
pub fn is_throttled(api: &Api, a: usize) -> bool {
    api.accounts.factor[a] < 1.0
}
