//! The decision core's defaults, for the Python layer to read rather than repeat: the
//! configuration dataclasses take their defaults from these, so one value lives in one place.

use mixllm_core::{ModelProfile, PolicyConfig, Priors};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The policy knobs a `Policy` takes when the constructor is not given them.
#[pyfunction]
pub fn policy_defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let config = PolicyConfig::new(1);
    let defaults = PyDict::new(py);
    defaults.set_item("alpha", config.alpha)?;
    defaults.set_item("beta", config.beta)?;
    defaults.set_item("ridge", config.ridge)?;
    defaults.set_item("length_ridge", config.length_ridge)?;
    defaults.set_item("tau_s", config.tau_s)?;
    defaults.set_item("tau_margin_sd", config.tau_margin_sd)?;
    defaults.set_item("refactor_every", config.refactor_every)?;
    defaults.set_item("service_time_smoothing", config.service_time_smoothing)?;
    Ok(defaults)
}

/// The model fields `Policy.add_model` fills in when it is not given them.
#[pyfunction]
pub fn model_defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let priors = Priors::default();
    let defaults = PyDict::new(py);
    defaults.set_item("fee", ModelProfile::DEFAULT_FEE)?;
    defaults.set_item("prior_quality", priors.quality)?;
    defaults.set_item("prior_output_tokens", priors.output_tokens)?;
    Ok(defaults)
}
