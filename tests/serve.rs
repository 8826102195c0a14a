//! The HTTP API (`distill-sim serve`): status codes, headers and bodies as the official OpenAI
//! clients parse them, and a malformed-request corpus that must give only 4xx JSON errors.
//! The server runs in-process (the router, no socket) on the oracle teacher, so the expected
//! answers are the world's ideal responses.

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use distill_sim::api::{Identity, TierSpec};
use distill_sim::experiment::config::ExperimentConfig;
use distill_sim::serve::{self, KeyEntry, Options};
use distill_sim::teacher::Teacher;
use distill_sim::world::{ideal_response, vocab, Kind, Prompt, Skill, Tier};
use serde_json::{json, Value};
use tower::ServiceExt;

fn key(k: &str, tier: &str, identity: Identity) -> KeyEntry {
    KeyEntry {
        key: k.into(),
        tier: tier.into(),
        identity,
        quota_usd: None,
    }
}

fn server(cfg: ExperimentConfig, keys: Vec<KeyEntry>) -> axum::Router {
    serve::router(shared(cfg, keys, Options::default()))
}

fn shared(
    cfg: ExperimentConfig,
    keys: Vec<KeyEntry>,
    opts: Options,
) -> std::sync::Arc<serve::Shared> {
    let teacher = Teacher::Oracle {
        easy: 1.0,
        hard: 1.0,
    };
    serve::start(&cfg, teacher, "test", &keys, &opts).unwrap()
}

fn config() -> ExperimentConfig {
    let mut cfg = ExperimentConfig::default();
    cfg.api.logprobs = 5;
    cfg.api.tiers.push(TierSpec {
        name: "tiny".into(),
        rpm: 2.0,
        input_tpm: 1e6,
        output_tpm: 1e6,
        price_in: 3.0,
        price_out: 15.0,
    });
    cfg.traffic.access.blocked_regions = vec![7];
    cfg.traffic.access.max_accounts_per_payment = Some(1);
    cfg
}

fn keys() -> Vec<KeyEntry> {
    let id = |payment, region| Identity {
        payment,
        region,
        ..Identity::default()
    };
    vec![
        key("sk-good", "tier2", id(1, 0)),
        key("sk-tiny", "tiny", id(2, 0)),
        key("sk-blocked", "tier2", id(3, 7)),
        key("sk-second-card", "tier2", id(1, 0)),
    ]
}

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(k) = auth {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    req = req.header("content-type", "application/json");
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    let v: Value = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, headers, v)
}

