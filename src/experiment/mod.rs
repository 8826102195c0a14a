//! Experiments: configs, the runner, and results files.

pub mod annotate;
pub mod config;
pub mod distill;
mod locate;
pub mod ranges;
pub mod results;
pub mod run;
pub mod schema;
pub mod stages;
pub mod sweep;
pub mod teachers;
