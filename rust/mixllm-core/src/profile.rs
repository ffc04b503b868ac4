//! What the operator tells us about a model: its prices and its speed.

use crate::error::{ensure_finite, ensure_non_negative, Error, Result};

/// A model's prices and serving characteristics. Prices are in USD per million tokens; a price of
/// zero is valid (self-hosted models).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelProfile {
    /// USD per million prompt tokens.
    pub price_in: f64,
    /// USD per million output tokens.
    pub price_out: f64,
    /// USD charged per request on top of the token prices.
    pub fee: f64,
    /// Seconds from sending a request to the first output token, when nothing is queued.
    pub ttft_s: f64,
    /// Output tokens per second once generation has started.
    pub tokens_per_s: f64,
    /// Requests the deployment serves at once; more wait in a queue.
    pub concurrency: u32,
}

impl ModelProfile {
    /// The per-request fee of a model whose operator states none.
    pub const DEFAULT_FEE: f64 = 0.0;

    /// Checks every field, naming the first that is out of range.
    pub fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("price_in", self.price_in),
            ("price_out", self.price_out),
            ("fee", self.fee),
            ("ttft_s", self.ttft_s),
        ] {
            ensure_non_negative(field, value)?;
        }
        ensure_finite("tokens_per_s", self.tokens_per_s)?;
        if self.tokens_per_s <= 0.0 {
            return Err(Error::InvalidValue(format!(
                "tokens_per_s must be > 0, got {}",
                self.tokens_per_s
            )));
        }
        if self.concurrency == 0 {
            return Err(Error::InvalidValue(
                "concurrency must be >= 1, got 0".to_string(),
            ));
        }
        Ok(())
    }

    /// Expected dollar cost of one request.
    #[inline]
    pub fn cost_usd(&self, prompt_tokens: f64, output_tokens: f64) -> f64 {
        (prompt_tokens * self.price_in + output_tokens * self.price_out) / 1e6 + self.fee
    }
}

/// What an arm believes before it has seen any data: the heads predict these until they learn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Priors {
    /// Predicted quality of a model with no observations.
    pub quality: f64,
    /// Predicted output length (tokens) of a model with no observations.
    pub output_tokens: f64,
}

impl Priors {
    pub fn validate(&self) -> Result<()> {
        ensure_finite("prior_quality", self.quality)?;
        ensure_non_negative("prior_output_tokens", self.output_tokens)
    }

    /// The length head works on log(1 + tokens); this is its offset.
    #[inline]
    pub fn log_length(&self) -> f64 {
        self.output_tokens.ln_1p()
    }
}

impl Default for Priors {
    fn default() -> Self {
        Self {
            quality: 0.5,
            output_tokens: 256.0,
        }
    }
}
