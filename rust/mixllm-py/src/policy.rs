//! `mixllm.Policy`: the decision core, shared across threads. Every call copies its inputs out of
//! Python objects, releases the GIL for the work, and maps core errors on the way back.

use std::path::PathBuf;
use std::sync::OnceLock;

use mixllm_core::kernels::SymLayout;
use mixllm_core::{
    clock, persist, Limits, ModelProfile, Observation, PerRow, Policy, PolicyConfig, Priors,
};
use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyType};

use crate::args::{model_names, names_one_of, optional_dim, state_bytes, ModelName, StatePath};
use crate::arrays::{
    given, integer, matrix, optional_real, real, scalar_or_vector, vector, ScalarOrVector,
};
use crate::decision::PyDecision;
use crate::errors::{invalid_input, to_py};

/// The router's decision core: a live pool of models ("arms"), each with a ridge quality head, a
/// ridge log-length head and LinUCB statistics, and a latency-aware decision rule.
///
/// Every method raises a `MixllmError` for a bad argument and changes nothing: a model name that
/// is not a `str` or a path that is not a `str`/`os.PathLike` is an `InputTypeError`; a name
/// that is not valid Unicode (a lone surrogate), an integer too large to convert, a value out of
/// range an `InvalidInputError`.
#[pyclass(name = "Policy", module = "mixllm", frozen)]
pub struct PyPolicy {
    inner: Policy,
}

fn concurrency_from(value: &Bound<'_, PyAny>) -> PyResult<u32> {
    let value = integer(value, "concurrency")?;
    u32::try_from(value)
        .ok()
        .filter(|&c| c >= 1)
        .ok_or_else(|| invalid_input(format!("concurrency must be an integer >= 1, got {value}")))
}

/// CPUs this process may use, read once: on Linux the lookup reads cgroup files, which costs
/// more than deciding a small batch.
fn available_cpus() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn per_row(value: &ScalarOrVector) -> PerRow<'_> {
    match value {
        ScalarOrVector::Scalar(v) => PerRow::Same(*v),
        ScalarOrVector::Vector(vs) => PerRow::Each(vs),
    }
}

