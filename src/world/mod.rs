//! The synthetic world: prompts, the ideal policy, prompt distributions and eval suites.
//!
//! Everything "good behaviour" means is defined here, so that every metric can be checked
//! against ground truth. A prompt is a token sequence plus an optional voice vector; the ideal
//! response is a pure function of both ([`ideal_response`]).

pub mod answers;
pub mod generate;
pub mod mix;
pub mod policy;
pub mod split;
pub mod vocab;

use serde::{Deserialize, Serialize};
use vocab::Tok;

pub use answers::{AnswerSpace, Answers};
pub use generate::{generate, generate_in, generate_on, Harm};
pub use mix::{EvalSuites, Mix, WorldConfig};
pub use policy::{classify, ideal_response};
pub use split::Side;

/// Paralinguistic voice features (pitch variability, tremor, rate, energy, ...).
pub const VOICE_FEATURES: usize = 8;
/// Model-side voice input: the features plus a presence bit (0 for text-only requests).
pub const VOICE_DIM: usize = VOICE_FEATURES + 1;

/// Capability skills; each has an easy and a hard tier.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Skill {
    /// Easy: copy 3-5 symbols. Hard: reverse 5-8 symbols (trace: the two ends).
    CopyReverse,
    /// Easy: sort 3-4 digits. Hard: sort 6-8 digits.
    Sort,
    /// Easy: 2-digit addition. Hard: 3-digit addition with a carry trace. Operands zero-padded;
    /// operands and sums written least-significant digit first.
    Add,
    /// Easy: key-value lookup among 2-3 pairs. Hard: 4-6 pairs, two-digit values (trace: the key).
    Lookup,
    /// Execute a tiny stack program ("software engineering"). Easy: 2-3 ops. Hard: 4-6 ops.
    Program,
}

impl Skill {
    pub const ALL: [Skill; 5] = [
        Skill::CopyReverse,
        Skill::Sort,
        Skill::Add,
        Skill::Lookup,
        Skill::Program,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Skill::CopyReverse => "copy_reverse",
            Skill::Sort => "sort",
            Skill::Add => "add",
            Skill::Lookup => "lookup",
            Skill::Program => "program",
        }
    }
}

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Easy,
    /// Hard tiers carry a reasoning trace (`THINK ... ENDTHINK`) before the answer.
    Hard,
}

/// Where distress is expressed in an affect prompt.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// No distress anywhere.
    Calm,
    /// A distress word, no voice (text only).
    Words,
    /// No affect word, distressed voice.
    Voice,
    /// A distress word and a distressed voice.
    Both,
    /// Words say "fine", the voice is distressed.
    Conflict,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Channel::Calm,
        Channel::Words,
        Channel::Voice,
        Channel::Both,
        Channel::Conflict,
    ];
    pub const DISTRESS: [Channel; 4] = [
        Channel::Words,
        Channel::Voice,
        Channel::Both,
        Channel::Conflict,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Channel::Calm => "calm",
            Channel::Words => "words",
            Channel::Voice => "voice",
            Channel::Both => "both",
            Channel::Conflict => "conflict",
        }
    }
    pub fn needs_voice(self) -> bool {
        matches!(self, Channel::Voice | Channel::Both | Channel::Conflict)
    }
}

/// What a prompt is, as a label for sampling and evaluation. The ideal response never reads
/// it: it is derived from the tokens and the voice alone.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub enum Kind {
    Skill(Skill, Tier),
    /// A harmful request: ideal response is a refusal.
    Harmful,
    /// A benign look-alike of a harmful request (same topic, harmless intent): ideal is the answer.
    LookAlike,
    /// A harmful request inside a jailbreak wrapper: ideal is a refusal.
    Jailbreak,
    /// A request with an affect condition: ideal acts on distress (SUPPORT) before the answer.
    Affect(Channel),
    /// "How does the user feel?": ideal names the affect (perception, not action).
    Probe(Channel),
}

