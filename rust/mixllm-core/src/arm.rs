//! One model's learned statistics ("arm"): two ridge regressions on the same context, the
//! quality head (with the LinUCB statistics A and A⁻¹) and the log(1 + output tokens) head.
//!
//! The two heads have separate ridge systems. Quality is a weak, noisy signal that needs strong
//! shrinkage; output length is a strong one (a code answer is hundreds of tokens, a
//! multiple-choice answer one), and shrinking it as hard as quality pulls every long answer
//! towards the short ones, so the cost and the service time of exactly the slowest requests are
//! underpredicted. Each head therefore has its own ridge, and the length head learns only from
//! observations whose length was seen. While the two systems coincide (equal ridges, and every
//! length seen so far) the length head reads the quality head's matrices instead of keeping
//! copies, so an update costs what one head costs; the first observation without a length, or a
//! fit with another ridge, gives it its own.
//!
//! Readers see an immutable [`ArmStats`] snapshot. A writer owns an [`ArmLedger`] (the exact
//! sufficient statistics of both heads, and the length head's own A⁻¹, which only writers read)
//! and turns one observation into a new snapshot with Sherman–Morrison rank-1 updates in O(d²),
//! refreshing each head in O(d) with the recursive least-squares form
//! `θ += u·(r − xᵀθ)·w/(1 + w·xᵀu)`, u = A⁻¹x. Every `refactor_every` updates it re-inverts the
//! matrices exactly from the ledger, so rounding errors cannot accumulate.
//!
//! Both heads learn residuals against the arm's [`Priors`]: an arm with no data predicts the
//! priors, and ridge shrinks towards them rather than towards zero.

use crate::bounds::{check_gram_inverse, InverseBounds};
use crate::config::PolicyConfig;
use crate::error::{Error, Result};
use crate::kernels::{axpy, dot, rank1_in_place, rank1_into_within, spd_inverse, symv, SymLayout};
use crate::profile::Priors;

/// Output lengths are predicted in log space and clamped to this (≈ a million tokens), so an
/// extrapolating head cannot produce an infinite cost.
pub const MAX_LOG_LENGTH: f64 = 13.8;

/// An immutable snapshot of what an arm has learned: what a decision reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmStats {
    /// A⁻¹ of the quality head, in the blocked packed layout of [`SymLayout`].
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
/// Matrices are in the blocked packed layout of [`SymLayout`].
#[derive(Debug, Clone, PartialEq)]
pub struct ArmLedger {
    /// The ridges A and A_len start from: what bounds their inverses ([`crate::bounds`]).
    pub ridge: f64,
    pub length_ridge: f64,
    /// A = ridge·I + Σ w·x·xᵀ over every observation.
    pub a: Vec<f64>,
    /// Σ w·(quality − prior)·x.
    pub b_quality: Vec<f64>,
    /// Σ w·(log(1 + tokens) − prior)·x over the observations whose length was seen.
    pub b_log_length: Vec<f64>,
    /// The length head's own matrices, or `None` while they equal A and A⁻¹.
    pub length: Option<LengthSystem>,
    /// Rank-1 updates since the inverses were last computed exactly.
    pub updates_since_refactor: u64,
}

/// The length head's ridge system once it differs from the quality head's.
#[derive(Debug, Clone, PartialEq)]
pub struct LengthSystem {
    /// A_len = length_ridge·I + Σ w·x·xᵀ over the observations whose length was seen.
    pub a: Vec<f64>,
    /// A_len⁻¹, kept here because only the writer's next update reads it.
    pub a_inv: Vec<f64>,
}

impl LengthSystem {
    /// No length seen: A_len = length_ridge·I.
    fn prior(layout: SymLayout, length_ridge: f64) -> Self {
        Self {
            a: layout.scaled_identity(length_ridge),
            a_inv: layout.scaled_identity(1.0 / length_ridge),
        }
    }
}

