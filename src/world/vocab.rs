//! The token vocabulary of the synthetic world: ids, names and token classes.

/// Token id. The vocabulary is small (see [`VOCAB_SIZE`]), so `u32` is plenty.
pub type Tok = u32;

pub const PAD: Tok = 0;
pub const BOS: Tok = 1;
/// End of prompt, start of response.
pub const SEP: Tok = 2;
pub const EOS: Tok = 3;
/// Opens a reasoning trace (scratchpad) in a response.
pub const THINK: Tok = 4;
/// Closes a reasoning trace; the answer follows.
pub const ENDTHINK: Tok = 5;
/// The refusal response.
pub const REFUSE: Tok = 6;
/// A support token: the response acts on the user's distress before answering.
pub const SUPPORT: Tok = 7;
/// Affect probe: "how does the user feel?".
pub const FEEL: Tok = 8;
pub const ANS_CALM: Tok = 9;
pub const ANS_DISTRESS: Tok = 10;
/// Digits 0..=9 are ids `DIGIT0..DIGIT0+10`.
pub const DIGIT0: Tok = 11;
/// Letters a..=l are ids `LETTER0..LETTER0+12` (keys and copy symbols).
pub const LETTER0: Tok = 21;
pub const N_LETTERS: u32 = 12;
// Skill markers.
pub const COPY: Tok = 33;
pub const REV: Tok = 34;
pub const SORT: Tok = 35;
pub const ADD: Tok = 36;
pub const KV: Tok = 37;
pub const RUN: Tok = 38;
// Stack-machine opcodes.
pub const PUSH: Tok = 39;
pub const POP: Tok = 40;
pub const PLUS: Tok = 41;
pub const DUP: Tok = 42;
pub const SWAP: Tok = 43;
/// Separators used inside prompts.
pub const PLUS_SIGN: Tok = 44;
pub const QUERY: Tok = 45;
/// Harm topics `TOPIC0..TOPIC0+N_TOPICS`.
pub const TOPIC0: Tok = 46;
pub const N_TOPICS: u32 = 6;
/// Harmful intents `HARM_INTENT0..+N_INTENTS`, benign intents `BENIGN_INTENT0..+N_INTENTS`.
pub const HARM_INTENT0: Tok = 52;
pub const BENIGN_INTENT0: Tok = 55;
pub const N_INTENTS: u32 = 3;
/// Jailbreak wrappers `JAILBREAK0..+N_JAILBREAKS` ("role-play", "ignore previous", ...).
pub const JAILBREAK0: Tok = 58;
pub const N_JAILBREAKS: u32 = 4;
/// Answer header for a benign safety look-alike.
pub const INFO: Tok = 62;
/// Distress words `DISTRESS_WORD0..+4` ("sad", "scared", "hopeless", "alone").
pub const DISTRESS_WORD0: Tok = 63;
pub const N_DISTRESS_WORDS: u32 = 4;
/// Calm words `CALM_WORD0..+3` ("fine", "good", "ok").
pub const CALM_WORD0: Tok = 67;
pub const N_CALM_WORDS: u32 = 3;
/// Marks a summarised reasoning trace (the API may replace a trace with it).
pub const SUMMARY: Tok = 70;

/// Number of token ids (the model's vocabulary size). Ids above the last named token are
/// reserved, so that later world versions can add tokens without changing model shapes.
pub const VOCAB_SIZE: usize = 80;

pub fn digit(d: u32) -> Tok {
    debug_assert!(d < 10);
    DIGIT0 + d
}

pub fn digit_value(t: Tok) -> Option<u32> {
    (DIGIT0..DIGIT0 + 10).contains(&t).then(|| t - DIGIT0)
}

pub fn letter(i: u32) -> Tok {
    debug_assert!(i < N_LETTERS);
    LETTER0 + i
}

/// Human-readable name of a token, for logs and debugging.
pub fn name(t: Tok) -> String {
    let fixed = [
        "<pad>", "<bos>", "<sep>", "<eos>", "<think>", "</think>", "REFUSE", "SUPPORT", "FEEL?",
        "calm", "distress",
    ];
    if (t as usize) < fixed.len() {
        return fixed[t as usize].to_string();
    }
    if let Some(d) = digit_value(t) {
        return d.to_string();
    }
    if (LETTER0..LETTER0 + N_LETTERS).contains(&t) {
        return ((b'a' + (t - LETTER0) as u8) as char).to_string();
    }
    if (SUMMARY + 1..SUMMARY + 10).contains(&t) {
        return format!("syn{}", t - SUMMARY);
    }
    let named = [
        (COPY, "COPY"),
        (REV, "REV"),
        (SORT, "SORT"),
        (ADD, "ADD"),
        (KV, "KV"),
        (RUN, "RUN"),
        (PUSH, "push"),
        (POP, "pop"),
        (PLUS, "plus"),
        (DUP, "dup"),
        (SWAP, "swap"),
        (PLUS_SIGN, "+"),
        (QUERY, "?"),
        (INFO, "INFO"),
        (SUMMARY, "<summary>"),
    ];
    if let Some((_, n)) = named.iter().find(|(id, _)| *id == t) {
        return n.to_string();
    }
    let ranges = [
        (TOPIC0, N_TOPICS, "topic"),
        (HARM_INTENT0, N_INTENTS, "harm-intent"),
        (BENIGN_INTENT0, N_INTENTS, "benign-intent"),
        (JAILBREAK0, N_JAILBREAKS, "jailbreak"),
        (DISTRESS_WORD0, N_DISTRESS_WORDS, "distress-word"),
        (CALM_WORD0, N_CALM_WORDS, "calm-word"),
    ];
    for (start, n, label) in ranges {
        if (start..start + n).contains(&t) {
            return format!("{label}{}", t - start);
        }
    }
    format!("<{t}>")
}

/// Render a token sequence for humans.
pub fn render(toks: &[Tok]) -> String {
    toks.iter().map(|&t| name(t)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_tokens_are_distinct_and_inside_the_vocabulary() {
        let mut names = std::collections::HashSet::new();
        for t in 0..=SUMMARY {
            assert!((t as usize) < VOCAB_SIZE);
            assert!(
                names.insert(name(t)),
                "duplicate name for token {t}: {}",
                name(t)
            );
        }
    }

    #[test]
    fn digits_round_trip() {
        for d in 0..10 {
            assert_eq!(digit_value(digit(d)), Some(d));
        }
        assert_eq!(digit_value(COPY), None);
    }
}
