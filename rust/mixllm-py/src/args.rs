//! Non-numeric arguments of the binding, converted in one place so that every entry point
//! raises the same documented error for the same mistake: a model name that is not a `str`
//! (`InputTypeError`) or not valid Unicode, such as a lone surrogate (`InvalidInputError`), a
//! path that is not a `str` or `os.PathLike`, a dimension out of range, state bytes of the
//! wrong type. PyO3 passes errors raised while converting an argument through unchanged.

use std::ops::Deref;
use std::path::PathBuf;

use mixllm_core::config::MAX_DIM;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::arrays::{integer, type_name};
use crate::errors::{input_type, invalid_input};

/// A model name: a `str` that is valid Unicode (so it has a UTF-8 form).
pub struct ModelName(String);

impl Deref for ModelName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// The text of `ob` if it is a `str` that can be a model name; `Ok(None)` for a `str` that
/// cannot (it holds a lone surrogate), with the reason.
fn name_text(ob: &Bound<'_, PyAny>) -> PyResult<Result<String, String>> {
    let text = ob
        .cast::<PyString>()
        .map_err(|_| input_type(format!("a model name must be a str, got {}", type_name(ob))))?;
    Ok(text
        .to_str()
        .map(str::to_owned)
        .map_err(|e| e.value(ob.py()).to_string()))
}

impl<'py> FromPyObject<'_, 'py> for ModelName {
    type Error = PyErr;

    fn extract(ob: Borrowed<'_, 'py, PyAny>) -> PyResult<Self> {
        match name_text(&ob)? {
            Ok(text) => Ok(Self(text)),
            Err(reason) => Err(invalid_input(format!(
                "a model name must be valid Unicode text: {reason}"
            ))),
        }
    }
}

/// The model names of a sequence of `str` (a `str` itself is refused: it would be read as
/// one name per character).
pub fn model_names(ob: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<String>> {
    if ob.is_instance_of::<PyString>() {
        return Err(invalid_input(format!(
            "{what} must be a sequence of model names, not a single str"
        )));
    }
    let items = ob.try_iter().map_err(|_| {
        input_type(format!(
            "{what} must be a sequence of model names, got {}",
            type_name(ob)
        ))
    })?;
    let mut names = Vec::new();
    for item in items {
        names.push(item?.extract::<ModelName>()?.0);
    }
    Ok(names)
}

/// Whether `ob`, which must be a `str`, names a model in `models` (a `str` that cannot be a
/// name is in no pool).
pub fn names_one_of(ob: &Bound<'_, PyAny>, models: &[std::sync::Arc<str>]) -> PyResult<bool> {
    Ok(match name_text(ob)? {
        Ok(text) => models.iter().any(|m| m.as_ref() == text),
        Err(_) => false,
    })
}

/// A file path: a `str`, `bytes` or `os.PathLike`, without NUL characters.
pub struct StatePath(PathBuf);

impl Deref for StatePath {
    type Target = PathBuf;

    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl<'py> FromPyObject<'_, 'py> for StatePath {
    type Error = PyErr;

    fn extract(ob: Borrowed<'_, 'py, PyAny>) -> PyResult<Self> {
        let fspath = ob.py().import("os")?.getattr("fspath")?;
        let given = fspath.call1((&*ob,)).map_err(|_| {
            input_type(format!(
                "path must be a str or an os.PathLike, got {}",
                type_name(&ob)
            ))
        })?;
        // A str the file system encoding cannot take (a lone surrogate outside the range
        // `surrogateescape` uses) is a path of the right type that cannot exist.
        let path: PathBuf = given.extract().map_err(|e: PyErr| {
            invalid_input(format!(
                "path {} cannot be encoded for the file system: {}",
                given
                    .repr()
                    .map_or_else(|_| "?".to_string(), |r| r.to_string()),
                e.value(ob.py())
            ))
        })?;
        if path.as_os_str().as_encoded_bytes().contains(&0) {
            return Err(invalid_input(format!(
                "path {} holds a NUL character",
                path.display()
            )));
        }
        Ok(Self(path))
    }
}

/// The optional `dim` of `load` and `from_bytes`: an integer in 1..=`MAX_DIM`.
pub fn optional_dim(ob: Option<&Bound<'_, PyAny>>) -> PyResult<Option<usize>> {
    let Some(ob) = ob.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    let dim = integer(ob, "dim")?;
    usize::try_from(dim)
        .ok()
        .filter(|d| (1..=MAX_DIM).contains(d))
        .map(Some)
        .ok_or_else(|| invalid_input(format!("dim must be in 1..={MAX_DIM}, got {dim}")))
}

/// The bytes of a `bytes` object, borrowed.
pub fn state_bytes<'a>(ob: &'a Bound<'_, PyAny>) -> PyResult<&'a [u8]> {
    ob.cast::<PyBytes>()
        .map(|b| b.as_bytes())
        .map_err(|_| input_type(format!("data must be bytes, got {}", type_name(ob))))
}
