//! Python bindings of the mixllm decision core (`mixllm._core`). Only conversion lives here: the
//! math is in the `mixllm-core` crate.

mod args;
mod arrays;
mod decision;
mod defaults;
mod errors;
mod policy;
mod text;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    m.add_class::<policy::PyPolicy>()?;
    m.add_class::<decision::PyDecision>()?;
    m.add_function(wrap_pyfunction!(defaults::policy_defaults, m)?)?;
    m.add_function(wrap_pyfunction!(defaults::model_defaults, m)?)?;
    m.add_class::<text::PyTokenizer>()?;
    m.add_class::<text::PyStaticEncoder>()?;
    Ok(())
}
