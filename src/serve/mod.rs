//! `distill-sim serve`: an experiment's teacher behind its API over HTTP, in the wire format of
//! OpenAI's completions and chat completions (axum on tokio).
//!
//! The HTTP layer parses, authenticates and formats; everything else is the simulator's own
//! [`Api`]: one account per Bearer key, its tier's token buckets, prices and ledger, the output
//! policy and defenses. Requests that arrive within a short window are gathered into one
//! [`Api::serve`] call, so they share one batched generation. The simulated clock is the wall
//! clock since start times `time_scale` (1: limits per real minute).

pub mod ledger;
pub mod load;
pub mod watch;

use crate::api::{Api, Code, Identity, Request, Response};
use crate::error::{Error, Result};
use crate::experiment::config::ExperimentConfig;
use crate::rng::{derive_rng, SimRng};
use crate::teacher::Teacher;
use crate::wire::{self, ApiError, Endpoint};
use crate::world::vocab::Tok;
use crate::world::{classify, Prompt};
use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The model name clients send (also accepted: `teacher-<cache key>`).
pub const MODEL: &str = "distill-sim-teacher";
/// Largest request body read.
pub const MAX_BODY: usize = 1 << 20;

/// One account's key and who holds it, a line of the keys file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub key: String,
    /// Tier name (one of the experiment's `api.tiers`).
    pub tier: String,
    #[serde(default)]
    pub identity: Identity,
    /// Spend (USD) after which the account's requests get 429 `insufficient_quota`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_usd: Option<f64>,
}

/// How the server batches and keeps time.
#[derive(Clone, Debug)]
pub struct Options {
    /// Simulated seconds per wall-clock second.
    pub time_scale: f64,
    /// How long the batcher waits for more requests after the first of a batch.
    pub window: Duration,
    /// Most generations in one batch.
    pub max_batch: usize,
    pub seed: u64,
    /// The durable ledger (JSON lines), replayed at start where it exists.
    pub ledger: Option<std::path::PathBuf>,
}

impl Options {
    /// The options of `distill-sim serve` for `exp` (sampling seeded by its first seed).
    pub fn new(
        exp: &crate::experiment::config::Experiment,
        time_scale: f64,
        window_ms: u64,
        ledger: Option<std::path::PathBuf>,
    ) -> Result<Options> {
        if !(time_scale.is_finite() && time_scale > 0.0 && time_scale <= 1e6) {
            return Err(Error::Invalid(format!(
                "--time-scale {time_scale}: a number in (0, 1e6]"
            )));
        }
        if window_ms > 1000 {
            return Err(Error::Invalid(format!(
                "--window-ms {window_ms}: at most 1000"
            )));
        }
        Ok(Options {
            time_scale,
            window: Duration::from_millis(window_ms),
            seed: exp.config.seeds.first().copied().unwrap_or(0),
            ledger,
            ..Options::default()
        })
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            time_scale: 1.0,
            window: Duration::from_millis(2),
            max_batch: 256,
            seed: 0,
            ledger: None,
        }
    }
}

/// `count` new keys on `tier`, derived from `seed` (distinct identities: one payment, network
/// and fingerprint each, region 0, unverified).
pub fn new_keys(count: usize, tier: &str, seed: u64) -> Vec<KeyEntry> {
    use rand::Rng;
    let mut rng = derive_rng(seed, "serve/keys");
    (0..count)
        .map(|i| KeyEntry {
            key: format!(
                "sk-sim-{:016x}{:016x}",
                rng.random::<u64>(),
                rng.random::<u64>()
            ),
            tier: tier.to_string(),
            identity: Identity {
                payment: i as u32,
                ip_asn: i as u32,
                fingerprint: i as u32,
                region: 0,
                verified: false,
            },
            quota_usd: None,
        })
        .collect()
}

/// Read a keys file (JSON lines of [`KeyEntry`]); errors name the file and line.
pub fn read_keys(path: &Path) -> Result<Vec<KeyEntry>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out: Vec<KeyEntry> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let e: KeyEntry = serde_json::from_str(line)
            .map_err(|e| Error::Invalid(format!("{}:{}: {e}", path.display(), i + 1)))?;
        if out.iter().any(|o| o.key == e.key) {
            return Err(Error::Invalid(format!(
                "{}:{}: key `{}` appears twice",
                path.display(),
                i + 1,
                e.key
            )));
        }
        out.push(e);
    }
    if out.is_empty() {
        return Err(Error::Invalid(format!("{}: no keys", path.display())));
    }
    Ok(out)
}

/// Write a keys file atomically.
pub fn write_keys(path: &Path, keys: &[KeyEntry]) -> Result<()> {
    let mut text = String::new();
    for k in keys {
        text.push_str(&serde_json::to_string(k).map_err(|e| Error::Invalid(e.to_string()))?);
        text.push('\n');
    }
    crate::fsutil::write_atomic(path, text.as_bytes())
}

/// A bucket's state after a request: limit per minute, remaining, seconds to full.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limit {
    pub cap: f64,
    pub remaining: f64,
    /// Real seconds until the bucket is full again.
    pub reset: f64,
}

/// What the batcher sends back for one HTTP request.
#[derive(Clone, Debug)]
pub struct Served {
    pub responses: Vec<Response>,
    /// Requests, input tokens, output tokens (per minute).
    pub limits: [Limit; 3],
    /// For a throttled request: which limit (0, 1, 2), what it needed, and real seconds until
    /// it is available.
    pub throttle: Option<(usize, f64, f64)>,
    /// The account's spend has reached its quota: nothing was served.
    pub over_quota: bool,
    /// The ledger could not be written or synced: what was served is not durable.
    pub ledger_error: Option<String>,
    /// An `echo` request's continuation tokens' own logprobs, per response (empty otherwise).
    pub chosen: Vec<Vec<Option<f32>>>,
}

