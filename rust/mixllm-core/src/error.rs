//! The one error type of the core. The Python binding maps each variant to exactly one
//! exception class, so every message here is written for the person who made the call.

use std::path::PathBuf;

/// Everything that can go wrong in the core. A call that returns an error has changed no state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A vector or matrix of the wrong length or shape.
    #[error("{what} has {got}, expected {expected}")]
    Dimension {
        what: String,
        expected: String,
        got: String,
    },
    /// A value outside its allowed range (NaN, infinity, negative price, ...).
    #[error("{0}")]
    InvalidValue(String),
    /// No model of that name is in the pool.
    #[error("unknown model {0:?}")]
    UnknownModel(String),
    /// A model of that name is already in the pool.
    #[error("a model named {0:?} is already in the pool")]
    DuplicateModel(String),
    /// None of the models a request may go to is in the pool.
    #[error("none of the models {0} is in the pool")]
    NoneAllowed(String),
    /// Models a request may go to are in the pool, but none is within its cost ceiling or its
    /// latency tolerance; the message names the limit.
    #[error("{0}")]
    NoModelWithinLimits(String),
    /// A decision was asked of an empty pool.
    #[error("the pool has no models: add one with add_model before deciding")]
    EmptyPool,
    /// `end` was called for a model with no request in flight.
    #[error("no request in flight for model {0:?} (end or cancel without begin?)")]
    NothingInFlight(String),
    /// A state file that is not ours, damaged, truncated, or of another dimension.
    #[error("cannot load {path}: {reason}")]
    StateFile { path: PathBuf, reason: String },
    /// A tokenizer or token-table file that cannot be read or does not fit its use.
    #[error("cannot use {path}: {reason}")]
    ModelFile { path: PathBuf, reason: String },
    /// An operating-system error while reading or writing a state file.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Rejects NaN and infinities, naming the offending value.
pub fn ensure_finite(what: &str, value: f64) -> Result<()> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(Error::InvalidValue(format!(
            "{what} must be finite, got {value}"
        )))
    }
}

/// Rejects NaN, infinities and negative values.
pub fn ensure_non_negative(what: &str, value: f64) -> Result<()> {
    ensure_finite(what, value)?;
    if value < 0.0 {
        return Err(Error::InvalidValue(format!(
            "{what} must be >= 0, got {value}"
        )));
    }
    Ok(())
}

/// Rejects a vector holding NaN or infinities, naming the first bad position.
pub fn ensure_all_finite(what: &str, values: &[f64]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::InvalidValue(format!(
            "{what} must be finite, got {} at position {i}",
            values[i]
        ))),
    }
}

/// Rejects a vector of the wrong length.
pub fn ensure_len(what: &str, values: &[f64], expected: usize) -> Result<()> {
    if values.len() == expected {
        Ok(())
    } else {
        Err(Error::Dimension {
            what: what.to_string(),
            expected: format!("length {expected}"),
            got: format!("length {}", values.len()),
        })
    }
}
