//! The decision rule of docs/design/how-it-decides.md, for one query against one model:
//!
//! ```text
//! s = q̂ − ĉ/λ + α·sqrt(xᵀA⁻¹x) − β·(exp(L/τ) − 1)
//! ```
//!
//! λ (willingness to pay) is in USD per quality point: the price worth paying for one more point
//! of expected quality (quality is on the scale the caller feeds back, typically 0..1, so one
//! point is "always right" against "always wrong"). A model costing Δc more is worth it when it
//! buys more than Δc/λ expected quality. `λ = ∞` ignores cost; a small λ makes cost dominate.
//! A model whose predicted latency L, plus `tau_margin_sd` standard deviations of its error,
//! exceeds τ is excluded; when every model is, the fastest (smallest L) is chosen.
//!
//! # Arithmetic at the extremes
//!
//! Every input is finite, but products of finite inputs need not be (a price of 1e308 USD per
//! million tokens, 1e308 prompt tokens, a speed of 1e-300 tokens per second). The rule is
//! defined for all of them, so no NaN ever decides:
//! - The cost ĉ, the width sqrt(xᵀA⁻¹x), the penalty and each weighted term ĉ/λ, α·width,
//!   β·penalty saturate at `f64::MAX`: a weight of 0 (α, β, or λ = ∞ for cost) makes its term
//!   exactly 0 whatever the factor, and the score, q̂ minus and plus finite terms, is never
//!   ∞ − ∞. A NaN factor (from a NaN prediction) counts as `f64::MAX`: unknown is worst.
//! - A score can still reach ±∞ (a finite q̂ minus a saturated cost); ±∞ compares as usual.
//! - A latency that is NaN counts as +∞: the model is excluded, and it is never the fastest.
//! - A score that is NaN (only from a NaN quality prediction) excludes the model as too slow a
//!   latency does: the best admissible score is always a number.
//!
//! So [`choose`] returns the best admissible score when any model is admissible, else the
//! smallest latency (ties to the earlier model), and fails only for an empty pool.
//!
//! # Per-request limits
//!
//! A request may narrow the pool (`crate::policy::Limits`): the models it may go to, a ceiling
//! on the predicted cost, a tolerance on the predicted latency. A model outside any of them is
//! not [`Assessment::eligible`], and [`choose`] and [`rank`] consider only eligible models, by the
//! same rule; with no eligible model there is no choice, and the policy says which limit left
//! none.

use crate::arm::ArmStats;
use crate::config::PolicyConfig;
use crate::kernels::{quadratic_form, SymLayout};
use crate::live::LiveStats;
use crate::profile::{ModelProfile, Priors};

/// What the policy predicts for one model on one query, and the resulting score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assessment {
    /// Predicted quality q̂.
    pub quality: f64,
    /// Predicted output tokens ô.
    pub output_tokens: f64,
    /// Predicted cost ĉ in USD.
    pub cost_usd: f64,
    /// Predicted latency L in seconds: (queue wait + time to first token + ô / tokens per
    /// second) × the model's service ratio (`LiveStats::service_ratio`).
    pub latency_s: f64,
    /// Standard deviation of L's error in seconds (`LiveStats::predicted_latency`).
    pub latency_sd_s: f64,
    /// The service part of L before the ratio: time to first token + ô / tokens per second.
    /// What `begin` is given when the request is sent.
    pub service_s: f64,
    /// LinUCB confidence width sqrt(xᵀA⁻¹x).
    pub uncertainty: f64,
    /// Latency penalty exp(L/τ) − 1.
    pub penalty: f64,
    /// The score s; the decision takes the best admissible one.
    pub score: f64,
    /// Whether L (plus its margin) > τ, or an undefined score, took the model out of the
    /// running.
    pub excluded: bool,
    /// Whether the model is within the request's limits (always, for a request without any).
    pub eligible: bool,
}

/// Everything a decision reads about one model, borrowed from a consistent snapshot.
pub struct ArmView<'a> {
    pub stats: &'a ArmStats,
    pub profile: &'a ModelProfile,
    pub priors: &'a Priors,
    /// `priors.log_length()`.
    pub prior_log_length: f64,
    pub live: &'a LiveStats,
    /// When the decision is made, on the clock the live state runs on.
    pub now_s: f64,
}