/// An echo request's response and its continuation tokens' own logprobs.
type Scored = (Response, Vec<Option<f32>>);

struct Job {
    reqs: Vec<Request>,
    /// An `echo` request: the continuation of each request to score (empty: generate).
    continuations: Vec<Vec<Tok>>,
    /// Top logprobs asked for (echo scoring).
    top_k: usize,
    request_id: String,
    /// The client's `x-stainless-retry-count`.
    retry_count: Option<u32>,
    reply: tokio::sync::oneshot::Sender<Served>,
}

/// What the batcher thread is asked for.
enum Msg {
    Serve(Job),
    /// Every account's ledger, in key order.
    Ledgers(tokio::sync::oneshot::Sender<Vec<crate::api::limits::Ledger>>),
}

/// The shared state of the HTTP handlers.
pub struct Shared {
    jobs: mpsc::Sender<Msg>,
    keys: HashMap<String, u32>,
    models: Vec<String>,
    tiers: Vec<String>,
    max_tokens: usize,
    started: u64,
    /// Whether the API offers scoring (`api.scoring` with logprobs), which `echo` needs.
    scoring: bool,
}

/// Start the batcher thread (which owns the API, the teacher and the sampling stream) and
/// return the handlers' state. `keys` open one account each, in order.
pub fn start(
    cfg: &ExperimentConfig,
    teacher: Teacher,
    teacher_key: &str,
    keys: &[KeyEntry],
    opts: &Options,
) -> Result<Arc<Shared>> {
    let mut api = Api::with_access(cfg.api.clone(), cfg.traffic.access.clone())?;
    let mut map = HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        let tier = cfg.api.tier_index(&k.tier).ok_or_else(|| {
            Error::Invalid(format!(
                "keys: line {}: tier `{}` is not one of the experiment's tiers ({})",
                i + 1,
                k.tier,
                cfg.api.tier_names()
            ))
        })?;
        let id = api.open_account(tier, 0.0, k.identity);
        map.insert(k.key.clone(), id);
    }
    let tails: Vec<String> = keys.iter().map(|k| ledger::key_tail(&k.key)).collect();
    let identities: Vec<Identity> = keys.iter().map(|k| k.identity).collect();
    let mut live = watch::LiveWatch::new(cfg, &identities)?;
    let (file, clock0) = match &opts.ledger {
        Some(path) => {
            let (file, lines) = ledger::LedgerFile::open(path)?;
            let last = restore(
                &mut api,
                live.as_mut(),
                (&tails, cfg.traffic.throttle_factor),
                &lines,
            )
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
            if !lines.is_empty() {
                eprintln!(
                    "[serve] {}: {} lines replayed (simulated clock resumes at {last:.1} s)",
                    path.display(),
                    lines.len()
                );
            }
            (Some(file), last)
        }
        None => (None, 0.0),
    };
    let book = Book {
        file,
        tails,
        quotas: keys.iter().map(|k| k.quota_usd).collect(),
        clock0,
    };
    let (tx, rx) = mpsc::channel::<Msg>();
    let o = opts.clone();
    let t0 = Instant::now();
    let rng = derive_rng(opts.seed, "serve/sampling");
    std::thread::Builder::new()
        .name("distill-sim-batcher".into())
        .spawn(move || batcher(rx, api, teacher, rng, o, book, live, t0))
        .map_err(|e| Error::Invalid(format!("cannot start the batcher thread: {e}")))?;
    Ok(Arc::new(Shared {
        jobs: tx,
        keys: map,
        models: vec![MODEL.to_string(), format!("teacher-{teacher_key}")],
        tiers: cfg.api.tiers.iter().map(|t| t.name.clone()).collect(),
        max_tokens: cfg.api.max_tokens,
        scoring: cfg.api.scoring && cfg.api.logprobs > 0,
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }))
}

/// Replay a ledger's lines into the API (requests: usage, spend, buckets; actions: the
/// accounts' standing) and the live detectors (their features, and which accounts they
/// actioned). Returns the last line's simulated time.
fn restore(
    api: &mut Api,
    mut live: Option<&mut watch::LiveWatch>,
    (tails, throttle_factor): (&[String], f64),
    lines: &[ledger::Line],
) -> Result<f64> {
    let requests: Vec<ledger::Entry> = lines
        .iter()
        .filter_map(|l| match l {
            ledger::Line::Request(e) => Some(e.clone()),
            ledger::Line::Action(_) => None,
        })
        .collect();
    let mut last = ledger::replay(&mut api.accounts, tails, &requests)?;
    for (i, line) in lines.iter().enumerate() {
        match line {
            ledger::Line::Request(e) => {
                if let (Some(w), Some(kind), true) =
                    (live.as_deref_mut(), e.kind, e.code.answered())
                {
                    w.observe_recorded(e.account, kind, e.reasoning.unwrap_or(false), e.t);
                }
            }
            ledger::Line::Action(e) => {
                if tails.get(e.account as usize) != Some(&e.key_tail) {
                    return Err(Error::Invalid(format!(
                        "ledger line {}: an action on account {} (key ending `{}`) that the keys \
                         file does not have",
                        i + 1,
                        e.account,
                        e.key_tail
                    )));
                }
                watch::apply(api, e.account, e.action, throttle_factor, e.t);
                if let Some(w) = live.as_deref_mut() {
                    w.restore_action(e.account);
                }
                last = last.max(e.t);
            }
        }
    }
    Ok(last)
}