/// One observation of a model's outcome on a query.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub x: &'a [f64],
    pub quality: f64,
    /// `None` when the length was not observed: the length head then learns nothing.
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
    /// No observations: A = ridge·I, and A_len = length_ridge·I (shared with A when equal).
    pub fn prior(dim: usize, ridge: f64, length_ridge: f64) -> Self {
        let layout = SymLayout::new(dim);
        Self {
            ridge,
            length_ridge,
            a: layout.scaled_identity(ridge),
            b_quality: vec![0.0; dim],
            b_log_length: vec![0.0; dim],
            length: (length_ridge != ridge).then(|| LengthSystem::prior(layout, length_ridge)),
            updates_since_refactor: 0,
        }
    }

    /// The length head's matrix A_len.
    pub fn length_a(&self) -> &[f64] {
        self.length.as_ref().map_or(&self.a, |own| &own.a)
    }

    /// Gives the length head its own copy of the quality head's matrices (`a_inv` is A⁻¹ as
    /// the current snapshot holds it), unless it has one already.
    fn separate_length(&mut self, a_inv: &[f64]) {
        if self.length.is_none() {
            self.length = Some(LengthSystem {
                a: self.a.clone(),
                a_inv: a_inv.to_vec(),
            });
        }
    }

    /// Refuses an observation that would grow a diagonal entry of A or A_len past
    /// [`MAX_DIAGONAL`], before anything changes.
    fn check_growth(&self, layout: SymLayout, x: &[f64], w: f64) -> Result<()> {
        let mut matrices = vec![("A", &self.a)];
        if let Some(own) = &self.length {
            matrices.push(("A_len", &own.a));
        }
        for (name, m) in matrices {
            let fits = layout
                .upper_rows(m)
                .zip(x)
                .all(|((_, row), xi)| row[0] + w * xi * xi <= MAX_DIAGONAL);
            if !fits {
                return Err(overflow(name));
            }
        }
        Ok(())
    }

    /// Adds one weighted observation (`x` padded): A += w·x·xᵀ, b_q += w·r_q·x, and with a seen
    /// length b_len += w·r_len·x and, when the length head has its own, A_len += w·x·xᵀ.
    fn accumulate(
        &mut self,
        x: &[f64],
        w: f64,
        residual_quality: f64,
        residual_length: Option<f64>,
    ) {
        let layout = SymLayout::new(self.b_quality.len());
        rank1_in_place(layout, &mut self.a, x, -w);
        axpy(w * residual_quality, x, &mut self.b_quality);
        if let Some(r) = residual_length {
            axpy(w * r, x, &mut self.b_log_length);
            if let Some(own) = &mut self.length {
                rank1_in_place(layout, &mut own.a, x, -w);
            }
        }
    }

    /// Adds one weighted length alone (`x` padded): A_len += w·x·xᵀ, b_len += w·r_len·x. The
    /// length head must have its own matrices (A does not take the observation).
    fn accumulate_length(&mut self, x: &[f64], w: f64, residual_length: f64) {
        let layout = SymLayout::new(self.b_quality.len());
        axpy(w * residual_length, x, &mut self.b_log_length);
        if let Some(own) = &mut self.length {
            rank1_in_place(layout, &mut own.a, x, -w);
        }
    }

    /// The exact snapshot these statistics imply: the inverses by Cholesky, θ = A⁻¹·b. Also
    /// refreshes the length head's own A⁻¹, if it has one; on error nothing is changed.
    pub fn solve(&mut self, observations: u64, weight_sum: f64) -> Result<ArmStats> {
        let dim = self.b_quality.len();
        let layout = SymLayout::new(dim);
        let (a_inv, theta_quality) = solve_ridge(layout, "A", &self.a, &self.b_quality)?;
        within_precision("A", layout, &a_inv, self.ridge)?;
        let theta_log_length = match &mut self.length {
            None => solve_with(layout, "A", &a_inv, &self.b_log_length)?,
            Some(own) => {
                let (length_a_inv, theta) =
                    solve_ridge(layout, "A_len", &own.a, &self.b_log_length)?;
                within_precision("A_len", layout, &length_a_inv, self.length_ridge)?;
                own.a_inv = length_a_inv;
                theta
            }
        };
        Ok(ArmStats {
            a_inv,
            theta_quality,
            theta_log_length,
            observations,
            weight_sum,
        })
    }
}

