//! The harvest of a replay: a seeded sample of the attacker's queries as the API answered
//! them. At campaign scale the neural teacher cannot answer every admitted query, so it answers
//! one in `one_in` (the sample is drawn for every attacker query, whatever its code, so the
//! sample's composition estimates the whole campaign's); admission, price and detection were
//! simulated for all of them by the replay.

use crate::api::{Api, Code};
use crate::attacker::{AttackerConfig, Harvest, Item};
use crate::model::GenParams;
use crate::rng::{derive_rng, SimRng};
use crate::teacher::Teacher;
use crate::world::Prompt;
use rand::Rng;

/// One sampled attacker query that came back with an answer.
#[derive(Clone, Debug)]
pub struct Sample {
    pub minute: u32,
    pub account: u32,
    pub code: Code,
    /// Answered by the fallback model (visible or silent).
    pub fallback: bool,
    pub prompt: Prompt,
    /// The campaign's API spend when it was answered, USD.
    pub spend_usd: f64,
    /// A canary query of a canary-sending attacker: paid, never trained on.
    pub canary: bool,
}

/// A canary query the API answered (every one, sampled or not).
#[derive(Clone, Copy, Debug)]
pub struct CanaryQuery {
    pub minute: u32,
    pub account: u32,
    pub fallback: bool,
}

pub struct HarvestLog {
    pub one_in: u64,
    /// Most answered samples kept (the budget: later ones are never trained on).
    cap: usize,
    rng: SimRng,
    pub samples: Vec<Sample>,
    /// Codes of every sampled attacker query (index: position in `Code::ALL`).
    pub sampled_codes: [u64; 6],
    /// Codes of every attacker query.
    pub codes: [u64; 6],
    /// The campaign's API spend so far, USD.
    pub spend_usd: f64,
    /// A canary-sending attacker (`attacker.adapt.canary_share`): its share and stream.
    canary: Option<(f64, SimRng)>,
    /// Every answered canary query, in time order.
    pub canaries: Vec<CanaryQuery>,
}

/// Position of a code in `Code::ALL` (its declaration order).
pub fn code_index(c: Code) -> usize {
    c as usize
}

impl HarvestLog {
    /// `canary_share`: the share of the campaign's queries that are canaries (0: none).
    pub fn new(one_in: u64, cap: usize, seed: u64, canary_share: f64) -> HarvestLog {
        HarvestLog {
            one_in: one_in.max(1),
            cap,
            rng: derive_rng(seed, "traffic/harvest-sample"),
            samples: Vec::new(),
            sampled_codes: [0; 6],
            codes: [0; 6],
            spend_usd: 0.0,
            canary: (canary_share > 0.0).then(|| {
                (
                    canary_share.min(1.0),
                    derive_rng(seed, "attacker/canary-queries"),
                )
            }),
            canaries: Vec::new(),
        }
    }

    /// Record an attacker query's outcome; `prompt` is built only for kept samples.
    #[inline]
    pub fn record(
        &mut self,
        minute: u32,
        account: u32,
        code: Code,
        fallback: bool,
        prompt: impl FnOnce() -> Prompt,
    ) {
        let c = code_index(code);
        self.codes[c] += 1;
        // A canary: drawn from its own stream, so that the sample is the same without them.
        let canary = match self.canary.as_mut() {
            Some((share, rng)) if code.answered() => rng.random_bool(*share),
            _ => false,
        };
        if canary {
            self.canaries.push(CanaryQuery {
                minute,
                account,
                fallback,
            });
        }
        if self.one_in > 1 && self.rng.random_range(0..self.one_in) != 0 {
            return;
        }
        self.sampled_codes[c] += 1;
        if code.answered() && self.samples.len() < self.cap {
            self.samples.push(Sample {
                minute,
                account,
                code,
                fallback,
                prompt: prompt(),
                spend_usd: self.spend_usd,
                canary,
            });
        }
    }

