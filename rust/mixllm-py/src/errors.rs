//! The package's exception tree, and the one mapping from core errors to it.
//!
//! The classes are created here, at import of `mixllm._core`, with `type(...)` so each can derive
//! from both `MixllmError` and the builtin that fits (an unknown model is a `KeyError`, bad input
//! a `ValueError`, a wrong dtype a `TypeError`); PyO3's `create_exception!` allows one base only.

use mixllm_core::Error;
use pyo3::exceptions::{PyException, PyKeyError, PyLookupError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

pub struct Exceptions {
    pub base: Py<PyType>,
    pub invalid_input: Py<PyType>,
    pub dimension: Py<PyType>,
    pub input_type: Py<PyType>,
    pub unknown_model: Py<PyType>,
    pub duplicate_model: Py<PyType>,
    pub empty_pool: Py<PyType>,
    pub no_model_within_limits: Py<PyType>,
    pub state_file: Py<PyType>,
}

static EXCEPTIONS: PyOnceLock<Exceptions> = PyOnceLock::new();

fn make_class<'py>(
    py: Python<'py>,
    name: &str,
    doc: &str,
    bases: Vec<Bound<'py, PyType>>,
) -> PyResult<Py<PyType>> {
    let namespace = PyDict::new(py);
    namespace.set_item("__module__", "mixllm")?;
    namespace.set_item("__doc__", doc)?;
    // KeyError's str() quotes its message; these messages are sentences, so print them plainly.
    namespace.set_item(
        "__str__",
        py.import("builtins")?
            .getattr("BaseException")?
            .getattr("__str__")?,
    )?;
    let class = py.import("builtins")?.getattr("type")?.call1((
        name,
        PyTuple::new(py, bases)?,
        namespace,
    ))?;
    Ok(class.cast_into::<PyType>()?.unbind())
}

/// Creates the classes and adds them to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let exceptions = create_classes(py)?;
    for class in [
        &exceptions.base,
        &exceptions.invalid_input,
        &exceptions.dimension,
        &exceptions.input_type,
        &exceptions.unknown_model,
        &exceptions.duplicate_model,
        &exceptions.empty_pool,
        &exceptions.no_model_within_limits,
        &exceptions.state_file,
    ] {
        let class = class.bind(py);
        m.add(class.name()?, class)?;
    }
    let _ = EXCEPTIONS.set(py, exceptions);
    Ok(())
}

/// The classes, each under `MixllmError` and the builtin exception that fits it.
fn create_classes(py: Python<'_>) -> PyResult<Exceptions> {
    let base = make_class(
        py,
        "MixllmError",
        "Base class of every error mixllm raises.",
        vec![py.get_type::<PyException>()],
    )?;
    let b = || base.bind(py).clone();
    let invalid_input = make_class(
        py,
        "InvalidInputError",
        "An argument is out of range: NaN or infinite values, a negative price, a bad setting.",
        vec![b(), py.get_type::<PyValueError>()],
    )?;
    let dimension = make_class(
        py,
        "DimensionError",
        "An array has the wrong shape or length for this policy.",
        vec![invalid_input.bind(py).clone()],
    )?;
    let input_type = make_class(
        py,
        "InputTypeError",
        "An argument has the wrong type or dtype.",
        vec![b(), py.get_type::<PyTypeError>()],
    )?;
    let unknown_model = make_class(
        py,
        "UnknownModelError",
        "No model of that name is in the pool.",
        vec![b(), py.get_type::<PyKeyError>()],
    )?;
    let duplicate_model = make_class(
        py,
        "DuplicateModelError",
        "A model of that name is already in the pool.",
        vec![b(), py.get_type::<PyValueError>()],
    )?;
    let empty_pool = make_class(
        py,
        "EmptyPoolError",
        "A decision was asked of a pool with no models.",
        vec![b(), py.get_type::<PyLookupError>()],
    )?;
    let no_model_within_limits = make_class(
        py,
        "NoModelWithinLimitsError",
        "No model allowed for a request is predicted within its cost ceiling or its latency \
         tolerance; the message names the limit.",
        vec![b(), py.get_type::<PyLookupError>()],
    )?;
    let state_file = make_class(
        py,
        "StateFileError",
        "A saved state is not mixllm's, is corrupt or truncated, or does not fit.",
        vec![b(), py.get_type::<PyValueError>()],
    )?;
    Ok(Exceptions {
        base,
        invalid_input,
        dimension,
        input_type,
        unknown_model,
        duplicate_model,
        empty_pool,
        no_model_within_limits,
        state_file,
    })
}

fn raise(class: impl FnOnce(&Exceptions) -> &Py<PyType>, message: String) -> PyErr {
    Python::attach(|py| match EXCEPTIONS.get(py) {
        Some(exceptions) => PyErr::from_type(class(exceptions).bind(py).clone(), message),
        None => PyValueError::new_err(message),
    })
}

pub fn invalid_input(message: String) -> PyErr {
    raise(|e| &e.invalid_input, message)
}

pub fn dimension(message: String) -> PyErr {
    raise(|e| &e.dimension, message)
}

pub fn input_type(message: String) -> PyErr {
    raise(|e| &e.input_type, message)
}

/// The one mapping from the core's errors to Python exceptions.
pub fn to_py(error: Error) -> PyErr {
    let message = error.to_string();
    match error {
        Error::Dimension { .. } => dimension(message),
        Error::InvalidValue(_) | Error::NothingInFlight(_) | Error::ModelFile { .. } => {
            invalid_input(message)
        }
        Error::UnknownModel(_) | Error::NoneAllowed(_) => raise(|e| &e.unknown_model, message),
        Error::NoModelWithinLimits(_) => raise(|e| &e.no_model_within_limits, message),
        Error::DuplicateModel(_) => raise(|e| &e.duplicate_model, message),
        Error::EmptyPool => raise(|e| &e.empty_pool, message),
        Error::StateFile { .. } => raise(|e| &e.state_file, message),
        Error::Io { source, .. } => os_error(source, message),
    }
}

/// Keeps the OSError subclass of the cause (FileNotFoundError, PermissionError, ...) and its
/// errno, with a message that names the path.
fn os_error(source: std::io::Error, message: String) -> PyErr {
    let errno = source.raw_os_error();
    let cause = PyErr::from(source);
    Python::attach(|py| {
        let class = cause.get_type(py);
        match errno {
            Some(code) => PyErr::from_type(class, (code, message)),
            None => PyErr::from_type(class, message),
        }
    })
}
