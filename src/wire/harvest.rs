//! A harvest collected by any client of the HTTP API, read back as the simulator's harvest
//! items (`distill-sim distill`).
//!
//! The file is JSON lines, one exchange each: `{"request": BODY_SENT, "response":
//! BODY_RECEIVED}`, where the bodies are what an OpenAI client sent to and got from
//! `/v1/completions` or `/v1/chat/completions` (with the `openai` package:
//! `{"request": kwargs, "response": r.model_dump()}`). Each choice is one item. An answer
//! that finished with `stop` ends in EOS; one cut at `length` does not. The EOS position has
//! no returned logprobs (the API returns none for it): it trains on the text there. Lines
//! whose response is an error body are skipped and counted.

use super::{self as wire, Endpoint};
use crate::attacker::Item;
use crate::error::{Error, Result};
use crate::world::vocab::{self, Tok};
use crate::world::{classify, Prompt};
use serde_json::Value;
use std::path::Path;

/// What a harvest file held.
#[derive(Clone, Debug, Default)]
pub struct HarvestFile {
    pub items: Vec<Item>,
    /// Lines whose response was an error (a refusal, a 429): nothing to train on.
    pub errors: u64,
    /// Prompt and completion tokens as the responses' `usage` reported them.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The distinct `system_fingerprint`s of the responses (`distill-sim serve` writes the
    /// answering teacher's `teacher-<cache key>` there).
    pub fingerprints: Vec<String>,
}

fn bad(path: &Path, line: usize, what: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}:{line}: {what}", path.display()))
}

/// One returned token's name (a top-logprob token is spelled as its piece of the text: a
/// leading space before all but the first).
fn token(path: &Path, line: usize, piece: &str) -> Result<Tok> {
    wire::token_of(piece.trim_start())
        .ok_or_else(|| bad(path, line, format!("`{piece}` is not a token of the world")))
}

/// One position's returned top-k `(token, logprob)`, most likely first.
type TopRow = Vec<(Tok, f32)>;

/// The top-k rows of one choice's `logprobs` (None when the response has none).
fn top_rows(path: &Path, line: usize, lp: &Value, ep: Endpoint) -> Result<Option<Vec<TopRow>>> {
    if lp.is_null() {
        return Ok(None);
    }
    let mut rows = Vec::new();
    match ep {
        Endpoint::Completions => {
            let Some(list) = lp["top_logprobs"].as_array() else {
                return Err(bad(path, line, "logprobs.top_logprobs is not an array"));
            };
            for m in list {
                let Some(m) = m.as_object() else {
                    return Err(bad(path, line, "logprobs.top_logprobs holds a non-object"));
                };
                let mut row = Vec::with_capacity(m.len());
                for (piece, l) in m {
                    let l = l
                        .as_f64()
                        .ok_or_else(|| bad(path, line, "a logprob is not a number"))?;
                    row.push((token(path, line, piece)?, l as f32));
                }
                rows.push(row);
            }
        }
        Endpoint::Chat => {
            let Some(list) = lp["content"].as_array() else {
                return Err(bad(path, line, "logprobs.content is not an array"));
            };
            for c in list {
                let mut row = Vec::new();
                for t in c["top_logprobs"].as_array().into_iter().flatten() {
                    let (Some(piece), Some(l)) = (t["token"].as_str(), t["logprob"].as_f64())
                    else {
                        return Err(bad(
                            path,
                            line,
                            "a top_logprobs entry lacks token or logprob",
                        ));
                    };
                    row.push((token(path, line, piece)?, l as f32));
                }
                rows.push(row);
            }
        }
    }
    for row in rows.iter_mut() {
        row.sort_by(|a, b| b.1.total_cmp(&a.1));
    }
    Ok(Some(rows))
}

