//! What an arm's matrices satisfy in exact arithmetic, checked in floating point within room
//! for rounding: by the learner on every matrix it computes, and by the loader on every matrix
//! it reads, so a state the learner accepts is a state the loader accepts, and a crafted one
//! that passes the checksum is still refused.
//!
//! - A = ridge·I + Σ w·x·xᵀ (w ≥ 0): every diagonal entry at least the ridge, and every
//!   |A_ij| at most sqrt(A_ii·A_jj) (the 2×2 minors of a positive semi-definite matrix);
//! - A⁻¹ ⪯ I/ridge and positive semi-definite: diagonal entries in [0, 1/ridge], every
//!   |A⁻¹_ij| at most sqrt(A⁻¹_ii·A⁻¹_jj);
//!
//! each within [`ROUNDING`] (relative to the ridge, or to 1/ridge for A⁻¹). Every entry is read
//! once with a multiply and a compare, so a check costs about what copying the matrix does.

use crate::kernels::SymLayout;

/// How far beyond its exact bound an entry may lie, relative to the bound's scale: room for
/// rounding only (a crafted state is off by orders of magnitude, not by this).
pub const ROUNDING: f64 = 1e-4;

/// Checks A = ridge·I + Σ w·x·xᵀ (`m` in `layout`); the error names the first entry out of
/// bounds.
pub fn check_gram(what: &str, layout: SymLayout, m: &[f64], ridge: f64) -> Result<(), String> {
    let diagonal = layout.diagonal(m);
    let floor = ridge * (1.0 - ROUNDING);
    if let Some((i, v)) = diagonal
        .iter()
        .enumerate()
        .find(|(_, v)| !(v.is_finite() && **v >= floor))
    {
        return Err(format!(
            "{what} diagonal entry {i} = {v:e} is below the ridge {ridge:e} or not finite"
        ));
    }
    let roots: Vec<f64> = diagonal.iter().map(|v| v.sqrt()).collect();
    check_off_diagonal(what, layout, m, &roots, 1.0 + ROUNDING, 0.0)
}

/// The bounds of an inverse of a matrix [`check_gram`] accepts, entry by entry: what
/// [`check_gram_inverse`] applies to a whole matrix, and what the rank-1 update kernels
/// ([`crate::kernels::rank1_into_within`]) apply to each entry as they write it. Both go through
/// these definitions (the kernels' vector form repeats [`Self::off_diagonal_within`] operation
/// for operation), so the learner and the loader decide every entry alike, to the last bit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InverseBounds {
    /// 1/ridge: the largest a diagonal entry may be in exact arithmetic.
    scale: f64,
    /// Absolute room for rounding on every entry.
    slack: f64,
}

impl InverseBounds {
    pub fn new(ridge: f64) -> Self {
        let scale = 1.0 / ridge;
        Self {
            scale,
            slack: ROUNDING * scale,
        }
    }

    /// Absolute room for rounding on every entry.
    pub fn slack(&self) -> f64 {
        self.slack
    }

    /// A diagonal entry in [0, 1/ridge], within the slack (false for NaN).
    #[inline]
    pub fn diagonal_within(&self, v: f64) -> bool {
        (-self.slack..=self.scale + self.slack).contains(&v)
    }

    /// What bounds the entries of a diagonal entry's row and column: its square root, the
    /// entry taken as 0 when rounding made it slightly negative.
    #[inline]
    pub fn root(v: f64) -> f64 {
        v.max(0.0).sqrt()
    }

    /// |m_ij| ≤ root_i·root_j + slack, with the roots of [`Self::root`] (false for NaN).
    #[inline]
    pub fn off_diagonal_within(&self, v: f64, root_i: f64, root_j: f64) -> bool {
        v.abs() <= root_i * root_j + self.slack
    }
}

/// Checks an inverse of a matrix [`check_gram`] accepts (`m` in `layout`) against
/// [`InverseBounds`]; the error names the first entry out of bounds.
pub fn check_gram_inverse(
    what: &str,
    layout: SymLayout,
    m: &[f64],
    ridge: f64,
) -> Result<(), String> {
    let bounds = InverseBounds::new(ridge);
    let diagonal = layout.diagonal(m);
    if let Some((i, v)) = diagonal
        .iter()
        .enumerate()
        .find(|(_, v)| !bounds.diagonal_within(**v))
    {
        return Err(format!(
            "{what} diagonal entry {i} = {v:e} is outside [0, 1/ridge = {scale:e}]",
            scale = bounds.scale
        ));
    }
    let roots: Vec<f64> = diagonal.iter().map(|v| InverseBounds::root(*v)).collect();
    check_off_diagonal(what, layout, m, &roots, 1.0, bounds.slack)
}

/// Every off-diagonal |m_ij| is at most `roots[i]·roots[j]·factor + slack` (NaN is not).
fn check_off_diagonal(
    what: &str,
    layout: SymLayout,
    m: &[f64],
    roots: &[f64],
    factor: f64,
    slack: f64,
) -> Result<(), String> {
    for (i, row) in layout.upper_rows(m) {
        let bound_i = roots[i] * factor;
        // False for NaN.
        let within = |(v, root_j): (&f64, &f64)| v.abs() <= bound_i * root_j + slack;
        let entries = || row[1..].iter().zip(&roots[i + 1..]);
        // A fold without early exit, which the compiler vectorises (`all` would branch per
        // entry).
        if !entries().fold(true, |ok, entry| ok & within(entry)) {
            let k = entries()
                .position(|entry| !within(entry))
                .expect("an entry out of bounds");
            return Err(format!(
                "{what} entry ({i}, {j}) = {v:e} exceeds what a positive semi-definite matrix \
                 with its diagonal allows",
                j = i + 1 + k,
                v = row[1 + k]
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounds_of_a_gram_matrix_and_its_inverse() {
        let layout = SymLayout::new(2);
        let full = |a: f64, b: f64, c: f64| layout.from_full(&[a, b, b, c]);
        assert!(check_gram("A", layout, &full(2.0, 1.9, 2.0), 1.0).is_ok());
        let error = check_gram("A", layout, &full(2.0, 2.1, 2.0), 1.0).unwrap_err();
        assert!(error.contains("entry (0, 1)"), "{error}");
        let error = check_gram("A", layout, &full(0.5, 0.0, 2.0), 1.0).unwrap_err();
        assert!(error.contains("diagonal entry 0"), "{error}");
        let error = check_gram("A", layout, &full(f64::NAN, 0.0, 2.0), 1.0).unwrap_err();
        assert!(error.contains("diagonal entry 0"), "{error}");
        assert!(check_gram_inverse("B", layout, &full(0.5, -0.5, 0.5), 1.0).is_ok());
        for (m, expected) in [
            (full(-1e150, 0.0, 0.5), "diagonal entry 0"),
            (full(1.1, 0.0, 0.5), "diagonal entry 0"),
            (full(0.5, -1e150, 0.5), "entry (0, 1)"),
            (full(0.5, f64::NAN, 0.5), "entry (0, 1)"),
        ] {
            let error = check_gram_inverse("B", layout, &m, 1.0).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }
}
