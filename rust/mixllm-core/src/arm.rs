//! One model's learned statistics ("arm"): the shared ridge matrix A, its inverse, and the two
//! linear heads that share it, quality and log(1 + output tokens).
//!
//! Readers see an immutable [`ArmStats`] snapshot. A writer owns an [`ArmLedger`] (the exact
//! sufficient statistics A, b_q, b_len) and turns one observation into a new snapshot with a
//! Sherman–Morrison rank-1 update in O(d²), refreshing both heads in O(d) with the recursive
//! least-squares form `θ += u·(r − xᵀθ)·w/(1 + w·xᵀu)`, u = A⁻¹x. Every `refactor_every`
//! updates it re-inverts A exactly from the ledger, so rounding errors cannot accumulate.
//!
//! Both heads learn residuals against the arm's [`Priors`]: an arm with no data predicts the
//! priors, and ridge shrinks towards them rather than towards zero.

use crate::error::{Error, Result};
use crate::kernels::{axpy, dot, rank1_in_place, rank1_into, spd_inverse, symv, SymLayout};
use crate::profile::Priors;

/// Output lengths are predicted in log space and clamped to this (≈ a million tokens), so an
/// extrapolating head cannot produce an infinite cost.
pub const MAX_LOG_LENGTH: f64 = 13.8;

/// An immutable snapshot of what an arm has learned: what a decision reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmStats {
    /// A⁻¹, in the blocked packed layout of [`SymLayout`].
    pub a_inv: Vec<f64>,
    /// Quality head (residual over the prior).
    pub theta_quality: Vec<f64>,
    /// log(1 + output tokens) head (residual over the prior).
    pub theta_log_length: Vec<f64>,
    /// Observations learned from (fit rows plus online updates).
    pub observations: u64,
    /// Sum of the observations' weights.
    pub weight_sum: f64,
}

/// The exact sufficient statistics behind an arm, owned by whoever holds the arm's writer lock.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmLedger {
    /// A = ridge·I + Σ w·x·xᵀ, in the blocked packed layout of [`SymLayout`].
    pub a: Vec<f64>,
    /// Σ w·(quality − prior)·x.
    pub b_quality: Vec<f64>,
    /// Σ w·(log(1 + tokens) − prior)·x.
    pub b_log_length: Vec<f64>,
    /// Rank-1 updates since A⁻¹ was last computed exactly.
    pub updates_since_refactor: u64,
}

/// One observation of a model's outcome on a query.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub x: &'a [f64],
    pub quality: f64,
    /// `None` when the length was not observed: the length head then keeps its prediction.
    pub output_tokens: Option<f64>,
    pub weight: f64,
}

impl ArmStats {
    /// The prior arm: A = ridge·I, both heads at zero residual.
    pub fn prior(dim: usize, ridge: f64) -> Self {
        Self {
            a_inv: SymLayout::new(dim).scaled_identity(1.0 / ridge),
            theta_quality: vec![0.0; dim],
            theta_log_length: vec![0.0; dim],
            observations: 0,
            weight_sum: 0.0,
        }
    }

    /// Predicted quality of this model on context `x` (padded or not).
    #[inline]
    pub fn predict_quality(&self, priors: &Priors, x: &[f64]) -> f64 {
        priors.quality + dot(&self.theta_quality, x)
    }

    /// Predicted output tokens of this model on context `x` (padded or not). Decisions use
    /// [`Self::predict_output_tokens_from`] with the arm's kept log-length.
    #[cfg(test)]
    pub fn predict_output_tokens(&self, priors: &Priors, x: &[f64]) -> f64 {
        self.predict_output_tokens_from(priors.log_length(), x)
    }

    /// [`Self::predict_output_tokens`] given the prior's log-length offset, for callers that
    /// keep it rather than recompute a logarithm per call.
    #[inline]
    pub fn predict_output_tokens_from(&self, prior_log_length: f64, x: &[f64]) -> f64 {
        let log_length = prior_log_length + dot(&self.theta_log_length, x);
        // exp − 1 rather than exp_m1: half the time in glibc, and the two differ by about one
        // rounding of exp (≈ 1e-16 of the length), far below a token.
        log_length.clamp(0.0, MAX_LOG_LENGTH).exp() - 1.0
    }
}

impl ArmLedger {
    pub fn prior(dim: usize, ridge: f64) -> Self {
        Self {
            a: SymLayout::new(dim).scaled_identity(ridge),
            b_quality: vec![0.0; dim],
            b_log_length: vec![0.0; dim],
            updates_since_refactor: 0,
        }
    }

    /// Adds one weighted observation: A += w·x·xᵀ, b += w·r·x (`x` padded).
    fn accumulate(&mut self, x: &[f64], w: f64, residual_quality: f64, residual_log_length: f64) {
        let layout = SymLayout::new(self.b_quality.len());
        rank1_in_place(layout, &mut self.a, x, -w);
        axpy(w * residual_quality, x, &mut self.b_quality);
        axpy(w * residual_log_length, x, &mut self.b_log_length);
    }

