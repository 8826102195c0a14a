//! Dark knowledge: worlds where a prompt has several valid answers, drawn from a defined
//! distribution (`world.answers: several`).
//!
//! In the default world (`one`) every position of a response has exactly one correct token, so
//! a teacher's non-top probability mass is only its errors. In a `several` world:
//!
//! - **Synonym glyphs.** A digit 1-9 in an answer may be written with its synonym glyph
//!   (token `SYNONYM0 + d`), with probability `world.synonym_share` per digit, independently.
//!   The vocabulary reserves nine ids, so digit 0 has no synonym.
//! - **Free order.** A copy request (`COPY` and its symbols) may be answered in any order: every
//!   ordering of the symbols is valid, drawn uniformly (at each position, each remaining symbol
//!   with probability proportional to how often it remains).
//!
//! - **Near-misses** (`world.near_miss_share`, default 0). A digit at a fixed position of an
//!   answer has defined near-misses, the digits one above and one below (mod 10), which the
//!   world's distribution gives `near_miss_share` of the position's mass (half each). They are
//!   not valid answers: they are structure in the distribution (which wrong digit is close),
//!   the classical source of dark knowledge. Drawn answers never contain them.
//!
//! The teacher is trained on answers drawn from this distribution, with the exact next-token
//! distribution (given the drawn prefix) as its target at every position, so its served
//! distribution carries the world's uncertainty. Correctness is membership in the valid set:
//! answers are compared after mapping synonyms to their digits and, for free-order answers,
//! sorting ([`AnswerSpace::canonical`]).

use super::vocab::{self, *};
use super::{ideal_response, parse_response, Prompt};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Synonym glyph of digit `d` (1..=9) is `SYNONYM0 + d`: ids 71..=79, reserved until now.
pub const SYNONYM0: Tok = vocab::SUMMARY;

/// How many valid answers a prompt has.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Answers {
    /// Exactly one correct answer per prompt (every earlier result).
    #[default]
    One,
    /// Several valid answers drawn from a defined distribution (synonym glyphs, free order).
    Several,
}

/// The synonym glyph of a token, if it has one (digits 1-9).
pub fn synonym(t: Tok) -> Option<Tok> {
    vocab::digit_value(t)
        .filter(|&d| d >= 1)
        .map(|d| SYNONYM0 + d)
}

/// A synonym glyph read as its digit; any other token unchanged.
pub fn canonical_token(t: Tok) -> Tok {
    if (SYNONYM0 + 1..SYNONYM0 + 10).contains(&t) {
        vocab::digit(t - SYNONYM0)
    } else {
        t
    }
}

/// Whether a prompt is a copy request (its answer is the copied symbols), from its tokens.
fn is_copy_request(p: &Prompt) -> bool {
    let t = &p.tokens;
    let safety = t
        .iter()
        .any(|&x| (HARM_INTENT0..BENIGN_INTENT0 + N_INTENTS).contains(&x));
    !safety && !t.contains(&FEEL) && t.iter().find(|&&x| (COPY..=RUN).contains(&x)) == Some(&COPY)
}

/// The world's answer distribution, as the teacher, the eval and the metrics see it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AnswerSpace {
    pub answers: Answers,
    /// Probability of a digit's synonym glyph (`several` only).
    pub synonym_share: f32,
    /// Mass of a fixed-position digit's two near-misses (`several` only).
    pub near_miss_share: f32,
}

impl AnswerSpace {
    pub const ONE: AnswerSpace = AnswerSpace {
        answers: Answers::One,
        synonym_share: 0.0,
        near_miss_share: 0.0,
    };

    pub fn several(&self) -> bool {
        self.answers == Answers::Several
    }

    /// Whether `p`'s answer may come in any order.
    pub fn free_order(&self, p: &Prompt) -> bool {
        self.several() && is_copy_request(p)
    }

    /// An answer (the part after refusal, support and trace) in canonical form: two answers
    /// are both valid for `p` exactly when their canonical forms are equal.
    pub fn canonical(&self, p: &Prompt, answer: &[Tok]) -> Vec<Tok> {
        if !self.several() {
            return answer.to_vec();
        }
        let mut a: Vec<Tok> = answer.iter().map(|&t| canonical_token(t)).collect();
        if self.free_order(p) {
            a.sort_unstable();
        }
        a
    }

    /// Whether two responses to `p` give the same answer (refusals give none).
    pub fn same_answer(&self, p: &Prompt, a: &[Tok], b: &[Tok]) -> bool {
        let (a, b) = (parse_response(a), parse_response(b));
        !a.refused && !b.refused && self.canonical(p, a.answer) == self.canonical(p, b.answer)
    }