/// Read a harvest file whose SHA-256 must be `sha256` (so that a changed file is never
/// trained on under a stale run's name).
pub fn read(path: &Path, sha256: &str) -> Result<HarvestFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let got = crate::shipped::sha256_hex(&bytes);
    if got != sha256 {
        return Err(Error::Invalid(format!(
            "{}: SHA-256 {got}, the config says {sha256} (attacker.harvest_sha256): the file \
             changed since the run was configured; run `distill-sim distill` on it again",
            path.display()
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| bad(path, 0, format!("not UTF-8: {e}")))?;
    let mut out = HarvestFile::default();
    for (i, l) in text.lines().enumerate() {
        let line = i + 1;
        if l.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(l).map_err(|e| bad(path, line, e))?;
        let (Some(req), Some(resp)) = (v.get("request"), v.get("response")) else {
            return Err(bad(
                path,
                line,
                "expected {\"request\": ..., \"response\": ...}",
            ));
        };
        if resp.get("error").is_some() {
            out.errors += 1;
            continue;
        }
        let ep = match resp["object"].as_str() {
            Some("text_completion") => Endpoint::Completions,
            Some("chat.completion") => Endpoint::Chat,
            other => {
                return Err(bad(
                    path,
                    line,
                    format!(
                        "response.object {other:?}: expected text_completion or chat.completion"
                    ),
                ))
            }
        };
        let body = serde_json::to_vec(req).map_err(|e| bad(path, line, e))?;
        let p = wire::parse(&body, ep).map_err(|e| {
            bad(
                path,
                line,
                format!("request: {} ({})", e.message, e.param.unwrap_or_default()),
            )
        })?;
        if let Some(f) = resp["system_fingerprint"].as_str() {
            if !out.fingerprints.iter().any(|x| x == f) {
                out.fingerprints.push(f.to_string());
            }
        }
        out.prompt_tokens += resp["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
        out.completion_tokens += resp["usage"]["completion_tokens"].as_u64().unwrap_or(0);
        let choices = resp["choices"]
            .as_array()
            .ok_or_else(|| bad(path, line, "response.choices is not an array"))?;
        for c in choices {
            let text = match ep {
                Endpoint::Completions => c["text"].as_str(),
                Endpoint::Chat => c["message"]["content"].as_str(),
            }
            .ok_or_else(|| bad(path, line, "a choice has no text"))?;
            let mut tokens = wire::parse_text("response", text)
                .map_err(|e| bad(path, line, format!("response: {}", e.message)))?;
            let mut top = top_rows(path, line, &c["logprobs"], ep)?.unwrap_or_default();
            if !top.is_empty() && top.len() != tokens.len() {
                return Err(bad(
                    path,
                    line,
                    format!("{} tokens but {} logprob rows", tokens.len(), top.len()),
                ));
            }
            if c["finish_reason"] == "stop" {
                tokens.push(vocab::EOS);
                if !top.is_empty() {
                    top.push(vec![]);
                }
            }
            // The prompt of a choice: with several prompts, choices go n per prompt in order.
            let index = c["index"].as_u64().unwrap_or(0) as usize;
            let toks = &p.prompts[(index / p.n.max(1)).min(p.prompts.len() - 1)];
            out.items.push(Item {
                prompt: Prompt {
                    kind: classify(toks, p.voice.as_ref()),
                    tokens: toks.clone(),
                    voice: p.voice,
                },
                tokens,
                top,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> (std::path::PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("ds-harvest-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("h.jsonl");
        std::fs::write(&p, text).unwrap();
        (p, crate::shipped::sha256_hex(text.as_bytes()))
    }

    #[test]
    fn saved_exchanges_read_back_as_items_with_eos_and_top_rows() {
        let text = concat!(
            r#"{"request": {"model": "m", "prompt": "SORT 3 1 2", "logprobs": 2}, "response": {"object": "text_completion", "system_fingerprint": "teacher-x", "choices": [{"index": 0, "text": "1 2 3", "finish_reason": "stop", "logprobs": {"tokens": ["1", " 2", " 3"], "top_logprobs": [{"1": -0.1, "2": -2.5}, {" 2": -0.2}, {" 3": -0.3, " 4": -1.0}]}}], "usage": {"prompt_tokens": 6, "completion_tokens": 4}}}"#,
            "\n",
            r#"{"request": {"model": "m", "messages": [{"role": "user", "content": "COPY a b"}]}, "response": {"object": "chat.completion", "choices": [{"index": 0, "message": {"content": "a b"}, "finish_reason": "length", "logprobs": null}]}}"#,
            "\n",
            r#"{"request": {"model": "m", "prompt": "COPY a"}, "response": {"error": {"message": "Rate limit", "code": "rate_limit_exceeded"}}}"#,
            "\n",
        );
        let (p, sha) = write("ok", text);
        let h = read(&p, &sha).unwrap();
        assert_eq!((h.items.len(), h.errors), (2, 1));
        assert_eq!(h.fingerprints, vec!["teacher-x".to_string()]);
        let d = vocab::digit;
        assert_eq!(h.items[0].tokens, vec![d(1), d(2), d(3), vocab::EOS]);
        assert_eq!(h.items[0].top.len(), 4);
        assert_eq!(h.items[0].top[0], vec![(d(1), -0.1), (d(2), -2.5)]);
        assert!(h.items[0].top[3].is_empty(), "no logprobs at EOS");
        // Cut at length: no EOS, no logprobs.
        assert_eq!(h.items[1].tokens, vec![vocab::letter(0), vocab::letter(1)]);
        assert!(h.items[1].top.is_empty());
        assert_eq!(h.prompt_tokens, 6);
        // Another SHA-256: refused, naming the key.
        let e = read(&p, "00").unwrap_err().to_string();
        assert!(e.contains("attacker.harvest_sha256"), "{e}");
    }

    #[test]
    fn bad_lines_are_errors_naming_file_and_line() {
        for (bad, want) in [
            ("not json", ":1:"),
            (r#"{"request": {}}"#, "expected {\"request\""),
            (
                r#"{"request": {"model": "m", "prompt": "COPY a"}, "response": {"object": "x"}}"#,
                "response.object",
            ),
            (
                r#"{"request": {"model": "m", "prompt": "COPY zz"}, "response": {"object": "text_completion", "choices": []}}"#,
                "request:",
            ),
            (
                r#"{"request": {"model": "m", "prompt": "COPY a"}, "response": {"object": "text_completion", "choices": [{"text": "a qq", "finish_reason": "stop"}]}}"#,
                "response:",
            ),
        ] {
            let (p, sha) = write("bad", &format!("{bad}\n"));
            let e = read(&p, &sha).unwrap_err().to_string();
            assert!(e.contains("h.jsonl:1") && e.contains(want), "{bad}: {e}");
        }
    }
}