#[pymethods]
impl PyPolicy {
    #[new]
    #[pyo3(
        signature = (dim, *, alpha=None, beta=None, ridge=None, tau_s=None, refactor_every=None, service_time_smoothing=None, length_ridge=None, tau_margin_sd=None),
        text_signature = "(dim, *, alpha=0.01, beta=0.1, ridge=1.0, tau_s=30.0, refactor_every=1000, service_time_smoothing=0.1, length_ridge=1.0, tau_margin_sd=0.0)"
    )]
    // One argument per keyword of the Python constructor.
    #[allow(clippy::too_many_arguments)]
    fn new(
        dim: &Bound<'_, PyAny>,
        alpha: Option<&Bound<'_, PyAny>>,
        beta: Option<&Bound<'_, PyAny>>,
        ridge: Option<&Bound<'_, PyAny>>,
        tau_s: Option<&Bound<'_, PyAny>>,
        refactor_every: Option<&Bound<'_, PyAny>>,
        service_time_smoothing: Option<&Bound<'_, PyAny>>,
        length_ridge: Option<&Bound<'_, PyAny>>,
        tau_margin_sd: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let defaults = PolicyConfig::new(0);
        let dim = integer(dim, "dim")?;
        let refactor_every = given(refactor_every)
            .map(|r| integer(r, "refactor_every"))
            .transpose()?
            .unwrap_or(defaults.refactor_every as i64);
        let alpha = optional_real(alpha, "alpha")?.unwrap_or(defaults.alpha);
        let beta = optional_real(beta, "beta")?.unwrap_or(defaults.beta);
        let ridge = optional_real(ridge, "ridge")?.unwrap_or(defaults.ridge);
        let length_ridge =
            optional_real(length_ridge, "length_ridge")?.unwrap_or(defaults.length_ridge);
        let tau_s = optional_real(tau_s, "tau_s")?.unwrap_or(defaults.tau_s);
        let tau_margin_sd =
            optional_real(tau_margin_sd, "tau_margin_sd")?.unwrap_or(defaults.tau_margin_sd);
        let service_time_smoothing =
            optional_real(service_time_smoothing, "service_time_smoothing")?
                .unwrap_or(defaults.service_time_smoothing);
        let dim = usize::try_from(dim)
            .map_err(|_| invalid_input(format!("dim must be a positive integer, got {dim}")))?;
        let refactor_every = u64::try_from(refactor_every).map_err(|_| {
            invalid_input(format!("refactor_every must be >= 1, got {refactor_every}"))
        })?;
        let config = PolicyConfig {
            dim,
            alpha,
            beta,
            ridge,
            length_ridge,
            tau_s,
            tau_margin_sd,
            refactor_every,
            service_time_smoothing,
        };
        Ok(Self {
            inner: Policy::new(config).map_err(to_py)?,
        })
    }

    /// Length of the context vectors.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.config().dim
    }

    #[getter]
    fn alpha(&self) -> f64 {
        self.inner.config().alpha
    }

    #[getter]
    fn beta(&self) -> f64 {
        self.inner.config().beta
    }

    /// Ridge strength of the quality head.
    #[getter]
    fn ridge(&self) -> f64 {
        self.inner.config().ridge
    }

    /// Ridge strength of the output-length head, which has its own matrix.
    #[getter]
    fn length_ridge(&self) -> f64 {
        self.inner.config().length_ridge
    }

    #[getter]
    fn tau_s(&self) -> f64 {
        self.inner.config().tau_s
    }

    /// Standard deviations of its error a latency estimate must stay below τ for the model to
    /// be eligible.
    #[getter]
    fn tau_margin_sd(&self) -> f64 {
        self.inner.config().tau_margin_sd
    }

    #[getter]
    fn refactor_every(&self) -> u64 {
        self.inner.config().refactor_every
    }

    #[getter]
    fn service_time_smoothing(&self) -> f64 {
        self.inner.config().service_time_smoothing
    }

    /// Names of the models, in decision order.
    #[getter]
    fn models(&self) -> Vec<String> {
        self.inner.models().iter().map(|m| m.to_string()).collect()
    }

    fn __len__(&self) -> usize {
        self.inner.models().len()
    }

    fn __contains__(&self, name: &Bound<'_, PyAny>) -> PyResult<bool> {
        names_one_of(name, &self.inner.models())
    }

    /// Adds a model with a fresh arm. Prices are USD per million tokens. Held to what a saved
    /// state may hold, so whatever is accepted saves and loads: a name of 1 to 4096 bytes of
    /// UTF-8, at most 4096 models in the pool (`InvalidInputError` beyond).
    #[pyo3(
        signature = (name, *, price_in, price_out, fee=None, ttft_s, tokens_per_s, concurrency, prior_quality=None, prior_output_tokens=None),
        text_signature = "($self, name, *, price_in, price_out, fee=0.0, ttft_s, tokens_per_s, concurrency, prior_quality=0.5, prior_output_tokens=256.0)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn add_model(
        &self,
        py: Python<'_>,
        name: ModelName,
        price_in: &Bound<'_, PyAny>,
        price_out: &Bound<'_, PyAny>,
        fee: Option<&Bound<'_, PyAny>>,
        ttft_s: &Bound<'_, PyAny>,
        tokens_per_s: &Bound<'_, PyAny>,
        concurrency: &Bound<'_, PyAny>,
        prior_quality: Option<&Bound<'_, PyAny>>,
        prior_output_tokens: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let default_priors = Priors::default();
        let profile = ModelProfile {
            price_in: real(price_in, "price_in")?,
            price_out: real(price_out, "price_out")?,
            fee: optional_real(fee, "fee")?.unwrap_or(ModelProfile::DEFAULT_FEE),
            ttft_s: real(ttft_s, "ttft_s")?,
            tokens_per_s: real(tokens_per_s, "tokens_per_s")?,
            concurrency: concurrency_from(concurrency)?,
        };
        let priors = Priors {
            quality: optional_real(prior_quality, "prior_quality")?
                .unwrap_or(default_priors.quality),
            output_tokens: optional_real(prior_output_tokens, "prior_output_tokens")?
                .unwrap_or(default_priors.output_tokens),
        };
        py.detach(|| self.inner.add_model(&name, profile, priors))
            .map_err(to_py)
    }

    /// Removes a model; later feedback for it raises UnknownModelError and changes nothing.
    fn remove_model(&self, py: Python<'_>, name: ModelName) -> PyResult<()> {
        py.detach(|| self.inner.remove_model(&name)).map_err(to_py)
    }

    /// Changes some of a model's profile fields; the rest keep their values. A new
    /// `concurrency` spreads the work already queued over the new number of slots at `now_s`
    /// (default: `Policy.clock_s()`).
    #[pyo3(signature = (name, *, price_in=None, price_out=None, fee=None, ttft_s=None, tokens_per_s=None, concurrency=None, now_s=None))]
    #[allow(clippy::too_many_arguments)]
    fn update_profile(
        &self,
        py: Python<'_>,
        name: ModelName,
        price_in: Option<&Bound<'_, PyAny>>,
        price_out: Option<&Bound<'_, PyAny>>,
        fee: Option<&Bound<'_, PyAny>>,
        ttft_s: Option<&Bound<'_, PyAny>>,
        tokens_per_s: Option<&Bound<'_, PyAny>>,
        concurrency: Option<&Bound<'_, PyAny>>,
        now_s: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let now_s = now(now_s)?;
        let price_in = optional_real(price_in, "price_in")?;
        let price_out = optional_real(price_out, "price_out")?;
        let fee = optional_real(fee, "fee")?;
        let ttft_s = optional_real(ttft_s, "ttft_s")?;
        let tokens_per_s = optional_real(tokens_per_s, "tokens_per_s")?;
        let concurrency = given(concurrency).map(concurrency_from).transpose()?;
        py.detach(|| {
            self.inner.update_profile(
                &name,
                |p| {
                    p.price_in = price_in.unwrap_or(p.price_in);
                    p.price_out = price_out.unwrap_or(p.price_out);
                    p.fee = fee.unwrap_or(p.fee);
                    p.ttft_s = ttft_s.unwrap_or(p.ttft_s);
                    p.tokens_per_s = tokens_per_s.unwrap_or(p.tokens_per_s);
                    p.concurrency = concurrency.unwrap_or(p.concurrency);
                },
                now_s,
            )
        })
        .map_err(to_py)
    }

    /// A model's profile as a dict.
    fn profile<'py>(&self, py: Python<'py>, name: ModelName) -> PyResult<Bound<'py, PyDict>> {
        profile_dict(py, &self.inner.profile(&name).map_err(to_py)?)
    }

    /// Picks a model for context `x`. `willingness_to_pay` is in USD per quality point
    /// (the price worth paying for one more point of expected quality; inf ignores cost).
    /// `now_s` is when, for the queues (default: `Policy.clock_s()`; see `begin`).
    ///
    /// Limits for this decision alone: `models` (the models it may go to; names not in the
    /// pool are ignored), `max_cost_usd` (a ceiling on the predicted cost) and `max_latency_s`
    /// (a tolerance on the predicted latency). Only the models within all of them are
    /// `eligible`, and the rule below picks among those; `ranking` orders them. With none
    /// eligible: `UnknownModelError` when no allowed model is in the pool, else
    /// `NoModelWithinLimitsError` naming the limit.
    ///
    /// At the extremes: costs, widths, penalties and each weighted term saturate at the largest
    /// float (so a weight of 0, or an infinite `willingness_to_pay`, zeroes its term whatever
    /// the factor); a NaN latency counts as infinite; a model whose score is NaN is excluded.
    /// The choice is the best admissible score, else the smallest latency.
    #[pyo3(signature = (x, *, prompt_tokens, willingness_to_pay, now_s=None, models=None, max_cost_usd=None, max_latency_s=None))]
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        prompt_tokens: &Bound<'_, PyAny>,
        willingness_to_pay: &Bound<'_, PyAny>,
        now_s: Option<&Bound<'_, PyAny>>,
        models: Option<&Bound<'_, PyAny>>,
        max_cost_usd: Option<&Bound<'_, PyAny>>,
        max_latency_s: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyDecision> {
        let x = vector(x, "x")?;
        let prompt_tokens = real(prompt_tokens, "prompt_tokens")?;
        let willingness_to_pay = real(willingness_to_pay, "willingness_to_pay")?;
        let now_s = now(now_s)?;
        let models = given(models)
            .map(|m| model_names(m, "models"))
            .transpose()?;
        let limits = Limits {
            models: models.as_deref(),
            max_cost_usd: optional_real(max_cost_usd, "max_cost_usd")?.unwrap_or(f64::INFINITY),
            max_latency_s: optional_real(max_latency_s, "max_latency_s")?.unwrap_or(f64::INFINITY),
        };
        let inner = py
            .detach(|| {
                self.inner
                    .decide_within(&x, prompt_tokens, willingness_to_pay, now_s, &limits)
            })
            .map_err(to_py)?;
        Ok(PyDecision { inner })
    }

    /// Picks a model for each row of `X`; returns the chosen indices into `models` (int64).
    /// `prompt_tokens` and `willingness_to_pay` are scalars or one value per row. Batches of
    /// thousands of rows are split over `threads` threads (default: the CPUs available).
    /// Every row sees the queues as they are at `now_s` (as in `decide`).
    #[pyo3(signature = (X, *, prompt_tokens, willingness_to_pay, threads=None, now_s=None))]
    #[allow(non_snake_case)]
    fn decide_batch<'py>(
        &self,
        py: Python<'py>,
        X: &Bound<'py, PyAny>,
        prompt_tokens: &Bound<'py, PyAny>,
        willingness_to_pay: &Bound<'py, PyAny>,
        threads: Option<&Bound<'py, PyAny>>,
        now_s: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let threads = match given(threads) {
            Some(t) => usize::try_from(integer(t, "threads")?)
                .ok()
                .filter(|&t| t >= 1)
                .ok_or_else(|| invalid_input("threads must be >= 1".to_string()))?,
            None => available_cpus(),
        };
        let (xs, rows) = matrix(X, "X", self.inner.config().dim)?;
        let prompt_tokens = scalar_or_vector(prompt_tokens, "prompt_tokens")?;
        let willingness_to_pay = scalar_or_vector(willingness_to_pay, "willingness_to_pay")?;
        let now_s = now(now_s)?;
        let chosen = py
            .detach(|| {
                let mut out = vec![0usize; rows];
                self.inner
                    .decide_batch(
                        &xs,
                        per_row(&prompt_tokens),
                        per_row(&willingness_to_pay),
                        now_s,
                        &mut out,
                        threads,
                    )
                    .map(|_| out)
            })
            .map_err(to_py)?;
        Ok(PyArray1::from_iter(
            py,
            chosen.into_iter().map(|i| i as i64),
        ))
    }

    /// Learns one observed outcome of model `name` on context `x` (Sherman–Morrison update).
    /// Without `output_tokens` the length head keeps its prediction.
    #[pyo3(
        signature = (name, x, *, quality, output_tokens=None, weight=None),
        text_signature = "($self, name, x, *, quality, output_tokens=None, weight=1.0)"
    )]
    fn update(
        &self,
        py: Python<'_>,
        name: ModelName,
        x: &Bound<'_, PyAny>,
        quality: &Bound<'_, PyAny>,
        output_tokens: Option<&Bound<'_, PyAny>>,
        weight: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let x = vector(x, "x")?;
        let quality = real(quality, "quality")?;
        let output_tokens = optional_real(output_tokens, "output_tokens")?;
        let weight = optional_real(weight, "weight")?.unwrap_or(1.0);
        py.detach(|| {
            let obs = Observation {
                x: &x,
                quality,
                output_tokens,
                weight,
            };
            self.inner.update(&name, &obs)
        })
        .map_err(to_py)
    }

    /// Teaches model `name`'s output-length head that its answer on context `x` was
    /// `output_tokens` long, without touching its quality head: what a finished request tells
    /// before anyone rates it. O(d²), checked as `update` is.
    #[pyo3(
        signature = (name, x, *, output_tokens, weight=None),
        text_signature = "($self, name, x, *, output_tokens, weight=1.0)"
    )]
    fn update_length(
        &self,
        py: Python<'_>,
        name: ModelName,
        x: &Bound<'_, PyAny>,
        output_tokens: &Bound<'_, PyAny>,
        weight: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let x = vector(x, "x")?;
        let output_tokens = real(output_tokens, "output_tokens")?;
        let weight = optional_real(weight, "weight")?.unwrap_or(1.0);
        py.detach(|| self.inner.update_length(&name, &x, output_tokens, weight))
            .map_err(to_py)
    }

    /// Replaces model `name`'s arm with an exact ridge fit on a batch (rows of `X`). A NaN in
    /// `output_tokens` marks a row whose length was not seen: the length head skips that row.
    #[pyo3(signature = (name, X, quality, output_tokens=None, *, weights=None))]
    #[allow(non_snake_case)]
    fn fit(
        &self,
        py: Python<'_>,
        name: ModelName,
        X: &Bound<'_, PyAny>,
        quality: &Bound<'_, PyAny>,
        output_tokens: Option<&Bound<'_, PyAny>>,
        weights: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let (xs, rows) = matrix(X, "X", self.inner.config().dim)?;
        let quality = vector(quality, "quality")?;
        if quality.len() != rows {
            return Err(crate::errors::dimension(format!(
                "quality has {} values, expected one per row of X ({rows})",
                quality.len()
            )));
        }
        let output_tokens = output_tokens
            .map(|t| vector(t, "output_tokens"))
            .transpose()?;
        let weights = weights.map(|w| vector(w, "weights")).transpose()?;
        py.detach(|| {
            self.inner.fit(
                &name,
                &xs,
                &quality,
                output_tokens.as_deref(),
                weights.as_deref(),
            )
        })
        .map_err(to_py)
    }

    /// A request was sent to model `name` at `now_s` (counts towards its queue).
    /// `predicted_service_s` is its decision's `service` for that model (None: the model's
    /// observed mean service time, 0 before any request has finished): the wait predicted for
    /// the requests after it counts that much work, shared by the model's slots. Give `end` or
    /// `cancel` the same value.
    ///
    /// `now_s` defaults to `Policy.clock_s()`, a monotonic clock. A caller that keeps its own
    /// time (a simulation) passes it to every `decide`, `begin`, `end` and `cancel` instead.
    #[pyo3(signature = (name, predicted_service_s = None, *, now_s = None))]
    fn begin(
        &self,
        name: ModelName,
        predicted_service_s: Option<&Bound<'_, PyAny>>,
        now_s: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let predicted = predicted_service(predicted_service_s)?;
        let now_s = now(now_s)?;
        self.inner.begin(&name, predicted, now_s).map_err(to_py)
    }

    /// A request to model `name` finished at `now_s` after `latency_s` seconds of service
    /// (None: it finished but its service time is unknown; it leaves the queue as if served
    /// as predicted, and nothing is learned). `predicted_service_s` is what its `begin` was
    /// given.
    #[pyo3(signature = (name, latency_s, predicted_service_s = None, *, now_s = None))]
    fn end(
        &self,
        name: ModelName,
        latency_s: Option<&Bound<'_, PyAny>>,
        predicted_service_s: Option<&Bound<'_, PyAny>>,
        now_s: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let latency_s = optional_real(latency_s, "latency_s")?;
        let predicted = predicted_service(predicted_service_s)?;
        let now_s = now(now_s)?;
        self.inner
            .end(&name, latency_s, predicted, now_s)
            .map_err(to_py)
    }

    /// A request to model `name` was withdrawn at `now_s` before it was served (never sent,
    /// or abandoned while queued): it leaves the queue with the work its `begin` counted.
    /// `predicted_service_s` is what its `begin` was given. A request that ran but whose
    /// service time is unknown ends with `end(name, None, ...)` instead.
    #[pyo3(signature = (name, predicted_service_s = None, *, now_s = None))]
    fn cancel(
        &self,
        name: ModelName,
        predicted_service_s: Option<&Bound<'_, PyAny>>,
        now_s: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let predicted = predicted_service(predicted_service_s)?;
        let now_s = now(now_s)?;
        self.inner.cancel(&name, predicted, now_s).map_err(to_py)
    }

    /// The wait predicted at `now_s` for a request sent to model `name`, before its service
    /// starts (seconds; the queue part of a decision's `latency`).
    #[pyo3(signature = (name, *, now_s = None))]
    fn predicted_wait_s(&self, name: ModelName, now_s: Option<&Bound<'_, PyAny>>) -> PyResult<f64> {
        let now_s = now(now_s)?;
        self.inner.predicted_wait_s(&name, now_s).map_err(to_py)
    }

    /// Seconds on the monotonic clock the queues run on when no `now_s` is given (since this
    /// process first read it).
    #[staticmethod]
    fn clock_s() -> f64 {
        clock::now_s()
    }

    /// The generation of model `name`'s arm: it changes when the model is removed and added
    /// again (or the policy is loaded), never otherwise.
    fn generation(&self, name: ModelName) -> PyResult<u64> {
        self.inner.generation(&name).map_err(to_py)
    }

    /// The load other routers sharing model `name`'s endpoint put on it (replicas of a
    /// service): `in_flight` requests holding `work_s` seconds of predicted work per slot. It
    /// adds to this policy's own queue in every wait it predicts, until the next report.
    fn set_remote_load(&self, name: &str, in_flight: u64, work_s: f64) -> PyResult<()> {
        self.inner
            .set_remote_load(name, in_flight, work_s)
            .map_err(to_py)
    }

    /// Requests in flight for model `name`.
    fn in_flight(&self, name: ModelName) -> PyResult<u64> {
        self.inner.in_flight(&name).map_err(to_py)
    }

    /// A consistent copy of everything learned about model `name`, as numpy arrays: `a` (A),
    /// `a_inv` (A⁻¹), `theta_quality`, `b_quality` (the quality head), `length_a`,
    /// `length_a_inv`, `theta_log_length`, `b_log_length` (the length head), and counters,
    /// priors, live statistics (`in_flight`, `clears_at_s`, `service_ratio` and the
    /// `service_means_s` it is made of, `service_mse_s2` behind the latency spreads,
    /// `mean_service_s`, `completed`) and the profile.
    fn inspect<'py>(&self, py: Python<'py>, name: ModelName) -> PyResult<Bound<'py, PyDict>> {
        let report = py.detach(|| self.inner.report(&name)).map_err(to_py)?;
        let dim = self.inner.config().dim;
        let layout = SymLayout::new(dim);
        let square = |stored: &[f64]| -> PyResult<Bound<'py, PyArray2<f64>>> {
            PyArray1::from_vec(py, layout.to_full(stored)).reshape([dim, dim])
        };
        let out = PyDict::new(py);
        out.set_item("a", square(&report.ledger.a)?)?;
        out.set_item("a_inv", square(&report.stats.a_inv)?)?;
        out.set_item(
            "theta_quality",
            PyArray1::from_slice(py, &report.stats.theta_quality),
        )?;
        out.set_item(
            "theta_log_length",
            PyArray1::from_slice(py, &report.stats.theta_log_length),
        )?;
        out.set_item(
            "b_quality",
            PyArray1::from_slice(py, &report.ledger.b_quality),
        )?;
        out.set_item(
            "b_log_length",
            PyArray1::from_slice(py, &report.ledger.b_log_length),
        )?;
        out.set_item("length_a", square(report.ledger.length_a())?)?;
        out.set_item("length_a_inv", square(report.length_a_inv())?)?;
        out.set_item("observations", report.stats.observations)?;
        out.set_item("weight_sum", report.stats.weight_sum)?;
        out.set_item(
            "updates_since_refactor",
            report.ledger.updates_since_refactor,
        )?;
        out.set_item("prior_quality", report.priors.quality)?;
        out.set_item("prior_output_tokens", report.priors.output_tokens)?;
        out.set_item("in_flight", report.in_flight)?;
        // Only while requests are in flight: with none there is no work to be done (and the
        // value is not saved).
        out.set_item(
            "clears_at_s",
            (report.in_flight > 0).then_some(report.clears_at_s),
        )?;
        out.set_item("service_ratio", report.service_ratio())?;
        // What the ratio is made of: the moving averages of predicted and of observed service
        // (None before a request with a prediction has finished).
        out.set_item("service_means_s", report.service_means_s)?;
        // The moving average of their squared error, behind each latency estimate's spread.
        out.set_item("service_mse_s2", report.service_mse_s2)?;
        out.set_item("mean_service_s", report.mean_service_s)?;
        out.set_item("completed", report.completed)?;
        // From the same report as the rest: one consistent snapshot, even if the model is
        // removed meanwhile.
        out.set_item("profile", profile_dict(py, &report.profile)?)?;
        Ok(out)
    }

    /// Writes the whole state to `path` atomically (temporary file `<path>.tmp-*`, held under
    /// an exclusive lock while written, then renamed over `path`). First removes the
    /// `<path>.tmp-*` files of saves that crashed: those whose lock it can take, never a live
    /// writer's.
    fn save(&self, py: Python<'_>, path: StatePath) -> PyResult<()> {
        py.detach(|| persist::save(&self.inner, &path))
            .map_err(to_py)
    }

    /// Reads a state written by `save`. The header, configuration and model count are checked
    /// against the file's length before the rest is read; then the checksum and every field
    /// (`StateFileError` naming what is wrong). With `dim` (an integer in 1..=4096), a file of
    /// another dimension is rejected.
    #[classmethod]
    #[pyo3(signature = (path, *, dim=None))]
    fn load(
        _cls: &Bound<'_, PyType>,
        py: Python<'_>,
        path: StatePath,
        dim: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let dim = optional_dim(dim)?;
        let inner = py.detach(|| persist::load(&path, dim)).map_err(to_py)?;
        Ok(Self { inner })
    }

    /// The whole state as bytes (the `save` format), e.g. to share it with other replicas.
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let bytes = py.detach(|| persist::to_bytes(&self.inner));
        PyBytes::new(py, &bytes)
    }

    /// Rebuilds a policy from `to_bytes` output (`bytes`), checked as `load` checks a file.
    #[classmethod]
    #[pyo3(signature = (data, *, dim=None))]
    fn from_bytes(
        _cls: &Bound<'_, PyType>,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        dim: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let dim = optional_dim(dim)?;
        let data = state_bytes(data)?;
        let inner = py
            .detach(|| persist::from_bytes(data, dim))
            .map_err(|reason| {
                to_py(mixllm_core::Error::StateFile {
                    path: PathBuf::from("<bytes>"),
                    reason,
                })
            })?;
        Ok(Self { inner })
    }

    fn __repr__(&self) -> String {
        let c = self.inner.config();
        format!(
            "Policy(dim={}, alpha={}, beta={}, ridge={}, length_ridge={}, tau_s={}, models={:?})",
            c.dim,
            c.alpha,
            c.beta,
            c.ridge,
            c.length_ridge,
            c.tau_s,
            self.models()
        )
    }
}

/// `now_s` as given, or the default clock's time.
fn now(ob: Option<&Bound<'_, PyAny>>) -> PyResult<f64> {
    Ok(optional_real(ob, "now_s")?.unwrap_or_else(clock::now_s))
}

/// `begin`/`end`/`cancel`'s `predicted_service_s`: None (the observed mean) when not given.
fn predicted_service(ob: Option<&Bound<'_, PyAny>>) -> PyResult<Option<f64>> {
    optional_real(ob, "predicted_service_s")
}

fn profile_dict<'py>(py: Python<'py>, p: &ModelProfile) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("price_in", p.price_in)?;
    out.set_item("price_out", p.price_out)?;
    out.set_item("fee", p.fee)?;
    out.set_item("ttft_s", p.ttft_s)?;
    out.set_item("tokens_per_s", p.tokens_per_s)?;
    out.set_item("concurrency", p.concurrency)?;
    Ok(out)
}
