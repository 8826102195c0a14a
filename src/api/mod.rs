//! The mock commercial API: accounts and tiers, rate limits as token buckets on the simulated
//! clock, prices and ledgers, the output policy, and the place where defenses plug in.
//! Each tick's admitted requests are served as one batched generation.

pub mod accounts;
pub mod defense;
pub mod limits;

use crate::model::GenParams;
use crate::rng::SimRng;
use crate::teacher::Teacher;
use crate::world::vocab::Tok;
use crate::world::Prompt;
pub use accounts::{AccessConfig, Accounts, Status};
use limits::Ledger;
use serde::{Deserialize, Serialize};

/// One account tier: limits per minute and prices per million tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    pub name: String,
    /// Requests per minute.
    pub rpm: f64,
    /// Input tokens per minute.
    pub input_tpm: f64,
    /// Output tokens per minute (hidden reasoning tokens count).
    pub output_tpm: f64,
    /// USD per million input tokens.
    pub price_in: f64,
    /// USD per million output tokens (hidden reasoning tokens are billed as output).
    pub price_out: f64,
}

/// Whether the reasoning trace of a response is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reasoning {
    Visible,
    /// Generated and billed, not returned.
    Hidden,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub tiers: Vec<TierSpec>,
    /// Top-k logprobs the API returns per output position (0 = text only; at most 20).
    pub logprobs: usize,
    pub reasoning: Reasoning,
    /// Most output tokens per request.
    pub max_tokens: usize,
    /// Output defenses, applied in order (see `defense::DefenseConfig`).
    pub defenses: Vec<defense::DefenseConfig>,
    /// Price multiplier for requests that carry voice (audio input costs more).
    pub voice_price_multiplier: f64,
    /// Scoring mode: the API returns its top-k logprobs at every position of a continuation the
    /// caller supplies (billed as input), which on-policy distillation needs.
    pub scoring: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        // Prices in the range of 2026 frontier APIs; limits loosely after public tier tables.
        let tier = |name: &str, rpm: f64, itpm: f64, otpm: f64| TierSpec {
            name: name.into(),
            rpm,
            input_tpm: itpm,
            output_tpm: otpm,
            price_in: 3.0,
            price_out: 15.0,
        };
        ApiConfig {
            tiers: vec![
                tier("free", 5.0, 10_000.0, 2_000.0),
                tier("tier1", 50.0, 50_000.0, 10_000.0),
                tier("tier2", 1000.0, 450_000.0, 90_000.0),
            ],
            logprobs: 0,
            reasoning: Reasoning::Visible,
            max_tokens: 32,
            defenses: vec![],
            voice_price_multiplier: 1.0,
            scoring: false,
        }
    }
}

impl ApiConfig {
    pub fn tier_index(&self, name: &str) -> Option<usize> {
        self.tiers.iter().position(|t| t.name == name)
    }

    /// The tiers' names, comma-separated (for errors that list the allowed values).
    pub fn tier_names(&self) -> String {
        self.tiers
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Identity attributes detectors can cluster on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Identity {
    pub payment: u32,
    pub ip_asn: u32,
    pub fingerprint: u32,
    pub region: u16,
    pub verified: bool,
}

pub type AccountId = u32;

#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub account: AccountId,
    pub prompt: Prompt,
    pub max_tokens: usize,
    pub temperature: f32,
    /// Top-k logprobs asked for (the API caps it by its policy).
    pub top_k: usize,
}

/// How the API answered a request. Never an error: the simulation handles each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// Answered (by the fallback model, unmarked, on an account silently routed there).
    Ok,
    /// A rate limit is exhausted; retry later.
    Throttled,
    /// The account is banned, unknown, or its sign-up was refused.
    Refused,
    /// The account is suspended until it passes an identity challenge.
    Challenged,
    /// Answered by the weaker fallback model, and marked as such.
    Fallback,
    /// The account's region is blocked.
    RegionBlocked,
}

impl Code {
    /// Every code, in declaration order (`code as usize` indexes it).
    pub const ALL: [Code; 6] = [
        Code::Ok,
        Code::Throttled,
        Code::Refused,
        Code::Challenged,
        Code::Fallback,
        Code::RegionBlocked,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "ok",
            Code::Throttled => "throttled",
            Code::Refused => "refused",
            Code::Challenged => "challenged",
            Code::Fallback => "fallback",
            Code::RegionBlocked => "region_blocked",
        }
    }

    /// Whether a response came back (from the teacher or the fallback model).
    pub fn answered(self) -> bool {
        matches!(self, Code::Ok | Code::Fallback)
    }
}