/// M⁻¹ (packed) and θ = M⁻¹·b (unpadded) for one head's matrix `name`, or an error naming why
/// not.
fn solve_ridge(
    layout: SymLayout,
    name: &str,
    m: &[f64],
    b: &[f64],
) -> Result<(Vec<f64>, Vec<f64>)> {
    let m_inv = spd_inverse(layout, m).ok_or_else(|| {
        Error::InvalidValue(format!(
            "the arm's matrix {name} is not positive definite (are the contexts finite?)"
        ))
    })?;
    if !m_inv.iter().all(|v| v.is_finite()) {
        return Err(overflow(name));
    }
    let theta = solve_with(layout, name, &m_inv, b)?;
    Ok((m_inv, theta))
}

/// θ = M⁻¹·b (unpadded) given the inverse of the head's matrix `name`.
fn solve_with(layout: SymLayout, name: &str, m_inv: &[f64], b: &[f64]) -> Result<Vec<f64>> {
    let mut theta = vec![0.0; layout.stride()];
    symv(layout, m_inv, &layout.pad(b), &mut theta);
    theta.truncate(layout.dim());
    if theta.iter().all(|v| v.is_finite()) {
        Ok(theta)
    } else {
        Err(overflow(name))
    }
}

/// An exact inverse out of the bounds of [`crate::bounds`]: the observations are so extreme
/// (contexts near 1e100, weights spanning 1e200) that floating point cannot hold the arm.
fn within_precision(name: &str, layout: SymLayout, m_inv: &[f64], ridge: f64) -> Result<()> {
    check_gram_inverse(&format!("{name}⁻¹"), layout, m_inv, ridge).map_err(|e| {
        Error::InvalidValue(format!(
            "the observations are too extreme for the arm's precision ({e}); rejected"
        ))
    })
}

/// The largest a diagonal entry of A may grow to: below it, no entry of A overflows
/// (|A_ij| ≤ sqrt(A_ii·A_jj)), whatever the rounding.
const MAX_DIAGONAL: f64 = f64::MAX / 4.0;

fn overflow(name: &str) -> Error {
    Error::InvalidValue(format!(
        "the observations are too large: the arm's statistics (matrix {name}) would overflow"
    ))
}

/// One head's recursive least-squares step: `u = M⁻¹x`, the gain `w / (1 + w·xᵀu)` and the new θ.
struct HeadStep {
    u: Vec<f64>,
    gain: f64,
    theta: Vec<f64>,
}

/// The length head's step: its new θ and, when it has its own A⁻¹, that matrix's rank-1 update
/// (u, gain).
struct LengthStep {
    theta: Vec<f64>,
    own_update: Option<(Vec<f64>, f64)>,
}

/// The step of the head with inverse `m_inv` and weights `theta`, or `None` when rounding has
/// made `1 + w·xᵀu` meaningless (not finite and positive), which calls for an exact refactorisation.
fn head_step(
    layout: SymLayout,
    m_inv: &[f64],
    theta: &[f64],
    x: &[f64],
    w: f64,
    residual: f64,
) -> Option<HeadStep> {
    let mut u = vec![0.0; layout.stride()];
    let x_m_inv_x = symv(layout, m_inv, x, &mut u);
    let denominator = 1.0 + w * x_m_inv_x;
    if !(denominator.is_finite() && denominator > 0.0) {
        return None;
    }
    let gain = w / denominator;
    Some(HeadStep {
        theta: rls_weights(theta, x, &u, gain, residual),
        u,
        gain,
    })
}

/// θ + u·gain·(residual − xᵀθ): a head's weights after a step with `u` and `gain`.
fn rls_weights(theta: &[f64], x: &[f64], u: &[f64], gain: f64, residual: f64) -> Vec<f64> {
    let mut next = theta.to_vec();
    axpy(gain * (residual - dot(theta, x)), u, &mut next);
    next
}

/// The length head's step: with its own A⁻¹ (whose rank-1 update it then carries), or with
/// the quality head's u and gain while the two share A; `None` when rounding calls for an
/// exact refactorisation.
fn length_step(
    layout: SymLayout,
    ledger: &ArmLedger,
    theta: &[f64],
    quality: &Option<HeadStep>,
    x: &[f64],
    w: f64,
    residual: f64,
) -> Option<LengthStep> {
    match (&ledger.length, quality) {
        (Some(own), _) => {
            head_step(layout, &own.a_inv, theta, x, w, residual).map(|step| LengthStep {
                theta: step.theta,
                own_update: Some((step.u, step.gain)),
            })
        }
        (None, Some(q)) => Some(LengthStep {
            theta: rls_weights(theta, x, &q.u, q.gain, residual),
            own_update: None,
        }),
        (None, None) => None,
    }
}

