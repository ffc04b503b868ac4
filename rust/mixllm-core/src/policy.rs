//! The live pool of arms and the operations on it.
//!
//! Concurrency design: readers never wait for writers.
//! - The pool (which models exist, in which order) is an immutable [`Pool`] behind an
//!   [`ArcSwap`]; adding or removing a model builds a new pool under `pool_lock` and publishes it.
//! - Each model's learned statistics are an immutable [`ArmStats`] behind its own `ArcSwap`. An
//!   update takes that model's ledger mutex (so updates to one model are serialised and none is
//!   lost), builds the next snapshot from the current one and publishes it with one atomic store.
//!   A decision loads each snapshot wait-free and so sees every model either before or after an
//!   update, never half of one. Updates to different models proceed in parallel.
//! - Requests in flight and service times are atomics ([`LiveStats`]).
//!
//! A decision holds at most two snapshot guards at a time (the pool and one arm), staying within
//! arc-swap's fast per-thread debt slots.
//!
//! Measured costs (criterion, `cargo bench -p mixllm-core`, AMD EPYC, 2 cores, K = 11): a
//! decision at d = 64 takes 2.8 µs alone and 3.0 µs while another thread applies updates to the
//! same arms as fast as it can: readers pay only for fetching the new
//! snapshots' memory, never for a lock. An update took 1.6 µs at d = 64 and 39 µs at d = 384,
//! most of it writing the new A⁻¹ (the copy-on-write that lets readers go on unhindered), before
//! it also checked the new inverses against [`crate::bounds`] (so that whatever it accepts, a
//! save of it loads). The rank-1 kernel does that check as it writes each entry, so it adds a
//! comparison per entry rather than another read of each inverse.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::arm::{self, ArmLedger, ArmStats, Observation};
use crate::config::PolicyConfig;
use crate::error::{
    ensure_all_finite, ensure_finite, ensure_len, ensure_non_negative, Error, Result,
};
use crate::kernels::{dot4, quadratic_form, quadratic_weights_into, SymLayout};
use crate::live::{ratio_of, LiveStats};
use crate::profile::{ModelProfile, Priors};
use crate::scoring::{assess, assess_with_variance, choose, rank, ArmView, Assessment};

/// Inputs larger than this in magnitude are rejected: their squares would overflow A.
const MAX_MAGNITUDE: f64 = 1e100;

/// Most models a pool holds: a saved state announcing more is refused before it is read, so
/// `add_model` refuses more too.
pub const MAX_MODELS: usize = 4096;

/// Longest model name, in bytes of UTF-8: a saved state's names are bounded before they are
/// read, so `add_model` refuses longer ones too.
pub const MAX_MODEL_NAME_BYTES: usize = 4096;

/// Every row of a row-major batch (whole rows by construction) is finite and not huge. The
/// row is named only when it fails, so a valid batch builds no message per row.
fn check_rows(xs: &[f64], dim: usize) -> Result<()> {
    for (row, x) in xs.chunks_exact(dim).enumerate() {
        let valid = |what: &str| ensure_all_finite(what, x).and_then(|()| ensure_not_huge(what, x));
        if valid("X").is_err() {
            valid(&format!("X row {row}"))?;
        }
    }
    Ok(())
}

/// One model in the pool.
#[derive(Debug)]
pub(crate) struct ArmSlot {
    pub(crate) name: Arc<str>,
    /// Unique among every arm this process creates: tells a re-added model's fresh arm from
    /// the arm a pending decision was made with.
    pub(crate) generation: u64,
    pub(crate) priors: Priors,
    /// `priors.log_length()`, computed once: every decision needs it for every model.
    pub(crate) prior_log_length: f64,
    pub(crate) profile: ArcSwap<ModelProfile>,
    pub(crate) stats: ArcSwap<ArmStats>,
    /// The writer lock of this arm, guarding the exact statistics behind `stats`.
    pub(crate) ledger: Mutex<ArmLedger>,
    pub(crate) live: LiveStats,
}

impl ArmSlot {
    /// A new arm (a fresh generation) with the given state.
    pub(crate) fn new(
        name: &str,
        priors: Priors,
        profile: ModelProfile,
        stats: ArmStats,
        ledger: ArmLedger,
        live: LiveStats,
    ) -> Self {
        Self {
            name: Arc::from(name),
            generation: next_generation(),
            priors,
            prior_log_length: priors.log_length(),
            profile: ArcSwap::from_pointee(profile),
            stats: ArcSwap::from_pointee(stats),
            ledger: Mutex::new(ledger),
            live,
        }
    }

