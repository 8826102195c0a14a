//! The range table: which values every numeric config key takes, and its unit. The loader
//! checks every number against it (before the config is typed), the JSON Schema
//! ([`super::schema`]) carries it to editors, and `distill-sim config` prints it beside each
//! key ([`super::annotate`]). It depends on no config type.

use serde_json::Value;

/// Most runs one experiment may expand to (variants x grid points x seeds). A run takes
/// minutes, so this is years of compute on one machine; past it the sweep is refused before
/// anything is expanded (memory and time stay bounded), and is better split into experiments.
pub const MAX_RUNS: usize = 10_000;

/// The allowed values of a numeric key (both ends included) and its unit.
#[derive(Clone, Copy, Debug)]
pub struct Range {
    /// Dotted key; `[]` stands for any list index, `*` for any map key.
    pub key: &'static str,
    pub lo: f64,
    pub hi: f64,
    pub unit: &'static str,
}

const fn r(key: &'static str, lo: f64, hi: f64, unit: &'static str) -> Range {
    Range { key, lo, hi, unit }
}

/// Every numeric key of an experiment config. Upper bounds are what fits this simulator in
/// memory and time (a value beyond them would allocate for minutes or overflow), lower bounds
/// what has a meaning. Keys whose bound depends on another key (warmup <= steps, checkpoints
/// <= budget, top_k <= api.logprobs) are checked again in `ExperimentConfig::validate`.
pub const RANGES: &[Range] = &[
    r("seeds[]", 0.0, 9.007e15, "seed"),
    r("checkpoints[]", 1.0, 1e8, "queries"),
    r("world.eval_per_suite", 2.0, 250.0, "prompts per suite"),
    r("world.eval_seed", 0.0, 9.007e15, "seed"),
    r("world.synonym_share", 0.0, 0.49, "probability per digit"),
    r(
        "world.near_miss_share",
        0.0,
        0.49,
        "probability mass per digit",
    ),
    r(
        "world.boundary_noise",
        0.0,
        0.49,
        "share of borderline labels",
    ),
    r("student.temperature", 0.1, 20.0, "distillation temperature"),
    r("student.hard_weight", 0.0, 1.0, "share of the loss"),
    r("teacher.seed", 0.0, 9.007e15, "seed"),
    r("teacher.pool", 1.0, 100.0, "teacher seeds"),
    r("teacher.skill_weights.*", 0.0, 1e6, "relative weight"),
    r("teacher.curriculum[].steps", 1.0, 1e7, "optimiser steps"),
    r(
        "teacher.curriculum[].hard_share",
        0.0,
        1.0,
        "share of the phase's prompts",
    ),
    r("teacher.oracle_confidence_easy", 0.0, 1.0, "probability"),
    r("teacher.oracle_confidence_hard", 0.0, 1.0, "probability"),
    r("teacher.train.steps", 1.0, 1e7, "optimiser steps"),
    r("teacher.train.batch_size", 1.0, 65536.0, "sequences"),
    r("teacher.train.lr", 1e-8, 1.0, "learning rate"),
    r("teacher.train.warmup", 0.0, 1e7, "steps"),
    r("teacher.train.min_lr_ratio", 0.0, 1.0, "fraction of lr"),
    r(
        "teacher.train.weight_decay",
        0.0,
        1.0,
        "per step, decoupled",
    ),
    r("student.train.steps", 1.0, 1e7, "optimiser steps"),
    r("student.train.batch_size", 1.0, 65536.0, "sequences"),
    r("student.train.lr", 1e-8, 1.0, "learning rate"),
    r("student.train.warmup", 0.0, 1e7, "steps"),
    r("student.train.min_lr_ratio", 0.0, 1.0, "fraction of lr"),
    r(
        "student.train.weight_decay",
        0.0,
        1.0,
        "per step, decoupled",
    ),
    r("student.base.seed", 0.0, 9.007e15, "seed"),
    r("student.base.train.steps", 1.0, 1e7, "optimiser steps"),
    r("student.base.train.batch_size", 1.0, 65536.0, "sequences"),
    r("student.base.train.lr", 1e-8, 1.0, "learning rate"),
    r("student.base.train.warmup", 0.0, 1e7, "steps"),
    r(
        "student.base.train.min_lr_ratio",
        0.0,
        1.0,
        "fraction of lr",
    ),
    r(
        "student.base.train.weight_decay",
        0.0,
        1.0,
        "per step, decoupled",
    ),
    r("student.base.corpus.skills", 0.0, 1e6, "relative weight"),
    r(
        "student.base.corpus.skill_weights.*",
        0.0,
        1e6,
        "relative weight",
    ),
    r(
        "student.base.corpus.hard_share",
        0.0,
        1.0,
        "share of skill prompts",
    ),
    r("student.base.corpus.harmful", 0.0, 1e6, "relative weight"),
    r("student.base.corpus.lookalike", 0.0, 1e6, "relative weight"),
    r("student.base.corpus.affect", 0.0, 1e6, "relative weight"),
    r("student.base.corpus.probe", 0.0, 1e6, "relative weight"),
    r(
        "student.base.corpus.distress_share",
        0.0,
        1.0,
        "share of affect and probe prompts",
    ),
    r(
        "student.base.corpus.voice_share",
        0.0,
        1.0,
        "share of prompts",
    ),
    r("student.epochs", 1e-3, 1e4, "passes over the harvest"),
    r("student.min_steps", 0.0, 1e7, "optimiser steps"),
    r("student.val_share", 1e-3, 0.5, "share of the harvest"),
    r("student.patience", 1.0, 1e4, "validation checks"),
    r("student.drop_share", 0.0, 0.5, "share of the harvest"),
    r("api.tiers[].rpm", 1e-6, 1e9, "requests per minute"),
    r("api.tiers[].input_tpm", 1e-6, 1e12, "tokens per minute"),
    r("api.tiers[].output_tpm", 1e-6, 1e12, "tokens per minute"),
    r("api.tiers[].price_in", 0.0, 1e6, "USD per 1M input tokens"),
    r(
        "api.tiers[].price_out",
        0.0,
        1e6,
        "USD per 1M output tokens",
    ),
    r("api.logprobs", 0.0, 20.0, "tokens per position"),
    r("api.max_tokens", 1.0, 4096.0, "tokens"),
    r("api.voice_price_multiplier", 0.0, 1e3, "x text price"),
    r("api.defenses[].decimals", 0.0, 6.0, "decimal places"),
    r("api.defenses[].std", 0.0, 100.0, "nats"),
    r("api.defenses[].min", 0.0, 10.0, "temperature"),
    r("api.defenses[].k", 0.0, 20.0, "tokens per position"),
    r(
        "api.defenses[].gamma",
        0.01,
        0.99,
        "share of the vocabulary",
    ),
    r("api.defenses[].delta", 0.0, 100.0, "logit bias"),
    r("api.defenses[].key", 0.0, 1.8446744073709552e19, "key"),
    r("api.defenses[].share", 0.0, 1.0, "share of requests"),
    r("api.defenses[].rate", 0.0, 1.0, "share of prompts"),
    r("api.defenses[].lambda", 0.0, 1e3, "logit shift scale"),
    r("api.defenses[].eps", 1e-6, 10.0, "finite-difference step"),
    r("api.defenses[].proxy_steps", 1.0, 1e6, "optimiser steps"),
    r("api.defenses[].seed", 0.0, 9.007e15, "seed"),
    r("attacker.accounts", 1.0, 1e6, "accounts"),
    r("attacker.budget", 1.0, 1e8, "queries"),
    r("attacker.voice_share", 0.0, 1.0, "share of queries"),
    r("attacker.harmful_share", 0.0, 1.0, "share of queries"),
    r("attacker.hard_share", 0.0, 1.0, "share of skill queries"),
    r("attacker.temperature", 0.0, 10.0, "temperature"),
    r("attacker.top_k", 0.0, 20.0, "tokens per position"),
    r("attacker.account_cost_usd", 0.0, 1e6, "USD per account"),
    r("attacker.tick_seconds", 1e-3, 86400.0, "simulated seconds"),
    r("attacker.max_days", 1e-3, 3650.0, "simulated days"),
    r("attacker.adapt.repeats", 1.0, 32.0, "queries per prompt"),
    r(
        "attacker.adapt.public_share",
        0.0,
        0.95,
        "share of the training set",
    ),
    r(
        "attacker.adapt.filter_share",
        0.0,
        0.9,
        "share of the harvest",
    ),
    r(
        "attacker.adapt.canary_share",
        0.0,
        0.5,
        "share of each account's queries",
    ),
    r(
        "attacker.adapt.canary_streak",
        1.0,
        16.0,
        "failed canaries in a row",
    ),
    r(
        "attacker.strategy.pool",
        1.0,
        1e4,
        "candidate prompts per query",
    ),
    r("attacker.strategy.rounds", 1.0, 1e3, "rounds"),
    r("traffic.throttle_factor", 1e-6, 1.0, "x tier limits"),
    r("traffic.population.users", 0.0, 1e7, "users"),
    r(
        "traffic.population.daily_median",
        0.0,
        1e6,
        "queries per user per day",
    ),
    r("traffic.population.sigma", 0.0, 10.0, "log-normal sigma"),
    r("traffic.population.diurnal", 0.0, 1.0, "relative swing"),
    r(
        "traffic.tiers.levels[].at",
        -1e12,
        1e12,
        "score (fused_logistic: probability)",
    ),
    r(
        "traffic.tiers.cooldown_minutes",
        0.0,
        1e7,
        "simulated minutes",
    ),
    r(
        "traffic.population.segments[].accounts",
        0.0,
        1e6,
        "accounts",
    ),
    r(
        "traffic.population.segments[].daily_median",
        1e-3,
        1e6,
        "queries per account per day",
    ),
    r(
        "traffic.population.segments[].templates",
        1.0,
        1e5,
        "prompt templates",
    ),
    r(
        "traffic.campaign.daily_per_account",
        0.0,
        1e7,
        "queries per account per day",
    ),
    r(
        "traffic.campaign.identity_sharing",
        1.0,
        1e6,
        "accounts per identity",
    ),
    r(
        "traffic.campaign.proxy_share",
        0.0,
        1.0,
        "share of accounts",
    ),
    r(
        "traffic.campaign.reseller_share",
        0.0,
        1.0,
        "share of accounts",
    ),
    r(
        "traffic.campaign.reseller_customer_share",
        0.0,
        0.95,
        "share of a reseller account's queries",
    ),
    r("traffic.campaign.burst_minutes", 1.0, 1440.0, "minutes"),
    r("traffic.campaign.seed_prompts", 0.0, 1e6, "prompts"),
    r(
        "traffic.campaign.creation_per_day",
        1e-3,
        1e7,
        "accounts per day",
    ),
    r("traffic.campaign.regrow_hours", 0.0, 87600.0, "hours"),
    r(
        "traffic.campaign.identity_cost_usd",
        0.0,
        1e6,
        "USD per identity",
    ),
    r(
        "traffic.detectors.volume_per_day",
        1.0,
        1e9,
        "queries per account per day",
    ),
    r(
        "traffic.detectors.min_entropy",
        0.0,
        1.0,
        "normalised entropy",
    ),
    r(
        "traffic.detectors.skill_concentration",
        0.0,
        1.0,
        "share of skill queries",
    ),
    r(
        "traffic.detectors.reasoning_share",
        0.0,
        1.0,
        "share of queries",
    ),
    r("traffic.detectors.mmd", 0.0, 2.0, "MMD^2"),
    r("traffic.detectors.cluster_size", 2.0, 1e6, "accounts"),
    r("traffic.detectors.prada_w", 0.0, 1.0, "Shapiro-Wilk W"),
    r(
        "traffic.detectors.sync_share",
        0.0,
        1.0,
        "share of active minutes",
    ),
    r("traffic.detectors.sync_min_active", 1.0, 1440.0, "minutes"),
    r(
        "traffic.detectors.burst_z",
        0.0,
        100.0,
        "Poisson standard deviations",
    ),
    r("traffic.detectors.burst_rel", 0.0, 100.0, "relative excess"),
    r("traffic.detectors.prada_min", 3.0, 1e6, "distances"),
    r("traffic.detectors.min_queries", 1.0, 1e9, "queries"),
    r("traffic.detectors.check_minutes", 1.0, 1440.0, "minutes"),
    r(
        "traffic.detectors.action_delay_minutes",
        0.0,
        1e6,
        "minutes",
    ),
    r("traffic.access.blocked_regions[]", 0.0, 8.0, "region"),
    r(
        "traffic.access.max_accounts_per_payment",
        1.0,
        1e6,
        "accounts",
    ),
    r("traffic.access.tier_gate_days", 0.0, 3650.0, "days"),
    r("traffic.access.tier_gate_spend_usd", 0.0, 1e9, "USD"),
    r("traffic.challenge.hours", 0.0, 87600.0, "hours"),
    r(
        "traffic.challenge.attacker_cost_usd",
        0.0,
        1e6,
        "USD per challenge",
    ),
    r(
        "traffic.challenge.attacker_pass",
        0.0,
        1.0,
        "share of challenges",
    ),
    r(
        "traffic.challenge.benign_dropoff",
        0.0,
        1.0,
        "share of challenged users",
    ),
    r("traffic.limit_change.day", 0.0, 3650.0, "simulated day"),
    r("traffic.campaign.ramp_days", 1e-3, 3650.0, "simulated days"),
    r(
        "traffic.answer_one_in",
        1.0,
        1e12,
        "queries per answered query",
    ),
    r(
        "traffic.detectors.limit_jump",
        1.0,
        1e3,
        "x queries before the change",
    ),
    r("traffic.detectors.limit_jump_hours", 1.0, 8760.0, "hours"),
    r("traffic.detectors.limit_jump_min", 1.0, 1e9, "queries"),
    r("traffic.limit_change.factor", 1e-3, 1e3, "x tier limits"),
];

