//! The OpenAI wire format: request bodies parsed by hand (every error names its `param`),
//! error bodies as the official clients parse them, the pieces of response text, and
//! (`harvest`) a harvest saved by any client read back as harvest items.
//!
//! Prompts are the world's tokens, written as their names separated by whitespace
//! (`COPY a 3 b`, see `distill-sim`'s README, "The world"), or as token ids.

use crate::world::vocab::{self, Tok, VOCAB_SIZE};
use crate::world::VOICE_FEATURES;
use serde_json::{json, Map, Value};

pub mod harvest;

/// Most prompts x choices in one request.
pub const MAX_CHOICES: usize = 16;
/// Most tokens in one prompt.
pub const MAX_PROMPT_TOKENS: usize = 512;

/// An error response: HTTP status and the `{"error": {...}}` body's fields.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: None,
        }
    }

    pub fn new(
        status: u16,
        kind: &'static str,
        code: &'static str,
        msg: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            message: msg.into(),
            kind,
            param: None,
            code: Some(code),
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

/// A request's endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

/// A parsed completion or chat request.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    pub model: String,
    /// One or more prompts (completions may batch them); each yields `n` choices.
    pub prompts: Vec<Vec<Tok>>,
    pub voice: Option<[f32; VOICE_FEATURES]>,
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub n: usize,
    /// Top-k logprobs asked for per position (0: none).
    pub top_k: usize,
    /// Whether logprobs were asked for at all (chat `logprobs: true` with `top_logprobs: 0`
    /// still returns the chosen token's logprob).
    pub logprobs: bool,
    /// `echo` (completions): scoring, not generation. `prompts[i]` is then the request before
    /// `<sep>` and `continuations[i]` the tokens after it, whose logprobs are returned.
    pub echo: bool,
    pub continuations: Vec<Vec<Tok>>,
    /// Answer as server-sent events (one chunk per token), `data: [DONE]` last; with
    /// `stream_options.include_usage`, a last chunk with no choices carries `usage`.
    pub stream: bool,
    pub include_usage: bool,
    pub stop: Vec<Vec<Tok>>,
    pub seed: Option<i64>,
}

/// The token whose name is `name`, if any.
pub fn token_of(name: &str) -> Option<Tok> {
    // Names are distinct (a vocabulary test checks it); the vocabulary is 80 tokens.
    (0..VOCAB_SIZE as Tok).find(|&t| vocab::name(t) == name)
}

/// The tokens of a prompt's text; an unknown name is an error naming it and its position.
pub fn parse_text(param: &str, text: &str) -> Result<Vec<Tok>, ApiError> {
    parse_text_with(param, text, is_prompt_token)
}

