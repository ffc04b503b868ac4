//! `mixllm.Tokenizer` and `mixllm.StaticEncoder`: the core's tokenizer and token-table encoder.
//! Texts are copied out of Python first, then the GIL is released for the work.

use std::sync::Arc;

use mixllm_core::{Keep, StaticEncoder, TextTokenizer};
use numpy::{PyArray1, PyArray2, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::args::StatePath;
use crate::arrays::{integer, type_name};
use crate::errors::{dimension, input_type, invalid_input, to_py};

/// The texts of a sequence of `str`, each checked to be valid Unicode.
fn texts(ob: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if ob.is_instance_of::<PyString>() || ob.is_instance_of::<PyBytes>() {
        return Err(input_type(
            "texts must be a sequence of str, not a single string; use [text]".into(),
        ));
    }
    let mut out = Vec::new();
    for (index, item) in ob
        .try_iter()
        .map_err(|_| {
            input_type(format!(
                "texts must be a sequence of str, got {}",
                type_name(ob)
            ))
        })?
        .enumerate()
    {
        let item = item?;
        let text = item.cast::<PyString>().map_err(|_| {
            input_type(format!(
                "texts[{index}] is {}, expected str",
                type_name(&item)
            ))
        })?;
        out.push(
            text.to_str()
                .map_err(|e| {
                    invalid_input(format!(
                        "texts[{index}] is not valid Unicode: {}",
                        e.value(ob.py())
                    ))
                })?
                .to_owned(),
        );
    }
    Ok(out)
}

/// `(max_tokens, truncation)` as the encoders take them.
fn window(max_tokens: &Bound<'_, PyAny>, truncation: &str) -> PyResult<(usize, Keep)> {
    let max_tokens = integer(max_tokens, "max_tokens")?;
    let max_tokens = usize::try_from(max_tokens)
        .ok()
        .filter(|&m| m >= 1)
        .ok_or_else(|| invalid_input(format!("max_tokens must be >= 1, got {max_tokens}")))?;
    let keep = match truncation {
        "head" => Keep::Head,
        "tail" => Keep::Tail,
        other => {
            return Err(invalid_input(format!(
                "truncation must be \"head\" or \"tail\", got {other:?}"
            )))
        }
    };
    Ok((max_tokens, keep))
}

/// A Hugging Face `tokenizer.json`, read by the core: never pads; truncates to `max_tokens`
/// (special tokens included) when given, keeping a longer text's first tokens (`"head"`) or
/// its last ones (`"tail"`). A file that is missing raises `OSError`, one that is not a
/// tokenizer `InvalidInputError`; both name the file.
#[pyclass(name = "Tokenizer", module = "mixllm", frozen)]
pub struct PyTokenizer {
    inner: Arc<TextTokenizer>,
}

#[pymethods]
impl PyTokenizer {
    #[new]
    #[pyo3(signature = (path, *, max_tokens=None, truncation="head"))]
    fn new(
        py: Python<'_>,
        path: StatePath,
        max_tokens: Option<&Bound<'_, PyAny>>,
        truncation: &str,
    ) -> PyResult<Self> {
        let window = match max_tokens.filter(|m| !m.is_none()) {
            Some(m) => Some(window(m, truncation)?),
            None => None,
        };
        let inner = py
            .detach(|| TextTokenizer::from_file(&path, window))
            .map_err(to_py)?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Ids the tokenizer can produce: its vocabulary and added tokens.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    /// The token ids of each text, truncated as configured.
    #[pyo3(signature = (texts, *, add_special_tokens=true))]
    fn encode_batch(
        &self,
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
        add_special_tokens: bool,
    ) -> PyResult<Vec<Vec<u32>>> {
        let texts = self::texts(texts)?;
        let inner = Arc::clone(&self.inner);
        py.detach(move || inner.encode_batch(&texts, add_special_tokens))
            .map_err(to_py)
    }

    /// The token count of each text (int64), truncated as configured.
    #[pyo3(signature = (texts, *, add_special_tokens=false))]
    fn count<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        add_special_tokens: bool,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let texts = self::texts(texts)?;
        let inner = Arc::clone(&self.inner);
        let counts = py
            .detach(move || inner.count_batch(&texts, add_special_tokens))
            .map_err(to_py)?;
        Ok(PyArray1::from_iter(
            py,
            counts.into_iter().map(|c| c as i64),
        ))
    }
}

/// A static sentence encoder: a text's vector is the L2-normalised sum of its tokens' rows of
/// `table` (float32, one row per id of the tokenizer and a last row for a text without
/// tokens), tokens as the tokenizer at `tokenizer_path` gives them, truncated to `max_tokens`.
#[pyclass(name = "StaticEncoder", module = "mixllm", frozen)]
pub struct PyStaticEncoder {
    inner: Arc<StaticEncoder>,
}

#[pymethods]
impl PyStaticEncoder {
    #[new]
    #[pyo3(signature = (tokenizer_path, table, *, max_tokens, truncation="head"))]
    fn new(
        py: Python<'_>,
        tokenizer_path: StatePath,
        table: &Bound<'_, PyAny>,
        max_tokens: &Bound<'_, PyAny>,
        truncation: &str,
    ) -> PyResult<Self> {
        let window = window(max_tokens, truncation)?;
        let array =
            table
                .cast::<PyArray2<f32>>()
                .map_err(|_| match table.cast::<PyUntypedArray>() {
                    Ok(array) if array.ndim() != 2 => dimension(format!(
                        "table must be a 2-D float32 array, got {} dimensions",
                        array.ndim()
                    )),
                    _ => input_type(format!(
                        "table must be a 2-D float32 numpy array, got {}",
                        type_name(table)
                    )),
                })?;
        let dim = array.shape()[1];
        let values: Vec<f32> = array.to_owned_array().iter().copied().collect();
        let inner = py
            .detach(|| StaticEncoder::new(&tokenizer_path, window, values, dim))
            .map_err(to_py)?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The vector width.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// Unit vectors of `texts`, float32, shape `(len(texts), dim)`.
    fn encode<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let texts = self::texts(texts)?;
        let n = texts.len();
        let inner = Arc::clone(&self.inner);
        let values = py
            .detach(move || inner.encode_batch(&texts))
            .map_err(to_py)?;
        PyArray1::from_vec(py, values).reshape([n, self.inner.dim()])
    }
}