    /// The exact snapshot these statistics imply: A⁻¹ by Cholesky, θ = A⁻¹·b.
    pub fn solve(&self, observations: u64, weight_sum: f64) -> Result<ArmStats> {
        let dim = self.b_quality.len();
        let layout = SymLayout::new(dim);
        let a_inv = spd_inverse(layout, &self.a).ok_or_else(|| {
            Error::InvalidValue(
                "the arm's matrix A is not positive definite (are the contexts finite?)"
                    .to_string(),
            )
        })?;
        let mut theta_quality = vec![0.0; layout.stride()];
        symv(
            layout,
            &a_inv,
            &layout.pad(&self.b_quality),
            &mut theta_quality,
        );
        theta_quality.truncate(dim);
        let mut theta_log_length = vec![0.0; layout.stride()];
        symv(
            layout,
            &a_inv,
            &layout.pad(&self.b_log_length),
            &mut theta_log_length,
        );
        theta_log_length.truncate(dim);
        let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
        if !(finite(&a_inv) && finite(&theta_quality) && finite(&theta_log_length)) {
            return Err(Error::InvalidValue(
                "the observations are too large: the arm's statistics would overflow".to_string(),
            ));
        }
        Ok(ArmStats {
            a_inv,
            theta_quality,
            theta_log_length,
            observations,
            weight_sum,
        })
    }
}

/// Applies one observation (already validated) to the ledger and returns the next snapshot.
/// `refactor_every` bounds how many rank-1 updates may pass before an exact re-inversion.
/// On error the ledger is untouched.
pub fn learn(
    current: &ArmStats,
    ledger: &mut ArmLedger,
    priors: &Priors,
    obs: &Observation<'_>,
    refactor_every: u64,
) -> Result<ArmStats> {
    let layout = SymLayout::new(obs.x.len());
    let x = &layout.pad(obs.x)[..];
    let w = obs.weight;
    let residual_quality = obs.quality - priors.quality;
    // An unobserved length is imputed with the current prediction, so the head does not drift.
    let residual_log_length = match obs.output_tokens {
        Some(tokens) => tokens.ln_1p() - priors.log_length(),
        None => dot(&current.theta_log_length, x),
    };
    let observations = current.observations + 1;
    let weight_sum = current.weight_sum + w;

    let mut u = vec![0.0; layout.stride()];
    let x_ainv_x = symv(layout, &current.a_inv, x, &mut u);
    let denominator = 1.0 + w * x_ainv_x;
    let drifted = !(denominator.is_finite() && denominator > 0.0);
    if drifted || ledger.updates_since_refactor + 1 >= refactor_every {
        let mut next = ledger.clone();
        next.accumulate(x, w, residual_quality, residual_log_length);
        next.updates_since_refactor = 0;
        let stats = next.solve(observations, weight_sum)?;
        *ledger = next;
        return Ok(stats);
    }

    // Sherman–Morrison: A⁻¹ ← A⁻¹ − w·u·uᵀ/(1 + w·xᵀu); RLS refresh of both heads with u.
    let gain = w / denominator;
    let mut theta_quality = current.theta_quality.clone();
    let error_quality = residual_quality - dot(&current.theta_quality, x);
    axpy(gain * error_quality, &u, &mut theta_quality);
    let mut theta_log_length = current.theta_log_length.clone();
    let error_log_length = residual_log_length - dot(&current.theta_log_length, x);
    axpy(gain * error_log_length, &u, &mut theta_log_length);
    if !(theta_quality
        .iter()
        .chain(&theta_log_length)
        .all(|v| v.is_finite()))
    {
        return Err(Error::InvalidValue(
            "the update would make the arm's heads non-finite; observation rejected".to_string(),
        ));
    }
    let mut a_inv = vec![0.0; current.a_inv.len()];
    rank1_into(layout, &current.a_inv, &u, gain, &mut a_inv);

    ledger.accumulate(x, w, residual_quality, residual_log_length);
    ledger.updates_since_refactor += 1;
    Ok(ArmStats {
        a_inv,
        theta_quality,
        theta_log_length,
        observations,
        weight_sum,
    })
}