fn parse_text_with(param: &str, text: &str, ok: fn(Tok) -> bool) -> Result<Vec<Tok>, ApiError> {
    let mut out = Vec::new();
    for (i, w) in text.split_whitespace().enumerate() {
        match token_of(w) {
            Some(t) if ok(t) => out.push(t),
            Some(_) => {
                return Err(ApiError::invalid(
                    param,
                    format!(
                        "token {i} `{w}` is a control token; a prompt holds request tokens only"
                    ),
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    param,
                    format!(
                        "token {i} `{}` is not in the world's vocabulary (prompts are token names \
                         separated by spaces, e.g. `COPY a 3 b`; `GET /v1/models` lists them)",
                        w.chars().take(40).collect::<String>()
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// Tokens a prompt may hold: not padding, BOS, SEP or EOS (the server adds the frame).
fn is_prompt_token(t: Tok) -> bool {
    !matches!(t, vocab::PAD | vocab::BOS | vocab::SEP | vocab::EOS)
}

/// Tokens an `echo` prompt may hold: a request, `<sep>`, and the continuation to score.
fn is_echo_token(t: Tok) -> bool {
    !matches!(t, vocab::PAD | vocab::BOS)
}

fn parse_ids(param: &str, xs: &[Value], ok: fn(Tok) -> bool) -> Result<Vec<Tok>, ApiError> {
    xs.iter()
        .enumerate()
        .map(|(i, v)| match v.as_u64() {
            Some(id) if (id as usize) < VOCAB_SIZE && ok(id as Tok) => Ok(id as Tok),
            Some(id) if (id as usize) < VOCAB_SIZE => Err(ApiError::invalid(
                param,
                format!("token id {id} at {i} is a control token"),
            )),
            _ => Err(ApiError::invalid(
                param,
                format!("token {i} must be a token id in 0..{VOCAB_SIZE}, got {v}"),
            )),
        })
        .collect()
}

fn check_len(param: &str, toks: Vec<Tok>) -> Result<Vec<Tok>, ApiError> {
    if toks.is_empty() {
        return Err(ApiError::invalid(param, "the prompt is empty"));
    }
    if toks.len() > MAX_PROMPT_TOKENS {
        return Err(ApiError::invalid(
            param,
            format!(
                "the prompt has {} tokens; at most {MAX_PROMPT_TOKENS}",
                toks.len()
            ),
        ));
    }
    Ok(toks)
}

/// `prompt`: a string, an array of token ids, or an array of either (several prompts).
fn parse_prompt(v: &Value, echo: bool) -> Result<Vec<Vec<Tok>>, ApiError> {
    let ok = if echo { is_echo_token } else { is_prompt_token };
    let one = |v: &Value| -> Result<Vec<Tok>, ApiError> {
        match v {
            Value::String(s) => check_len("prompt", parse_text_with("prompt", s, ok)?),
            Value::Array(xs) => check_len("prompt", parse_ids("prompt", xs, ok)?),
            _ => Err(ApiError::invalid(
                "prompt",
                "each prompt must be a string or an array of token ids",
            )),
        }
    };
    match v {
        Value::String(_) => Ok(vec![one(v)?]),
        Value::Array(xs) if xs.is_empty() => {
            Err(ApiError::invalid("prompt", "the prompt is empty"))
        }
        Value::Array(xs) if xs.iter().all(|x| x.is_number()) => Ok(vec![one(v)?]),
        Value::Array(xs) => xs.iter().map(one).collect(),
        Value::Null => Err(ApiError::invalid("prompt", "you must provide a prompt")),
        _ => Err(ApiError::invalid(
            "prompt",
            "prompt must be a string, an array of token ids, or an array of those",
        )),
    }
}

/// `messages`: the last user message's content is the prompt (a string, or text parts).
fn parse_messages(v: &Value) -> Result<Vec<Tok>, ApiError> {
    let Value::Array(ms) = v else {
        return Err(ApiError::invalid(
            "messages",
            if v.is_null() {
                "you must provide messages".to_string()
            } else {
                "messages must be an array of message objects".to_string()
            },
        ));
    };
    if ms.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let mut last = None;
    for (i, m) in ms.iter().enumerate() {
        let Some(obj) = m.as_object() else {
            return Err(ApiError::invalid(
                &format!("messages[{i}]"),
                "each message must be an object with `role` and `content`",
            ));
        };
        let role = obj.get("role").and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid(
                &format!("messages[{i}].role"),
                "a message needs a string role",
            )
        })?;
        if !["system", "developer", "user", "assistant", "tool"].contains(&role) {
            return Err(ApiError::invalid(
                &format!("messages[{i}].role"),
                format!("unknown role `{role}`: one of system, developer, user, assistant, tool"),
            ));
        }
        if role == "user" {
            last = Some((i, obj.get("content").cloned().unwrap_or(Value::Null)));
        }
    }
    let Some((i, content)) = last else {
        return Err(ApiError::invalid("messages", "no message has role `user`"));
    };
    let param = format!("messages[{i}].content");
    let text = match &content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            let mut s = String::new();
            for p in parts {
                match p.get("text").and_then(Value::as_str) {
                    Some(t) if p.get("type").and_then(Value::as_str) == Some("text") => {
                        s.push(' ');
                        s.push_str(t);
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            &param,
                            "content parts must be {\"type\": \"text\", \"text\": ...}",
                        ))
                    }
                }
            }
            s
        }
        _ => {
            return Err(ApiError::invalid(
                &param,
                "content must be a string or an array of text parts",
            ))
        }
    };
    check_len(&param, parse_text(&param, &text)?)
}

fn uint(obj: &Map<String, Value>, key: &str, lo: u64, hi: u64) -> Result<Option<u64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
            _ => Err(ApiError::invalid(
                key,
                format!("{key} must be an integer in {lo}..={hi}, got {v}"),
            )),
        },
    }
}

fn boolean(obj: &Map<String, Value>, key: &str) -> Result<bool, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(ApiError::invalid(
            key,
            format!("{key} must be a boolean, got {v}"),
        )),
    }
}