    /// What a decision at `now_s` reads of this arm, given snapshots of its statistics and
    /// profile.
    fn view<'a>(
        &'a self,
        stats: &'a ArmStats,
        profile: &'a ModelProfile,
        now_s: f64,
    ) -> ArmView<'a> {
        ArmView {
            stats,
            profile,
            priors: &self.priors,
            prior_log_length: self.prior_log_length,
            live: &self.live,
            now_s,
        }
    }
}

/// An immutable list of the models, in the order decisions report them.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    pub(crate) slots: Vec<Arc<ArmSlot>>,
    names: Arc<[Arc<str>]>,
    index: HashMap<Arc<str>, usize>,
}

impl Pool {
    pub(crate) fn new(slots: Vec<Arc<ArmSlot>>) -> Self {
        let names: Arc<[Arc<str>]> = slots.iter().map(|s| s.name.clone()).collect();
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        Self {
            slots,
            names,
            index,
        }
    }

    fn get(&self, name: &str) -> Result<&Arc<ArmSlot>> {
        self.index
            .get(name)
            .map(|&i| &self.slots[i])
            .ok_or_else(|| Error::UnknownModel(name.to_string()))
    }
}

/// A new arm generation, unique in this process.
fn next_generation() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Below this many rows per thread, starting a thread costs more than it saves.
const MIN_ROWS_PER_THREAD: usize = 1024;

/// One arm as a batch of decisions reads it: the slot (for priors and live state) and the
/// snapshots of its statistics and profile taken at the start of the batch.
type ArmSnapshot = (Arc<ArmSlot>, Arc<ArmStats>, Arc<ModelProfile>);

/// Rejects values so large that their squares would overflow A or b.
fn ensure_not_huge(what: &str, values: &[f64]) -> Result<()> {
    match values.iter().position(|v| v.abs() > MAX_MAGNITUDE) {
        None => Ok(()),
        Some(i) => Err(Error::InvalidValue(format!(
            "{what} value {} at position {i} is too large (|value| must be <= {MAX_MAGNITUDE:e})",
            values[i]
        ))),
    }
}

/// The outcome of one decision: the chosen model and, per model, why.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Position of the chosen model in `models`.
    pub index: usize,
    /// The pool at the time of the decision.
    pub models: Arc<[Arc<str>]>,
    /// One assessment per model, in pool order.
    pub assessments: Vec<Assessment>,
}

impl Decision {
    pub fn model(&self) -> &str {
        &self.models[self.index]
    }

    /// The models within the request's limits, best first by the decision's own rule: the
    /// chosen one, then the order to fall back in ([`crate::scoring::rank`]).
    pub fn ranking(&self) -> Vec<usize> {
        rank(&self.assessments)
    }
}

/// One request's limits on the models it may go to. [`Limits::NONE`] leaves the pool whole.
#[derive(Debug, Clone, Copy)]
pub struct Limits<'a> {
    /// The models it may go to (names not in the pool are ignored); `None`: every model.
    pub models: Option<&'a [String]>,
    /// A ceiling on the predicted cost, in USD (`∞`: none).
    pub max_cost_usd: f64,
    /// A tolerance on the predicted latency, in seconds (`∞`: none; τ still applies).
    pub max_latency_s: f64,
}

