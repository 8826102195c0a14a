//! What the provider does to a flagged account, one action per module. Each changes the
//! account's standing on the API, so the attacker's and the benign users' later requests get
//! the API's typed codes (refused, throttled, challenged, fallback).

pub mod ban;
pub mod challenge;
pub mod fallback;
pub mod throttle;

use serde::{Deserialize, Serialize};

/// The action on a flagged account.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Refuse every later request (benign users on a banned account are blocked).
    #[default]
    Ban,
    /// Serve later requests from a weaker fallback model, marked by a response code: the
    /// attacker drops them; flagged benign users get degraded answers.
    FallbackVisible,
    /// Serve later requests from the fallback model without telling: the attacker trains on
    /// them.
    FallbackSilent,
    /// Cut the account's rate limits to `throttle_factor` of its tier.
    Throttle,
    /// Suspend the account until it passes an identity-verification challenge
    /// (`challenge`); failing it (or giving up) loses the account.
    Challenge,
    /// Nothing: a flag is recorded (as an action, for `detection.*`) and the account served
    /// as before. For measuring detectors by their scores at operating points on traffic no
    /// action has changed.
    Observe,
}