/// What the batcher thread owns besides the API.
struct Book {
    /// The durable ledger, if the server keeps one.
    file: Option<ledger::LedgerFile>,
    /// Each account's key tail (for ledger lines) and quota in USD.
    tails: Vec<String>,
    quotas: Vec<Option<f64>>,
    /// Simulated time at start (the last ledger entry's, after a restart).
    clock0: f64,
}

#[allow(clippy::too_many_arguments)]
fn batcher(
    rx: mpsc::Receiver<Msg>,
    mut api: Api,
    teacher: Teacher,
    mut rng: SimRng,
    opts: Options,
    mut book: Book,
    mut live: Option<watch::LiveWatch>,
    t0: Instant,
) {
    let ledgers = |api: &Api, reply: tokio::sync::oneshot::Sender<_>| {
        let _ = reply.send(api.accounts.ledger.clone());
    };
    while let Ok(first) = rx.recv() {
        let first = match first {
            Msg::Serve(j) => j,
            Msg::Ledgers(reply) => {
                ledgers(&api, reply);
                continue;
            }
        };
        let mut jobs = vec![first];
        let mut n = jobs[0].reqs.len();
        let deadline = Instant::now() + opts.window;
        let mut asked = vec![];
        while n < opts.max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Msg::Serve(j)) => {
                    n += j.reqs.len();
                    jobs.push(j);
                }
                Ok(Msg::Ledgers(reply)) => asked.push(reply),
                Err(_) => break,
            }
        }
        let now = book.clock0 + t0.elapsed().as_secs_f64() * opts.time_scale;
        // Accounts past their quota are answered without reaching the API.
        let over: Vec<bool> = jobs
            .iter()
            .map(|j| {
                let a = j.reqs[0].account as usize;
                book.quotas[a].is_some_and(|q| api.accounts.ledger[a].spend_usd >= q)
            })
            .collect();
        // Echo jobs are scored, not generated: each on its own.
        let scored: Vec<Option<Vec<Scored>>> = jobs
            .iter()
            .zip(&over)
            .map(|(j, &o)| {
                (!o && !j.continuations.is_empty()).then(|| {
                    let items: Vec<(crate::api::AccountId, &Prompt, &[Tok])> = j
                        .reqs
                        .iter()
                        .zip(&j.continuations)
                        .map(|(r, c)| (r.account, &r.prompt, &c[..]))
                        .collect();
                    api.score_echo(now, &items, &teacher, j.top_k, &mut rng)
                })
            })
            .collect();
        let reqs: Vec<Request> = jobs
            .iter()
            .zip(&over)
            .filter(|(j, &o)| !o && j.continuations.is_empty())
            .flat_map(|(j, _)| j.reqs.iter().cloned())
            .collect();
        let mut responses = api.serve(now, &reqs, &teacher, &mut rng).into_iter();
        let mut replies = Vec::with_capacity(jobs.len());
        let mut failed = None;
        for ((j, over), sc) in jobs.into_iter().zip(over).zip(scored) {
            let (rs, chosen): (Vec<Response>, Vec<Vec<Option<f32>>>) = match sc {
                _ if over => (vec![], vec![]),
                Some(sc) => sc.into_iter().unzip(),
                None => (responses.by_ref().take(j.reqs.len()).collect(), vec![]),
            };
            let a = j.reqs[0].account as usize;
            if let Some(w) = live.as_mut() {
                for (q, r) in j.reqs.iter().zip(&rs) {
                    if r.code.answered() {
                        w.observe(q.account, &q.prompt, now);
                    }
                }
            }
            if let Some(f) = book.file.as_mut() {
                for (q, r) in j.reqs.iter().zip(&rs) {
                    let e = ledger::Entry {
                        v: ledger::LEDGER_VERSION,
                        t: now,
                        account: a as u32,
                        key_tail: book.tails[a].clone(),
                        request_id: j.request_id.clone(),
                        retry_count: j.retry_count,
                        code: r.code,
                        input_tokens: r.usage.input_tokens,
                        output_tokens: r.usage.output_tokens,
                        hidden_reasoning_tokens: r.usage.hidden_reasoning_tokens,
                        spend_usd: r.usage.spend_usd,
                        kind: Some(crate::traffic::kind_index(q.prompt.kind)),
                        reasoning: Some(watch::query_of(&q.prompt, 0, 0).reasoning),
                    };
                    if let Err(err) = f.append(&e) {
                        failed = Some(err.to_string());
                    }
                }
            }
            let b = &mut api.accounts.buckets[a];
            let mut limits = [Limit::default(); 3];
            for (l, bucket) in limits.iter_mut().zip(b.iter_mut()) {
                bucket.refill(now);
                *l = Limit {
                    cap: bucket.cap,
                    remaining: bucket.level.max(0.0),
                    reset: (bucket.cap - bucket.level).max(0.0) / bucket.cap.max(1e-9) * 60.0
                        / opts.time_scale,
                };
            }
            let throttle = rs.iter().any(|r| r.code == Code::Throttled).then(|| {
                let cont = j.continuations.first().map_or(0, Vec::len);
                let input = (j.reqs[0].prompt.tokens.len() + 2 + cont) as f64;
                let need = [1.0, input, 0.0];
                let which = (0..3).find(|&i| b[i].level < need[i]).unwrap_or(0);
                let wait = (need[which] - b[which].level).max(0.0) / b[which].cap.max(1e-9) * 60.0
                    / opts.time_scale;
                (which, need[which], wait)
            });
            replies.push((
                j.reply,
                Served {
                    responses: rs,
                    limits,
                    throttle,
                    over_quota: over,
                    ledger_error: None,
                    chosen,
                },
            ));
        }
        // The live detectors' pass and the actions due: they hold from the next request on,
        // and their lines are committed with the batch's.
        if let Some(w) = live.as_mut() {
            for (a, action) in w.tick(now, &mut api) {
                eprintln!("[serve] t={now:.0} s: account {a} flagged, action {action:?}");
                if let Some(f) = book.file.as_mut() {
                    let e = ledger::ActionEntry {
                        v: ledger::LEDGER_VERSION,
                        t: now,
                        account: a,
                        key_tail: book.tails[a as usize].clone(),
                        action,
                    };
                    if let Err(err) = f.append_action(&e) {
                        failed = Some(err.to_string());
                    }
                }
            }
        }
        // Group commit: the batch's lines are durable before any of its responses is sent.
        if let Some(f) = book.file.as_mut() {
            if let Err(err) = f.commit() {
                failed = Some(err.to_string());
            }
        }
        if let Some(err) = &failed {
            eprintln!("[serve] ledger: {err}");
        }
        for (reply, mut served) in replies {
            served.ledger_error = failed.clone();
            // The receiver may have gone (client disconnected): the request was served and
            // billed all the same, as a provider's would be.
            let _ = reply.send(served);
        }
        for reply in asked {
            ledgers(&api, reply);
        }
    }
}