/// Scores one model for context `x` (validated by the caller, zero-padded to `layout`'s
/// stride).
#[inline]
pub fn assess(
    config: &PolicyConfig,
    layout: SymLayout,
    arm: &ArmView<'_>,
    x: &[f64],
    prompt_tokens: f64,
    willingness_to_pay: f64,
) -> Assessment {
    let variance = quadratic_form(layout, &arm.stats.a_inv, x);
    assess_with_variance(config, arm, x, variance, prompt_tokens, willingness_to_pay)
}

/// [`assess`] given xᵀA⁻¹x, for callers that compute it for several queries at once.
#[inline]
pub fn assess_with_variance(
    config: &PolicyConfig,
    arm: &ArmView<'_>,
    x: &[f64],
    variance: f64,
    prompt_tokens: f64,
    willingness_to_pay: f64,
) -> Assessment {
    let quality = arm.stats.predict_quality(arm.priors, x);
    let output_tokens = arm
        .stats
        .predict_output_tokens_from(arm.prior_log_length, x);
    let cost_usd = saturate(arm.profile.cost_usd(prompt_tokens, output_tokens));
    let uncertainty = saturate(variance.max(0.0).sqrt());
    let service_s = arm.profile.ttft_s + output_tokens / arm.profile.tokens_per_s;
    let latency = arm.live.predicted_latency(
        arm.profile,
        arm.now_s,
        service_s,
        config.service_time_smoothing,
    );
    let latency_s = if latency.mean_s.is_nan() {
        f64::INFINITY
    } else {
        latency.mean_s
    };
    // exp − 1 rather than exp_m1 (half the time): exp_m1 is more precise only when L/τ is
    // tiny, where the penalty's absolute error stays around 1e-16 either way.
    let penalty = saturate((latency_s / config.tau_s).exp() - 1.0);
    let score = quality - saturate(cost_usd / willingness_to_pay)
        + saturate(config.alpha * uncertainty)
        - saturate(config.beta * penalty);
    Assessment {
        quality,
        output_tokens,
        cost_usd,
        latency_s,
        latency_sd_s: latency.sd_s,
        service_s,
        uncertainty,
        penalty,
        score,
        // The estimate alone decides without a margin, whatever its spread (an infinite one
        // times 0 would be NaN). A NaN margined latency excludes, as NaN latency does.
        excluded: score.is_nan()
            || latency_s > config.tau_s
            || (config.tau_margin_sd > 0.0 && {
                let margined = latency_s + config.tau_margin_sd * latency.sd_s;
                margined > config.tau_s || margined.is_nan()
            }),
        eligible: true,
    }
}

/// A non-negative factor of the score, or NaN, held within `f64::MAX` (NaN counts as the
/// maximum): see the module docs.
#[inline]
fn saturate(value: f64) -> f64 {
    // `f64::min` returns the other operand when one is NaN.
    value.min(f64::MAX)
}

/// Index of the chosen model: among eligible models, the best score among admissible ones
/// (ties go to the earlier model), or the smallest latency when none is admissible. `None` when
/// no model is eligible (or the slice is empty).
pub fn choose(assessments: &[Assessment]) -> Option<usize> {
    let eligible = || assessments.iter().enumerate().filter(|(_, a)| a.eligible);
    let best_admissible = eligible().filter(|(_, a)| !a.excluded).fold(
        None::<(usize, f64)>,
        |best, (i, a)| match best {
            Some((_, s)) if s >= a.score => best,
            _ => Some((i, a.score)),
        },
    );
    if let Some((i, _)) = best_admissible {
        return Some(i);
    }
    eligible()
        .fold(None::<(usize, f64)>, |best, (i, a)| match best {
            Some((_, l)) if l <= a.latency_s => best,
            _ => Some((i, a.latency_s)),
        })
        .map(|(i, _)| i)
}

