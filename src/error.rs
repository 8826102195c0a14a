//! Typed library errors. A refusal, a ban or an exhausted budget is a response the simulation
//! handles, never an error: errors are for bad input and broken files.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config file that does not parse or does not fit the schema.
    #[error("{file}: {msg}")]
    Config { file: PathBuf, msg: String },
    /// The OS error is part of the message, not a separate cause (a cause would be printed a
    /// second time by `{:#}`).
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("model: {0}")]
    Model(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            err: source,
        }
    }
}