impl Shared {
    /// Every account's ledger (in keys-file order), as the API has billed it so far.
    pub async fn ledgers(&self) -> Result<Vec<crate::api::limits::Ledger>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Msg::Ledgers(tx))
            .map_err(|_| Error::Invalid("the batcher has stopped".into()))?;
        rx.await
            .map_err(|_| Error::Invalid("the batcher has stopped".into()))
    }
}

/// The router: `/v1/completions`, `/v1/chat/completions`, `/v1/models`, `/health`; every other
/// path or method answers a JSON error.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shared)
}

fn error_response(e: &ApiError, extra: &[(String, String)]) -> HttpResponse {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut r = (status, axum::Json(e.body())).into_response();
    add_headers(r.headers_mut(), extra);
    r
}

fn add_headers(h: &mut HeaderMap, extra: &[(String, String)]) {
    for (k, v) in extra {
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.insert(k, v);
        }
    }
}

async fn not_found() -> HttpResponse {
    error_response(
        &ApiError::new(404, "invalid_request_error", "unknown_url", "Unknown request URL: the server serves POST /v1/completions, POST /v1/chat/completions, GET /v1/models and GET /health"),
        &[],
    )
}

async fn method_not_allowed() -> HttpResponse {
    error_response(
        &ApiError::new(
            405,
            "invalid_request_error",
            "method_not_allowed",
            "Method not allowed for this URL",
        ),
        &[],
    )
}

async fn models(State(s): State<Arc<Shared>>) -> HttpResponse {
    let data: Vec<Value> = s
        .models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": s.started, "owned_by": "distill-sim"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn completions(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> HttpResponse {
    handle(s, headers, body, Endpoint::Completions).await
}

async fn chat(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> HttpResponse {
    handle(s, headers, body, Endpoint::Chat).await
}

fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    static NONCE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    // Unique across restarts on one ledger: the process's start time, then a counter.
    let nonce = NONCE.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u32)
            .unwrap_or(0)
    });
    format!(
        "req_{nonce:08x}{:012x}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn limit_headers(l: &[Limit; 3]) -> Vec<(String, String)> {
    let mut h = vec![];
    let mut put = |k: String, v: String| h.push((k, v));
    let family = [
        ("x-ratelimit-{}-requests", &l[0]),
        ("x-ratelimit-{}-tokens", &l[1]),
        ("anthropic-ratelimit-input-tokens-{}", &l[1]),
        ("anthropic-ratelimit-output-tokens-{}", &l[2]),
    ];
    for (pattern, x) in family {
        let name = |part: &str| pattern.replace("{}", part);
        put(name("limit"), format!("{}", x.cap.round() as u64));
        put(name("remaining"), format!("{}", x.remaining.floor() as u64));
        put(name("reset"), wire::go_duration(x.reset));
    }
    h
}

