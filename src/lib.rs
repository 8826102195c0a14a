//! distill-sim: a research simulator of distillation attacks on model APIs and of the
//! defenses against them. See DESIGN.md for the domain model and metric definitions.

pub mod api;
pub mod attacker;
pub mod base;
pub mod error;
pub mod eval;
pub mod fsutil;
pub mod model;
pub mod rng;
pub mod shipped;
pub mod student;
pub mod teacher;
pub mod world;

pub use error::{Error, Result};
pub mod bench;
pub mod experiment;
pub mod plot;
pub mod report;
pub mod serve;
pub mod traffic;
pub mod wire;
