//! The mock commercial API: accounts and tiers, rate limits as token buckets on the simulated
//! clock, prices and ledgers, the output policy, and the place where defenses plug in.
//! Each tick's admitted requests are served as one batched generation.

pub mod limits;

use crate::model::{GenParams, Generation};
use crate::rng::SimRng;
use crate::teacher::Teacher;
use crate::world::vocab::{Tok, ENDTHINK, THINK};
use crate::world::Prompt;
use limits::{Bucket, Ledger};
use serde::{Deserialize, Serialize};

/// One account tier: limits per minute and prices per million tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reasoning {
    Visible,
    /// Generated and billed, not returned.
    Hidden,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub tiers: Vec<TierSpec>,
    /// Top-k logprobs the API returns per output position (0 = text only; at most 20).
    pub logprobs: usize,
    pub reasoning: Reasoning,
    /// Most output tokens per request.
    pub max_tokens: usize,
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
        }
    }
}

impl ApiConfig {
    pub fn tier_index(&self, name: &str) -> Option<usize> {
        self.tiers.iter().position(|t| t.name == name)
    }
}

/// Identity attributes detectors can cluster on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// A defense in the stack: sees each request before generation and each response after.
/// The defense suite plugs in here; the basic API has an empty stack.
pub trait Defense: Send {
    /// Return a code to stop the request before generation.
    fn before(&mut self, _now: f64, _account: &Account, _req: &Request) -> Option<Code> {
        None
    }
    /// Transform a served response (e.g. round logprobs, watermark).
    fn after(&mut self, _now: f64, _account: &Account, _req: &Request, _resp: &mut Response) {}
}

pub struct Api {
    pub config: ApiConfig,
    pub accounts: Vec<Account>,
    pub defenses: Vec<Box<dyn Defense>>,
}

impl Api {
    pub fn new(config: ApiConfig) -> Api {
        Api {
            config,
            accounts: Vec::new(),
            defenses: Vec::new(),
        }
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
            let acc = &self.accounts[r.account as usize];
            if let Some(code) = self.defenses.iter_mut().find_map(|d| d.before(now, acc, r)) {
                out[i] = Some(Response::empty(code));
                continue;
            }
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
        let gens = teacher.respond(&prompts, &params, rng);
        for (&i, g) in admitted.iter().zip(gens) {
            let r = &reqs[i];
            let mut resp = self.apply_output_policy(g);
            resp.usage.input_tokens = (r.prompt.tokens.len() + 2) as u64;
            let acc = &mut self.accounts[r.account as usize];
            let tier = &self.config.tiers[acc.tier];
            let billed_out = resp.usage.output_tokens + resp.usage.hidden_reasoning_tokens;
            resp.usage.requests = 1;
            resp.usage.spend_usd = (resp.usage.input_tokens as f64 * tier.price_in
                + billed_out as f64 * tier.price_out)
                / 1e6;
            acc.buckets[2].take(billed_out as f64);
            acc.ledger.add(&resp.usage);
            let acc = &self.accounts[r.account as usize];
            for d in self.defenses.iter_mut() {
                d.after(now, acc, r, &mut resp);
            }
            out[i] = Some(resp);
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Response::empty(Code::Refused)))
            .collect()
    }

    /// Hide reasoning if the policy says so (billed, not returned); logprobs follow tokens.
    fn apply_output_policy(&self, g: Generation) -> Response {
        let mut usage = Ledger::default();
        let Generation {
            mut tokens,
            mut top,
        } = g;
        if self.config.reasoning == Reasoning::Hidden {
            if let Some(open) = tokens.iter().position(|&t| t == THINK) {
                let close = tokens
                    .iter()
                    .position(|&t| t == ENDTHINK)
                    .unwrap_or(tokens.len() - 1);
                let hidden = close + 1 - open;
                usage.hidden_reasoning_tokens = hidden as u64;
                tokens.drain(open..=close);
                if top.len() > open {
                    top.drain(open..=close.min(top.len() - 1));
                }
            }
        }
        usage.output_tokens = tokens.len() as u64;
        Response {
            code: Code::Ok,
            tokens,
            top,
            usage,
        }
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