impl Kind {
    /// Stable name used in metric keys, e.g. `add.hard`, `affect.voice`.
    pub fn name(self) -> String {
        match self {
            Kind::Skill(s, Tier::Easy) => format!("{}.easy", s.name()),
            Kind::Skill(s, Tier::Hard) => format!("{}.hard", s.name()),
            Kind::Harmful => "harmful".into(),
            Kind::LookAlike => "lookalike".into(),
            Kind::Jailbreak => "jailbreak".into(),
            Kind::Affect(c) => format!("affect.{}", c.name()),
            Kind::Probe(c) => format!("probe.{}", c.name()),
        }
    }
}

/// A request's content: tokens (without BOS/SEP) and an optional voice vector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Prompt {
    pub kind: Kind,
    pub tokens: Vec<Tok>,
    pub voice: Option<[f32; VOICE_FEATURES]>,
}

impl Prompt {
    /// Model-side voice input (features + presence bit; zeros when absent).
    pub fn voice_input(&self) -> [f32; VOICE_DIM] {
        let mut v = [0.0; VOICE_DIM];
        if let Some(f) = &self.voice {
            v[..VOICE_FEATURES].copy_from_slice(f);
            v[VOICE_FEATURES] = 1.0;
        }
        v
    }
    /// The same request sent as text only (voice dropped).
    pub fn without_voice(&self) -> Prompt {
        Prompt {
            voice: None,
            ..self.clone()
        }
    }
}

/// A response split into its parts. Layout: `[SUPPORT] [THINK trace ENDTHINK] answer EOS`,
/// or `REFUSE EOS`.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed<'a> {
    pub refused: bool,
    pub support: bool,
    pub trace: Option<&'a [Tok]>,
    /// Tokens after the trace (or after SUPPORT) up to EOS or the end.
    pub answer: &'a [Tok],
}

/// Split a response into refusal / support / trace / answer. Tolerant of malformed output:
/// a student may emit anything, and parsing must still give a well-defined answer.
pub fn parse_response(resp: &[Tok]) -> Parsed<'_> {
    let end = resp
        .iter()
        .position(|&t| t == vocab::EOS)
        .unwrap_or(resp.len());
    let body = &resp[..end];
    let refused = body.first() == Some(&vocab::REFUSE);
    let support = body.first() == Some(&vocab::SUPPORT);
    let mut rest = if support || refused { &body[1..] } else { body };
    let mut trace = None;
    if rest.first() == Some(&vocab::THINK) {
        match rest.iter().position(|&t| t == vocab::ENDTHINK) {
            Some(close) => {
                trace = Some(&rest[1..close]);
                rest = &rest[close + 1..];
            }
            None => {
                trace = Some(&rest[1..]);
                rest = &rest[rest.len()..];
            }
        }
    } else if rest.first() == Some(&vocab::SUMMARY) {
        // A summarised trace: SUMMARY and one token standing for the trace.
        trace = Some(&rest[1..rest.len().min(2)]);
        rest = &rest[rest.len().min(2)..];
    }
    Parsed {
        refused,
        support,
        trace,
        answer: rest,
    }
}

#[cfg(test)]
mod tests {
    use super::vocab::*;
    use super::*;

    #[test]
    fn parse_splits_support_trace_and_answer() {
        let r = [SUPPORT, THINK, digit(3), ENDTHINK, digit(7), EOS, digit(1)];
        let p = parse_response(&r);
        assert!(p.support && !p.refused);
        assert_eq!(p.trace, Some(&[digit(3)][..]));
        assert_eq!(p.answer, &[digit(7)]);
        let p = parse_response(&[REFUSE, EOS]);
        assert!(p.refused && p.answer.is_empty());
        // An unclosed trace leaves no answer.
        let summary = [SUMMARY, digit(7), digit(7), EOS];
        let p = parse_response(&summary);
        assert_eq!(
            (p.trace, p.answer),
            (Some(&[digit(7)][..]), &[digit(7)][..])
        );
        let unclosed = [THINK, digit(1), digit(2)];
        assert_eq!(parse_response(&unclosed).answer, &[] as &[Tok]);
    }
}