/// Sherman–Morrison: M⁻¹ ← M⁻¹ − gain·u·uᵀ, for the quality head and, when it has its own
/// and learned, the length head, each checked against the bounds of [`crate::bounds`] as it
/// is written: the new quality A⁻¹ and the length head's own, or `None` when rounding took an
/// inverse out of its bounds (which calls for the exact refactorisation instead). Changes
/// nothing.
fn sherman_morrison(
    layout: SymLayout,
    ledger: &ArmLedger,
    a_inv: &[f64],
    quality: &HeadStep,
    length_update: Option<(Vec<f64>, f64)>,
) -> Option<(Vec<f64>, Option<Vec<f64>>)> {
    let mut next_a_inv = vec![0.0; a_inv.len()];
    let mut within = rank1_into_within(
        layout,
        a_inv,
        &quality.u,
        quality.gain,
        &mut next_a_inv,
        &InverseBounds::new(ledger.ridge),
    );
    let own_a_inv = match (length_update, &ledger.length) {
        (Some((u, gain)), Some(own)) => {
            let mut next = vec![0.0; own.a_inv.len()];
            within &= rank1_into_within(
                layout,
                &own.a_inv,
                &u,
                gain,
                &mut next,
                &InverseBounds::new(ledger.length_ridge),
            );
            Some(next)
        }
        _ => None,
    };
    within.then_some((next_a_inv, own_a_inv))
}

/// The exact refactorisation: the observation accumulated into a copy of the ledger, solved
/// from scratch; the copy replaces the ledger only if it succeeds. `residuals` are the quality
/// and (when seen) log-length residuals, `counts` the observations and weight sum after it.
fn refactorised(
    ledger: &mut ArmLedger,
    a_inv: &[f64],
    x: &[f64],
    w: f64,
    residuals: (f64, Option<f64>),
    counts: (u64, f64),
) -> Result<ArmStats> {
    let (residual_quality, residual_log_length) = residuals;
    let mut next = ledger.clone();
    if residual_log_length.is_none() {
        next.separate_length(a_inv);
    }
    next.accumulate(x, w, residual_quality, residual_log_length);
    next.updates_since_refactor = 0;
    let stats = next.solve(counts.0, counts.1)?;
    *ledger = next;
    Ok(stats)
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
    let residual_log_length = obs
        .output_tokens
        .map(|tokens| tokens.ln_1p() - priors.log_length());
    ledger.check_growth(layout, x, w)?;
    let observations = current.observations.saturating_add(1);
    let weight_sum = current.weight_sum + w;

    let (a_inv, theta) = (&current.a_inv, &current.theta_quality);
    let quality = head_step(layout, a_inv, theta, x, w, residual_quality);
    let length = residual_log_length
        .map(|r| length_step(layout, ledger, &current.theta_log_length, &quality, x, w, r));
    // Both rank-1 steps, unless rounding made one meaningless or an exact refactorisation is due.
    let steps = match (quality, length) {
        (Some(q), None) => Some((q, None)),
        (Some(q), Some(Some(l))) => Some((q, Some(l))),
        _ => None,
    };
    let (residuals, counts) = (
        (residual_quality, residual_log_length),
        (observations, weight_sum),
    );
    let exact =
        |ledger: &mut ArmLedger| refactorised(ledger, &current.a_inv, x, w, residuals, counts);
    let Some((quality, length)) =
        steps.filter(|_| ledger.updates_since_refactor.saturating_add(1) < refactor_every)
    else {
        return exact(ledger);
    };
    let (length_update, theta_log_length) = match length {
        Some(step) => (step.own_update, step.theta),
        None => (None, current.theta_log_length.clone()),
    };
    if !(quality.theta.iter().chain(&theta_log_length)).all(|v| v.is_finite()) {
        return Err(Error::InvalidValue(
            "the update would make the arm's heads non-finite; observation rejected".to_string(),
        ));
    }
    let Some((a_inv, own_a_inv)) =
        sherman_morrison(layout, ledger, &current.a_inv, &quality, length_update)
    else {
        return exact(ledger);
    };

    // Nothing fails from here on. The first observation without a length parts the two heads'
    // systems for good: the length head keeps A and A⁻¹ as they were before it.
    if residual_log_length.is_none() {
        ledger.separate_length(&current.a_inv);
    }
    ledger.accumulate(x, w, residual_quality, residual_log_length);
    if let (Some(next), Some(own)) = (own_a_inv, &mut ledger.length) {
        own.a_inv = next;
    }
    ledger.updates_since_refactor += 1;
    Ok(ArmStats {
        a_inv,
        theta_quality: quality.theta,
        theta_log_length,
        observations,
        weight_sum,
    })
}