fn post(v: Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

fn error_code(v: &Value) -> Option<&str> {
    v["error"]["code"].as_str()
}

#[tokio::test]
async fn completions_answer_the_ideal_response_with_usage_and_limit_headers() {
    let app = server(config(), keys());
    let prompt = "COPY a 3 b";
    let toks = vec![
        vocab::COPY,
        vocab::letter(0),
        vocab::digit(3),
        vocab::letter(1),
    ];
    let ideal = ideal_response(&Prompt {
        kind: Kind::Skill(Skill::CopyReverse, Tier::Easy),
        tokens: toks,
        voice: None,
    });
    let want = vocab::render(&ideal[..ideal.len() - 1]); // without EOS
    let (s, h, v) = call(
        &app,
        "POST",
        "/v1/completions",
        Some("sk-good"),
        post(json!({"model": serve::MODEL, "prompt": prompt, "temperature": 0, "logprobs": 3})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], want.as_str(), "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 3, "{v}");
    assert_eq!(
        lp["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect::<String>(),
        want
    );
    // usage: the prompt framed by BOS and SEP; completion tokens include EOS.
    assert_eq!(v["usage"]["prompt_tokens"], 6);
    assert_eq!(v["usage"]["completion_tokens"], 4);
    assert_eq!(v["usage"]["total_tokens"], 10);
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"],
        0
    );
    for name in [
        "x-request-id",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        "anthropic-ratelimit-input-tokens-limit",
        "anthropic-ratelimit-output-tokens-remaining",
        "anthropic-ratelimit-output-tokens-reset",
    ] {
        assert!(h.contains_key(name), "missing header {name}: {h:?}");
    }
    assert_eq!(h["x-ratelimit-limit-requests"], "1000");
    assert_eq!(h["x-ratelimit-remaining-requests"], "999");

    // Chat: the last user message is the prompt; top_logprobs beyond the API's policy (5) are
    // capped by it.
    let (s, _, v) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some("sk-good"),
        post(
            json!({"model": serve::MODEL, "messages": [{"role": "user", "content": prompt}],
                    "temperature": 0, "logprobs": true, "top_logprobs": 20, "n": 2}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["choices"][1]["message"]["content"], want.as_str());
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 3);
    assert_eq!(
        content[0]["top_logprobs"].as_array().unwrap().len(),
        5,
        "{v}"
    );

    let (s, _, v) = call(&app, "GET", "/v1/models", Some("sk-good"), vec![]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["data"][0]["id"], serve::MODEL);
    let (s, _, _) = call(&app, "GET", "/health", None, vec![]).await;
    assert_eq!(s, StatusCode::OK);
}

/// An lm-evaluation-harness loglikelihood request: `echo` with `max_tokens: 0`, the request,
/// `<sep>` and the continuation (as text or token ids), `logprobs: 1`. The continuation's
/// token logprobs are the teacher's (null for the request and `<sep>`), the greedy answer is
/// the top-1 at every position and scores above a wrong one; echo needs an API that offers
/// scoring.
#[tokio::test]
async fn echo_answers_a_loglikelihood_request_with_the_teachers_logprobs() {
    let req = "COPY a 3 b";
    let req_toks = vec![
        vocab::COPY,
        vocab::letter(0),
        vocab::digit(3),
        vocab::letter(1),
    ];
    let prompt = Prompt {
        kind: Kind::Skill(Skill::CopyReverse, Tier::Easy),
        tokens: req_toks.clone(),
        voice: None,
    };
    let ideal = ideal_response(&prompt);
    let body = |cont: &[u32]| {
        post(
            json!({"model": serve::MODEL, "prompt": format!("{req} <sep> {}", vocab::render(cont)),
                    "echo": true, "max_tokens": 0, "logprobs": 1, "temperature": 0}),
        )
    };
    // Not offered by the test config (api.scoring false): a 400 naming echo.
    let app = server(config(), keys());
    let (s, _, v) = call(
        &app,
        "POST",
        "/v1/completions",
        Some("sk-good"),
        body(&ideal),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["param"], "echo", "{v}");
    let mut cfg = config();
    cfg.api.scoring = true;
    let app = server(cfg, keys());
    let (s, _, v) = call(
        &app,
        "POST",
        "/v1/completions",
        Some("sk-good"),
        body(&ideal),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let c = &v["choices"][0];
    let want_text = format!("{req} <sep> {}", vocab::render(&ideal));
    assert_eq!(c["text"], want_text.as_str());
    let lp = &c["logprobs"];
    let n_req = req_toks.len() + 1;
    let token_lp = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(token_lp.len(), n_req + ideal.len(), "{v}");
    assert!(token_lp[..n_req].iter().all(Value::is_null), "{v}");
    // The teacher's own logprobs of the continuation.
    let teacher = Teacher::Oracle {
        easy: 1.0,
        hard: 1.0,
    };
    let want = teacher
        .token_logprobs(&[(&prompt, &ideal[..])])
        .pop()
        .unwrap();
    for (got, w) in token_lp[n_req..].iter().zip(&want) {
        assert!(
            (got.as_f64().unwrap() - *w as f64).abs() < 1e-6,
            "{got} vs {w}"
        );
    }
    // Greedy: each continuation token is the top-1.
    let pieces = lp["tokens"].as_array().unwrap();
    for (i, top) in lp["top_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .skip(n_req)
    {
        let top = top.as_object().unwrap();
        assert_eq!(top.len(), 1);
        assert!(top.contains_key(pieces[i].as_str().unwrap()), "{v}");
    }
    assert_eq!(
        v["usage"]["prompt_tokens"],
        (req_toks.len() + 2 + ideal.len()) as u64
    );
    assert_eq!(v["usage"]["completion_tokens"], 0);
    let total = |v: &Value| -> f64 {
        v["choices"][0]["logprobs"]["token_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_f64)
            .sum()
    };
    // A wrong answer (the copied symbols in another order) scores lower; token ids work too.
    let mut wrong = ideal.clone();
    wrong.swap(0, 2);
    assert_ne!(wrong, ideal);
    let (_, _, w) = call(
        &app,
        "POST",
        "/v1/completions",
        Some("sk-good"),
        body(&wrong),
    )
    .await;
    assert!(
        total(&w) < total(&v) - 1.0,
        "{} vs {}",
        total(&w),
        total(&v)
    );
    let ids: Vec<u32> = req_toks
        .iter()
        .copied()
        .chain([vocab::SEP])
        .chain(ideal.iter().copied())
        .collect();
    let (s, _, by_ids) = call(
        &app,
        "POST",
        "/v1/completions",
        Some("sk-good"),
        post(json!({"model": serve::MODEL, "prompt": ids, "echo": true, "max_tokens": 0, "logprobs": 1})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{by_ids}");
    assert_eq!(total(&by_ids), total(&v));
    // Echo without `<sep>`, or asking for generation too: a 400 naming the parameter.
    for (b, param) in [
        (
            json!({"model": serve::MODEL, "prompt": req, "echo": true, "max_tokens": 0}),
            "prompt",
        ),
        (
            json!({"model": serve::MODEL, "prompt": format!("{req} <sep> 1"), "echo": true, "max_tokens": 4}),
            "max_tokens",
        ),
        (
            json!({"model": serve::MODEL, "prompt": format!("{req} <sep> 1 <sep> 2"), "echo": true, "max_tokens": 0}),
            "prompt",
        ),
        (
            json!({"model": serve::MODEL, "prompt": format!("{req} <sep> 1"), "echo": true, "max_tokens": 0, "n": 2}),
            "n",
        ),
    ] {
        let (s, _, e) = call(&app, "POST", "/v1/completions", Some("sk-good"), post(b)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
        assert_eq!(e["error"]["param"], param, "{e}");
    }
}

/// Detectors acting live (`traffic.enabled`): an account over the volume threshold is flagged
/// at the next detector pass and banned (delay 0), so its next request is refused; the other
/// account is served; the ban is a ledger line, and a server restarted on the ledger keeps it.
/// Detectors that cannot run live are refused at start, naming the key.
#[tokio::test]
async fn live_detectors_ban_a_flagged_account_and_a_restart_keeps_the_ban() {
    use distill_sim::traffic::detect::DetectorConfig;
    use distill_sim::traffic::Action;
    let dir = std::env::temp_dir().join(format!("ds-serve-live-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("ledger.jsonl");
    let mut cfg = config();
    cfg.traffic.enabled = true;
    cfg.traffic.action = Action::Ban;
    cfg.traffic.detectors = DetectorConfig {
        volume_per_day: Some(5),
        check_minutes: 1,
        action_delay_minutes: 0,
        ..DetectorConfig::off()
    };
    // 50 simulated seconds per second: a pass every 1.2 s, a day every 29 min, so the first
    // pass comes after the first 8 requests even on a slow machine.
    let opts = Options {
        ledger: Some(path.clone()),
        time_scale: 50.0,
        ..Options::default()
    };
    let body = || post(json!({"model": serve::MODEL, "prompt": "SORT 3 1 2", "max_tokens": 8}));
    {
        let app = serve::router(shared(cfg.clone(), keys(), opts.clone()));
        for i in 0..8 {
            let (st, _, v) = call(&app, "POST", "/v1/completions", Some("sk-good"), body()).await;
            assert_eq!(st, StatusCode::OK, "request {i}: {v}");
        }
        let (st, _, v) = call(&app, "POST", "/v1/completions", Some("sk-tiny"), body()).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
        // The batch after the pass is due: served, then the pass flags and bans.
        let (st, _, v) = call(&app, "POST", "/v1/completions", Some("sk-good"), body()).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let (st, _, v) = call(&app, "POST", "/v1/completions", Some("sk-good"), body()).await;
        assert_eq!(
            (st.as_u16(), error_code(&v)),
            (403, Some("account_deactivated")),
            "{v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let (st, _, v) = call(&app, "POST", "/v1/completions", Some("sk-tiny"), body()).await;
        assert_ne!(st.as_u16(), 403, "the light account is not banned: {v}");
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let actions: Vec<&str> = text.lines().filter(|l| l.contains("\"action\"")).collect();
    assert_eq!(actions.len(), 1, "{text}");
    assert!(
        actions[0].contains("\"account\":0") && actions[0].contains("\"ban\""),
        "{text}"
    );
    let app = serve::router(shared(cfg.clone(), keys(), opts.clone()));
    let (st, _, v) = call(&app, "POST", "/v1/completions", Some("sk-good"), body()).await;
    assert_eq!(
        (st.as_u16(), error_code(&v)),
        (403, Some("account_deactivated")),
        "after a restart: {v}"
    );
    // Not live: PRADA (per-query distances), synchronised bursts, limit tracking; challenges.
    for (key, set) in [
        (
            "prada_w",
            DetectorConfig {
                prada_w: Some(0.5),
                ..DetectorConfig::off()
            },
        ),
        (
            "sync_share",
            DetectorConfig {
                sync_share: Some(0.5),
                ..DetectorConfig::off()
            },
        ),
    ] {
        let mut c = cfg.clone();
        c.traffic.detectors = set;
        let teacher = Teacher::Oracle {
            easy: 1.0,
            hard: 1.0,
        };
        let err = serve::start(&c, teacher, "test", &keys(), &Options::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains(key), "{err}");
    }
    let mut c = cfg.clone();
    c.traffic.action = Action::Challenge;
    let teacher = Teacher::Oracle {
        easy: 1.0,
        hard: 1.0,
    };
    let err = serve::start(&c, teacher, "test", &keys(), &Options::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("challenge"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `data:` events of a server-sent-event body, `[DONE]` last.
fn events(v: &Value) -> Vec<Value> {
    let text = v.as_str().expect("an event stream");
    let data: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data events only"))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// `stream: true`: one chunk per token whose texts (or deltas) join to the unstreamed answer,
/// a last chunk per choice with its finish reason, `usage` in a last chunk without choices
/// when `stream_options.include_usage` asks, `data: [DONE]` last.
#[tokio::test]
async fn streamed_answers_are_the_answers_chunk_by_chunk() {
    let app = server(config(), keys());
    let body = |stream: bool, usage: bool| {
        let mut b =
            json!({"model": serve::MODEL, "prompt": "SORT 3 1 2", "temperature": 0, "logprobs": 2});
        if stream {
            b["stream"] = json!(true);
        }
        if usage {
            b["stream_options"] = json!({"include_usage": true});
        }
        post(b)
    };
    let (_, _, whole) = call(
        &app,
        "POST",
        "/v1/completions",
        Some("sk-good"),
        body(false, false),
    )
    .await;
    let (s, h, v) = call(
        &app,
        "POST",
        "/v1/completions",
        Some("sk-good"),
        body(true, true),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(h["content-type"], "text/event-stream");
    assert!(h.contains_key("x-ratelimit-remaining-requests"));
    let ev = events(&v);
    let text: String = ev
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
    let n = whole["choices"][0]["logprobs"]["tokens"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        ev.len(),
        n + 2,
        "a chunk per token, the finish, the usage: {v}"
    );
    assert_eq!(ev[0]["object"], "text_completion");
    assert_eq!(
        ev[0]["choices"][0]["logprobs"]["top_logprobs"][0],
        whole["choices"][0]["logprobs"]["top_logprobs"][0]
    );
    assert!(ev[0]["usage"].is_null() && ev[0].get("usage").is_some());
    assert_eq!(ev[n]["choices"][0]["finish_reason"], "stop");
    assert_eq!(ev[n + 1]["choices"], json!([]));
    assert_eq!(ev[n + 1]["usage"], whole["usage"]);
    // Without include_usage no chunk has a usage key.
    let (_, _, v) = call(
        &app,
        "POST",
        "/v1/completions",
        Some("sk-good"),
        body(true, false),
    )
    .await;
    assert!(events(&v).iter().all(|e| e.get("usage").is_none()));
    // Chat: a role chunk, content deltas, the finish.
    let chat = |stream: bool| {
        let mut b = json!({"model": serve::MODEL, "messages": [{"role": "user", "content": "SORT 3 1 2"}], "temperature": 0, "n": 2});
        if stream {
            b["stream"] = json!(true);
        }
        post(b)
    };
    let (_, _, whole) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some("sk-good"),
        chat(false),
    )
    .await;
    let (s, _, v) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some("sk-good"),
        chat(true),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let ev = events(&v);
    assert!(ev.iter().all(|e| e["object"] == "chat.completion.chunk"));
    for i in 0..2 {
        let mine: Vec<&Value> = ev
            .iter()
            .filter(|e| e["choices"][0]["index"] == i)
            .collect();
        assert_eq!(mine[0]["choices"][0]["delta"]["role"], "assistant");
        let content: String = mine
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(
            content,
            whole["choices"][i]["message"]["content"].as_str().unwrap()
        );
        assert_eq!(mine.last().unwrap()["choices"][0]["finish_reason"], "stop");
    }
}

#[tokio::test]
async fn refusals_are_json_with_the_providers_codes_and_headers() {
    let app = server(config(), keys());
    let body = || post(json!({"model": serve::MODEL, "prompt": "SORT 3 1 2", "max_tokens": 8}));
    let (s, _, v) = call(&app, "POST", "/v1/completions", None, body()).await;
    assert_eq!(
        (s.as_u16(), error_code(&v)),
        (401, Some("invalid_api_key")),
        "{v}"
    );
    let (s, _, v) = call(&app, "POST", "/v1/completions", Some("sk-nope"), body()).await;
    assert_eq!(
        (s.as_u16(), error_code(&v)),
        (401, Some("invalid_api_key")),
        "{v}"
    );
    let (s, _, v) = call(&app, "POST", "/v1/completions", Some("sk-blocked"), body()).await;
    assert_eq!(
        (s.as_u16(), error_code(&v)),
        (403, Some("unsupported_country_region_territory")),
        "{v}"
    );
    let (s, _, v) = call(
        &app,
        "POST",
        "/v1/completions",
        Some("sk-second-card"),
        body(),
    )
    .await;
    assert_eq!(
        (s.as_u16(), error_code(&v)),
        (403, Some("account_deactivated")),
        "{v}"
    );
    // Two requests per minute on the tiny tier: the third is throttled with retry headers.
    for _ in 0..2 {
        let (s, _, v) = call(&app, "POST", "/v1/completions", Some("sk-tiny"), body()).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (s, h, v) = call(&app, "POST", "/v1/completions", Some("sk-tiny"), body()).await;
    assert_eq!(
        (s.as_u16(), error_code(&v)),
        (429, Some("rate_limit_exceeded")),
        "{v}"
    );
    assert_eq!(v["error"]["type"], "requests");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("Limit 2") && msg.contains("Requested 1"),
        "{msg}"
    );
    let ms: u64 = h["retry-after-ms"].to_str().unwrap().parse().unwrap();
    assert!((20_000..=30_000).contains(&ms), "retry-after-ms {ms}");
    let secs: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(secs, ms.div_ceil(1000));
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    let (s, _, v) = call(
        &app,
        "POST",
        "/v1/completions",
        Some("sk-good"),
        post(json!({"model": "gpt-9", "prompt": "SORT 3"})),
    )
    .await;
    assert_eq!(
        (s.as_u16(), error_code(&v)),
        (404, Some("model_not_found")),
        "{v}"
    );
    let (s, _, v) = call(&app, "GET", "/v1/completions", Some("sk-good"), vec![]).await;
    assert_eq!(s.as_u16(), 405, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    let (s, _, v) = call(&app, "POST", "/v1/nothing", Some("sk-good"), body()).await;
    assert_eq!(s.as_u16(), 404, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    let huge = vec![b' '; serve::MAX_BODY + 10];
    let (s, _, v) = call(&app, "POST", "/v1/completions", Some("sk-good"), huge).await;
    assert_eq!(
        (s.as_u16(), error_code(&v)),
        (413, Some("request_too_large")),
        "{v}"
    );
}

/// The malformed corpus: bodies that are not JSON, not objects, with fields of the wrong type,
/// out of range, unknown tokens, missing fields. Every one gets a 4xx JSON error that names
/// the problem; none panics or gets a 5xx.
#[tokio::test]
async fn malformed_requests_get_4xx_json_errors_never_5xx() {
    let app = server(config(), keys());
    let mut corpus: Vec<(String, Vec<u8>)> = Vec::new();
    let raw = [
        "",
        "{",
        "}",
        "[]",
        "null",
        "1",
        "\"x\"",
        "{\"model\":",
        "{'model':'x'}",
        "\u{0}",
        "{\"model\":\"distill-sim-teacher\",}",
        "{\"model\":\"distill-sim-teacher\" \"prompt\":\"COPY a\"}",
        "[{\"model\":\"distill-sim-teacher\"}]",
        "true",
        "{\"a\":1e999999}",
    ];
    for r in raw {
        corpus.push(("/v1/completions".into(), r.as_bytes().to_vec()));
        corpus.push(("/v1/chat/completions".into(), r.as_bytes().to_vec()));
    }
    corpus.push(("/v1/completions".into(), vec![0xff, 0xfe, 0x00, 0x80]));
    let bad_values = [
        json!(null),
        json!(-1),
        json!(-1.5),
        json!(1e300),
        json!(u64::MAX),
        json!("5"),
        json!([]),
        json!({}),
        json!(true),
        json!("COPY zz"),
        json!(3.5),
    ];
    let fields = [
        "model",
        "prompt",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "n",
        "logprobs",
        "stop",
        "seed",
        "voice",
        "echo",
        "stream",
    ];
    // Values a field may legally take (null: the default; a negative seed; no stop sequences)
    // are not malformed.
    let legal = |f: &str, v: &Value| {
        (v.is_null() && !["model", "prompt", "messages"].contains(&f))
            || (f == "seed" && v == &json!(-1))
            || (f == "stop" && v == &json!([]))
            || (["prompt", "stop"].contains(&f) && v == &json!("5")) // the token `5`
            || (f == "logprobs" && v == &json!(true)) // chat's logprobs is a boolean
            || (f == "stream" && v == &json!(true))
    };
    for f in fields {
        for bad in bad_values.iter().filter(|v| !legal(f, v)) {
            let mut body = json!({"model": serve::MODEL, "prompt": "COPY a 3", "max_tokens": 4});
            body[f] = bad.clone();
            corpus.push(("/v1/completions".into(), post(body)));
        }
    }
    let chat_fields = [
        "model",
        "messages",
        "max_tokens",
        "temperature",
        "n",
        "logprobs",
        "top_logprobs",
        "stop",
        "voice",
    ];
    for f in chat_fields {
        for bad in bad_values.iter().filter(|v| !legal(f, v)) {
            let mut body =
                json!({"model": serve::MODEL, "messages": [{"role": "user", "content": "COPY a"}]});
            body[f] = bad.clone();
            corpus.push(("/v1/chat/completions".into(), post(body)));
        }
    }
    let prompts = [
        json!(""),
        json!("   "),
        json!("<bos> COPY a"),
        json!("COPY <eos>"),
        json!([0]),
        json!([1, 33]),
        json!([80]),
        json!([-1]),
        json!([33, "a"]),
        json!([[33], "COPY zz"]),
        json!([[]]),
        json!("COPY ".repeat(600)),
        json!(vec![33; 600]),
        json!(vec!["COPY a"; 17]),
        json!("ÄÖÜ"),
        json!("COPY\u{0}a"),
        json!([[33, 21], [999]]),
    ];
    for p in prompts {
        corpus.push((
            "/v1/completions".into(),
            post(json!({"model": serve::MODEL, "prompt": p})),
        ));
    }
    let messages = [
        json!([{"role": "user"}]),
        json!([{"content": "COPY a"}]),
        json!([{"role": "robot", "content": "COPY a"}]),
        json!([{"role": "system", "content": "COPY a"}]),
        json!(["COPY a"]),
        json!([{"role": "user", "content": 5}]),
        json!([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]),
        json!([{"role": "user", "content": [{"type": "text"}]}]),
        json!([{"role": 1, "content": "COPY a"}]),
        json!([{"role": "user", "content": "COPY unknown"}]),
        json!([]),
    ];
    for m in messages {
        corpus.push((
            "/v1/chat/completions".into(),
            post(json!({"model": serve::MODEL, "messages": m})),
        ));
    }
    let combos = [
        json!({"model": serve::MODEL, "prompt": "COPY a", "n": 17}),
        json!({"model": serve::MODEL, "prompt": ["COPY a", "COPY b", "COPY c"], "n": 6}),
        json!({"model": serve::MODEL, "prompt": "COPY a", "max_tokens": 3, "max_completion_tokens": 3}),
        json!({"model": serve::MODEL, "prompt": "COPY a", "max_tokens": 0}),
        json!({"model": serve::MODEL, "prompt": "COPY a", "logprobs": 6}),
        json!({"model": serve::MODEL, "prompt": "COPY a", "stop": ["a", "b", "c", "d", "e"]}),
        json!({"model": serve::MODEL, "prompt": "COPY a", "stop": [1]}),
        json!({"model": serve::MODEL, "prompt": "COPY a", "voice": [1, 2, 3]}),
        json!({"model": serve::MODEL, "prompt": "COPY a", "voice": [0, 0, 0, 0, 0, 0, 0, 1e9]}),
        json!({"model": serve::MODEL, "prompt": "COPY a", "temperature": 2.5}),
        json!({"model": serve::MODEL, "prompt": "COPY a", "stream": true, "stream_options": {"include_usage": "yes"}}),
        json!({"model": serve::MODEL, "prompt": "COPY a", "stream": true, "stream_options": {"other": true}}),
        json!({"model": serve::MODEL, "prompt": "COPY a", "stream": true, "stream_options": 1}),
        json!({"model": serve::MODEL, "prompt": "COPY a", "stream_options": {"include_usage": true}}),
        json!({"model": serve::MODEL, "prompt": "COPY a <sep> a", "stream": true, "echo": true, "max_tokens": 0}),
        json!({"model": serve::MODEL, "prompt": "COPY a", "echo": true, "max_tokens": 0}),
        json!({"model": serve::MODEL, "messages": [{"role": "user", "content": "COPY a"}], "top_logprobs": 21, "logprobs": true}),
        json!({"model": serve::MODEL, "messages": [{"role": "user", "content": "COPY a"}], "top_logprobs": 2}),
        json!({"model": "", "prompt": "COPY a"}),
        json!({"model": "x".repeat(10_000), "prompt": "COPY a"}),
    ];
    for c in combos {
        for path in ["/v1/completions", "/v1/chat/completions"] {
            corpus.push((path.into(), post(c.clone())));
        }
    }
    assert!(
        corpus.len() >= 200,
        "only {} malformed requests",
        corpus.len()
    );
    eprintln!("{} malformed requests", corpus.len());
    for (path, body) in &corpus {
        let (s, _, v) = call(&app, "POST", path, Some("sk-good"), body.clone()).await;
        let shown = String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
        assert!(s.is_client_error(), "{path} {shown}: {s} {v}");
        let msg = v["error"]["message"].as_str();
        assert!(
            msg.is_some_and(|m| !m.is_empty()),
            "{path} {shown}: no JSON error: {v}"
        );
        assert!(v["error"]["type"].is_string(), "{path} {shown}: {v}");
    }
}

/// The durable ledger: a server restarted on it has the same ledgers, spend and limit levels
/// (the tiny tier's third request is still throttled); a torn last line is cut off; a
/// corrupt line inside the file is an error naming it. Quotas answer 429 `insufficient_quota`.
#[tokio::test]
async fn a_restarted_server_restores_its_ledger_and_limits() {
    let dir = std::env::temp_dir().join(format!("ds-serve-ledger-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("ledger.jsonl");
    let opts = Options {
        ledger: Some(path.clone()),
        ..Options::default()
    };
    let mut ks = keys();
    ks[0].quota_usd = Some(1e-9);
    let body = || post(json!({"model": serve::MODEL, "prompt": "SORT 3 1 2", "max_tokens": 8}));
    let mut before = {
        let s = shared(config(), ks.clone(), opts.clone());
        let app = serve::router(s.clone());
        for _ in 0..2 {
            let (st, _, v) = call(&app, "POST", "/v1/completions", Some("sk-tiny"), body()).await;
            assert_eq!(st, StatusCode::OK, "{v}");
        }
        let (st, _, _) = call(&app, "POST", "/v1/completions", Some("sk-tiny"), body()).await;
        assert_eq!(st.as_u16(), 429);
        // The quota: the first request is served (spend 0), the next is refused for good.
        let (st, _, v) = call(&app, "POST", "/v1/completions", Some("sk-good"), body()).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let (st, h, v) = call(&app, "POST", "/v1/completions", Some("sk-good"), body()).await;
        assert_eq!(
            (st.as_u16(), error_code(&v)),
            (429, Some("insufficient_quota")),
            "{v}"
        );
        assert_eq!(h["x-should-retry"], "false");
        s.ledgers().await.unwrap()
    };
    assert_eq!(before[1].requests, 2);
    assert_eq!(before[1].throttled, 1);
    assert!(before[0].spend_usd > 0.0);
    let lines = std::fs::read_to_string(&path).unwrap().lines().count();
    assert_eq!(lines, 4, "2 + 1 throttled + 1 on the quota account");
    for torn in [false, true] {
        if torn {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            f.write_all(b"{\"v\":1,\"t\":0.5,\"acc").unwrap();
        }
        let s = shared(config(), ks.clone(), opts.clone());
        assert_eq!(s.ledgers().await.unwrap(), before, "torn {torn}");
        let app = serve::router(s.clone());
        let (st, _, v) = call(&app, "POST", "/v1/completions", Some("sk-tiny"), body()).await;
        assert_eq!(
            (st.as_u16(), error_code(&v)),
            (429, Some("rate_limit_exceeded")),
            "{v}"
        );
        let (st, _, v) = call(&app, "POST", "/v1/completions", Some("sk-good"), body()).await;
        assert_eq!(error_code(&v), Some("insufficient_quota"), "{st} {v}");
        before[1].throttled += 1; // this restart's throttled request, now in the ledger
    }
    // The two restarts each added one throttled line; the torn bytes are gone.
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 6);
    assert!(text.ends_with('\n'));
    // A corrupt line that is not the last is refused, naming the file and line.
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(1, "not json");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let teacher = Teacher::Oracle {
        easy: 1.0,
        hard: 1.0,
    };
    let err = serve::start(&config(), teacher, "test", &ks, &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("ledger.jsonl:2"), "{err}");
    // And a ledger written with other keys is refused.
    std::fs::write(&path, text).unwrap();
    ks[1].key = "sk-another".into();
    let teacher = Teacher::Oracle {
        easy: 1.0,
        hard: 1.0,
    };
    let err = serve::start(&config(), teacher, "test", &ks, &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("keys file"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
