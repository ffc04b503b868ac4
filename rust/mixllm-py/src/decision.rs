//! `mixllm.Decision`: the chosen model and, for every model, why.

use mixllm_core::{Assessment, Decision};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The outcome of `Policy.decide`. Per-model arrays follow `models` (the pool at decision time).
#[pyclass(name = "Decision", module = "mixllm", frozen)]
pub struct PyDecision {
    pub inner: Decision,
}

impl PyDecision {
    fn column<'py, T: numpy::Element>(
        &self,
        py: Python<'py>,
        field: impl Fn(&Assessment) -> T,
    ) -> Bound<'py, PyArray1<T>> {
        read_only(PyArray1::from_vec(
            py,
            self.inner.assessments.iter().map(field).collect(),
        ))
    }
}

/// The array, marked read-only: a decision's arrays describe what happened and do not change.
fn read_only<T: numpy::Element>(array: Bound<'_, PyArray1<T>>) -> Bound<'_, PyArray1<T>> {
    array.readwrite().make_nonwriteable();
    array
}

#[pymethods]
impl PyDecision {
    /// Name of the chosen model.
    #[getter]
    fn model(&self) -> &str {
        self.inner.model()
    }

    /// Position of the chosen model in `models`.
    #[getter]
    fn index(&self) -> usize {
        self.inner.index
    }

    /// The models considered, in pool order.
    #[getter]
    fn models(&self) -> Vec<String> {
        self.inner.models.iter().map(|m| m.to_string()).collect()
    }

    /// Predicted quality per model.
    #[getter]
    fn quality<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        self.column(py, |a| a.quality)
    }

    /// Predicted cost per model, in USD.
    #[getter]
    fn cost<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        self.column(py, |a| a.cost_usd)
    }

    /// Predicted latency per model, in seconds: (queue wait + first token + generation), scaled
    /// by the model's service ratio (how much longer than predicted its requests have run).
    #[getter]
    fn latency<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        self.column(py, |a| a.latency_s)
    }

    /// Standard deviation of each latency estimate's error, in seconds, from the errors of the
    /// model's recent service estimates, its queue and its service ratio (0 before any has
    /// finished).
    #[getter]
    fn latency_sd<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        self.column(py, |a| a.latency_sd_s)
    }

    /// Predicted service time per model, in seconds (first token + generation, as the length
    /// head predicts it, before the service ratio). What `Policy.begin` takes for the chosen
    /// model.
    #[getter]
    fn service<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        self.column(py, |a| a.service_s)
    }

    /// The chosen model's predicted service time, in seconds: what `Policy.begin` takes (a
    /// float, without building the per-model array).
    #[getter]
    fn chosen_service_s(&self) -> f64 {
        self.inner.assessments[self.inner.index].service_s
    }

    /// Predicted output tokens per model.
    #[getter]
    fn output_tokens<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        self.column(py, |a| a.output_tokens)
    }

    /// LinUCB confidence width sqrt(xᵀA⁻¹x) per model.
    #[getter]
    fn uncertainty<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        self.column(py, |a| a.uncertainty)
    }

    /// Latency penalty exp(L/τ) − 1 per model.
    #[getter]
    fn penalty<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        self.column(py, |a| a.penalty)
    }

    /// Score per model; the chosen model has the best among those not excluded.
    #[getter]
    fn score<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        self.column(py, |a| a.score)
    }

    /// Whether each model was excluded: its predicted latency, plus `tau_margin_sd` standard
    /// deviations of its error, above τ.
    #[getter]
    fn excluded<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<bool>> {
        self.column(py, |a| a.excluded)
    }

    /// Whether each model was within the decision's limits (allowed, within the cost ceiling
    /// and the latency tolerance); every model, for a decision without limits.
    #[getter]
    fn eligible<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<bool>> {
        self.column(py, |a| a.eligible)
    }

    /// The eligible models, best first by the decision's own rule: the chosen one, then the
    /// order to fall back in (the admissible by score, then the excluded by latency).
    #[getter]
    fn ranking(&self) -> Vec<String> {
        self.inner
            .ranking()
            .into_iter()
            .map(|i| self.inner.models[i].to_string())
            .collect()
    }

    /// Per model: a dict of its predictions and score, keyed by model name.
    fn explain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (name, a) in self.inner.models.iter().zip(&self.inner.assessments) {
            let row = PyDict::new(py);
            row.set_item("quality", a.quality)?;
            row.set_item("cost_usd", a.cost_usd)?;
            row.set_item("latency_s", a.latency_s)?;
            row.set_item("latency_sd_s", a.latency_sd_s)?;
            row.set_item("service_s", a.service_s)?;
            row.set_item("output_tokens", a.output_tokens)?;
            row.set_item("uncertainty", a.uncertainty)?;
            row.set_item("penalty", a.penalty)?;
            row.set_item("score", a.score)?;
            row.set_item("excluded", a.excluded)?;
            row.set_item("eligible", a.eligible)?;
            out.set_item(name.as_ref(), row)?;
        }
        Ok(out)
    }

    fn __repr__(&self) -> String {
        let a = &self.inner.assessments[self.inner.index];
        format!(
            "Decision(model={:?}, score={:.4}, quality={:.4}, cost_usd={:.3e}, latency_s={:.3}, \
             of {} models)",
            self.inner.model(),
            a.score,
            a.quality,
            a.cost_usd,
            a.latency_s,
            self.inner.models.len()
        )
    }
}