/// Confidence of the fallback model: the oracle at 50% per token, sampled at temperature 1, so
/// that its answers are often wrong in ways a student can learn.
pub const FALLBACK_CONFIDENCE: f32 = 0.5;

#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub code: Code,
    pub tokens: Vec<Tok>,
    /// Per returned position, top-k `(token, logprob)` (empty when not exposed).
    pub top: Vec<Vec<(Tok, f32)>>,
    pub usage: Ledger,
}

impl Response {
    fn empty(code: Code) -> Response {
        Response {
            code,
            tokens: vec![],
            top: vec![],
            usage: Ledger::default(),
        }
    }
}

pub struct Api {
    pub config: ApiConfig,
    pub access: AccessConfig,
    pub accounts: Accounts,
    pub output: defense::Defenses,
    /// The weaker model flagged accounts may be routed to.
    pub fallback: Teacher,
}

impl Api {
    pub fn new(config: ApiConfig) -> crate::error::Result<Api> {
        Self::with_access(config, AccessConfig::default())
    }

    pub fn with_access(config: ApiConfig, access: AccessConfig) -> crate::error::Result<Api> {
        Ok(Api {
            output: defense::Defenses::for_api(&config)?,
            config,
            access,
            accounts: Accounts::default(),
            fallback: Teacher::Oracle {
                easy: FALLBACK_CONFIDENCE,
                hard: FALLBACK_CONFIDENCE,
            },
        })
    }

    /// Open an account; the access defenses (payment-instrument limit, blocked regions, tier
    /// gate) apply at sign-up.
    pub fn open_account(&mut self, tier: usize, now: f64, identity: Identity) -> AccountId {
        self.accounts
            .open(&self.config.tiers, &self.access, tier, now, identity)
    }

    /// The provider multiplies every tier's limits by `factor` at `now`.
    pub fn scale_limits(&mut self, factor: f64, now: f64) {
        for t in self.config.tiers.iter_mut() {
            t.rpm *= factor;
            t.input_tpm *= factor;
            t.output_tpm *= factor;
        }
        for a in 0..self.accounts.len() {
            self.accounts.set_limits(a, &self.config.tiers, now);
        }
    }

    /// Price of a request on `account`'s tier (voice at the configured multiplier).
    #[inline]
    pub fn price(&self, account: usize, input: u64, billed_out: u64, voice: bool) -> f64 {
        let tier = &self.config.tiers[self.accounts.tier[account] as usize];
        let m = if voice {
            self.config.voice_price_multiplier
        } else {
            1.0
        };
        m * (input as f64 * tier.price_in + billed_out as f64 * tier.price_out) / 1e6
    }

    /// Answer admitted prompts through the output policy: the teacher's, or the fallback
    /// model's (sampled at temperature 1) where `fallback[i]`. Returns each served generation
    /// and the number of trace tokens withheld from it (billed, not returned).
    pub fn respond(
        &self,
        teacher: &Teacher,
        prompts: &[&Prompt],
        params: Vec<GenParams>,
        fallback: &[bool],
        rng: &mut SimRng,
    ) -> Vec<(crate::model::Generation, usize)> {
        if !fallback.iter().any(|&f| f) {
            return self.output.serve(teacher, prompts, params, rng);
        }
        let (mut t, mut f) = ((vec![], vec![]), (vec![], vec![]));
        for ((&p, g), &fb) in prompts.iter().zip(params).zip(fallback) {
            let side = if fb { &mut f } else { &mut t };
            side.0.push(p);
            side.1.push(g);
        }
        for g in f.1.iter_mut() {
            g.temperature = 1.0;
        }
        let mut from_t = self.output.serve(teacher, &t.0, t.1, rng).into_iter();
        let mut from_f = self
            .output
            .serve(&self.fallback, &f.0, f.1, rng)
            .into_iter();
        fallback
            .iter()
            .filter_map(|&fb| if fb { from_f.next() } else { from_t.next() })
            .collect()
    }