async fn handle(s: Arc<Shared>, headers: HeaderMap, body: Body, ep: Endpoint) -> HttpResponse {
    let rid = request_id();
    let mut extra = vec![("x-request-id".to_string(), rid.clone())];
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(&account) = key.and_then(|k| s.keys.get(k)) else {
        let msg = if key.is_none() {
            "You didn't provide an API key: send `Authorization: Bearer KEY` (the keys file the server wrote)."
        } else {
            "Incorrect API key provided."
        };
        return error_response(
            &ApiError::new(401, "invalid_request_error", "invalid_api_key", msg),
            &extra,
        );
    };
    let bytes = match to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return error_response(
                &ApiError::new(
                    413,
                    "invalid_request_error",
                    "request_too_large",
                    format!(
                        "The request body is larger than {MAX_BODY} bytes or could not be read."
                    ),
                ),
                &extra,
            )
        }
    };
    let p = match wire::parse(&bytes, ep) {
        Ok(p) => p,
        Err(e) => return error_response(&e, &extra),
    };
    if !s.models.contains(&p.model) {
        let mut e = ApiError::new(
            404,
            "invalid_request_error",
            "model_not_found",
            format!(
                "The model `{}` does not exist: this server serves {}",
                p.model.chars().take(64).collect::<String>(),
                s.models.join(", ")
            ),
        );
        e.param = Some("model".into());
        return error_response(&e, &extra);
    }
    if p.echo && !s.scoring {
        let e = ApiError::invalid(
            "echo",
            "this API offers no scoring (its experiment sets api.scoring false or api.logprobs \
             0), so echo cannot return the prompt's logprobs",
        );
        return error_response(&e, &extra);
    }
    let max_tokens = p.max_tokens.unwrap_or(s.max_tokens).min(s.max_tokens);
    let mut reqs = Vec::new();
    for toks in &p.prompts {
        for _ in 0..p.n {
            reqs.push(Request {
                account,
                prompt: Prompt {
                    kind: classify(toks, p.voice.as_ref()),
                    tokens: toks.clone(),
                    voice: p.voice,
                },
                max_tokens,
                temperature: p.temperature,
                top_k: p.top_k.max(usize::from(p.logprobs)),
            });
        }
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let retry_count = headers
        .get("x-stainless-retry-count")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let job = Job {
        reqs,
        continuations: p.continuations.clone(),
        top_k: p.top_k,
        request_id: rid.clone(),
        retry_count,
        reply: tx,
    };
    let stopped = || {
        ApiError::new(
            503,
            "server_error",
            "unavailable",
            "the batcher has stopped",
        )
    };
    if s.jobs.send(Msg::Serve(job)).is_err() {
        return error_response(&stopped(), &extra);
    }
    let Ok(served) = rx.await else {
        return error_response(&stopped(), &extra);
    };
    extra.extend(limit_headers(&served.limits));
    if let Some(err) = &served.ledger_error {
        return error_response(
            &ApiError::new(500, "server_error", "ledger_unavailable", format!("The request was served but could not be recorded durably ({err}); it is billed.")),
            &extra,
        );
    }
    if served.over_quota {
        extra.push(("x-should-retry".into(), "false".into()));
        return error_response(
            &ApiError::new(
                429,
                "insufficient_quota",
                "insufficient_quota",
                "You exceeded your current quota: this account's spend has reached its quota_usd.",
            ),
            &extra,
        );
    }
    let answered: Vec<(usize, &Response)> = served
        .responses
        .iter()
        .enumerate()
        .filter(|(_, r)| r.code.answered())
        .collect();
    if answered.is_empty() {
        let code = served.responses.first().map_or(Code::Refused, |r| r.code);
        let e = refusal(code, &served, &s.tiers);
        if let (Code::Throttled, Some((_, _, wait))) = (code, served.throttle) {
            extra.push((
                "retry-after".into(),
                format!("{}", wait.ceil().max(1.0) as u64),
            ));
            extra.push((
                "retry-after-ms".into(),
                format!("{}", (wait * 1000.0).ceil().max(1.0) as u64),
            ));
        }
        return error_response(&e, &extra);
    }
    if answered.len() < served.responses.len() {
        extra.push((
            "x-distill-sim-partial".into(),
            format!("{}/{}", answered.len(), served.responses.len()),
        ));
    }
    if answered.iter().any(|(_, r)| r.code == Code::Fallback) {
        extra.push(("x-distill-sim-served-by".into(), "fallback".into()));
    }
    let body = if p.echo {
        echo_body(&p, &answered, &served.chosen, &rid, s.started, &s.models[1])
    } else {
        respond_body(&p, ep, &answered, &rid, s.started, &s.models[1])
    };
    let mut r = if p.stream {
        let events = sse_events(&body, ep, p.include_usage);
        let mut r = (StatusCode::OK, events).into_response();
        let h = r.headers_mut();
        h.insert(
            "content-type",
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert("cache-control", HeaderValue::from_static("no-cache"));
        r
    } else {
        axum::Json(body).into_response()
    };
    add_headers(r.headers_mut(), &extra);
    r
}

/// A served body as server-sent events, in the chunk format of OpenAI's streaming API: per
/// choice, one chunk per token (chat: a first chunk with the role), then one with its
/// `finish_reason`; with `include_usage` every chunk has `usage: null` and a last chunk with
/// no choices carries the usage; `data: [DONE]` ends the stream. The whole answer is
/// generated first (batched generation), then sent.
fn sse_events(body: &Value, ep: Endpoint, include_usage: bool) -> String {
    let object = match ep {
        Endpoint::Completions => "text_completion",
        Endpoint::Chat => "chat.completion.chunk",
    };
    let mut out = String::new();
    let mut push = |choices: Value, usage: Option<&Value>| {
        let mut c = json!({
            "id": body["id"], "object": object, "created": body["created"], "model": body["model"],
            "system_fingerprint": body["system_fingerprint"], "choices": choices,
        });
        if include_usage {
            c["usage"] = usage.cloned().unwrap_or(Value::Null);
        }
        out.push_str(&format!("data: {c}\n\n"));
    };
    for choice in body["choices"].as_array().into_iter().flatten() {
        let index = &choice["index"];
        let (text, logprobs) = match ep {
            Endpoint::Completions => (choice["text"].as_str().unwrap_or(""), &choice["logprobs"]),
            Endpoint::Chat => (
                choice["message"]["content"].as_str().unwrap_or(""),
                &choice["logprobs"],
            ),
        };
        if ep == Endpoint::Chat {
            push(
                json!([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
                None,
            );
        }
        let words: Vec<&str> = text.split(' ').filter(|w| !w.is_empty()).collect();
        for (i, w) in words.iter().enumerate() {
            let piece = if i == 0 {
                w.to_string()
            } else {
                format!(" {w}")
            };
            let lp = match ep {
                Endpoint::Completions if !logprobs.is_null() => json!({
                    "tokens": [logprobs["tokens"][i]],
                    "token_logprobs": [logprobs["token_logprobs"][i]],
                    "top_logprobs": [logprobs["top_logprobs"][i]],
                    "text_offset": [logprobs["text_offset"][i]],
                }),
                Endpoint::Chat if !logprobs.is_null() => {
                    json!({"content": [logprobs["content"][i]]})
                }
                _ => Value::Null,
            };
            push(
                match ep {
                    Endpoint::Completions => {
                        json!([{"text": piece, "index": index, "logprobs": lp, "finish_reason": null}])
                    }
                    Endpoint::Chat => {
                        json!([{"index": index, "delta": {"content": piece}, "logprobs": lp, "finish_reason": null}])
                    }
                },
                None,
            );
        }
        let reason = &choice["finish_reason"];
        push(
            match ep {
                Endpoint::Completions => {
                    json!([{"text": "", "index": index, "logprobs": null, "finish_reason": reason}])
                }
                Endpoint::Chat => {
                    json!([{"index": index, "delta": {}, "logprobs": null, "finish_reason": reason}])
                }
            },
            None,
        );
    }
    if include_usage {
        push(json!([]), Some(&body["usage"]));
    }
    out.push_str("data: [DONE]\n\n");
    out
}

fn refusal(code: Code, served: &Served, _tiers: &[String]) -> ApiError {
    match code {
        Code::Throttled => {
            let (which, need, wait) = served.throttle.unwrap_or((0, 1.0, 0.0));
            let l = served.limits[which];
            let name = [
                "requests per min (RPM)",
                "input tokens per min (TPM)",
                "output tokens per min (OTPM)",
            ][which];
            let mut e = ApiError::new(
                429,
                if which == 0 { "requests" } else { "tokens" },
                "rate_limit_exceeded",
                format!(
                    "Rate limit reached for {name}: Limit {}, Used {}, Requested {}. Please try again in {}.",
                    l.cap.round() as u64,
                    (l.cap - l.remaining).max(0.0).round() as u64,
                    need.round() as u64,
                    wire::go_duration(wait)
                ),
            );
            e.kind = if which == 0 { "requests" } else { "tokens" };
            e
        }
        Code::RegionBlocked => ApiError::new(
            403,
            "permission_denied",
            "unsupported_country_region_territory",
            "Country, region, or territory not supported.",
        ),
        Code::Challenged => ApiError::new(
            403,
            "permission_denied",
            "identity_verification_required",
            "This account is suspended until it passes an identity challenge.",
        ),
        _ => ApiError::new(
            403,
            "permission_denied",
            "account_deactivated",
            "This account has been deactivated or its sign-up was refused.",
        ),
    }
}

fn logprob_of(top: &[(u32, f32)], t: u32) -> Option<f32> {
    top.iter().find(|(x, _)| *x == t).map(|&(_, l)| l)
}

/// An `echo` completion: each choice's text is its prompt (request, `<sep>`, continuation),
/// with logprobs for the continuation's tokens (null for the request and `<sep>`, which the
/// world's model does not predict), as lm-evaluation-harness reads a loglikelihood request.
fn echo_body(
    p: &wire::Parsed,
    answered: &[(usize, &Response)],
    chosen: &[Vec<Option<f32>>],
    rid: &str,
    created: u64,
    fingerprint: &str,
) -> Value {
    let mut prompt_tokens = 0u64;
    let mut choices = Vec::new();
    for &(index, r) in answered {
        prompt_tokens += r.usage.input_tokens;
        let req = &p.prompts[index];
        let all: Vec<Tok> = req
            .iter()
            .copied()
            .chain([crate::world::vocab::SEP])
            .chain(r.tokens.iter().copied())
            .collect();
        let pieces = wire::pieces(&all);
        let skip = req.len() + 1;
        let none = chosen.get(index).is_none_or(Vec::is_empty) || r.top.is_empty();
        let logprobs = if !p.logprobs || none {
            Value::Null
        } else {
            let offsets = wire::offsets(&pieces);
            let lp: Vec<Value> = (0..all.len())
                .map(|i| match i.checked_sub(skip) {
                    Some(j) => json!(chosen[index].get(j).copied().flatten()),
                    None => Value::Null,
                })
                .collect();
            let top: Vec<Value> = (0..all.len())
                .map(|i| match i.checked_sub(skip).and_then(|j| r.top.get(j)) {
                    Some(k) => Value::Object(
                        k.iter()
                            .take(p.top_k)
                            .map(|&(t, l)| (wire::piece(i, t), json!(l)))
                            .collect(),
                    ),
                    None => Value::Null,
                })
                .collect();
            json!({"tokens": pieces, "token_logprobs": lp, "top_logprobs": top, "text_offset": offsets})
        };
        choices.push(json!({
            "text": wire::text(&all), "index": index, "logprobs": logprobs, "finish_reason": "length",
        }));
    }
    json!({
        "id": format!("cmpl-{}", &rid[4..]),
        "object": "text_completion",
        "created": created,
        "model": p.model,
        "system_fingerprint": fingerprint,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": 0,
            "total_tokens": prompt_tokens,
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    })
}

fn respond_body(
    p: &wire::Parsed,
    ep: Endpoint,
    answered: &[(usize, &Response)],
    rid: &str,
    created: u64,
    fingerprint: &str,
) -> Value {
    let (mut prompt_tokens, mut completion, mut reasoning) = (0u64, 0u64, 0u64);
    let mut choices = Vec::new();
    for &(index, r) in answered {
        prompt_tokens += r.usage.input_tokens;
        completion += r.usage.output_tokens + r.usage.hidden_reasoning_tokens;
        reasoning += r.usage.hidden_reasoning_tokens;
        let (end, reason) = wire::finish(&r.tokens, &p.stop);
        let toks = &r.tokens[..end];
        let top = &r.top[..end.min(r.top.len())];
        let text = wire::text(toks);
        let pieces = wire::pieces(toks);
        // Logprobs asked for but not returned by the API's policy (`api.logprobs: 0`): null.
        let logprobs = if !p.logprobs || top.len() < toks.len() {
            Value::Null
        } else {
            match ep {
                Endpoint::Completions => {
                    let offsets = wire::offsets(&pieces);
                    json!({
                        "tokens": pieces,
                        "token_logprobs": toks.iter().zip(top).map(|(&t, k)| logprob_of(k, t)).collect::<Vec<_>>(),
                        "top_logprobs": top.iter().enumerate().map(|(i, k)| {
                            k.iter().take(p.top_k).map(|&(t, l)| (wire::piece(i, t), json!(l))).collect::<serde_json::Map<_, _>>()
                        }).collect::<Vec<_>>(),
                        "text_offset": offsets,
                    })
                }
                Endpoint::Chat => {
                    json!({"content": toks.iter().zip(top).zip(&pieces).enumerate().map(|(i, ((&t, k), this))| json!({
                    "token": this,
                    "logprob": logprob_of(k, t),
                    "bytes": this.as_bytes(),
                    "top_logprobs": k.iter().take(p.top_k).map(|&(x, l)| {
                        let name = wire::piece(i, x);
                        json!({"token": name, "logprob": l, "bytes": name.as_bytes()})
                    }).collect::<Vec<_>>(),
                })).collect::<Vec<_>>()})
                }
            }
        };
        choices.push(match ep {
            Endpoint::Completions => json!({
                "text": text, "index": index, "logprobs": logprobs, "finish_reason": reason,
            }),
            Endpoint::Chat => json!({
                "index": index,
                "message": {"role": "assistant", "content": text, "refusal": null},
                "logprobs": logprobs,
                "finish_reason": reason,
            }),
        });
    }
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    });
    let (prefix, object) = match ep {
        Endpoint::Completions => ("cmpl", "text_completion"),
        Endpoint::Chat => ("chatcmpl", "chat.completion"),
    };
    json!({
        "id": format!("{prefix}-{}", &rid[4..]),
        "object": object,
        "created": created,
        "model": p.model,
        // Names the teacher that answered (its cache key): `distill-sim distill` checks it.
        "system_fingerprint": fingerprint,
        "choices": choices,
        "usage": usage,
    })
}

/// Where a server's keys come from: a keys file to read, or new keys written to one.
#[derive(Clone, Debug)]
pub struct KeySource {
    pub path: std::path::PathBuf,
    /// Keys to create when `path` does not exist.
    pub accounts: usize,
    pub tier: String,
}

impl KeySource {
    pub fn new(path: std::path::PathBuf, accounts: usize, tier: String) -> KeySource {
        KeySource {
            path,
            accounts,
            tier,
        }
    }
}

/// Load the experiment's teacher (shipped, cached, or trained once), open the accounts of the
/// keys file (written first where it does not exist), and serve on `addr` until interrupted.
pub fn launch(
    exp: &crate::experiment::config::Experiment,
    cache: &Path,
    keys: &KeySource,
    opts: &Options,
    addr: &str,
) -> Result<()> {
    let cfg = &exp.config;
    let tcfg = cfg.run_teacher();
    let (teacher, _) =
        Teacher::load_or_train(&tcfg, cfg.backend(), &cfg.world, cache, |s, loss| {
            if s % 500 == 0 {
                eprintln!("[serve] training the teacher: step {s}, loss {loss:.4}");
            }
        })?;
    let entries = if keys.path.exists() {
        read_keys(&keys.path)?
    } else {
        if !(1..=1_000_000).contains(&keys.accounts) {
            return Err(Error::Invalid(format!(
                "--accounts {}: between 1 and 1000000",
                keys.accounts
            )));
        }
        if cfg.api.tier_index(&keys.tier).is_none() {
            return Err(Error::Invalid(format!(
                "--tier {}: not one of the experiment's tiers ({})",
                keys.tier,
                cfg.api.tier_names()
            )));
        }
        let k = new_keys(keys.accounts, &keys.tier, opts.seed);
        write_keys(&keys.path, &k)?;
        eprintln!("[serve] wrote {} keys to {}", k.len(), keys.path.display());
        k
    };
    let shared = start(cfg, teacher, &tcfg.hash(&cfg.world), &entries, opts)?;
    serve_blocking(shared, addr)
}

/// Serve until interrupted: bind `addr`, print where and how many keys to stderr.
pub fn serve_blocking(shared: Arc<Shared>, addr: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Invalid(format!("--addr {addr}: cannot bind: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::Invalid(format!("--addr {addr}: {e}")))?;
        eprintln!(
            "[serve] listening on http://{local}/v1 ({} keys)",
            shared.keys.len()
        );
        axum::serve(listener, router(shared))
            .await
            .map_err(|e| Error::Invalid(format!("server: {e}")))
    })
}

/// The load test of `bench --serve`: 16-token completions of [`bench_prompts`].
fn bench_load(clients: usize, seconds: f64) -> load::LoadOptions {
    load::LoadOptions {
        clients,
        seconds,
        max_requests: 0,
        max_tokens: 16,
        prompts: bench_prompts(),
    }
}

/// Prompts of the load test: skill prompts of every skill and tier, as token text.
fn bench_prompts() -> Vec<String> {
    use crate::world::{generate, vocab, Kind, Skill, Tier};
    let mut rng = derive_rng(0, "serve/bench-prompts");
    (0..256)
        .map(|i| {
            let skill = Skill::ALL[i % Skill::ALL.len()];
            let tier = if i % 2 == 0 { Tier::Easy } else { Tier::Hard };
            vocab::render(&generate(&mut rng, Kind::Skill(skill, tier), false).tokens)
        })
        .collect()
}

/// Requests the ledger file at `path` records as answered.
fn answered_in(path: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<ledger::Entry>(l).ok())
        .filter(|e| e.code.answered())
        .count() as u64)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start the async runtime: {e}")))
}