    /// Whether a response is valid for `p`: the ideal policy's support, refusal and trace
    /// structure with a valid answer.
    pub fn valid(&self, p: &Prompt, resp: &[Tok]) -> bool {
        let ideal = ideal_response(p);
        if !self.several() {
            return resp == ideal;
        }
        let end = |r: &[Tok]| r.iter().position(|&t| t == EOS).map_or(r.len(), |i| i + 1);
        let (r, i) = (&resp[..end(resp)], &ideal[..end(&ideal)]);
        let (pr, pi) = (parse_response(r), parse_response(i));
        r.last() == Some(&EOS)
            && pr.refused == pi.refused
            && pr.support == pi.support
            && pr.trace == pi.trace
            && self.canonical(p, pr.answer) == self.canonical(p, pi.answer)
    }

    /// A valid response to `p` drawn from the world's distribution, and the exact next-token
    /// distribution at every position given the drawn prefix (one-hot where nothing is free).
    pub fn sample<R: Rng>(&self, p: &Prompt, rng: &mut R) -> (Vec<Tok>, Vec<Vec<(Tok, f32)>>) {
        let ideal = ideal_response(p);
        if !self.several() {
            let targets = ideal.iter().map(|&t| vec![(t, 1.0)]).collect();
            return (ideal, targets);
        }
        // The answer is the part before EOS after any refusal, support and trace.
        let answer_len = parse_response(&ideal).answer.len();
        let a1 = ideal.len() - 1;
        let a0 = a1 - answer_len;
        let s = self.synonym_share.clamp(0.0, 1.0);
        let glyphs = |t: Tok, w: f32, out: &mut Vec<(Tok, f32)>| match synonym(t) {
            Some(syn) if s > 0.0 => {
                out.push((t, w * (1.0 - s)));
                out.push((syn, w * s));
            }
            _ => out.push((t, w)),
        };
        let mut remaining: Vec<Tok> = ideal[a0..a1].to_vec();
        let free = self.free_order(p);
        let (mut resp, mut targets) = (Vec::with_capacity(ideal.len()), Vec::new());
        for (j, &t) in ideal.iter().enumerate() {
            if j < a0 || j >= a1 {
                resp.push(t);
                targets.push(vec![(t, 1.0)]);
                continue;
            }
            let mut dist = Vec::new();
            let m = self.near_miss_share.clamp(0.0, 0.5);
            if !free && m > 0.0 {
                if let Some(d) = vocab::digit_value(t) {
                    glyphs(t, 1.0 - m, &mut dist);
                    dist.push((vocab::digit((d + 9) % 10), m / 2.0));
                    dist.push((vocab::digit((d + 1) % 10), m / 2.0));
                    let pick = draw(&dist[..dist.len() - 2], rng);
                    resp.push(pick);
                    targets.push(dist);
                    continue;
                }
            }
            if free {
                let mut distinct = remaining.clone();
                distinct.sort_unstable();
                distinct.dedup();
                let n = remaining.len() as f32;
                for &x in &distinct {
                    let c = remaining.iter().filter(|&&y| y == x).count() as f32;
                    glyphs(x, c / n, &mut dist);
                }
            } else {
                glyphs(t, 1.0, &mut dist);
            }
            let pick = draw(&dist, rng);
            if free {
                let base = canonical_token(pick);
                if let Some(i) = remaining.iter().position(|&y| y == base) {
                    remaining.swap_remove(i);
                }
            }
            resp.push(pick);
            targets.push(dist);
        }
        (resp, targets)
    }
}

