//! Copying numeric inputs out of Python objects, with errors that name the argument, the
//! expected shape and what was passed. Inputs are copied so the GIL can be released afterwards.

use numpy::{PyArray1, PyArray2, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::errors::{dimension, input_type, invalid_input};

fn describe_array(array: &Bound<'_, PyUntypedArray>) -> String {
    format!(
        "an array of dtype {} and shape {:?}",
        array
            .dtype()
            .str()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        array.shape()
    )
}

pub fn type_name(ob: &Bound<'_, PyAny>) -> String {
    ob.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_string())
}

/// A 1-D float vector: a float64 or float32 numpy array, or a sequence of numbers.
pub fn vector(ob: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<f64>> {
    // Arrays are copied while the GIL is held, so `to_vec` and `to_owned_array` need no borrow
    // registered with rust-numpy's borrow tracking (which would cost more than the copy and
    // lengthen the time every decision holds the GIL).
    if let Ok(array) = ob.cast::<PyArray1<f64>>() {
        return Ok(array
            .to_vec()
            .unwrap_or_else(|_| array.to_owned_array().iter().copied().collect()));
    }
    if let Ok(array) = ob.cast::<PyArray1<f32>>() {
        return Ok(array
            .to_owned_array()
            .iter()
            .map(|&v| f64::from(v))
            .collect());
    }
    if let Ok(array) = ob.cast::<PyUntypedArray>() {
        return Err(if array.ndim() != 1 {
            dimension(format!(
                "{what} must be a 1-D array, got {}",
                describe_array(array)
            ))
        } else {
            input_type(format!(
                "{what} must be float64 or float32, got {}",
                describe_array(array)
            ))
        });
    }
    if ob.is_instance_of::<pyo3::types::PyString>() || ob.is_instance_of::<pyo3::types::PyBytes>() {
        return Err(input_type(format!(
            "{what} must be a 1-D array of floats, got {}",
            type_name(ob)
        )));
    }
    ob.extract::<Vec<f64>>().map_err(|e| {
        input_type(format!(
            "{what} must be a 1-D array of floats, got {} ({})",
            type_name(ob),
            e.value(ob.py())
        ))
    })
}

/// A 2-D float matrix, row-major: a float64 or float32 numpy array or a sequence of rows.
/// Returns the values and the number of rows.
pub fn matrix(ob: &Bound<'_, PyAny>, what: &str, columns: usize) -> PyResult<(Vec<f64>, usize)> {
    // Copied under the GIL without registering a borrow, as in `vector`.
    let (values, shape) = if let Ok(array) = ob.cast::<PyArray2<f64>>() {
        // `to_vec` also succeeds on column-major arrays, in memory order: only take it for
        // row-major ones, and read the rest element by element in logical order.
        let row_major = if array.is_c_contiguous() {
            array.to_vec().ok()
        } else {
            None
        };
        let values = row_major.unwrap_or_else(|| array.to_owned_array().iter().copied().collect());
        (values, array.shape().to_vec())
    } else if let Ok(array) = ob.cast::<PyArray2<f32>>() {
        (
            array
                .to_owned_array()
                .iter()
                .map(|&v| f64::from(v))
                .collect(),
            array.shape().to_vec(),
        )
    } else if let Ok(array) = ob.cast::<PyUntypedArray>() {
        return Err(if array.ndim() != 2 {
            dimension(format!(
                "{what} must be a 2-D array (rows × {columns}), got {}",
                describe_array(array)
            ))
        } else {
            input_type(format!(
                "{what} must be float64 or float32, got {}",
                describe_array(array)
            ))
        });
    } else {
        let rows: Vec<Vec<f64>> = ob.extract().map_err(|e: PyErr| {
            input_type(format!(
                "{what} must be a 2-D array of floats, got {} ({})",
                type_name(ob),
                e.value(ob.py())
            ))
        })?;
        if let Some((i, row)) = rows.iter().enumerate().find(|(_, r)| r.len() != columns) {
            return Err(dimension(format!(
                "{what} row {i} has {} values, expected {columns}",
                row.len()
            )));
        }
        let n = rows.len();
        (rows.into_iter().flatten().collect(), vec![n, columns])
    };
    if shape[1] != columns {
        return Err(dimension(format!(
            "{what} has shape ({}, {}), expected (rows, {columns})",
            shape[0], shape[1]
        )));
    }
    Ok((values, shape[0]))
}

/// A real number (a Python int or float, a numpy scalar), naming the argument when it is not.
pub fn real(ob: &Bound<'_, PyAny>, what: &str) -> PyResult<f64> {
    // `str` and `bytes` fail here too: extracting an f64 takes `__float__`, which they lack.
    ob.extract::<f64>().map_err(|_| {
        out_of_range(ob, what, "a float").unwrap_or_else(|| {
            input_type(format!("{what} must be a number, got {}", type_name(ob)))
        })
    })
}

/// For an integer (anything with `__index__`) that did not convert: it is too large for
/// `target`. The message gives its size, not its digits, which may be thousands.
fn out_of_range(ob: &Bound<'_, PyAny>, what: &str, target: &str) -> Option<PyErr> {
    let index = ob.call_method0("__index__").ok()?;
    let bits: u64 = index.call_method0("bit_length").ok()?.extract().ok()?;
    let sign = if index.lt(0).unwrap_or(false) {
        "-"
    } else {
        ""
    };
    Some(invalid_input(format!(
        "{what} is out of range: an integer of {sign}{bits} bits does not fit {target}"
    )))
}

/// An optional argument, unless it was left out or passed as `None`.
pub fn given<'a, 'py>(ob: Option<&'a Bound<'py, PyAny>>) -> Option<&'a Bound<'py, PyAny>> {
    ob.filter(|v| !v.is_none())
}

/// An optional real number (`None` allowed).
pub fn optional_real(ob: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<f64>> {
    given(ob).map(|v| real(v, what)).transpose()
}

/// An integer (a Python int or numpy integer; not a float, even a whole one).
pub fn integer(ob: &Bound<'_, PyAny>, what: &str) -> PyResult<i64> {
    if ob.is_instance_of::<pyo3::types::PyFloat>() {
        return Err(input_type(format!(
            "{what} must be an integer, got a float ({ob})"
        )));
    }
    ob.extract::<i64>().map_err(|_| {
        out_of_range(ob, what, "a 64-bit integer").unwrap_or_else(|| {
            input_type(format!("{what} must be an integer, got {}", type_name(ob)))
        })
    })
}

/// One value for every row, or a 1-D array with one value per row.
pub enum ScalarOrVector {
    Scalar(f64),
    Vector(Vec<f64>),
}

pub fn scalar_or_vector(ob: &Bound<'_, PyAny>, what: &str) -> PyResult<ScalarOrVector> {
    if ob.is_instance_of::<PyUntypedArray>() && ob.cast::<PyUntypedArray>()?.ndim() > 0 {
        return vector(ob, what).map(ScalarOrVector::Vector);
    }
    if ob.is_instance_of::<pyo3::types::PyList>() || ob.is_instance_of::<pyo3::types::PyTuple>() {
        return vector(ob, what).map(ScalarOrVector::Vector);
    }
    real(ob, what).map(ScalarOrVector::Scalar)
}