/// Applies one length observation alone (already validated: `tokens` a count, `w` > 0) to the
/// ledger and returns the next snapshot: the length head learns the answer's length on `x`,
/// the quality head and its LinUCB statistics stay as they are (the answer's quality is not
/// known). The first such observation gives the length head its own matrices, as an
/// observation without a length does. O(d²), with the bounds checks of [`learn`] and its
/// exact refactorisation every `refactor_every` updates; on error the ledger is untouched.
pub fn learn_length(
    current: &ArmStats,
    ledger: &mut ArmLedger,
    priors: &Priors,
    x: &[f64],
    tokens: f64,
    w: f64,
    refactor_every: u64,
) -> Result<ArmStats> {
    let layout = SymLayout::new(x.len());
    let x = &layout.pad(x)[..];
    let residual = tokens.ln_1p() - priors.log_length();
    ledger.check_growth(layout, x, w)?;
    let exact = |ledger: &mut ArmLedger| -> Result<ArmStats> {
        let mut next = ledger.clone();
        next.separate_length(&current.a_inv);
        next.accumulate_length(x, w, residual);
        next.updates_since_refactor = 0;
        let stats = next.solve(current.observations, current.weight_sum)?;
        *ledger = next;
        Ok(stats)
    };
    if ledger.updates_since_refactor.saturating_add(1) >= refactor_every {
        return exact(ledger);
    }
    // While the heads share A, A⁻¹ is the snapshot's (and the ridges are equal).
    let m_inv = ledger
        .length
        .as_ref()
        .map_or(&current.a_inv[..], |own| &own.a_inv[..]);
    let Some(step) = head_step(layout, m_inv, &current.theta_log_length, x, w, residual) else {
        return exact(ledger);
    };
    if !step.theta.iter().all(|v| v.is_finite()) {
        return Err(Error::InvalidValue(
            "the update would make the arm's length head non-finite; observation rejected"
                .to_string(),
        ));
    }
    let mut next_inv = vec![0.0; m_inv.len()];
    let within = rank1_into_within(
        layout,
        m_inv,
        &step.u,
        step.gain,
        &mut next_inv,
        &InverseBounds::new(ledger.length_ridge),
    );
    if !within {
        return exact(ledger);
    }
    // Nothing fails from here on.
    ledger.separate_length(&current.a_inv);
    ledger.accumulate_length(x, w, residual);
    if let Some(own) = &mut ledger.length {
        own.a_inv = next_inv;
    }
    ledger.updates_since_refactor += 1;
    Ok(ArmStats {
        a_inv: current.a_inv.clone(),
        theta_quality: current.theta_quality.clone(),
        theta_log_length: step.theta,
        observations: current.observations,
        weight_sum: current.weight_sum,
    })
}