/// Draw a token from a sparse distribution.
fn draw<R: Rng>(dist: &[(Tok, f32)], rng: &mut R) -> Tok {
    let total: f32 = dist.iter().map(|d| d.1).sum();
    let mut u = rng.random::<f32>() * total;
    for &(t, w) in dist {
        if u < w {
            return t;
        }
        u -= w;
    }
    dist.last().map_or(EOS, |d| d.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{generate, Kind, Skill, Tier};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const DK: AnswerSpace = AnswerSpace {
        answers: Answers::Several,
        synonym_share: 0.3,
        near_miss_share: 0.0,
    };

    #[test]
    fn synonyms_are_reserved_ids_and_read_as_their_digits() {
        for d in 1..10 {
            let s = synonym(digit(d)).unwrap();
            assert!(s > SUMMARY && (s as usize) < VOCAB_SIZE, "{s}");
            assert_eq!(canonical_token(s), digit(d));
        }
        assert_eq!(synonym(digit(0)), None);
        assert_eq!(synonym(COPY), None);
    }

    /// Every drawn answer is valid, its targets are distributions that contain the drawn
    /// token, and the draws cover the distribution: synonyms at about their share, copies in
    /// more than one order.
    #[test]
    fn drawn_answers_are_valid_and_their_targets_are_distributions() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (mut digits, mut synonyms, mut reordered, mut copies) = (0, 0, 0, 0);
        for skill in Skill::ALL {
            for tier in [Tier::Easy, Tier::Hard] {
                for _ in 0..200 {
                    let p = generate(&mut rng, Kind::Skill(skill, tier), false);
                    let (resp, targets) = DK.sample(&p, &mut rng);
                    assert!(DK.valid(&p, &resp), "{}", render(&resp));
                    assert!(!AnswerSpace::ONE.valid(&p, &resp) || resp == ideal_response(&p));
                    assert_eq!(resp.len(), targets.len());
                    for (t, dist) in resp.iter().zip(&targets) {
                        let sum: f32 = dist.iter().map(|d| d.1).sum();
                        assert!((sum - 1.0).abs() < 1e-5 && dist.iter().any(|d| d.0 == *t));
                    }
                    let answer = parse_response(&resp).answer;
                    digits += answer
                        .iter()
                        .filter(|&&t| synonym(canonical_token(t)).is_some())
                        .count();
                    synonyms += answer.iter().filter(|&&t| t > SUMMARY).count();
                    if DK.free_order(&p) {
                        copies += 1;
                        let ideal = ideal_response(&p);
                        let plain: Vec<Tok> = resp.iter().map(|&t| canonical_token(t)).collect();
                        reordered += (plain != ideal) as usize;
                    }
                }
            }
        }
        let share = synonyms as f64 / digits as f64;
        assert!((share - 0.3).abs() < 0.03, "synonym share {share}");
        assert!(copies == 200 && reordered > 100, "{reordered} of {copies}");
    }

    /// Near-misses: every fixed-position answer digit's target gives its two neighbours
    /// `near_miss_share / 2` each, drawn answers stay valid, and the near-misses are not.
    #[test]
    fn near_misses_are_mass_in_the_targets_not_valid_answers() {
        let dk = AnswerSpace {
            near_miss_share: 0.2,
            ..DK
        };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut seen = 0;
        for _ in 0..300 {
            let p = generate(&mut rng, Kind::Skill(Skill::Add, Tier::Easy), false);
            let (resp, targets) = dk.sample(&p, &mut rng);
            assert!(dk.valid(&p, &resp), "{}", render(&resp));
            let ideal = ideal_response(&p);
            for (j, (&t, dist)) in ideal.iter().zip(&targets).enumerate() {
                let Some(d) = vocab::digit_value(t) else {
                    continue;
                };
                seen += 1;
                let mass = |x: Tok| dist.iter().filter(|e| e.0 == x).map(|e| e.1).sum::<f32>();
                let (lo, hi) = (vocab::digit((d + 9) % 10), vocab::digit((d + 1) % 10));
                assert!((mass(lo) - 0.1).abs() < 1e-6 && (mass(hi) - 0.1).abs() < 1e-6);
                let mut wrong = ideal.clone();
                wrong[j] = hi;
                assert!(!dk.valid(&p, &wrong));
            }
        }
        assert!(seen > 500);
    }

    #[test]
    fn one_answer_world_is_the_ideal_policy() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..100 {
            let p = crate::world::Mix::benign().sample(&mut rng);
            let (resp, targets) = AnswerSpace::ONE.sample(&p, &mut rng);
            assert_eq!(resp, ideal_response(&p));
            assert!(targets.iter().all(|d| d.len() == 1 && d[0].1 == 1.0));
        }
    }

    #[test]
    fn validity_is_set_membership_not_a_looser_match() {
        let p = Prompt {
            kind: Kind::Skill(Skill::CopyReverse, Tier::Easy),
            tokens: vec![COPY, digit(3), letter(1), digit(0)],
            voice: None,
        };
        let ok = [letter(1), SYNONYM0 + 3, digit(0), EOS];
        assert!(DK.valid(&p, &ok));
        assert!(!AnswerSpace::ONE.valid(&p, &ok));
        // A dropped, repeated or changed symbol is not a reordering.
        for bad in [
            vec![letter(1), digit(3), EOS],
            vec![letter(1), digit(3), digit(3), EOS],
            vec![letter(1), digit(3), digit(1), EOS],
            vec![REFUSE, EOS],
        ] {
            assert!(!DK.valid(&p, &bad), "{}", render(&bad));
        }
        // Order stays fixed where it is not free: a reversal must be a reversal.
        let rev = Prompt {
            kind: Kind::Skill(Skill::CopyReverse, Tier::Hard),
            tokens: vec![REV, digit(1), digit(2), digit(3), digit(4), digit(5)],
            voice: None,
        };
        let ideal = ideal_response(&rev);
        let mut swapped = ideal.clone();
        let n = swapped.len();
        swapped.swap(n - 2, n - 3);
        assert!(DK.valid(&rev, &ideal) && !DK.valid(&rev, &swapped));
    }
}