impl Limits<'_> {
    pub const NONE: Limits<'static> = Limits {
        models: None,
        max_cost_usd: f64::INFINITY,
        max_latency_s: f64::INFINITY,
    };

    fn validate(&self) -> Result<()> {
        if self.max_cost_usd.is_nan() || self.max_cost_usd < 0.0 {
            return Err(Error::InvalidValue(format!(
                "max_cost_usd must be >= 0 (USD; inf for no ceiling), got {}",
                self.max_cost_usd
            )));
        }
        if self.max_latency_s.is_nan() || self.max_latency_s <= 0.0 {
            return Err(Error::InvalidValue(format!(
                "max_latency_s must be > 0 (seconds; inf for no tolerance), got {}",
                self.max_latency_s
            )));
        }
        if self.models.is_some_and(<[String]>::is_empty) {
            return Err(Error::InvalidValue(
                "models must name at least one model".to_string(),
            ));
        }
        Ok(())
    }

    /// Marks each assessment eligible or not (`index` maps the pool's names to positions).
    /// Allocates nothing: the marks are the assessments' own fields.
    fn apply(&self, index: &HashMap<Arc<str>, usize>, assessments: &mut [Assessment]) {
        if let Some(models) = self.models {
            for a in assessments.iter_mut() {
                a.eligible = false;
            }
            for name in models {
                if let Some(&i) = index.get(name.as_str()) {
                    assessments[i].eligible = true;
                }
            }
        }
        for a in assessments.iter_mut() {
            a.eligible &= a.cost_usd <= self.max_cost_usd && a.latency_s <= self.max_latency_s;
        }
    }

    /// Why no model is eligible, naming the limit that left none (built only on that path).
    fn none_within(&self, names: &[Arc<str>], assessments: &[Assessment]) -> Error {
        let allowed = |i: &usize| {
            self.models
                .is_none_or(|models| models.iter().any(|m| **m == *names[*i]))
        };
        let in_pool: Vec<usize> = (0..names.len()).filter(allowed).collect();
        if in_pool.is_empty() {
            let listed = self.models.unwrap_or_default();
            return Error::NoneAllowed(format!("{listed:?}"));
        }
        let cheapest = in_pool
            .iter()
            .copied()
            .min_by(|&i, &j| assessments[i].cost_usd.total_cmp(&assessments[j].cost_usd))
            .unwrap_or(in_pool[0]);
        if assessments[cheapest].cost_usd > self.max_cost_usd {
            return Error::NoModelWithinLimits(format!(
                "no allowed model is predicted to cost at most max_cost_usd = {} USD (the \
                 cheapest, {:?}, is predicted at {:e} USD)",
                self.max_cost_usd, &*names[cheapest], assessments[cheapest].cost_usd
            ));
        }
        let fastest = in_pool
            .iter()
            .copied()
            .filter(|&i| assessments[i].cost_usd <= self.max_cost_usd)
            .min_by(|&i, &j| {
                assessments[i]
                    .latency_s
                    .total_cmp(&assessments[j].latency_s)
            })
            .unwrap_or(cheapest);
        Error::NoModelWithinLimits(format!(
            "no allowed model within max_cost_usd is predicted to answer within max_latency_s = \
             {} s (the fastest, {:?}, is predicted at {:.3} s)",
            self.max_latency_s, &*names[fastest], assessments[fastest].latency_s
        ))
    }
}

/// Everything known about one arm, copied out for inspection and persistence.
#[derive(Debug, Clone)]
pub struct ArmReport {
    pub name: Arc<str>,
    pub profile: ModelProfile,
    pub priors: Priors,
    pub stats: Arc<ArmStats>,
    pub ledger: ArmLedger,
    pub in_flight: u64,
    /// When the predicted work in flight would be done, on the clock `begin` and `end` were
    /// given (−∞ before the first request).
    pub clears_at_s: f64,
    /// The moving averages of predicted and observed service behind the service ratio
    /// (`LiveStats::service_means_s`; saved).
    pub service_means_s: Option<(f64, f64)>,
    /// The moving average of the squared error of the service estimates (each prediction
    /// scaled by the service ratio as it stood), in s², behind each latency estimate's spread
    /// (`LiveStats::service_mse_s2`; saved).
    pub service_mse_s2: Option<f64>,
    pub mean_service_s: Option<f64>,
    pub completed: u64,
}

impl ArmReport {
    /// How much longer than predicted the model's requests have been taking
    /// (`LiveStats::service_ratio`), from the same reading as `service_means_s`.
    pub fn service_ratio(&self) -> f64 {
        ratio_of(self.service_means_s)
    }

    /// The length head's A⁻¹: its own, or the quality head's while the two share A.
    pub fn length_a_inv(&self) -> &[f64] {
        self.ledger
            .length
            .as_ref()
            .map_or(&self.stats.a_inv, |own| &own.a_inv)
    }
}

/// Per-row or shared value of a batch argument.
#[derive(Debug, Clone, Copy)]
pub enum PerRow<'a> {
    Same(f64),
    Each(&'a [f64]),
}

