//! Seeded, portable randomness: every component derives its own ChaCha stream from the run
//! seed and its name, so adding a component never shifts another's numbers.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

pub type SimRng = ChaCha8Rng;

/// A generator for `name` under `seed`, stable across platforms and versions.
pub fn derive_rng(seed: u64, name: &str) -> SimRng {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(name.as_bytes());
    let out: [u8; 32] = h.finalize().into();
    ChaCha8Rng::from_seed(out)
}

/// A 64-bit seed for `name` under `seed` (for engines that take an integer seed).
pub fn derive_seed(seed: u64, name: &str) -> u64 {
    use rand::RngCore;
    derive_rng(seed, name).next_u64()
}

/// A standard normal draw (Box-Muller), portable and dependency-free.
pub fn normal<R: rand::Rng>(rng: &mut R) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// [`normal`] in double precision.
pub fn normal_f64<R: rand::Rng>(rng: &mut R) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