/// Parse a request body. `max_top_k` is the endpoint's own ceiling (completions 5, chat 20);
/// the API's policy caps it further when serving.
pub fn parse(body: &[u8], endpoint: Endpoint) -> Result<Parsed, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ApiError {
        status: 400,
        message: format!(
            "We could not parse the JSON body of your request ({e}). The body must be a JSON object."
        ),
        kind: "invalid_request_error",
        param: None,
        code: None,
    })?;
    let Value::Object(obj) = v else {
        return Err(ApiError {
            status: 400,
            message: "the request body must be a JSON object".into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        });
    };
    let model = match obj.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "model",
                "you must provide a model parameter",
            ))
        }
        Some(v) => {
            return Err(ApiError::invalid(
                "model",
                format!("model must be a string, got {v}"),
            ))
        }
    };
    let stream = boolean(&obj, "stream")?;
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) if stream => {
            if let Some(k) = o.keys().find(|k| k.as_str() != "include_usage") {
                return Err(ApiError::invalid(
                    "stream_options",
                    format!(
                        "unknown stream option `{}` (allowed: include_usage)",
                        k.chars().take(40).collect::<String>()
                    ),
                ));
            }
            boolean(o, "include_usage").map_err(|_| {
                ApiError::invalid(
                    "stream_options",
                    "stream_options.include_usage must be a boolean",
                )
            })?
        }
        Some(Value::Object(_)) => {
            return Err(ApiError::invalid(
                "stream_options",
                "stream_options is only allowed when stream is true",
            ))
        }
        Some(v) => {
            return Err(ApiError::invalid(
                "stream_options",
                format!("stream_options must be an object, got {v}"),
            ))
        }
    };
    let echo = endpoint == Endpoint::Completions && boolean(&obj, "echo")?;
    let prompts = match endpoint {
        Endpoint::Completions => parse_prompt(obj.get("prompt").unwrap_or(&Value::Null), echo)?,
        Endpoint::Chat => vec![parse_messages(obj.get("messages").unwrap_or(&Value::Null))?],
    };
    let max_tokens = match (
        uint(&obj, "max_tokens", 0, 1 << 20)?,
        uint(&obj, "max_completion_tokens", 0, 1 << 20)?,
    ) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "max_tokens",
                "give max_tokens or max_completion_tokens, not both",
            ))
        }
        (a, b) => a.or(b).map(|x| x as usize),
    };
    let temperature = match obj.get("temperature") {
        None | Some(Value::Null) => 1.0,
        Some(v) => match v.as_f64() {
            Some(t) if (0.0..=2.0).contains(&t) => t as f32,
            _ => {
                return Err(ApiError::invalid(
                    "temperature",
                    format!("temperature must be a number in 0..=2, got {v}"),
                ))
            }
        },
    };
    let n = uint(&obj, "n", 1, MAX_CHOICES as u64)?.unwrap_or(1) as usize;
    if n * prompts.len() > MAX_CHOICES {
        return Err(ApiError::invalid(
            "n",
            format!(
                "{} prompts x n {n} = {} choices; at most {MAX_CHOICES} per request",
                prompts.len(),
                n * prompts.len()
            ),
        ));
    }
    let (logprobs, top_k) = match endpoint {
        Endpoint::Completions => {
            let k = uint(&obj, "logprobs", 0, 5)?;
            (k.is_some(), k.unwrap_or(0) as usize)
        }
        Endpoint::Chat => {
            let on = boolean(&obj, "logprobs")?;
            let k = uint(&obj, "top_logprobs", 0, 20)?;
            if k.is_some() && !on {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "top_logprobs needs logprobs: true",
                ));
            }
            (on, k.unwrap_or(0) as usize)
        }
    };
    if echo && stream {
        return Err(ApiError::invalid(
            "stream",
            "echo scores a given continuation in one response: send stream false",
        ));
    }
    let (prompts, continuations) = if echo {
        if max_tokens != Some(0) {
            return Err(ApiError::invalid(
                "max_tokens",
                "echo scores the given continuation and generates nothing: send max_tokens 0",
            ));
        }
        if n != 1 {
            return Err(ApiError::invalid(
                "n",
                "echo scores deterministically: send n 1",
            ));
        }
        let split: Vec<(Vec<Tok>, Vec<Tok>)> = prompts
            .iter()
            .map(|p| split_echo(p))
            .collect::<Result<_, _>>()?;
        split.into_iter().unzip()
    } else {
        (prompts, vec![])
    };
    if max_tokens == Some(0) && !echo {
        return Err(ApiError::invalid(
            "max_tokens",
            "max_tokens must be at least 1",
        ));
    }
    let stop = match obj.get("stop") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![parse_text("stop", s)?],
        Some(Value::Array(xs)) if xs.len() <= 4 => xs
            .iter()
            .map(|x| match x.as_str() {
                Some(s) => parse_text("stop", s),
                None => Err(ApiError::invalid(
                    "stop",
                    "stop must be a string or up to 4 strings",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "stop must be a string or up to 4 strings",
            ))
        }
    };
    let stop = stop
        .into_iter()
        .filter(|s: &Vec<Tok>| !s.is_empty())
        .collect();
    let seed = match obj.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| {
            ApiError::invalid("seed", format!("seed must be an integer, got {v}"))
        })?),
    };
    let voice = match obj.get("voice") {
        None | Some(Value::Null) => None,
        Some(Value::Array(xs)) if xs.len() == VOICE_FEATURES => {
            let mut f = [0f32; VOICE_FEATURES];
            for (i, x) in xs.iter().enumerate() {
                match x.as_f64() {
                    Some(y) if y.is_finite() && y.abs() <= 1e3 => f[i] = y as f32,
                    _ => {
                        return Err(ApiError::invalid(
                            "voice",
                            format!("voice[{i}] must be a finite number (|x| <= 1000), got {x}"),
                        ))
                    }
                }
            }
            Some(f)
        }
        Some(v) => {
            return Err(ApiError::invalid(
                "voice",
                format!("voice must be an array of {VOICE_FEATURES} numbers, got {v}"),
            ))
        }
    };
    Ok(Parsed {
        model,
        prompts,
        voice,
        max_tokens,
        temperature,
        n,
        top_k,
        logprobs,
        echo,
        continuations,
        stream,
        include_usage,
        stop,
        seed,
    })
}