fn load_table(
    clients: usize,
    r: &load::LoadReport,
    billed: Option<u64>,
    durable: Option<u64>,
) -> String {
    let show = |x: Option<u64>| x.map_or("-".to_string(), |v| v.to_string());
    let same = match (billed, durable) {
        (None, None) => "-",
        (b, d) if b.is_none_or(|b| b == r.ok) && d.is_none_or(|d| d == r.ok) => "yes",
        _ => "NO",
    };
    format!(
        "| clients | seconds | sent | ok | 429 | failed | reconnects | completions/s | completion tokens/s | p50 ms | p99 ms | max ms | billed requests | answered in the ledger file | = ok |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n\
         | {clients} | {:.1} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} | {same} |\n",
        r.seconds,
        r.sent,
        r.ok,
        r.throttled,
        r.failed,
        r.reconnects,
        r.per_second(),
        r.completion_tokens as f64 / r.seconds.max(1e-9),
        r.p50_ms,
        r.p99_ms,
        r.max_ms,
        show(billed),
        show(durable),
    )
}

/// `distill-sim bench --serve`: the default experiment's teacher served on a free loopback
/// port, `clients` concurrent clients (one account each, tier 2, limits sped up by
/// `time_scale`) sending 16-token completions of skill prompts for `seconds`, with a durable
/// ledger; prints throughput, latency percentiles and the ledger check (billed requests and
/// the ledger file's answered lines = client successes).
pub fn bench(cache: &Path, clients: usize, seconds: f64, time_scale: f64) -> Result<String> {
    let cfg = ExperimentConfig::default();
    let tcfg = cfg.run_teacher();
    let (teacher, _) = Teacher::load_or_train(&tcfg, cfg.backend(), &cfg.world, cache, |_, _| {})?;
    let keys = new_keys(clients, "tier2", 0);
    let dir = std::env::temp_dir().join(format!("distill-sim-serve-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ledger_path = dir.join("ledger.jsonl");
    let opts = Options {
        time_scale,
        ledger: Some(ledger_path.clone()),
        ..Options::default()
    };
    let shared = start(&cfg, teacher, &tcfg.hash(&cfg.world), &keys, &opts)?;
    let key_strings: Vec<String> = keys.iter().map(|k| k.key.clone()).collect();
    let (report, ledgers) = runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::Invalid(format!("bind: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Invalid(format!("bind: {e}")))?;
        let app = router(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let report = load::run(addr, &key_strings, &bench_load(clients, seconds)).await?;
        let ledgers = shared.ledgers().await?;
        Ok::<_, Error>((report, ledgers))
    })?;
    let billed: u64 = ledgers.iter().map(|l| l.requests).sum();
    let durable = answered_in(&ledger_path)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(load_table(clients, &report, Some(billed), Some(durable)))
}

/// `distill-sim bench --serve --target ADDR --keys FILE [--ledger FILE]`: the same load test
/// against a server already running (say one that is killed and restarted meanwhile);
/// compares the clients' successes with the server's ledger file where one is given.
pub fn bench_target(
    addr: &str,
    keys: &Path,
    ledger_path: Option<&Path>,
    clients: usize,
    seconds: f64,
) -> Result<String> {
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| Error::Invalid(format!("--target {addr}: {e} (expected IP:PORT)")))?;
    let key_strings: Vec<String> = read_keys(keys)?.into_iter().map(|k| k.key).collect();
    let o = bench_load(clients, seconds);
    let report = runtime()?.block_on(load::run(addr, &key_strings, &o))?;
    let durable = ledger_path.map(answered_in).transpose()?;
    Ok(load_table(clients, &report, None, durable))
}

/// `distill-sim bench --serve`: against a running server (`target`: its address and keys
/// file, `ledger` its ledger file) or an in-process one; `load` is (clients, seconds,
/// time scale of the in-process server).
pub fn bench_cmd(
    target: Option<(&str, &Path)>,
    ledger: Option<&Path>,
    cache: &Path,
    (clients, seconds, time_scale): (usize, f64, f64),
) -> Result<String> {
    match target {
        Some((addr, keys)) => bench_target(addr, keys, ledger, clients, seconds),
        None => bench(cache, clients, seconds, time_scale),
    }
}