/// Exact ridge fit of an arm from scratch on a batch (rows of `xs` are contexts), with the
/// dimension and the two ridges of `config`. A NaN in `output_tokens` marks a row whose length
/// was not seen (validated by the caller: every other value finite and non-negative).
pub fn fit(
    config: &PolicyConfig,
    priors: &Priors,
    xs: &[f64],
    quality: &[f64],
    output_tokens: Option<&[f64]>,
    weights: Option<&[f64]>,
) -> Result<(ArmLedger, ArmStats)> {
    let dim = config.dim;
    let layout = SymLayout::new(dim);
    let mut ledger = ArmLedger::prior(dim, config.ridge, config.length_ridge);
    // A row's length is seen unless NaN; without `output_tokens` none is.
    let seen_length = |row: usize| output_tokens.map(|t| t[row]).filter(|t| !t.is_nan());
    if (0..quality.len()).any(|row| seen_length(row).is_none()) {
        // Some length unseen: the length head learns from fewer rows than A holds.
        ledger
            .length
            .get_or_insert_with(|| LengthSystem::prior(layout, config.length_ridge));
    }
    let mut weight_sum = 0.0;
    for (row, x) in xs.chunks_exact(dim).enumerate() {
        let x = &layout.pad(x);
        let w = weights.map_or(1.0, |ws| ws[row]);
        let residual_length = seen_length(row).map(|t| t.ln_1p() - priors.log_length());
        ledger.accumulate(x, w, quality[row] - priors.quality, residual_length);
        weight_sum += w;
    }
    // Nothing more added: the diagonals as they are, held to the same limit as an update's.
    ledger.check_growth(layout, &vec![0.0; layout.stride()], 0.0)?;
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
        let config = PolicyConfig {
            ridge: 1.0,
            length_ridge: 0.25,
            ..PolicyConfig::new(dim)
        };
        let (_, batch) = fit(&config, &priors, &xs, &quality, Some(&tokens), None).unwrap();

        let mut stats = ArmStats::prior(dim, 1.0);
        let mut ledger = ArmLedger::prior(dim, 1.0, 0.25);
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

    /// A length head by a direct solve of its normal equations: `rows` (context, tokens, weight)
    /// in the matrix and the targets, `unseen` (context, weight) in the matrix only.
    fn exact_length_head(
        dim: usize,
        length_ridge: f64,
        priors: &Priors,
        rows: &[(&[f64], f64, f64)],
        unseen: &[(&[f64], f64)],
    ) -> Vec<f64> {
        let mut m = vec![0.0; dim * dim];
        let mut b = vec![0.0; dim];
        for i in 0..dim {
            m[i * dim + i] = length_ridge;
        }
        for &(x, w) in unseen {
            for i in 0..dim {
                for j in 0..dim {
                    m[i * dim + j] += w * x[i] * x[j];
                }
            }
        }
        for &(x, tokens, w) in rows {
            for i in 0..dim {
                b[i] += w * (tokens.ln_1p() - priors.log_length()) * x[i];
                for j in 0..dim {
                    m[i * dim + j] += w * x[i] * x[j];
                }
            }
        }
        // Gaussian elimination: m is symmetric positive definite, no pivoting needed.
        for k in 0..dim {
            for r in k + 1..dim {
                let f = m[r * dim + k] / m[k * dim + k];
                for c in k..dim {
                    m[r * dim + c] -= f * m[k * dim + c];
                }
                b[r] -= f * b[k];
            }
        }
        let mut theta = vec![0.0; dim];
        for k in (0..dim).rev() {
            let tail: f64 = (k + 1..dim).map(|c| m[k * dim + c] * theta[c]).sum();
            theta[k] = (b[k] - tail) / m[k * dim + k];
        }
        theta
    }

    /// Online learning with some lengths unseen, against the exact solution of each head.
    fn check_heads_against_exact_solutions(ridge: f64, length_ridge: f64) {
        let dim = 5;
        let priors = Priors::default();
        let xs = contexts(40, dim);
        let mut stats = ArmStats::prior(dim, ridge);
        let mut ledger = ArmLedger::prior(dim, ridge, length_ridge);
        assert_eq!(ledger.length.is_some(), ridge != length_ridge);
        let mut seen: Vec<(&[f64], f64, f64)> = Vec::new();
        let mut unseen: Vec<(&[f64], f64)> = Vec::new();
        for (i, x) in xs.chunks_exact(dim).enumerate() {
            // Every length seen for the first 10 observations, then a third of them unseen.
            let tokens = (i < 10 || i % 3 != 0).then_some(5.0 + 20.0 * i as f64);
            let w = 0.5 + (i % 4) as f64;
            let obs = Observation {
                x,
                quality: (i % 2) as f64,
                output_tokens: tokens,
                weight: w,
            };
            // A short period, so both the rank-1 steps and the exact refactorisation are used.
            stats = learn(&stats, &mut ledger, &priors, &obs, 9).unwrap();
            match tokens {
                Some(t) => seen.push((x, t, w)),
                None => unseen.push((x, w)),
            }
            // Equal ridges share the matrices until the first unseen length.
            assert_eq!(ledger.length.is_none(), ridge == length_ridge && i < 12);
        }
        let exact = exact_length_head(dim, length_ridge, &priors, &seen, &[]);
        for (a, b) in stats.theta_log_length.iter().zip(&exact) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
        // The same targets over the quality head's matrix (every observation, its ridge) differ:
        // the test can tell the two systems apart.
        let shared = exact_length_head(dim, ridge, &priors, &seen, &unseen);
        let distance: f64 = shared.iter().zip(&exact).map(|(a, b)| (a - b).abs()).sum();
        assert!(distance > 1e-3, "{distance}");
        // The ledger's own inverse is that of its matrix.
        let mut check = ledger.clone();
        check.solve(stats.observations, stats.weight_sum).unwrap();
        let (own, exact_own) = (ledger.length.unwrap(), check.length.unwrap());
        for (a, b) in exact_own.a_inv.iter().zip(&own.a_inv) {
            assert!((a - b).abs() <= 1e-9 * (1.0 + a.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn the_length_head_has_its_own_ridge_and_learns_only_seen_lengths() {
        check_heads_against_exact_solutions(30.0, 0.5);
    }

    #[test]
    fn equal_ridges_share_the_matrices_until_a_length_is_unseen() {
        check_heads_against_exact_solutions(2.0, 2.0);
    }

    #[test]
    fn unobserved_length_changes_nothing_of_the_length_head() {
        let dim = 4;
        let priors = Priors::default();
        let x = [0.5, -0.5, 0.25, 1.0];
        let mut ledger = ArmLedger::prior(dim, 1.0, 1.0);
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
        assert!(ledger.length.is_none());
        let a_before = ledger.a.clone();
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
        assert_eq!(after.predict_output_tokens(&priors, &x), before);
        assert_eq!(after.theta_log_length, stats.theta_log_length);
        // The length head now has its own matrices: the quality head's as they were before.
        let own = ledger.length.as_ref().unwrap();
        assert_eq!((&own.a, &own.a_inv), (&a_before, &stats.a_inv));
        assert_ne!(ledger.a, a_before);
        assert_ne!(after.theta_quality, stats.theta_quality);
    }

    #[test]
    fn a_rejected_update_leaves_a_shared_ledger_shared() {
        let dim = 3;
        let priors = Priors::default();
        let mut ledger = ArmLedger::prior(dim, 1.0, 1.0);
        // Weights so large that the quality head's rank-1 step overflows.
        let stats = ArmStats {
            theta_quality: vec![1e308; dim],
            ..ArmStats::prior(dim, 1.0)
        };
        let before = ledger.clone();
        for output_tokens in [None, Some(10.0)] {
            let obs = Observation {
                x: &[1.0, 1.0, 1.0],
                quality: 0.5,
                output_tokens,
                weight: 1.0,
            };
            assert!(learn(&stats, &mut ledger, &priors, &obs, 1000).is_err());
            assert_eq!(ledger, before);
            assert!(ledger.length.is_none());
        }
    }

    #[test]
    fn refactor_matches_ledger_solution() {
        let dim = 5;
        let priors = Priors::default();
        let mut stats = ArmStats::prior(dim, 0.5);
        let mut ledger = ArmLedger::prior(dim, 0.5, 2.0);
        // The same updates with rank-1 steps only (never refactored), to compare against.
        let (mut rank1, mut rank1_ledger) = (stats.clone(), ledger.clone());
        for (i, x) in contexts(7, dim).chunks_exact(dim).enumerate() {
            let obs = Observation {
                x,
                quality: i as f64,
                output_tokens: (i % 2 == 0).then_some(3.0 * i as f64),
                weight: 1.5,
            };
            stats = learn(&stats, &mut ledger, &priors, &obs, 7).unwrap();
            rank1 = learn(&rank1, &mut rank1_ledger, &priors, &obs, u64::MAX).unwrap();
        }
        assert_eq!(ledger.updates_since_refactor, 0);
        assert_eq!(rank1_ledger.updates_since_refactor, 7);
        assert_eq!(stats, ledger.clone().solve(7, 10.5).unwrap());
        // The exact refactorisation and the Sherman–Morrison steps agree to rounding.
        let pairs = [
            (&stats.a_inv, &rank1.a_inv),
            (&stats.theta_quality, &rank1.theta_quality),
            (&stats.theta_log_length, &rank1.theta_log_length),
            (
                &ledger.length.as_ref().unwrap().a_inv,
                &rank1_ledger.length.as_ref().unwrap().a_inv,
            ),
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