/// An `echo` prompt split at its `<sep>`: the request (prompt tokens only) and the
/// continuation to score (response tokens, no second `<sep>`), neither empty.
fn split_echo(p: &[Tok]) -> Result<(Vec<Tok>, Vec<Tok>), ApiError> {
    let Some(at) = p.iter().position(|&t| t == vocab::SEP) else {
        return Err(ApiError::invalid(
            "prompt",
            "echo scores the continuation after `<sep>`: send the request, `<sep>`, then the \
             tokens to score (e.g. `SORT 3 1 2 <sep> 1 2 3 <eos>`)",
        ));
    };
    let (req, cont) = (&p[..at], &p[at + 1..]);
    if req.is_empty() || cont.is_empty() {
        return Err(ApiError::invalid(
            "prompt",
            "echo needs a request before `<sep>` and at least one token after it",
        ));
    }
    if let Some(i) = req.iter().position(|&t| !is_prompt_token(t)) {
        return Err(ApiError::invalid(
            "prompt",
            format!("token {i} `{}` is a control token; the request before `<sep>` holds request tokens only", vocab::name(req[i])),
        ));
    }
    if let Some(i) = cont.iter().position(|&t| t == vocab::SEP) {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "token {} is a second `<sep>`; an echo prompt has one",
                at + 1 + i
            ),
        ));
    }
    Ok((req.to_vec(), cont.to_vec()))
}

/// A choice's generated tokens cut at the first stop sequence (EOS included in `tokens`):
/// (returned tokens, finish reason).
pub fn finish(tokens: &[Tok], stop: &[Vec<Tok>]) -> (usize, &'static str) {
    let eos = tokens.iter().position(|&t| t == vocab::EOS);
    let mut end = eos.unwrap_or(tokens.len());
    let mut reason = if eos.is_some() { "stop" } else { "length" };
    for s in stop {
        if let Some(i) = tokens[..end]
            .windows(s.len())
            .position(|w| w == s.as_slice())
        {
            end = i;
            reason = "stop";
        }
    }
    (end, reason)
}

/// The text of tokens, as the prompt format writes them: names separated by spaces.
pub fn text(tokens: &[Tok]) -> String {
    vocab::render(tokens)
}

