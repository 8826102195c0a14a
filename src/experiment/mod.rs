//! Experiments: configs, the runner, and results files.

pub mod config;
mod locate;
pub mod results;
pub mod run;
pub mod schema;