    /// Serve one tick's requests: admission (status, limits), one batched generation for
    /// everything admitted (fallback-routed accounts from the fallback model), output policy,
    /// billing.
    pub fn serve(
        &mut self,
        now: f64,
        reqs: &[Request],
        teacher: &Teacher,
        rng: &mut SimRng,
    ) -> Vec<Response> {
        let mut out: Vec<Response> = Vec::with_capacity(reqs.len());
        let mut admitted = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            let input = (r.prompt.tokens.len() + 2) as f64;
            let code = self.accounts.admit(r.account as usize, now, input);
            out.push(Response::empty(code));
            if code.answered() {
                admitted.push(i);
            }
        }
        let prompts: Vec<&Prompt> = admitted.iter().map(|&i| &reqs[i].prompt).collect();
        let k_cap = self.config.logprobs.min(crate::model::generate::MAX_TOP_K);
        let params: Vec<GenParams> = admitted
            .iter()
            .map(|&i| GenParams {
                max_new: reqs[i].max_tokens.min(self.config.max_tokens),
                temperature: reqs[i].temperature,
                top_k: reqs[i].top_k.min(k_cap),
            })
            .collect();
        let fallback: Vec<bool> = admitted
            .iter()
            .map(|&i| self.accounts.on_fallback(reqs[i].account as usize))
            .collect();
        let served = self.respond(teacher, &prompts, params, &fallback, rng);
        for (&i, (g, withheld)) in admitted.iter().zip(served) {
            let r = &reqs[i];
            let a = r.account as usize;
            let mut usage = Ledger {
                requests: 1,
                input_tokens: (r.prompt.tokens.len() + 2) as u64,
                hidden_reasoning_tokens: withheld as u64,
                output_tokens: g.tokens.len() as u64,
                ..Ledger::default()
            };
            usage.spend_usd = self.price(
                a,
                usage.input_tokens,
                usage.output_tokens + usage.hidden_reasoning_tokens,
                r.prompt.voice.is_some(),
            );
            self.accounts.bill(a, &usage);
            out[i] = Response {
                code: out[i].code,
                tokens: g.tokens,
                top: g.top,
                usage,
            };
        }
        out
    }

    /// Scoring mode: for each `(account, prompt, continuation)`, the teacher's top-k logprobs at
    /// every position of the continuation, after the logprob defenses (cap, rounding, noise).
    /// Refused where the API offers no scoring; limits and billing as for generation, the
    /// continuation billed as input.
    pub fn score(
        &mut self,
        now: f64,
        reqs: &[(AccountId, &Prompt, &[Tok])],
        teacher: &Teacher,
        top_k: usize,
        rng: &mut SimRng,
    ) -> Vec<Response> {
        let mut out: Vec<Response> = Vec::with_capacity(reqs.len());
        let mut admitted = Vec::new();
        for &(account, prompt, cont) in reqs {
            // Scoring returns logprobs: an API that returns none (`logprobs: 0`) offers none.
            let code = if self.config.scoring && self.config.logprobs > 0 {
                let input = (prompt.tokens.len() + 2 + cont.len()) as f64;
                self.accounts.admit_input(account as usize, now, input)
            } else {
                Code::Refused
            };
            if code.answered() {
                admitted.push(out.len());
            }
            out.push(Response::empty(code));
        }
        let k = top_k
            .min(self.config.logprobs)
            .min(crate::model::generate::MAX_TOP_K);
        let (fb, tc): (Vec<usize>, Vec<usize>) = admitted
            .iter()
            .partition(|&&i| self.accounts.on_fallback(reqs[i].0 as usize));
        let mut scores: Vec<Vec<Vec<(Tok, f32)>>> = vec![vec![]; reqs.len()];
        for (ids, model) in [(&tc, teacher), (&fb, &self.fallback)] {
            let items: Vec<(&Prompt, &[Tok])> =
                ids.iter().map(|&i| (reqs[i].1, reqs[i].2)).collect();
            if k > 0 && !items.is_empty() {
                for (&i, top) in ids.iter().zip(model.score(&items, k)) {
                    scores[i] = top;
                }
            }
        }
        for &i in &admitted {
            let (account, prompt, cont) = reqs[i];
            let mut top = std::mem::take(&mut scores[i]);
            self.output.after_scores(&mut top, rng);
            let input = (prompt.tokens.len() + 2 + cont.len()) as u64;
            let usage = Ledger {
                requests: 1,
                input_tokens: input,
                spend_usd: self.price(account as usize, input, 0, false),
                ..Ledger::default()
            };
            self.accounts.bill(account as usize, &usage);
            out[i] = Response {
                code: out[i].code,
                tokens: cont.to_vec(),
                top,
                usage,
            };
        }
        out
    }

    /// Scoring for an `echo` request: [`Api::score`] (the same admission, billing and
    /// logprob defenses on the top-k), and beside it each continuation token's own logprob,
    /// through the same defenses (None where they withhold it: a cap of 0, or rounded away).
    pub fn score_echo(
        &mut self,
        now: f64,
        reqs: &[(AccountId, &Prompt, &[Tok])],
        teacher: &Teacher,
        top_k: usize,
        rng: &mut SimRng,
    ) -> Vec<(Response, Vec<Option<f32>>)> {
        let out = self.score(now, reqs, teacher, top_k, rng);
        let mut chosen: Vec<Vec<Option<f32>>> = vec![vec![]; reqs.len()];
        for (i, (r, &(account, prompt, cont))) in out.iter().zip(reqs).enumerate() {
            if !r.code.answered() {
                continue;
            }
            let model = if self.accounts.on_fallback(account as usize) {
                &self.fallback
            } else {
                teacher
            };
            let raw = model
                .token_logprobs(&[(prompt, cont)])
                .pop()
                .unwrap_or_default();
            chosen[i] = raw
                .iter()
                .zip(cont)
                .enumerate()
                .map(|(j, (&lp, &t))| {
                    if let Some(&(_, v)) =
                        r.top.get(j).and_then(|row| row.iter().find(|e| e.0 == t))
                    {
                        return Some(v);
                    }
                    let mut row = vec![vec![(t, lp)]];
                    self.output.after_scores(&mut row, rng);
                    row[0].iter().find(|e| e.0 == t).map(|e| e.1)
                })
                .collect();
        }
        out.into_iter().zip(chosen).collect()
    }

    /// Total of all accounts' ledgers in `ids`.
    pub fn ledger_of(&self, ids: &[AccountId]) -> Ledger {
        let mut l = Ledger::default();
        for &i in ids {
            if let Some(a) = self.accounts.ledger.get(i as usize) {
                l.add(a);
            }
        }
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::derive_rng;
    use crate::world::vocab::{digit, ADD, PLUS_SIGN};
    use crate::world::{ideal_response, Kind, Skill, Tier};

    fn hard_add() -> Prompt {
        // 475 + 658: a trace of 3 carries + THINK/ENDTHINK.
        let mut tokens = vec![ADD];
        tokens.extend([5, 7, 4].map(digit)); // least-significant digit first
        tokens.push(PLUS_SIGN);
        tokens.extend([8, 5, 6].map(digit));
        Prompt {
            kind: Kind::Skill(Skill::Add, Tier::Hard),
            tokens,
            voice: None,
        }
    }

    fn request(account: AccountId, top_k: usize) -> Request {
        Request {
            account,
            prompt: hard_add(),
            max_tokens: 32,
            temperature: 0.0,
            top_k,
        }
    }

    #[test]
    fn hidden_reasoning_is_billed_not_returned() {
        let teacher = Teacher::Oracle {
            easy: 0.9,
            hard: 0.8,
        };
        let mut rng = derive_rng(0, "t");
        let mut api = Api::new(ApiConfig {
            reasoning: Reasoning::Hidden,
            logprobs: 5,
            ..Default::default()
        })
        .unwrap();
        let a = api.open_account(1, 0.0, Identity::default());
        let r = api
            .serve(0.0, &[request(a, 20)], &teacher, &mut rng)
            .remove(0);
        assert_eq!(r.code, Code::Ok);
        // Returned: the answer (4 digits) + EOS; hidden: THINK + 3 carries + ENDTHINK.
        assert_eq!(
            r.tokens,
            [3, 3, 1, 1]
                .map(digit)
                .into_iter()
                .chain([crate::world::vocab::EOS])
                .collect::<Vec<_>>()
        );
        assert_eq!(r.usage.hidden_reasoning_tokens, 5);
        assert_eq!(r.usage.output_tokens, 5);
        assert_eq!(r.usage.input_tokens, 10); // 8 prompt tokens + BOS + SEP
                                              // Logprobs follow the returned tokens, capped at the policy's k = 5 (oracle gives 4).
        assert_eq!(r.top.len(), 5);
        assert!(r.top.iter().all(|t| t.len() <= 5));
        // $3 per M input, $15 per M output (hidden billed): (10*3 + 10*15) / 1e6.
        assert!((r.usage.spend_usd - 180e-6).abs() < 1e-12);
        assert_eq!(api.accounts.ledger[a as usize].spend_usd, r.usage.spend_usd);
        // Visible reasoning returns the whole ideal response.
        let mut api = Api::new(ApiConfig::default()).unwrap();
        let a = api.open_account(1, 0.0, Identity::default());
        let r = api
            .serve(0.0, &[request(a, 20)], &teacher, &mut rng)
            .remove(0);
        assert_eq!(r.tokens, ideal_response(&hard_add()));
        assert!(r.top.is_empty(), "text-only API returns no logprobs");
    }

    #[test]
    fn rate_limits_throttle_without_charge() {
        let teacher = Teacher::Oracle {
            easy: 0.9,
            hard: 0.8,
        };
        let mut rng = derive_rng(0, "t");
        let mut api = Api::new(ApiConfig::default()).unwrap();
        let a = api.open_account(0, 0.0, Identity::default()); // free: 5 requests per minute
        let reqs: Vec<_> = (0..7).map(|_| request(a, 0)).collect();
        let codes: Vec<Code> = api
            .serve(0.0, &reqs, &teacher, &mut rng)
            .iter()
            .map(|r| r.code)
            .collect();
        assert_eq!(codes.iter().filter(|&&c| c == Code::Ok).count(), 5);
        assert_eq!(codes[5..], [Code::Throttled, Code::Throttled]);
        let l = api.accounts.ledger[a as usize];
        assert_eq!((l.requests, l.throttled), (5, 2));
        // 12 s later one request's worth has refilled.
        let codes: Vec<Code> = api
            .serve(12.0, &reqs[..2], &teacher, &mut rng)
            .iter()
            .map(|r| r.code)
            .collect();
        assert_eq!(codes, [Code::Ok, Code::Throttled]);
        // A suspended account is refused.
        api.accounts.status[a as usize] = Status::Banned;
        assert_eq!(
            api.serve(100.0, &reqs[..1], &teacher, &mut rng)[0].code,
            Code::Refused
        );
    }

    #[test]
    fn scoring_mode_returns_teacher_logprobs_on_the_callers_continuation() {
        let teacher = Teacher::Oracle {
            easy: 0.9,
            hard: 0.8,
        };
        let mut rng = derive_rng(0, "t");
        let mut api = Api::new(ApiConfig {
            scoring: true,
            logprobs: 5,
            ..Default::default()
        })
        .unwrap();
        let a = api.open_account(1, 0.0, Identity::default());
        let p = hard_add();
        let ideal = ideal_response(&p);
        // Follows the ideal for two tokens, then deviates.
        let mut cont = ideal[..3].to_vec();
        cont[2] = if ideal[2] == digit(9) {
            digit(8)
        } else {
            digit(9)
        };
        let r = api
            .score(0.0, &[(a, &p, &cont[..])], &teacher, 20, &mut rng)
            .remove(0);
        assert_eq!(r.code, Code::Ok);
        assert_eq!(r.tokens, cont);
        assert_eq!(r.top.len(), 3);
        assert!(r.top.iter().all(|t| t.len() == 5), "capped at the API's 5");
        for (top, &want) in r.top.iter().zip(&ideal) {
            // On the ideal path the teacher puts 0.8 on the ideal token at every position,
            // including the one the caller got wrong.
            assert_eq!(top[0].0, want);
            assert!((top[0].1 - 0.8f32.ln()).abs() < 1e-4, "{top:?}");
        }
        // Billed as input: prompt + BOS + SEP + continuation; no output.
        assert_eq!(
            (r.usage.input_tokens, r.usage.output_tokens),
            (8 + 2 + 3, 0)
        );
        assert!((r.usage.spend_usd - 13.0 * 3.0 / 1e6).abs() < 1e-12);
        // An API without scoring refuses, unbilled.
        let mut closed = Api::new(ApiConfig {
            logprobs: 5,
            ..Default::default()
        })
        .unwrap();
        let b = closed.open_account(1, 0.0, Identity::default());
        let r = closed
            .score(0.0, &[(b, &p, &cont[..])], &teacher, 20, &mut rng)
            .remove(0);
        assert_eq!(r.code, Code::Refused);
        assert_eq!(closed.accounts.ledger[b as usize].requests, 0);
    }
}