/// Exact ridge fit of an arm from scratch on a batch (rows of `xs` are contexts).
pub fn fit(
    dim: usize,
    ridge: f64,
    priors: &Priors,
    xs: &[f64],
    quality: &[f64],
    output_tokens: Option<&[f64]>,
    weights: Option<&[f64]>,
) -> Result<(ArmLedger, ArmStats)> {
    let mut ledger = ArmLedger::prior(dim, ridge);
    let mut weight_sum = 0.0;
    let layout = SymLayout::new(dim);
    for (row, x) in xs.chunks_exact(dim).enumerate() {
        let x = &layout.pad(x);
        let w = weights.map_or(1.0, |ws| ws[row]);
        // Without observed lengths the length head stays at its prior (zero residual).
        let residual_log_length =
            output_tokens.map_or(0.0, |tokens| tokens[row].ln_1p() - priors.log_length());
        ledger.accumulate(x, w, quality[row] - priors.quality, residual_log_length);
        weight_sum += w;
    }
    let stats = ledger.solve(quality.len() as u64, weight_sum)?;
    Ok((ledger, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contexts(n: usize, dim: usize) -> Vec<f64> {
        (0..n * dim).map(|k| ((k as f64) * 0.7311).sin()).collect()
    }

    #[test]
    fn online_updates_match_batch_fit() {
        let dim = 6;
        let priors = Priors::default();
        let xs = contexts(50, dim);
        let quality: Vec<f64> = (0..50).map(|i| (i % 3) as f64 / 2.0).collect();
        let tokens: Vec<f64> = (0..50).map(|i| 10.0 + i as f64).collect();
        let (_, batch) = fit(dim, 1.0, &priors, &xs, &quality, Some(&tokens), None).unwrap();

        let mut stats = ArmStats::prior(dim, 1.0);
        let mut ledger = ArmLedger::prior(dim, 1.0);
        for (i, x) in xs.chunks_exact(dim).enumerate() {
            let obs = Observation {
                x,
                quality: quality[i],
                output_tokens: Some(tokens[i]),
                weight: 1.0,
            };
            stats = learn(&stats, &mut ledger, &priors, &obs, 1_000_000).unwrap();
        }
        for (a, b) in stats.a_inv.iter().zip(&batch.a_inv) {
            assert!((a - b).abs() < 1e-10);
        }
        for (a, b) in stats.theta_quality.iter().zip(&batch.theta_quality) {
            assert!((a - b).abs() < 1e-10);
        }
        for (a, b) in stats.theta_log_length.iter().zip(&batch.theta_log_length) {
            assert!((a - b).abs() < 1e-10);
        }
        assert_eq!(stats.observations, 50);
    }

    #[test]
    fn unobserved_length_keeps_the_prediction() {
        let dim = 4;
        let priors = Priors::default();
        let x = [0.5, -0.5, 0.25, 1.0];
        let mut ledger = ArmLedger::prior(dim, 1.0);
        let stats = learn(
            &ArmStats::prior(dim, 1.0),
            &mut ledger,
            &priors,
            &Observation {
                x: &x,
                quality: 1.0,
                output_tokens: Some(100.0),
                weight: 1.0,
            },
            1000,
        )
        .unwrap();
        let before = stats.predict_output_tokens(&priors, &x);
        let after = learn(
            &stats,
            &mut ledger,
            &priors,
            &Observation {
                x: &x,
                quality: 0.0,
                output_tokens: None,
                weight: 2.0,
            },
            1000,
        )
        .unwrap();
        assert!((after.predict_output_tokens(&priors, &x) - before).abs() < 1e-9);
    }

    #[test]
    fn refactor_matches_ledger_solution() {
        let dim = 5;
        let priors = Priors::default();
        let mut stats = ArmStats::prior(dim, 0.5);
        let mut ledger = ArmLedger::prior(dim, 0.5);
        // The same updates with rank-1 steps only (never refactored), to compare against.
        let (mut rank1, mut rank1_ledger) = (stats.clone(), ledger.clone());
        for (i, x) in contexts(7, dim).chunks_exact(dim).enumerate() {
            let obs = Observation {
                x,
                quality: i as f64,
                output_tokens: None,
                weight: 1.5,
            };
            stats = learn(&stats, &mut ledger, &priors, &obs, 7).unwrap();
            rank1 = learn(&rank1, &mut rank1_ledger, &priors, &obs, u64::MAX).unwrap();
        }
        assert_eq!(ledger.updates_since_refactor, 0);
        assert_eq!(rank1_ledger.updates_since_refactor, 7);
        assert_eq!(stats, ledger.solve(7, 10.5).unwrap());
        // The exact refactorisation and the Sherman–Morrison steps agree to rounding.
        let pairs = [
            (&stats.a_inv, &rank1.a_inv),
            (&stats.theta_quality, &rank1.theta_quality),
            (&stats.theta_log_length, &rank1.theta_log_length),
        ];
        for (exact, stepped) in pairs {
            for (a, b) in exact.iter().zip(stepped) {
                assert!((a - b).abs() <= 1e-9 * (1.0 + a.abs()), "{a} vs {b}");
            }
        }
        assert_eq!(
            (stats.observations, stats.weight_sum),
            (rank1.observations, rank1.weight_sum)
        );
    }
}