    /// Have the API answer the sampled queries (the teacher, or the fallback model for
    /// accounts routed to it) and return what the attacker keeps: answers marked as fallback
    /// are dropped, silent fallback answers are kept. A canary-sending attacker
    /// (`attacker.adapt.canary_share`) sent canaries as that share of its queries: every one
    /// the API answered is answered here too (an easy copy or sort prompt of the attacker's
    /// corpus, by whichever model served its account then) and checked against the answer the
    /// attacker knows (`space`: the world's valid answers): `Harvest::canary_events`. Sampled
    /// canaries took their place in the budget and are not trained on. The replay's detectors
    /// saw the campaign's own prompts in their place (an assumption: canaries are easy skill
    /// prompts, so detectors keyed on reasoning see a campaign a little harder than the one
    /// sent).
    pub fn answer(
        &self,
        api: &Api,
        teacher: &Teacher,
        attacker: &AttackerConfig,
        accounts: &[u32],
        space: crate::world::AnswerSpace,
        seed: u64,
    ) -> Harvest {
        let kept: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.code == Code::Ok && !s.canary)
            .collect();
        let prompts: Vec<&Prompt> = kept.iter().map(|s| &s.prompt).collect();
        let k_cap = api.config.logprobs.min(crate::model::generate::MAX_TOP_K);
        let params = vec![
            GenParams {
                max_new: api.config.max_tokens,
                temperature: attacker.temperature,
                top_k: attacker.top_k.min(k_cap),
            };
            kept.len()
        ];
        let fallback: Vec<bool> = kept.iter().map(|s| s.fallback).collect();
        let mut rng = derive_rng(seed, "api/sampling");
        let served = api.respond(teacher, &prompts, params, &fallback, &mut rng);
        let mut h = Harvest {
            account_ids: accounts.to_vec(),
            accounts: accounts.len(),
            account_cost_usd: attacker.account_cost_usd,
            throttled: self.codes[code_index(Code::Throttled)],
            refused: self.codes.iter().sum::<u64>()
                - self.codes[code_index(Code::Ok)]
                - self.codes[code_index(Code::Throttled)],
            ..Default::default()
        };
        for (s, (g, _)) in kept.iter().zip(served) {
            h.items.push(Item {
                prompt: s.prompt.clone(),
                tokens: g.tokens,
                top: g.top,
            });
            h.times.push(s.minute as f64 * 60.0);
            h.from_fallback.push(s.fallback);
            h.item_accounts.push(s.account);
            h.spend.push(s.spend_usd);
        }
        h.canaries_sampled = self.samples.iter().filter(|s| s.canary).count();
        h.canary_events = self.answer_canaries(api, teacher, attacker, space, seed);
        h
    }

    /// Every answered canary, answered and checked: (simulated second, account, passed).
    fn answer_canaries(
        &self,
        api: &Api,
        teacher: &Teacher,
        attacker: &AttackerConfig,
        space: crate::world::AnswerSpace,
        seed: u64,
    ) -> Vec<(f64, u32, bool)> {
        if self.canaries.is_empty() {
            return vec![];
        }
        let mut prng = derive_rng(seed, "attacker/canary-prompts");
        let prompts: Vec<Prompt> = self
            .canaries
            .iter()
            .map(|_| crate::attacker::canary_prompt(&mut prng))
            .collect();
        let refs: Vec<&Prompt> = prompts.iter().collect();
        let asked = GenParams {
            temperature: attacker.temperature,
            ..GenParams::greedy(api.config.max_tokens)
        };
        let params = vec![asked; prompts.len()];
        let fallback: Vec<bool> = self.canaries.iter().map(|c| c.fallback).collect();
        let mut rng = derive_rng(seed, "api/canary-sampling");
        let served = api.respond(teacher, &refs, params, &fallback, &mut rng);
        self.canaries
            .iter()
            .zip(&prompts)
            .zip(served)
            .map(|((c, p), (g, _))| {
                let pass = space.same_answer(p, &g.tokens, &crate::base::base_response(p));
                (c.minute as f64 * 60.0, c.account, pass)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiConfig;
    use crate::traffic::detect::DetectorConfig;
    use crate::traffic::replay::{Outcome, Replay};
    use crate::traffic::{Action, TrafficConfig};
    use crate::world::AnswerSpace;
    use crate::world::{Kind, Tier};

    fn oracle() -> Teacher {
        Teacher::Oracle {
            easy: 0.9,
            hard: 0.8,
        }
    }

    /// 40 attacker accounts (10 per identity) for 3 days among 500 users; identity clustering
    /// flags every attacker account at the first pass and acts an hour later.
    fn setup(action: Action) -> (ApiConfig, TrafficConfig, AttackerConfig) {
        let mut tr = TrafficConfig {
            action,
            throttle_factor: 0.02,
            ..Default::default()
        };
        tr.population.users = 500;
        tr.detectors = DetectorConfig {
            cluster_size: Some(5),
            ..DetectorConfig::off()
        };
        if action == Action::Throttle {
            // Fast enough (3.5 a minute) that a cut to 2% of tier 1 (1 a minute) binds.
            tr.campaign.daily_per_account = 5000.0;
        }
        let att = AttackerConfig {
            accounts: 40,
            max_days: 3.0,
            budget: usize::MAX,
            ..Default::default()
        };
        (ApiConfig::default(), tr, att)
    }

    fn run(action: Action, one_in: u64, seed: u64) -> (Outcome, AttackerConfig) {
        let (api, tr, att) = setup(action);
        let o = Replay::new(&api, &tr, &att, seed, Some((one_in, usize::MAX)))
            .unwrap()
            .run()
            .unwrap();
        (o, att)
    }

    /// When each account was actioned.
    fn acted(o: &Outcome) -> std::collections::HashMap<u32, u32> {
        o.actions.iter().map(|&(m, a)| (a, m)).collect()
    }

    #[test]
    fn actions_on_attacker_accounts_reach_the_harvest_the_student_trains_on() {
        for action in [
            Action::Ban,
            Action::Challenge,
            Action::FallbackVisible,
            Action::FallbackSilent,
            Action::Throttle,
            Action::Observe,
        ] {
            let (o, att) = run(action, 1, 1);
            let log = o.harvest.as_ref().unwrap();
            let at = acted(&o);
            assert_eq!(at.len(), 40, "{action:?}: every attacker account actioned");
            let h = log.answer(
                &o.api,
                &oracle(),
                &att,
                &o.attacker_accounts,
                AnswerSpace::ONE,
                1,
            );
            let after = |s: &&Sample| at.get(&s.account).is_some_and(|&m| s.minute >= m);
            let later: Vec<&Sample> = log.samples.iter().filter(after).collect();
            let trained_later = log
                .samples
                .iter()
                .filter(|s| s.code == Code::Ok)
                .filter(after);
            let codes = |c: Code| log.codes[code_index(c)];
            match action {
                // Banned: every later query refused, none answered.
                Action::Ban => {
                    assert!(later.is_empty(), "{action:?}: {} answered", later.len());
                    assert!(codes(Code::Refused) > 0);
                }
                // Challenged: suspended for 24 h, then banned or (30%) back.
                Action::Challenge => {
                    assert!(codes(Code::Challenged) > 0);
                    assert!(later.iter().all(|s| s.minute >= at[&s.account] + 24 * 60));
                }
                // Visible fallback: answered with the fallback code, dropped from the harvest.
                Action::FallbackVisible => {
                    assert!(codes(Code::Fallback) > 0);
                    assert!(later.iter().all(|s| s.code == Code::Fallback && s.fallback));
                    assert_eq!(trained_later.count(), 0);
                    assert_eq!(h.items.len() as u64, codes(Code::Ok));
                }
                // Silent fallback: answered as Ok by the fallback model, and trained on.
                Action::FallbackSilent => {
                    assert!(!later.is_empty() && later.iter().all(|s| s.code == Code::Ok));
                    assert!(later.iter().all(|s| s.fallback));
                    let n = h.from_fallback.iter().filter(|&&f| f).count();
                    assert_eq!(n, later.len());
                    // The fallback's answers are worse than the teacher's.
                    let correct = |fb: bool| {
                        let items: Vec<&Item> = h
                            .items
                            .iter()
                            .zip(&h.from_fallback)
                            .filter(|(_, &f)| f == fb)
                            .map(|(i, _)| i)
                            .collect();
                        let ok = items
                            .iter()
                            .filter(|i| i.tokens == crate::world::ideal_response(&i.prompt))
                            .count();
                        ok as f64 / items.len().max(1) as f64
                    };
                    assert!(
                        correct(true) < correct(false) - 0.2,
                        "{} {}",
                        correct(true),
                        correct(false)
                    );
                }
                // Observed: flagged, and every later query answered by the teacher as before.
                Action::Observe => {
                    assert!(!later.is_empty());
                    assert!(later.iter().all(|s| s.code == Code::Ok && !s.fallback));
                    assert_eq!(h.items.len(), log.samples.len());
                }
                // Throttled to 2% of tier 1: at most one answer a minute per account after the
                // cut, the rest throttled.
                Action::Throttle => {
                    let end = (att.max_days * 1440.0) as u32;
                    let minutes: u32 = at.values().map(|&m| end - m).sum();
                    assert!(
                        later.len() as f64 <= 1.02 * minutes as f64,
                        "{} answers in {minutes} account-minutes",
                        later.len()
                    );
                    assert!(codes(Code::Throttled) as f64 > 0.5 * later.len() as f64);
                }
            }
        }
    }

    /// Canaries against a silent fallback: every answered canary is answered and checked (the
    /// oracle teacher answers easy canaries right, greedily; the fallback model mostly
    /// wrong), so the accounts routed to it are found and their answers dropped, while an
    /// account the teacher serves keeps its answers; sampled canaries are not trained on.
    #[test]
    fn canaries_flag_the_accounts_a_silent_fallback_serves() {
        let (api, tr, mut att) = setup(Action::FallbackSilent);
        att.adapt = Some(crate::attacker::Adapt {
            canary_share: 0.2,
            ..Default::default()
        });
        let o = Replay::new(&api, &tr, &att, 1, Some((3, usize::MAX)))
            .unwrap()
            .run()
            .unwrap();
        let log = o.harvest.as_ref().unwrap();
        let h = log.answer(
            &o.api,
            &oracle(),
            &att,
            &o.attacker_accounts,
            AnswerSpace::ONE,
            1,
        );
        // A fifth of the answered campaign queries, every one answered (not only the third
        // the harvest samples), in time order.
        let answered = log.codes[code_index(Code::Ok)] as f64;
        let share = h.canary_events.len() as f64 / answered;
        assert!((share - 0.2).abs() < 0.02, "{share}");
        assert!(h.canary_events.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(h.canaries_sampled > 0);
        assert_eq!(h.items.len() + h.canaries_sampled, log.samples.len());
        let routed = acted(&o);
        let (mut on_teacher, mut on_fallback) = (vec![], vec![]);
        for &(t, a, pass) in &h.canary_events {
            let fb = routed.get(&a).is_some_and(|&m| t >= m as f64 * 60.0);
            if fb {
                &mut on_fallback
            } else {
                &mut on_teacher
            }
            .push(pass);
        }
        let rate = |v: &[bool]| v.iter().filter(|&&p| p).count() as f64 / v.len() as f64;
        assert_eq!(rate(&on_teacher), 1.0);
        assert!(
            rate(&on_fallback) < 0.2,
            "fallback passes {}",
            rate(&on_fallback)
        );
        let items: Vec<(u32, f64)> = h
            .item_accounts
            .iter()
            .copied()
            .zip(h.times.iter().copied())
            .collect();
        let (keep, burnt) = crate::attacker::canary_keep(&items, &h.canary_events, 2);
        assert_eq!(burnt, 40, "every routed account found");
        let n = h.items.len();
        let kept_fb = (0..n).filter(|&i| keep[i] && h.from_fallback[i]).count();
        let fb = h.from_fallback.iter().filter(|&&f| f).count();
        assert!(
            fb > 100 && kept_fb * 50 < fb,
            "{kept_fb} of {fb} fallback answers kept"
        );
        // Without a fallback (flagged accounts observed only) every canary passes, nothing is
        // burnt and every answer is kept.
        let (api, tr, _) = setup(Action::Observe);
        let o = Replay::new(&api, &tr, &att, 1, Some((3, usize::MAX)))
            .unwrap()
            .run()
            .unwrap();
        let h = o.harvest.as_ref().unwrap().answer(
            &o.api,
            &oracle(),
            &att,
            &o.attacker_accounts,
            AnswerSpace::ONE,
            1,
        );
        assert!(!h.canary_events.is_empty() && h.canary_events.iter().all(|c| c.2));
        let items: Vec<(u32, f64)> = h
            .item_accounts
            .iter()
            .copied()
            .zip(h.times.iter().copied())
            .collect();
        let (keep, burnt) = crate::attacker::canary_keep(&items, &h.canary_events, 2);
        assert_eq!((burnt, keep.iter().all(|&k| k)), (0, true));
    }

    #[test]
    fn a_sampled_harvest_has_the_composition_of_the_full_one() {
        // Silent fallback, so that the harvest mixes teacher and fallback answers.
        let (full, att) = run(Action::FallbackSilent, 1, 3);
        let (part, _) = run(Action::FallbackSilent, 10, 3);
        let (fl, pl) = (
            full.harvest.as_ref().unwrap(),
            part.harvest.as_ref().unwrap(),
        );
        // The traffic is the same; only the sample differs.
        assert_eq!(fl.codes, pl.codes);
        assert_eq!(full.stats.attacker_served, part.stats.attacker_served);
        let fh = fl.answer(
            &full.api,
            &oracle(),
            &att,
            &full.attacker_accounts,
            AnswerSpace::ONE,
            3,
        );
        let ph = pl.answer(
            &part.api,
            &oracle(),
            &att,
            &part.attacker_accounts,
            AnswerSpace::ONE,
            3,
        );
        assert!(ph.items.len() * 12 > fh.items.len() && ph.items.len() * 8 < fh.items.len());
        // Composition: each skill, hard tiers, harmful prompts, refusals, fallback answers.
        type Share = Box<dyn Fn(&Item, bool) -> bool>;
        let mut checks: Vec<(String, Share)> = vec![
            (
                "hard".into(),
                Box::new(|i: &Item, _| matches!(i.prompt.kind, Kind::Skill(_, Tier::Hard))),
            ),
            (
                "harmful".into(),
                Box::new(|i: &Item, _| matches!(i.prompt.kind, Kind::Harmful | Kind::Jailbreak)),
            ),
            (
                "refusal".into(),
                Box::new(|i: &Item, _| crate::world::parse_response(&i.tokens).refused),
            ),
            ("fallback".into(), Box::new(|_: &Item, f| f)),
        ];
        for s in crate::world::Skill::ALL {
            checks.push((
                format!("{s:?}"),
                Box::new(move |i: &Item, _| matches!(i.prompt.kind, Kind::Skill(k, _) if k == s)),
            ));
        }
        let share = |h: &Harvest, f: &Share| {
            let n = h
                .items
                .iter()
                .zip(&h.from_fallback)
                .filter(|(i, &b)| f(i, b))
                .count();
            n as f64 / h.items.len() as f64
        };
        let n = ph.items.len() as f64;
        for (name, f) in &checks {
            let (p_full, p_part) = (share(&fh, f), share(&ph, f));
            // Four standard errors of the sample's share around the full harvest's.
            let se = (p_full * (1.0 - p_full) / n).sqrt().max(0.5 / n);
            assert!(
                (p_part - p_full).abs() < 4.0 * se,
                "{name}: sampled {p_part:.4} vs full {p_full:.4} (se {se:.4})"
            );
        }
        // Codes of the sampled queries against every query's.
        let (total, sampled) = (
            fl.codes.iter().sum::<u64>() as f64,
            pl.sampled_codes.iter().sum::<u64>() as f64,
        );
        for c in Code::ALL {
            let (p, q) = (
                fl.codes[code_index(c)] as f64 / total,
                pl.sampled_codes[code_index(c)] as f64 / sampled,
            );
            let se = (p * (1.0 - p) / sampled).sqrt().max(0.5 / sampled);
            assert!((p - q).abs() < 4.0 * se, "{c:?}: {q:.4} vs {p:.4}");
        }
    }
}
