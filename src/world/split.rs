//! The held-out split of the prompt space.
//!
//! Every prompt falls on one side of a keyed hash of its tokens: the **train** side (teacher
//! data, benign traffic, every attacker strategy) or the **eval** side (the eval suites only).
//! The voice is left out of the hash on purpose: a prompt's words are held out whatever voice
//! they come with, so no eval prompt's text is ever seen in training, not even with another
//! voice. Generators reject prompts of the other side ([`super::generate::generate`] draws the
//! train side, [`super::generate::generate_on`] either).

use super::vocab::Tok;

/// Share of the prompt space on the eval side.
pub const EVAL_SHARE: f64 = 0.2;
/// Key of the split hash. Fixed: every teacher, harvest and eval suite of every run uses the
/// same partition (changing it would need a new teacher version).
const SPLIT_KEY: u64 = 0x6469_7374_696c_6c21; // "distill!"

/// Which side of the split a prompt is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Train,
    Eval,
}

fn mix64(mut z: u64) -> u64 {
    // splitmix64's finaliser: a bijection with full avalanche.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The keyed hash of a token sequence (order and length sensitive).
pub fn prompt_hash(tokens: &[Tok]) -> u64 {
    let mut h = mix64(SPLIT_KEY ^ tokens.len() as u64);
    for &t in tokens {
        h = mix64(h ^ (t as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    }
    h
}

/// The side of the split a prompt's tokens fall on.
pub fn side(tokens: &[Tok]) -> Side {
    let u = (prompt_hash(tokens) >> 11) as f64 / (1u64 << 53) as f64;
    if u < EVAL_SHARE {
        Side::Eval
    } else {
        Side::Train
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_has_its_share_and_depends_on_order() {
        let n = 50_000u32;
        let eval = (0..n)
            .filter(|&i| side(&[i % 97, i / 97, 3]) == Side::Eval)
            .count();
        let share = eval as f64 / n as f64;
        assert!((share - EVAL_SHARE).abs() < 0.01, "{share}");
        assert_ne!(prompt_hash(&[1, 2]), prompt_hash(&[2, 1]));
        assert_ne!(prompt_hash(&[1]), prompt_hash(&[1, 0]));
    }
}