/// The range of a dotted key (list indices and map keys generalised), if it is numeric.
pub fn range_of(key: &str) -> Option<&'static Range> {
    let general = generalise(key);
    RANGES.iter().find(|r| {
        r.key == general
            || (r.key.ends_with(".*")
                && general
                    .rsplit_once('.')
                    .is_some_and(|(head, _)| head == &r.key[..r.key.len() - 2]))
    })
}

/// `api.tiers[2].rpm` -> `api.tiers[].rpm`.
pub(super) fn generalise(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut in_index = false;
    for c in key.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// A number as a config shows it (integers without a fraction).
pub fn show_number(x: f64) -> String {
    if x == x.trunc() && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// Every numeric leaf of a config value with its dotted key.
pub(super) fn numeric_leaves(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                numeric_leaves(&key, x, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                numeric_leaves(&format!("{prefix}[{i}]"), x, out);
            }
        }
        Value::Number(_) => out.push((prefix.to_string(), v.clone())),
        _ => {}
    }
}

/// Check every number of a config value (before it is typed, so that a value too large for
/// its field is refused here rather than overflowing) against [`RANGES`]. `grid` and
/// `variants` are skipped: each grid point and variant is checked once merged.
pub fn check_value(v: &Value) -> Result<(), (String, String)> {
    let mut leaves = Vec::new();
    if let Value::Object(o) = v {
        for (k, x) in o {
            if k != "grid" && k != "variants" {
                numeric_leaves(k, x, &mut leaves);
            }
        }
    }
    for (key, x) in leaves {
        let Some(r) = range_of(&key) else { continue };
        let n = x.as_f64().unwrap_or(f64::NAN);
        if !(n.is_finite() && n >= r.lo && n <= r.hi) {
            return Err((
                key.clone(),
                format!(
                    "{key}: {x} is outside [{}, {}] ({})",
                    show_number(r.lo),
                    show_number(r.hi),
                    r.unit
                ),
            ));
        }
    }
    Ok(())
}
