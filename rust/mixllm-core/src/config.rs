//! The policy's hyper-parameters.

use crate::error::{ensure_finite, ensure_non_negative, Error, Result};

/// Largest context dimension accepted: a d×d f64 matrix per model must stay reasonable.
pub const MAX_DIM: usize = 4096;

/// Hyper-parameters of the decision rule (docs/design/how-it-decides.md) and of the online learner.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyConfig {
    /// Length of the context vector x (including any constant bias entry).
    pub dim: usize,
    /// Weight of the LinUCB confidence width `sqrt(xᵀA⁻¹x)` (exploration).
    pub alpha: f64,
    /// Weight of the latency penalty `exp(L/τ) − 1`.
    pub beta: f64,
    /// Ridge strength of the quality head: every arm starts at A = ridge·I.
    pub ridge: f64,
    /// Ridge strength of the output-length head, which has its own matrix (see [`crate::arm`]):
    /// lengths are far more predictable than quality and need far less shrinkage.
    pub length_ridge: f64,
    /// Latency tolerance τ in seconds; models predicted slower than this are excluded.
    pub tau_s: f64,
    /// How many standard deviations of its error a latency estimate must stay below τ: a
    /// model is excluded when L + `tau_margin_sd`·sd(L) > τ (`LiveStats::predicted_latency`).
    /// 0 compares the estimate itself with τ.
    pub tau_margin_sd: f64,
    /// After this many rank-1 updates an arm re-inverts A exactly, bounding numerical drift.
    pub refactor_every: u64,
    /// Weight of a new observation in the moving average of a model's service time, in (0, 1].
    pub service_time_smoothing: f64,
}

impl PolicyConfig {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            alpha: 0.01,
            beta: 0.1,
            ridge: 1.0,
            length_ridge: 1.0,
            tau_s: 30.0,
            tau_margin_sd: 0.0,
            refactor_every: 1000,
            service_time_smoothing: 0.1,
        }
    }

    /// Checks every field, naming the first that is out of range.
    pub fn validate(&self) -> Result<()> {
        if self.dim == 0 || self.dim > MAX_DIM {
            return Err(Error::InvalidValue(format!(
                "dim must be in 1..={MAX_DIM}, got {}",
                self.dim
            )));
        }
        for (field, value) in [
            ("alpha", self.alpha),
            ("beta", self.beta),
            ("tau_margin_sd", self.tau_margin_sd),
        ] {
            ensure_non_negative(field, value)?;
        }
        for (field, value) in [
            ("ridge", self.ridge),
            ("length_ridge", self.length_ridge),
            ("tau_s", self.tau_s),
        ] {
            ensure_finite(field, value)?;
            if value <= 0.0 {
                return Err(Error::InvalidValue(format!(
                    "{field} must be > 0, got {value}"
                )));
            }
        }
        // A fresh arm's A⁻¹ is I / ridge: a ridge so small that 1 / ridge overflows would start
        // every arm at infinity.
        for (field, value) in [("ridge", self.ridge), ("length_ridge", self.length_ridge)] {
            if !(1.0 / value).is_finite() {
                return Err(Error::InvalidValue(format!(
                    "{field} must be at least {:e} (1 / {field} must be finite), got {value:e}",
                    1.0 / f64::MAX,
                )));
            }
        }
        if self.refactor_every == 0 {
            return Err(Error::InvalidValue(
                "refactor_every must be >= 1, got 0".to_string(),
            ));
        }
        let s = self.service_time_smoothing;
        if !(s > 0.0 && s <= 1.0) {
            return Err(Error::InvalidValue(format!(
                "service_time_smoothing must be in (0, 1], got {s}"
            )));
        }
        Ok(())
    }
}