/// The eligible models in the order [`choose`] prefers them: the admissible ones by score, best
/// first, then the excluded ones by latency, fastest first (ties to the earlier model). Its
/// first entry is [`choose`]'s; the rest are the fallbacks, in order.
pub fn rank(assessments: &[Assessment]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..assessments.len())
        .filter(|&i| assessments[i].eligible)
        .collect();
    // A stable sort keeps ties in pool order, as `choose` breaks them. Admissible scores and
    // latencies are never NaN (a NaN score excludes, a NaN latency counts as +∞), so the
    // comparisons are total where they are made.
    order.sort_by(|&i, &j| {
        let (a, b) = (&assessments[i], &assessments[j]);
        a.excluded.cmp(&b.excluded).then_with(|| {
            let order = if a.excluded {
                a.latency_s.partial_cmp(&b.latency_s)
            } else {
                b.score.partial_cmp(&a.score)
            };
            order.unwrap_or(std::cmp::Ordering::Equal)
        })
    });
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(score: f64, latency_s: f64, excluded: bool) -> Assessment {
        Assessment {
            quality: 0.0,
            output_tokens: 0.0,
            cost_usd: 0.0,
            latency_s,
            latency_sd_s: 0.0,
            service_s: latency_s,
            uncertainty: 0.0,
            penalty: 0.0,
            score,
            excluded,
            eligible: true,
        }
    }

    #[test]
    fn best_admissible_wins_and_ties_go_first() {
        let a = [
            scored(0.5, 1.0, false),
            scored(0.9, 1.0, true),
            scored(0.5, 1.0, false),
        ];
        assert_eq!(choose(&a), Some(0));
    }

    #[test]
    fn the_margin_excludes_an_estimate_that_fits_only_on_average() {
        use crate::arm::ArmStats;
        use crate::kernels::SymLayout;
        let mut config = PolicyConfig::new(1);
        let layout = SymLayout::new(1);
        let stats = ArmStats::prior(1, 1.0);
        let profile = ModelProfile {
            price_in: 0.0,
            price_out: 0.0,
            fee: 0.0,
            ttft_s: 0.5,
            tokens_per_s: 1.0,
            concurrency: 1,
        };
        let priors = Priors {
            quality: 0.5,
            output_tokens: 0.0,
        };
        let live = LiveStats::default();
        // Errors of ±4 s on 10 s predictions (the short one first, so the ratio stays 1):
        // σ = 4.
        for (i, took) in [6.0, 14.0].into_iter().enumerate() {
            let now = 100.0 * i as f64;
            live.begin(Some(10.0), 1, now).unwrap();
            live.end("m", Some(took), Some(10.0), 0.5, 1, now + took)
                .unwrap();
        }
        // 26 s of queue ahead: L = 26.5 s under τ = 30 s. Its spread: 4 s of the requests'
        // own errors, and the ratio's (an average of errors of 4 s on 10 s, with the config's
        // smoothing of 0.1: relative variance 0.1/1.9 · 0.16) on 26.5 s, about 2.4 s;
        // together 4.7 s.
        live.begin(Some(26.0), 1, 1000.0).unwrap();
        let arm = ArmView {
            stats: &stats,
            profile: &profile,
            priors: &priors,
            prior_log_length: priors.log_length(),
            live: &live,
            now_s: 1000.0,
        };
        let x = layout.pad(&[1.0]);
        let assess_with = |config: &PolicyConfig| assess(config, layout, &arm, &x, 0.0, 1.0);
        let plain = assess_with(&config);
        assert!((plain.latency_s - 26.5).abs() < 1e-9, "{}", plain.latency_s);
        assert!(
            plain.latency_sd_s > 4.6 && plain.latency_sd_s < 4.8,
            "{}",
            plain.latency_sd_s
        );
        assert!(!plain.excluded);
        config.tau_margin_sd = 0.5;
        assert!(!assess_with(&config).excluded);
        config.tau_margin_sd = 1.0;
        let margined = assess_with(&config);
        assert!(margined.excluded);
        // The margin decides exclusion only: the estimate and its score are unchanged.
        assert_eq!(margined.score, plain.score);
        assert_eq!(margined.latency_s, plain.latency_s);
    }

    #[test]
    fn all_excluded_takes_the_fastest() {
        let a = [
            scored(0.5, 40.0, true),
            scored(0.1, 35.0, true),
            scored(0.9, 50.0, true),
        ];
        assert_eq!(choose(&a), Some(1));
        assert_eq!(choose(&[]), None);
    }
}