/// Each token's piece of [`text`]: its name, after a space except for the first.
pub fn pieces(tokens: &[Tok]) -> Vec<String> {
    tokens
        .iter()
        .enumerate()
        .map(|(i, &t)| piece(i, t))
        .collect()
}

/// Each piece's byte offset in the text the pieces make (completions' `text_offset`).
pub fn offsets(pieces: &[String]) -> Vec<usize> {
    let mut offset = 0;
    pieces
        .iter()
        .map(|s| {
            let o = offset;
            offset += s.len();
            o
        })
        .collect()
}

/// Token `t` as the piece of [`text`] it is at position `i` (a space before all but the
/// first), so that top-logprob tokens are spelled like the chosen one.
pub fn piece(i: usize, t: Tok) -> String {
    if i == 0 {
        vocab::name(t)
    } else {
        format!(" {}", vocab::name(t))
    }
}

/// A Go-style duration (`1m30s`, `1.5s`, `20ms`), as the `x-ratelimit-reset-*` headers write it.
pub fn go_duration(secs: f64) -> String {
    if !secs.is_finite() || secs <= 0.0 {
        return "0s".into();
    }
    if secs < 1.0 {
        return format!("{}ms", ((secs * 1000.0).ceil() as u64).max(1));
    }
    let trim = |x: f64| {
        let s = format!("{x:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    if secs < 60.0 {
        return format!("{}s", trim(secs));
    }
    let m = (secs / 60.0).floor();
    let h = (m / 60.0).floor();
    let s = secs - m * 60.0;
    if h >= 1.0 {
        format!("{}h{}m{}s", h as u64, (m - h * 60.0) as u64, trim(s))
    } else {
        format!("{}m{}s", m as u64, trim(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_parse_by_name_and_id_and_errors_name_the_param() {
        let p = parse(
            br#"{"model":"m","prompt":"COPY a 3"}"#,
            Endpoint::Completions,
        )
        .unwrap();
        assert_eq!(
            p.prompts,
            vec![vec![vocab::COPY, vocab::letter(0), vocab::digit(3)]]
        );
        let p = parse(
            br#"{"model":"m","prompt":[33,21,14],"n":2}"#,
            Endpoint::Completions,
        )
        .unwrap();
        assert_eq!(p.prompts[0], vec![33, 21, 14]);
        assert_eq!(p.n, 2);
        let e = parse(
            br#"{"model":"m","prompt":"COPY zz"}"#,
            Endpoint::Completions,
        )
        .unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("prompt")));
        assert!(e.message.contains("`zz`"), "{}", e.message);
        let e = parse(
            br#"{"model":"m","prompt":"COPY a","temperature":"hot"}"#,
            Endpoint::Completions,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = parse(br#"{"prompt":"COPY a"}"#, Endpoint::Completions).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"));
        let e = parse(b"{not json", Endpoint::Completions).unwrap_err();
        assert_eq!((e.status, e.param.clone()), (400, None));
        let c = parse(
            br#"{"model":"m","messages":[{"role":"system","content":"x y"},{"role":"user","content":"SORT 3 1"}],"logprobs":true,"top_logprobs":20}"#,
            Endpoint::Chat,
        );
        // `x` is not a token: the system message is not read, only the last user message.
        let c = c.unwrap();
        assert_eq!(
            c.prompts[0],
            vec![vocab::SORT, vocab::digit(3), vocab::digit(1)]
        );
        assert_eq!((c.logprobs, c.top_k), (true, 20));
        let e = parse(
            br#"{"model":"m","messages":[{"role":"user","content":"SORT 3"}],"top_logprobs":3}"#,
            Endpoint::Chat,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("top_logprobs"));
    }

    #[test]
    fn stops_cut_and_name_the_reason() {
        let t = [
            vocab::digit(1),
            vocab::digit(2),
            vocab::digit(3),
            vocab::EOS,
        ];
        assert_eq!(finish(&t, &[]), (3, "stop"));
        assert_eq!(finish(&t[..3], &[]), (3, "length"));
        assert_eq!(finish(&t, &[vec![vocab::digit(2)]]), (1, "stop"));
        assert_eq!(pieces(&t[..2]).concat(), text(&t[..2]));
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(0.0), "0s");
        assert_eq!(go_duration(0.0201), "21ms");
        assert_eq!(go_duration(1.5), "1.5s");
        assert_eq!(go_duration(90.0), "1m30s");
        assert_eq!(go_duration(3725.0), "1h2m5s");
    }
}
