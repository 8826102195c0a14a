//! The mock commercial API: accounts and tiers, rate limits as token buckets on the simulated
//! clock, prices and ledgers, the output policy, and the place where defenses plug in.
//! Each tick's admitted requests are served as one batched generation.

pub mod defense;
pub mod limits;

use crate::model::GenParams;
use crate::rng::SimRng;
use crate::teacher::Teacher;
use crate::world::vocab::Tok;
use crate::world::Prompt;
use limits::{Bucket, Ledger};
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

#[derive(Clone, Debug)]
pub struct Account {
    pub tier: usize,
    pub created_at: f64,
    pub identity: Identity,
    pub suspended: bool,
    /// Requests, input tokens, output tokens per minute.
    buckets: [Bucket; 3],
    pub ledger: Ledger,
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

/// Why a request was not served normally. Never an error: the simulation handles each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    Ok,
    /// A rate limit is exhausted; retry later.
    Throttled,
    /// The account is suspended or unknown.
    Refused,
}

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
    pub accounts: Vec<Account>,
    pub output: defense::Defenses,
}

impl Api {
    pub fn new(config: ApiConfig) -> crate::error::Result<Api> {
        Ok(Api {
            output: defense::Defenses::for_api(&config)?,
            config,
            accounts: Vec::new(),
        })
    }

    pub fn open_account(&mut self, tier: usize, now: f64, identity: Identity) -> AccountId {
        let t = &self.config.tiers[tier];
        self.accounts.push(Account {
            tier,
            created_at: now,
            identity,
            suspended: false,
            buckets: [
                Bucket::full(t.rpm, now),
                Bucket::full(t.input_tpm, now),
                Bucket::full(t.output_tpm, now),
            ],
            ledger: Ledger::default(),
        });
        (self.accounts.len() - 1) as AccountId
    }

    /// Serve one tick's requests: admission (suspension, defenses, limits), one batched
    /// generation for everything admitted, output policy, billing.
    pub fn serve(
        &mut self,
        now: f64,
        reqs: &[Request],
        teacher: &Teacher,
        rng: &mut SimRng,
    ) -> Vec<Response> {
        let mut out: Vec<Option<Response>> = vec![None; reqs.len()];
        let mut admitted = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            let Some(acc) = self.accounts.get_mut(r.account as usize) else {
                out[i] = Some(Response::empty(Code::Refused));
                continue;
            };
            if acc.suspended {
                out[i] = Some(Response::empty(Code::Refused));
                continue;
            }
            let input = (r.prompt.tokens.len() + 2) as f64;
            let ok = acc.buckets[0].has(now, 1.0)
                && acc.buckets[1].has(now, input)
                && acc.buckets[2].has(now, 0.0);
            if !ok {
                acc.ledger.throttled += 1;
                out[i] = Some(Response::empty(Code::Throttled));
                continue;
            }
            acc.buckets[0].take(1.0);
            acc.buckets[1].take(input);
            admitted.push(i);
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
        let served = self.output.serve(teacher, &prompts, params, rng);
        for (&i, (g, withheld)) in admitted.iter().zip(served) {
            let r = &reqs[i];
            let mut resp = Response {
                code: Code::Ok,
                usage: Ledger {
                    hidden_reasoning_tokens: withheld as u64,
                    output_tokens: g.tokens.len() as u64,
                    ..Ledger::default()
                },
                tokens: g.tokens,
                top: g.top,
            };
            resp.usage.input_tokens = (r.prompt.tokens.len() + 2) as u64;
            let acc = &mut self.accounts[r.account as usize];
            let tier = &self.config.tiers[acc.tier];
            let billed_out = resp.usage.output_tokens + resp.usage.hidden_reasoning_tokens;
            resp.usage.requests = 1;
            let voice = if r.prompt.voice.is_some() {
                self.config.voice_price_multiplier
            } else {
                1.0
            };
            resp.usage.spend_usd = voice
                * (resp.usage.input_tokens as f64 * tier.price_in
                    + billed_out as f64 * tier.price_out)
                / 1e6;
            acc.buckets[2].take(billed_out as f64);
            acc.ledger.add(&resp.usage);
            out[i] = Some(resp);
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Response::empty(Code::Refused)))
            .collect()
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
        for (i, &(account, prompt, cont)) in reqs.iter().enumerate() {
            out.push(Response::empty(Code::Refused));
            let Some(acc) = self.accounts.get_mut(account as usize) else {
                continue;
            };
            if !self.config.scoring || acc.suspended {
                continue;
            }
            let input = (prompt.tokens.len() + 2 + cont.len()) as f64;
            if !(acc.buckets[0].has(now, 1.0) && acc.buckets[1].has(now, input)) {
                acc.ledger.throttled += 1;
                out[i] = Response::empty(Code::Throttled);
                continue;
            }
            acc.buckets[0].take(1.0);
            acc.buckets[1].take(input);
            admitted.push(i);
        }
        let k = top_k
            .min(self.config.logprobs)
            .min(crate::model::generate::MAX_TOP_K);
        let items: Vec<(&Prompt, &[Tok])> =
            admitted.iter().map(|&i| (reqs[i].1, reqs[i].2)).collect();
        let scores = if k == 0 {
            vec![vec![]; items.len()]
        } else {
            teacher.score(&items, k)
        };
        for (&i, mut top) in admitted.iter().zip(scores) {
            let (account, prompt, cont) = reqs[i];
            self.output.after_scores(&mut top, rng);
            let acc = &mut self.accounts[account as usize];
            let tier = &self.config.tiers[acc.tier];
            let input = (prompt.tokens.len() + 2 + cont.len()) as u64;
            let usage = Ledger {
                requests: 1,
                input_tokens: input,
                spend_usd: input as f64 * tier.price_in / 1e6,
                ..Ledger::default()
            };
            acc.ledger.add(&usage);
            out[i] = Response {
                code: Code::Ok,
                tokens: cont.to_vec(),
                top,
                usage,
            };
        }
        out
    }

    /// Total of all accounts' ledgers in `ids`.
    pub fn ledger_of(&self, ids: &[AccountId]) -> Ledger {
        let mut l = Ledger::default();
        for &i in ids {
            if let Some(a) = self.accounts.get(i as usize) {
                l.add(&a.ledger);
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
        assert_eq!(api.accounts[a as usize].ledger.spend_usd, r.usage.spend_usd);
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
        let l = api.accounts[a as usize].ledger;
        assert_eq!((l.requests, l.throttled), (5, 2));
        // 12 s later one request's worth has refilled.
        let codes: Vec<Code> = api
            .serve(12.0, &reqs[..2], &teacher, &mut rng)
            .iter()
            .map(|r| r.code)
            .collect();
        assert_eq!(codes, [Code::Ok, Code::Throttled]);
        // A suspended account is refused.
        api.accounts[a as usize].suspended = true;
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
        assert_eq!(closed.accounts[b as usize].ledger.requests, 0);
    }
}