impl PerRow<'_> {
    #[inline]
    fn at(&self, row: usize) -> f64 {
        match self {
            PerRow::Same(v) => *v,
            PerRow::Each(vs) => vs[row],
        }
    }

    fn values(&self) -> &[f64] {
        match self {
            PerRow::Same(v) => std::slice::from_ref(v),
            PerRow::Each(vs) => vs,
        }
    }
}

/// The router's decision core: a live pool of arms with a LinUCB-style decision rule.
#[derive(Debug)]
pub struct Policy {
    config: PolicyConfig,
    pool: ArcSwap<Pool>,
    pool_lock: Mutex<()>,
}

impl Policy {
    pub fn new(config: PolicyConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            pool: ArcSwap::from_pointee(Pool::default()),
            pool_lock: Mutex::new(()),
        })
    }

    pub(crate) fn from_parts(config: PolicyConfig, slots: Vec<Arc<ArmSlot>>) -> Self {
        Self {
            config,
            pool: ArcSwap::from_pointee(Pool::new(slots)),
            pool_lock: Mutex::new(()),
        }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Names of the models, in decision order.
    pub fn models(&self) -> Arc<[Arc<str>]> {
        self.pool.load().names.clone()
    }

    pub(crate) fn slots(&self) -> Vec<Arc<ArmSlot>> {
        self.pool.load().slots.clone()
    }

    /// Adds a model with a fresh arm (A = ridge·I, heads at the priors). Whatever it accepts,
    /// a save of the policy loads: the name (1 to [`MAX_MODEL_NAME_BYTES`] bytes) and the pool
    /// (at most [`MAX_MODELS`] models) are held to the loader's limits.
    pub fn add_model(&self, name: &str, profile: ModelProfile, priors: Priors) -> Result<()> {
        if name.is_empty() {
            return Err(Error::InvalidValue(
                "model name must not be empty".to_string(),
            ));
        }
        if name.len() > MAX_MODEL_NAME_BYTES {
            return Err(Error::InvalidValue(format!(
                "model name is {} bytes long (UTF-8); the limit is {MAX_MODEL_NAME_BYTES} bytes",
                name.len()
            )));
        }
        profile.validate()?;
        priors.validate()?;
        let dim = self.config.dim;
        let slot = Arc::new(ArmSlot::new(
            name,
            priors,
            profile,
            ArmStats::prior(dim, self.config.ridge),
            ArmLedger::prior(dim, self.config.ridge, self.config.length_ridge),
            LiveStats::default(),
        ));
        let _guard = self.pool_lock.lock();
        let current = self.pool.load();
        if current.index.contains_key(name) {
            return Err(Error::DuplicateModel(name.to_string()));
        }
        if current.slots.len() >= MAX_MODELS {
            return Err(Error::InvalidValue(format!(
                "the pool already holds {} models, the limit is {MAX_MODELS}",
                current.slots.len()
            )));
        }
        let mut slots = current.slots.clone();
        slots.push(slot);
        self.pool.store(Arc::new(Pool::new(slots)));
        Ok(())
    }

    /// Removes a model. Decisions already made keep their names; later feedback for the model
    /// is rejected with [`Error::UnknownModel`] and touches nothing else.
    pub fn remove_model(&self, name: &str) -> Result<()> {
        let _guard = self.pool_lock.lock();
        let current = self.pool.load();
        let position = *current
            .index
            .get(name)
            .ok_or_else(|| Error::UnknownModel(name.to_string()))?;
        let mut slots = current.slots.clone();
        slots.remove(position);
        self.pool.store(Arc::new(Pool::new(slots)));
        Ok(())
    }

    pub fn profile(&self, name: &str) -> Result<ModelProfile> {
        Ok(**self.pool.load().get(name)?.profile.load())
    }

    /// Changes a model's profile at `now_s`; `change` edits a copy, which is validated before it
    /// is published. Serialised with that model's other writers. A new concurrency spreads the
    /// queue's remaining work over the new number of slots ([`LiveStats::resize`]); a `begin`
    /// or `end` racing the change counts its share by one number or the other, an error that
    /// lasts until the queue next empties.
    pub fn update_profile(
        &self,
        name: &str,
        change: impl FnOnce(&mut ModelProfile),
        now_s: f64,
    ) -> Result<()> {
        ensure_finite("now_s", now_s)?;
        let slot = self.pool.load().get(name)?.clone();
        let _writer = slot.ledger.lock();
        let before = **slot.profile.load();
        let mut profile = before;
        change(&mut profile);
        profile.validate()?;
        slot.profile.store(Arc::new(profile));
        if profile.concurrency != before.concurrency {
            slot.live
                .resize(before.concurrency, profile.concurrency, now_s)?;
        }
        Ok(())
    }

    fn check_context(&self, what: &str, x: &[f64]) -> Result<()> {
        ensure_len(what, x, self.config.dim)?;
        ensure_all_finite(what, x)?;
        ensure_not_huge(what, x)
    }

    fn check_decision_args(prompt_tokens: &[f64], willingness_to_pay: &[f64]) -> Result<()> {
        for &p in prompt_tokens {
            ensure_non_negative("prompt_tokens", p)?;
        }
        for &w in willingness_to_pay {
            if w.is_nan() || w <= 0.0 {
                return Err(Error::InvalidValue(format!(
                    "willingness_to_pay must be > 0 (USD per quality point; inf ignores cost), \
                     got {w}"
                )));
            }
        }
        Ok(())
    }

    /// Picks a model for context `x`, with the queues as they are at `now_s` (seconds on the
    /// clock `begin` and `end` are given; [`crate::clock::now_s`] unless the caller keeps its
    /// own).
    pub fn decide(
        &self,
        x: &[f64],
        prompt_tokens: f64,
        willingness_to_pay: f64,
        now_s: f64,
    ) -> Result<Decision> {
        self.decide_within(x, prompt_tokens, willingness_to_pay, now_s, &Limits::NONE)
    }

    /// [`Self::decide`] within one request's `limits`: only the models within all of them are
    /// eligible, and the decision picks among those by the usual rule (the best admissible
    /// score, else the smallest latency). With none eligible it is an error naming the limit:
    /// [`Error::NoneAllowed`] when no allowed model is in the pool, else
    /// [`Error::NoModelWithinLimits`] naming the cost ceiling or the latency tolerance.
    pub fn decide_within(
        &self,
        x: &[f64],
        prompt_tokens: f64,
        willingness_to_pay: f64,
        now_s: f64,
        limits: &Limits<'_>,
    ) -> Result<Decision> {
        self.check_context("x", x)?;
        Self::check_decision_args(&[prompt_tokens], &[willingness_to_pay])?;
        ensure_finite("now_s", now_s)?;
        limits.validate()?;
        let layout = SymLayout::new(self.config.dim);
        let x = &layout.pad(x);
        let pool = self.pool.load();
        let mut assessments: Vec<Assessment> = pool
            .slots
            .iter()
            .map(|slot| {
                let stats = slot.stats.load();
                let profile = slot.profile.load();
                let view = slot.view(&stats, &profile, now_s);
                assess(
                    &self.config,
                    layout,
                    &view,
                    x,
                    prompt_tokens,
                    willingness_to_pay,
                )
            })
            .collect();
        if pool.slots.is_empty() {
            return Err(Error::EmptyPool);
        }
        limits.apply(&pool.index, &mut assessments);
        let index =
            choose(&assessments).ok_or_else(|| limits.none_within(&pool.names, &assessments))?;
        Ok(Decision {
            index,
            models: pool.names.clone(),
            assessments,
        })
    }

    /// Picks a model for each row of `xs` (row-major, `dim` columns) into `out`; returns the pool
    /// the indices refer to. All arms are read from one snapshot taken at the start, the queues
    /// as they are at `now_s` (as in [`Self::decide`]). Large batches are split over up to
    /// `threads` threads.
    pub fn decide_batch(
        &self,
        xs: &[f64],
        prompt_tokens: PerRow<'_>,
        willingness_to_pay: PerRow<'_>,
        now_s: f64,
        out: &mut [usize],
        threads: usize,
    ) -> Result<Arc<[Arc<str>]>> {
        let dim = self.config.dim;
        if xs.len() != out.len() * dim {
            return Err(Error::Dimension {
                what: "X".to_string(),
                expected: format!("{} values ({} rows × {dim})", out.len() * dim, out.len()),
                got: format!("{} values", xs.len()),
            });
        }
        for (name, arg) in [
            ("prompt_tokens", &prompt_tokens),
            ("willingness_to_pay", &willingness_to_pay),
        ] {
            if let PerRow::Each(values) = arg {
                if values.len() != out.len() {
                    return Err(Error::Dimension {
                        what: name.to_string(),
                        expected: format!("one value per row ({})", out.len()),
                        got: format!("{} values", values.len()),
                    });
                }
            }
        }
        check_rows(xs, dim)?;
        Self::check_decision_args(prompt_tokens.values(), willingness_to_pay.values())?;
        ensure_finite("now_s", now_s)?;

        let pool = self.pool.load_full();
        if pool.slots.is_empty() {
            return Err(Error::EmptyPool);
        }
        let arms: Vec<ArmSnapshot> = pool
            .slots
            .iter()
            .map(|s| (s.clone(), s.stats.load_full(), s.profile.load_full()))
            .collect();
        let views: Vec<ArmView<'_>> = arms
            .iter()
            .map(|(slot, stats, profile)| slot.view(stats, profile, now_s))
            .collect();
        let rows = out.len();
        let threads = threads.clamp(1, rows.div_ceil(MIN_ROWS_PER_THREAD).max(1));
        if threads == 1 {
            self.decide_rows(&views, xs, prompt_tokens, willingness_to_pay, 0, out);
        } else {
            let rows_per_thread = rows.div_ceil(threads);
            std::thread::scope(|scope| {
                for (part, chunk) in out.chunks_mut(rows_per_thread).enumerate() {
                    let first_row = part * rows_per_thread;
                    let part_xs = &xs[first_row * dim..(first_row + chunk.len()) * dim];
                    let views = &views;
                    scope.spawn(move || {
                        self.decide_rows(
                            views,
                            part_xs,
                            prompt_tokens,
                            willingness_to_pay,
                            first_row,
                            chunk,
                        )
                    });
                }
            });
        }
        Ok(pool.names.clone())
    }

    /// The loop of [`Self::decide_batch`] over validated rows; `first_row` is the index of the
    /// first of them in the whole batch (for per-row arguments). Rows go in blocks of four, so
    /// each model's A⁻¹ is streamed once per four queries ([`dot4`]); the variances can differ
    /// from single decisions' in the last bits (a different summation order), nothing more.
    /// The rows of a last, partial block are scored as single decisions are
    /// ([`quadratic_form`]): building the weights costs more than it saves below four rows.
    fn decide_rows(
        &self,
        views: &[ArmView<'_>],
        xs: &[f64],
        prompt_tokens: PerRow<'_>,
        willingness_to_pay: PerRow<'_>,
        first_row: usize,
        out: &mut [usize],
    ) {
        const BLOCK: usize = 4;
        let dim = self.config.dim;
        let layout = SymLayout::new(dim);
        let mut x = vec![vec![0.0; layout.stride()]; BLOCK];
        let mut weights = if out.len() >= BLOCK {
            vec![vec![0.0; layout.len()]; BLOCK]
        } else {
            Vec::new()
        };
        let mut assessments: Vec<Vec<Assessment>> = (0..BLOCK)
            .map(|_| Vec::with_capacity(views.len()))
            .collect();
        for (block, chosen) in out.chunks_mut(BLOCK).enumerate() {
            let start = block * BLOCK;
            let count = chosen.len();
            for r in 0..count {
                x[r][..dim].copy_from_slice(&xs[(start + r) * dim..(start + r + 1) * dim]);
                if count == BLOCK {
                    quadratic_weights_into(layout, &x[r], &mut weights[r]);
                }
                assessments[r].clear();
            }
            for view in views {
                let stats = view.stats;
                let variances = if count == BLOCK {
                    dot4(
                        &stats.a_inv,
                        [&weights[0], &weights[1], &weights[2], &weights[3]],
                    )
                } else {
                    std::array::from_fn(|r| {
                        if r < count {
                            quadratic_form(layout, &stats.a_inv, &x[r])
                        } else {
                            0.0
                        }
                    })
                };
                for r in 0..count {
                    let row = first_row + start + r;
                    assessments[r].push(assess_with_variance(
                        &self.config,
                        view,
                        &x[r],
                        variances[r],
                        prompt_tokens.at(row),
                        willingness_to_pay.at(row),
                    ));
                }
            }
            for (r, choice) in chosen.iter_mut().enumerate() {
                // The pool is not empty (checked by the caller), so there is always a choice.
                *choice = choose(&assessments[r]).unwrap_or(0);
            }
        }
    }

    fn check_observation(&self, obs: &Observation<'_>) -> Result<()> {
        self.check_context("x", obs.x)?;
        ensure_finite("quality", obs.quality)?;
        ensure_not_huge("quality", &[obs.quality])?;
        if let Some(tokens) = obs.output_tokens {
            ensure_non_negative("output_tokens", tokens)?;
            ensure_not_huge("output_tokens", &[tokens])?;
        }
        ensure_finite("weight", obs.weight)?;
        ensure_not_huge("weight", &[obs.weight])?;
        if obs.weight <= 0.0 {
            return Err(Error::InvalidValue(format!(
                "weight must be > 0, got {}",
                obs.weight
            )));
        }
        Ok(())
    }

    /// Learns one observation of model `name` (rank-1 update). A rejected call changes nothing.
    pub fn update(&self, name: &str, obs: &Observation<'_>) -> Result<()> {
        self.check_observation(obs)?;
        let slot = self.pool.load().get(name)?.clone();
        let mut ledger = slot.ledger.lock();
        let current = slot.stats.load_full();
        let next = arm::learn(
            &current,
            &mut ledger,
            &slot.priors,
            obs,
            self.config.refactor_every,
        )?;
        slot.stats.store(Arc::new(next));
        Ok(())
    }

    /// Teaches model `name`'s length head that its answer on context `x` was `output_tokens`
    /// long, with weight `weight`, leaving its quality head as it is ([`arm::learn_length`]):
    /// what a request's completion tells before any feedback does. A rejected call changes
    /// nothing.
    pub fn update_length(
        &self,
        name: &str,
        x: &[f64],
        output_tokens: f64,
        weight: f64,
    ) -> Result<()> {
        self.check_context("x", x)?;
        ensure_non_negative("output_tokens", output_tokens)?;
        ensure_not_huge("output_tokens", &[output_tokens])?;
        ensure_finite("weight", weight)?;
        ensure_not_huge("weight", &[weight])?;
        if weight <= 0.0 {
            return Err(Error::InvalidValue(format!(
                "weight must be > 0, got {weight}"
            )));
        }
        let slot = self.pool.load().get(name)?.clone();
        let mut ledger = slot.ledger.lock();
        let current = slot.stats.load_full();
        let next = arm::learn_length(
            &current,
            &mut ledger,
            &slot.priors,
            x,
            output_tokens,
            weight,
            self.config.refactor_every,
        )?;
        slot.stats.store(Arc::new(next));
        Ok(())
    }

    /// Replaces model `name`'s arm with an exact ridge fit on a batch (rows of `xs`). A NaN in
    /// `output_tokens` marks a row whose length was not seen: the length head skips it.
    pub fn fit(
        &self,
        name: &str,
        xs: &[f64],
        quality: &[f64],
        output_tokens: Option<&[f64]>,
        weights: Option<&[f64]>,
    ) -> Result<()> {
        let dim = self.config.dim;
        let n = quality.len();
        if xs.len() != n * dim {
            return Err(Error::Dimension {
                what: "X".to_string(),
                expected: format!("{} values ({n} rows × {dim}, one row per quality)", n * dim),
                got: format!("{} values", xs.len()),
            });
        }
        check_rows(xs, dim)?;
        ensure_all_finite("quality", quality)?;
        ensure_not_huge("quality", quality)?;
        if let Some(tokens) = output_tokens {
            ensure_len("output_tokens", tokens, n)?;
            // NaN marks a row whose length was not seen; every other value must be a count. The
            // row is named only when it fails, so a valid batch builds no message per row.
            let valid = |what: &str, t: f64| {
                ensure_non_negative(what, t).and_then(|()| ensure_not_huge(what, &[t]))
            };
            for (row, &t) in tokens.iter().enumerate().filter(|(_, t)| !t.is_nan()) {
                if valid("output_tokens", t).is_err() {
                    valid(&format!("output_tokens row {row}"), t)?;
                }
            }
        }
        if let Some(ws) = weights {
            ensure_len("weights", ws, n)?;
            ensure_all_finite("weights", ws)?;
            ensure_not_huge("weights", ws)?;
            for &w in ws {
                ensure_non_negative("weights", w)?;
            }
        }
        let slot = self.pool.load().get(name)?.clone();
        let (ledger, stats) = arm::fit(
            &self.config,
            &slot.priors,
            xs,
            quality,
            output_tokens,
            weights,
        )?;
        let mut current = slot.ledger.lock();
        *current = ledger;
        slot.stats.store(Arc::new(stats));
        Ok(())
    }

    /// The generation of model `name`'s arm: it changes when the model is removed and added
    /// again (or the policy is loaded), never otherwise.
    pub fn generation(&self, name: &str) -> Result<u64> {
        Ok(self.pool.load().get(name)?.generation)
    }

    /// A request was sent to model `name` at `now_s`, predicted to take `predicted_service_s`
    /// seconds once served (its assessment's `service_s`; `None`: the model's observed mean):
    /// its work lengthens the wait predicted for the requests after it
    /// (`LiveStats::predicted_wait_s`).
    pub fn begin(&self, name: &str, predicted_service_s: Option<f64>, now_s: f64) -> Result<()> {
        let (slot, concurrency) = self.queue_of(name)?;
        slot.live.begin(predicted_service_s, concurrency, now_s)
    }

    /// Model `name`'s arm (held past the pool snapshot) and its current number of slots: what
    /// `begin`, `end` and `cancel` need.
    fn queue_of(&self, name: &str) -> Result<(Arc<ArmSlot>, u32)> {
        let slot = self.pool.load().get(name)?.clone();
        let concurrency = slot.profile.load().concurrency;
        Ok((slot, concurrency))
    }

    /// A request to model `name` finished at `now_s` after `latency_s` seconds of service
    /// (`None`: its service time is unknown); `predicted_service_s` is what its `begin` was
    /// given.
    pub fn end(
        &self,
        name: &str,
        latency_s: Option<f64>,
        predicted_service_s: Option<f64>,
        now_s: f64,
    ) -> Result<()> {
        let (slot, concurrency) = self.queue_of(name)?;
        slot.live.end(
            name,
            latency_s,
            predicted_service_s,
            self.config.service_time_smoothing,
            concurrency,
            now_s,
        )
    }

    /// A request to model `name` was withdrawn at `now_s` before it was served;
    /// `predicted_service_s` is what its `begin` was given.
    pub fn cancel(&self, name: &str, predicted_service_s: Option<f64>, now_s: f64) -> Result<()> {
        let (slot, concurrency) = self.queue_of(name)?;
        slot.live
            .cancel(name, predicted_service_s, concurrency, now_s)
    }

    /// The wait predicted at `now_s` for a request sent to model `name`, before its service.
    pub fn predicted_wait_s(&self, name: &str, now_s: f64) -> Result<f64> {
        ensure_finite("now_s", now_s)?;
        let slot = self.pool.load().get(name)?.clone();
        let profile = slot.profile.load();
        Ok(slot.live.predicted_wait_s(&profile, now_s))
    }

    /// The load other routers sharing model `name`'s endpoint put on it: `in_flight` requests
    /// and `work_s` seconds of predicted work per slot (see [`LiveStats::set_remote`]).
    pub fn set_remote_load(&self, name: &str, in_flight: u64, work_s: f64) -> Result<()> {
        self.pool
            .load()
            .get(name)?
            .live
            .set_remote(in_flight, work_s)
    }

    /// Requests to model `name` in flight now.
    pub fn in_flight(&self, name: &str) -> Result<u64> {
        Ok(self.pool.load().get(name)?.live.in_flight())
    }

    /// A consistent copy of everything known about model `name`.
    pub fn report(&self, name: &str) -> Result<ArmReport> {
        let slot = self.pool.load().get(name)?.clone();
        Ok(report_of(&slot))
    }
}

pub(crate) fn report_of(slot: &ArmSlot) -> ArmReport {
    // Holding the writer lock makes the ledger and the snapshot belong to the same update.
    let ledger = slot.ledger.lock();
    ArmReport {
        name: slot.name.clone(),
        profile: **slot.profile.load(),
        priors: slot.priors,
        stats: slot.stats.load_full(),
        ledger: ledger.clone(),
        in_flight: slot.live.in_flight(),
        clears_at_s: slot.live.clears_at_s(),
        service_means_s: slot.live.service_means_s(),
        service_mse_s2: slot.live.service_mse_s2(),
        mean_service_s: slot.live.mean_service_s(),
        completed: slot.live.completed(),
    }
}
