//! The hot numeric kernels and the matrix layout they work on. Each kernel runs the AVX-512 or
//! AVX2+FMA version from [`crate::simd`] when the CPU has it (detected at run time, so one wheel
//! runs on plain x86-64 and still uses the wide registers where they exist), or the portable one.
//!
//! Symmetric d×d matrices (A and A⁻¹) are stored in a *blocked packed* layout ([`SymLayout`]):
//! row `i` holds columns `8·⌊i/8⌋ .. stride`, where `stride` is d rounded up to a multiple of 8.
//! Entries left of the diagonal in a row's first block, and the padding columns, are zero. This
//! keeps about half the bytes of a full matrix (what bounds a decision at d = 384 is streaming
//! 11 models' matrices from memory, and an update copies one) while every row is a whole number
//! of 8-lane chunks starting on a chunk boundary, so the inner loops have no scalar remainders.
//! Vectors that meet these matrices are zero-padded to `stride`.
//!
//! Sums use several independent accumulators, so results differ from a sequential sum (and
//! between instruction sets) in the last bits only.

use crate::bounds::InverseBounds;
#[cfg(target_arch = "x86_64")]
use crate::simd::{self, isa, Isa};

/// Width of the chunks the kernels work in (one AVX-512 register of f64).
pub const LANES: usize = 8;

/// Shape of a symmetric matrix in the blocked packed layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymLayout {
    dim: usize,
    stride: usize,
}

impl SymLayout {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            stride: dim.div_ceil(LANES) * LANES,
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Length of padded vectors.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// First stored column of row `i`.
    #[inline(always)]
    fn first_column(&self, i: usize) -> usize {
        LANES * (i / LANES)
    }

    /// Offset of row `i` in storage; `offset(dim)` is the total length.
    #[inline(always)]
    fn offset(&self, i: usize) -> usize {
        let (block, within) = (i / LANES, i % LANES);
        // Every row of block b holds stride − 8b entries.
        LANES * (block * self.stride - LANES * block * block.saturating_sub(1) / 2)
            + within * (self.stride - LANES * block)
    }

    /// Number of stored entries.
    pub fn len(&self) -> usize {
        self.offset(self.dim)
    }

    pub fn is_empty(&self) -> bool {
        self.dim == 0
    }

    /// `x` zero-padded to `stride`.
    pub fn pad(&self, x: &[f64]) -> Vec<f64> {
        let mut padded = vec![0.0; self.stride];
        padded[..x.len()].copy_from_slice(x);
        padded
    }

    /// `value·I`.
    pub fn scaled_identity(&self, value: f64) -> Vec<f64> {
        let mut m = vec![0.0; self.len()];
        for i in 0..self.dim {
            m[self.offset(i) + i - self.first_column(i)] = value;
        }
        m
    }

    /// From the row-major upper triangle packed as `d(d+1)/2` values (the storage format on
    /// disk, independent of the chunk width).
    pub fn from_packed(&self, packed: &[f64]) -> Vec<f64> {
        let mut m = vec![0.0; self.len()];
        let mut next = 0;
        for i in 0..self.dim {
            let row = self.offset(i) - self.first_column(i);
            let count = self.dim - i;
            m[row + i..row + i + count].copy_from_slice(&packed[next..next + count]);
            next += count;
        }
        m
    }

    /// To the row-major upper triangle packed as `d(d+1)/2` values.
    pub fn to_packed(&self, m: &[f64]) -> Vec<f64> {
        let mut packed = Vec::with_capacity(self.dim * (self.dim + 1) / 2);
        for i in 0..self.dim {
            let row = self.offset(i) - self.first_column(i);
            packed.extend_from_slice(&m[row + i..row + self.dim]);
        }
        packed
    }

    /// The full row-major `d`×`d` matrix.
    pub fn to_full(&self, m: &[f64]) -> Vec<f64> {
        let d = self.dim;
        let mut full = vec![0.0; d * d];
        for i in 0..d {
            let row = self.offset(i) - self.first_column(i);
            for j in i..d {
                full[i * d + j] = m[row + j];
                full[j * d + i] = m[row + j];
            }
        }
        full
    }

    /// The upper triangle of a full row-major symmetric matrix.
    pub fn from_full(&self, full: &[f64]) -> Vec<f64> {
        let d = self.dim;
        let mut m = vec![0.0; self.len()];
        for i in 0..d {
            let row = self.offset(i) - self.first_column(i);
            m[row + i..row + d].copy_from_slice(&full[i * d + i..(i + 1) * d]);
        }
        m
    }

    /// The diagonal of `m`.
    pub fn diagonal(&self, m: &[f64]) -> Vec<f64> {
        self.upper_rows(m).map(|(_, row)| row[0]).collect()
    }

    /// Iterates the upper triangle's rows as (row index `i`, columns `i..dim` of row `i`).
    pub fn upper_rows<'a>(&self, m: &'a [f64]) -> impl Iterator<Item = (usize, &'a [f64])> + 'a {
        let dim = self.dim;
        self.rows(m)
            .map(move |(i, first, row)| (i, &row[i - first..dim - first]))
    }

    /// Iterates rows as (row index, first column, mutable stored row slice).
    fn rows_mut<'a>(
        &self,
        m: &'a mut [f64],
    ) -> impl Iterator<Item = (usize, usize, &'a mut [f64])> + 'a {
        let layout = *self;
        let mut rest = m;
        (0..layout.dim).map(move |i| {
            let first = layout.first_column(i);
            let (row, tail) = std::mem::take(&mut rest).split_at_mut(layout.stride - first);
            rest = tail;
            (i, first, row)
        })
    }

    /// Iterates rows as (row index, first column, stored row slice).
    #[inline(always)]
    fn rows<'a>(&self, m: &'a [f64]) -> impl Iterator<Item = (usize, usize, &'a [f64])> + 'a {
        let layout = *self;
        let mut start = 0;
        (0..layout.dim).map(move |i| {
            let first = layout.first_column(i);
            let len = layout.stride - first;
            let row = &m[start..start + len];
            start += len;
            (i, first, row)
        })
    }
}

/// Runs the kernel of the detected instruction set, or the portable one.
#[cfg(target_arch = "x86_64")]
macro_rules! dispatch {
    ($kernel:ident($($arg:expr),*), portable: $portable:expr) => {
        match isa() {
            // SAFETY: `isa()` reports an instruction set only after detecting it on this CPU,
            // and every caller asserts the slice lengths the kernels require.
            #[cfg(target_arch = "x86_64")]
            #[allow(unsafe_code)]
            Isa::Avx512 => unsafe { simd::avx512::$kernel($($arg),*) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            #[allow(unsafe_code)]
            Isa::Avx2 => unsafe { simd::avx2::$kernel($($arg),*) },
            _ => $portable,
        }
    };
}

/// Elsewhere only the portable kernels exist; the SIMD kernels' arguments are still evaluated,
/// so each call site reads the same on every architecture.
#[cfg(not(target_arch = "x86_64"))]
macro_rules! dispatch {
    ($kernel:ident($($arg:expr),*), portable: $portable:expr) => {{
        let _ = ($(&$arg),*);
        $portable
    }};
}

/// `a · b` over the shorter of the two lengths.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    dispatch!(dot(a, b), portable: portable::dot(a, b))
}

/// `[a · w₀, a · w₁, a · w₂, a · w₃]` for four slices of `a`'s length: one pass over `a` for four
/// queries, which is what makes batches of decisions cheaper per query than single ones.
pub fn dot4(a: &[f64], w: [&[f64]; 4]) -> [f64; 4] {
    for wi in w {
        assert_eq!(wi.len(), a.len(), "dot4 operands must have the same length");
    }
    dispatch!(dot4(a, w), portable: w.map(|wi| portable::dot(a, wi)))
}

/// `y ← y + alpha·x` over the shorter of the two lengths (O(d), not worth intrinsics).
pub fn axpy(alpha: f64, x: &[f64], y: &mut [f64]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// Weights `W` such that `xᵀ M x = Σ_s M_s·W_s` over the storage of any `M` in this layout
/// (`x` padded): the products x_i·x_k, doubled right of the diagonal (each stored entry stands
/// for two entries of the full matrix) and zero left of it. Built once per query, it turns every
/// model's confidence width into one streaming dot product with no per-row work, which lets a
/// batch score four queries in one pass over each model's A⁻¹ ([`dot4`]). Written into `out`,
/// a buffer of the layout's length (every entry is overwritten).
pub fn quadratic_weights_into(layout: SymLayout, x: &[f64], out: &mut [f64]) {
    assert_eq!(x.len(), layout.stride(), "x must be padded");
    assert_eq!(out.len(), layout.len(), "output storage");
    let (dim, stride) = (layout.dim(), layout.stride());
    dispatch!(
        quadratic_weights(dim, stride, x, out),
        portable: portable::quadratic_weights(layout, x, out)
    )
}

/// `xᵀ M x` (`x` padded), reading `M` once: one model's confidence width in a single decision.
/// Faster there than a dot product with [`quadratic_weights_into`]'s weights, which streams a
/// second array of `M`'s size; the weights pay off when one pass over `M` serves several queries
/// ([`dot4`]).
pub fn quadratic_form(layout: SymLayout, m: &[f64], x: &[f64]) -> f64 {
    assert_eq!(m.len(), layout.len(), "matrix storage");
    assert_eq!(x.len(), layout.stride(), "x must be padded");
    let (dim, stride) = (layout.dim(), layout.stride());
    dispatch!(
        quadratic_form(dim, stride, m, x),
        portable: portable::quadratic_form(layout, m, x)
    )
}

/// `out = M x` (both padded); returns `xᵀ M x` as well, which comes for free.
pub fn symv(layout: SymLayout, m: &[f64], x: &[f64], out: &mut [f64]) -> f64 {
    assert_eq!(m.len(), layout.len(), "matrix storage");
    assert_eq!(x.len(), layout.stride(), "x must be padded");
    assert_eq!(out.len(), layout.stride(), "out must be padded");
    let (dim, stride) = (layout.dim(), layout.stride());
    dispatch!(symv(dim, stride, m, x, out), portable: portable::symv(layout, m, x, out))
}

/// `out = M − c·u·uᵀ` (`u` padded), reading `M` and writing `out` in one pass.
pub fn rank1_into(layout: SymLayout, m: &[f64], u: &[f64], c: f64, out: &mut [f64]) {
    assert_eq!(m.len(), layout.len(), "matrix storage");
    assert_eq!(out.len(), layout.len(), "output storage");
    assert_eq!(u.len(), layout.stride(), "u must be padded");
    let (dim, stride) = (layout.dim(), layout.stride());
    dispatch!(
        rank1(dim, stride, m.as_ptr(), u, c, out.as_mut_ptr()),
        portable: portable::rank1_into(layout, m, u, c, out)
    )
}

/// [`rank1_into`], and whether `out` lies within `bounds` (those of an inverse,
/// [`crate::bounds`]) — the answer [`crate::bounds::check_gram_inverse`] gives on `out` — found
/// while the entries are written instead of in a second pass over `out`. The new diagonal is
/// computed first, in O(d), so that every row knows the roots bounding its entries; the stored
/// diagonal is that one (the kernels would compute it with or without a fused multiply-add,
/// which can differ in the last bit), so what was checked is what is stored. `out` holds
/// M − c·u·uᵀ whatever the answer.
pub fn rank1_into_within(
    layout: SymLayout,
    m: &[f64],
    u: &[f64],
    c: f64,
    out: &mut [f64],
    bounds: &InverseBounds,
) -> bool {
    assert_eq!(m.len(), layout.len(), "matrix storage");
    assert_eq!(out.len(), layout.len(), "output storage");
    assert_eq!(u.len(), layout.stride(), "u must be padded");
    let (dim, stride) = (layout.dim(), layout.stride());
    let diagonal_at = |i: usize| layout.offset(i) + i - layout.first_column(i);
    // One allocation for both: the roots, zero-padded (the padding columns hold zeros, which
    // every bound admits), and the new diagonal.
    let mut scratch = vec![0.0; stride + dim];
    let (roots, diagonal) = scratch.split_at_mut(stride);
    for (i, (root, v)) in roots.iter_mut().zip(diagonal.iter_mut()).enumerate() {
        *v = m[diagonal_at(i)] - c * u[i] * u[i];
        *root = InverseBounds::root(*v);
    }
    let mut within = diagonal.iter().all(|v| bounds.diagonal_within(*v));
    let slack = bounds.slack();
    within &= dispatch!(
        rank1_within(dim, m.as_ptr(), u, c, out.as_mut_ptr(), roots, slack),
        portable: portable::rank1_within(layout, m, u, c, out, roots, bounds)
    );
    for (i, v) in diagonal.iter().enumerate() {
        out[diagonal_at(i)] = *v;
    }
    within
}

/// `M ← M − c·u·uᵀ` in place (`u` padded).
pub fn rank1_in_place(layout: SymLayout, m: &mut [f64], u: &[f64], c: f64) {
    assert_eq!(m.len(), layout.len(), "matrix storage");
    assert_eq!(u.len(), layout.stride(), "u must be padded");
    let (dim, stride) = (layout.dim(), layout.stride());
    let p = m.as_mut_ptr();
    dispatch!(
        rank1(dim, stride, p, u, c, p),
        portable: portable::rank1_in_place(layout, m, u, c)
    )
}

/// Plain-Rust versions of the kernels: the fallback on CPUs without AVX2, and the reference the
/// intrinsics are tested against.
mod portable {
    use super::SymLayout;
    use crate::bounds::InverseBounds;

    pub fn dot(a: &[f64], b: &[f64]) -> f64 {
        let mut acc = [0.0f64; 4];
        let mut ca = a.chunks_exact(4);
        let mut cb = b.chunks_exact(4);
        for (xa, xb) in (&mut ca).zip(&mut cb) {
            for k in 0..4 {
                acc[k] += xa[k] * xb[k];
            }
        }
        let tail: f64 = ca
            .remainder()
            .iter()
            .zip(cb.remainder())
            .map(|(x, y)| x * y)
            .sum();
        (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
    }

    pub fn quadratic_weights(layout: SymLayout, x: &[f64], out: &mut [f64]) {
        for (i, first, row) in layout.rows_mut(out) {
            let xi = x[i];
            row[..i - first].fill(0.0);
            row[i - first] = xi * xi;
            for (w, xk) in row[i - first + 1..].iter_mut().zip(&x[i + 1..]) {
                *w = 2.0 * xi * xk;
            }
        }
    }

    pub fn quadratic_form(layout: SymLayout, m: &[f64], x: &[f64]) -> f64 {
        // Each stored row times x counts the entries right of the diagonal once and the
        // diagonal once; doubling counts the off-diagonal pairs fully and the diagonal twice.
        let mut total = 0.0;
        let mut diagonal = 0.0;
        for (i, first, row) in layout.rows(m) {
            let xi = x[i];
            total += 2.0 * xi * dot(row, &x[first..]);
            diagonal += row[i - first] * xi * xi;
        }
        total - diagonal
    }

    pub fn symv(layout: SymLayout, m: &[f64], x: &[f64], out: &mut [f64]) -> f64 {
        out.fill(0.0);
        for (i, first, row) in layout.rows(m) {
            let xi = x[i];
            // Row i's upper part, and by symmetry its contribution to the rows below.
            let upper = dot(row, &x[first..]);
            super::axpy(xi, row, &mut out[first..]);
            // The axpy added the diagonal term to out[i], which `upper` already holds.
            out[i] += upper - row[i - first] * xi;
        }
        dot(x, out)
    }

    pub fn rank1_into(layout: SymLayout, m: &[f64], u: &[f64], c: f64, out: &mut [f64]) {
        for ((i, first, row), (_, _, target)) in layout.rows(m).zip(layout.rows_mut(out)) {
            let s = c * u[i];
            for ((o, mi), uj) in target.iter_mut().zip(row).zip(&u[first..]) {
                *o = mi - s * uj;
            }
            // Keep the entries left of the diagonal at zero.
            target[..i - first].fill(0.0);
        }
    }

    pub fn rank1_within(
        layout: SymLayout,
        m: &[f64],
        u: &[f64],
        c: f64,
        out: &mut [f64],
        roots: &[f64],
        bounds: &InverseBounds,
    ) -> bool {
        rank1_into(layout, m, u, c, out);
        // Row by row, each still in the L1 cache from the update above. A fold without early
        // exit, which the compiler vectorises.
        layout.rows(out).fold(true, |within, (i, first, row)| {
            let root_i = roots[i];
            row[i - first..]
                .iter()
                .zip(&roots[i..])
                .fold(within, |ok, (v, root_j)| {
                    ok & bounds.off_diagonal_within(*v, root_i, *root_j)
                })
        })
    }

    pub fn rank1_in_place(layout: SymLayout, m: &mut [f64], u: &[f64], c: f64) {
        for (i, first, row) in layout.rows_mut(m) {
            // Only the diagonal and right of it: the zeros left of the diagonal stay zero.
            super::axpy(-c * u[i], &u[i..], &mut row[i - first..]);
        }
    }
}

/// Inverse of a symmetric positive-definite matrix, by Cholesky factorisation
/// (A = L·Lᵀ, A⁻¹ = L⁻ᵀ·L⁻¹). `None` when it is not numerically positive definite.
/// O(d³); used for exact fits and to bound the drift of rank-1 updates.
pub fn spd_inverse(layout: SymLayout, a: &[f64]) -> Option<Vec<f64>> {
    let d = layout.dim();
    let full = layout.to_full(a);
    // Lower-triangular factor, row-major, rows contiguous so the inner products vectorise.
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s = dot(&l[i * d..i * d + j], &l[j * d..j * d + j]);
            if i == j {
                let diag = full[i * d + i] - s;
                if !(diag > 0.0 && diag.is_finite()) {
                    return None;
                }
                l[i * d + i] = diag.sqrt();
            } else {
                l[i * d + j] = (full[i * d + j] - s) / l[j * d + j];
            }
        }
    }
    // W = L⁻¹ (lower triangular), column by column via forward substitution, stored transposed
    // (row k of `w_t` is column k of W) so both loops below read contiguous rows.
    let mut w_t = vec![0.0; d * d];
    for k in 0..d {
        let col = &mut w_t[k * d..(k + 1) * d];
        col[k] = 1.0 / l[k * d + k];
        for i in k + 1..d {
            let s = dot(&l[i * d + k..i * d + i], &col[k..i]);
            col[i] = -s / l[i * d + i];
        }
    }
    // A⁻¹[i][j] = Σ_k W[k][i]·W[k][j] = (column i of W) · (column j of W), over k ≥ max(i, j).
    let mut inv = vec![0.0; d * d];
    for i in 0..d {
        for j in i..d {
            let v = dot(&w_t[i * d + j..(i + 1) * d], &w_t[j * d + j..(j + 1) * d]);
            inv[i * d + j] = v;
            inv[j * d + i] = v;
        }
    }
    Some(layout.from_full(&inv))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quadratic_weights(layout: SymLayout, x: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; layout.len()];
        quadratic_weights_into(layout, x, &mut out);
        out
    }

    fn naive_matvec(full: &[f64], x: &[f64]) -> Vec<f64> {
        let d = x.len();
        (0..d)
            .map(|i| (0..d).map(|j| full[i * d + j] * x[j]).sum())
            .collect()
    }

    fn sample_spd(d: usize) -> Vec<f64> {
        let b: Vec<f64> = (0..d * d)
            .map(|k| ((k * 7 + k / d * 3) % 11) as f64 / 11.0 - 0.5)
            .collect();
        // B·Bᵀ + d·I is symmetric positive definite.
        let mut spd = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                spd[i * d + j] = (0..d).map(|k| b[i * d + k] * b[j * d + k]).sum::<f64>()
                    + if i == j { d as f64 } else { 0.0 };
            }
        }
        spd
    }

    const DIMS: [usize; 9] = [1, 2, 7, 8, 9, 16, 17, 33, 65];

    #[test]
    fn offsets_follow_the_row_lengths() {
        for d in DIMS {
            let layout = SymLayout::new(d);
            let mut start = 0;
            for i in 0..d {
                assert_eq!(layout.offset(i), start, "d={d} i={i}");
                start += layout.stride() - layout.first_column(i);
            }
            assert_eq!(layout.len(), start);
        }
    }

    #[test]
    fn conversions_round_trip() {
        for d in DIMS {
            let layout = SymLayout::new(d);
            let full = sample_spd(d);
            let m = layout.from_full(&full);
            assert_eq!(layout.to_full(&m), full);
            let packed = layout.to_packed(&m);
            assert_eq!(packed.len(), d * (d + 1) / 2);
            assert_eq!(layout.from_packed(&packed), m);
            let identity = layout.to_full(&layout.scaled_identity(2.0));
            for i in 0..d {
                for j in 0..d {
                    assert_eq!(identity[i * d + j], if i == j { 2.0 } else { 0.0 });
                }
            }
        }
    }

    #[test]
    fn symv_and_quad_form_match_naive() {
        for d in DIMS {
            let layout = SymLayout::new(d);
            let full = sample_spd(d);
            let m = layout.from_full(&full);
            let x: Vec<f64> = (0..d).map(|i| (i as f64 * 0.37).sin()).collect();
            let xp = layout.pad(&x);
            let expected = naive_matvec(&full, &x);
            let mut out = vec![0.0; layout.stride()];
            let q = symv(layout, &m, &xp, &mut out);
            for (a, b) in out.iter().zip(&expected) {
                assert!((a - b).abs() < 1e-9 * (1.0 + b.abs()), "d={d}");
            }
            assert!(out[d..].iter().all(|v| *v == 0.0));
            let q_naive: f64 = x.iter().zip(&expected).map(|(a, b)| a * b).sum();
            assert!((q - q_naive).abs() < 1e-9 * (1.0 + q_naive.abs()));
            let q2 = dot(&m, &quadratic_weights(layout, &xp));
            assert!((q2 - q_naive).abs() < 1e-9 * (1.0 + q_naive.abs()));
            let q3 = quadratic_form(layout, &m, &xp);
            assert!((q3 - q_naive).abs() < 1e-9 * (1.0 + q_naive.abs()), "d={d}");
            let q4 = portable::quadratic_form(layout, &m, &xp);
            assert!((q4 - q_naive).abs() < 1e-9 * (1.0 + q_naive.abs()), "d={d}");
        }
    }

    #[test]
    fn rank1_variants_match_naive_and_keep_zeros() {
        for d in DIMS {
            let layout = SymLayout::new(d);
            let full = sample_spd(d);
            let m = layout.from_full(&full);
            let u: Vec<f64> = (0..d).map(|i| i as f64 - 6.0).collect();
            let up = layout.pad(&u);
            let mut into = vec![f64::NAN; m.len()];
            rank1_into(layout, &m, &up, 0.25, &mut into);
            let mut in_place = m.clone();
            rank1_in_place(layout, &mut in_place, &up, 0.25);
            for (a, b) in into.iter().zip(&in_place) {
                assert!((a - b).abs() < 1e-12 * (1.0 + a.abs()), "d={d}");
            }
            // Zero entries (left of the diagonal, padding) stay exactly zero in both.
            let structure = layout.from_full(&vec![1.0; d * d]);
            for ((s, a), b) in structure.iter().zip(&into).zip(&in_place) {
                if *s == 0.0 {
                    assert_eq!((*a, *b), (0.0, 0.0), "d={d}");
                }
            }
            let result = layout.to_full(&into);
            for i in 0..d {
                for j in 0..d {
                    let want = full[i * d + j] - 0.25 * u[i] * u[j];
                    assert!((result[i * d + j] - want).abs() < 1e-12 * (1.0 + want.abs()));
                }
            }
        }
    }

    #[test]
    fn dispatched_kernels_match_the_portable_ones() {
        for d in DIMS {
            let layout = SymLayout::new(d);
            let m = layout.from_full(&sample_spd(d));
            let x = layout.pad(&(0..d).map(|i| (i as f64 * 0.53).cos()).collect::<Vec<_>>());
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * (1.0 + a.abs().max(b.abs()));

            let mut want = vec![0.0; layout.len()];
            portable::quadratic_weights(layout, &x, &mut want);
            let got = quadratic_weights(layout, &x);
            assert!(
                want.iter().zip(&got).all(|(a, b)| close(*a, *b)),
                "weights d={d}"
            );

            let (mut want, mut got) = (vec![0.0; layout.stride()], vec![0.0; layout.stride()]);
            let q_want = portable::symv(layout, &m, &x, &mut want);
            let q_got = symv(layout, &m, &x, &mut got);
            assert!(close(q_want, q_got), "symv d={d}");
            assert!(
                want.iter().zip(&got).all(|(a, b)| close(*a, *b)),
                "symv d={d}"
            );

            assert!(
                close(
                    portable::quadratic_form(layout, &m, &x),
                    quadratic_form(layout, &m, &x)
                ),
                "quadratic form d={d}"
            );

            let (mut want, mut got) = (vec![0.0; m.len()], vec![0.0; m.len()]);
            portable::rank1_into(layout, &m, &x, 0.3, &mut want);
            rank1_into(layout, &m, &x, 0.3, &mut got);
            assert!(
                want.iter().zip(&got).all(|(a, b)| close(*a, *b)),
                "rank1 d={d}"
            );

            let (mut want, mut got) = (m.clone(), m.clone());
            portable::rank1_in_place(layout, &mut want, &x, -0.7);
            rank1_in_place(layout, &mut got, &x, -0.7);
            assert!(
                want.iter().zip(&got).all(|(a, b)| close(*a, *b)),
                "rank1 in place d={d}"
            );

            let others: Vec<Vec<f64>> = (1..5)
                .map(|s| m.iter().map(|v| v * s as f64 - 0.5).collect())
                .collect();
            let four = dot4(&m, [&others[0], &others[1], &others[2], &others[3]]);
            for (got, other) in four.iter().zip(&others) {
                assert!(close(*got, portable::dot(&m, other)), "dot4 d={d}");
            }

            for n in [0, 3, 8, 33, 100] {
                let (a, b) = (&m[..n.min(m.len())], &got[..n.min(m.len())]);
                assert!(close(portable::dot(a, b), dot(a, b)), "dot n={n}");
            }
        }
    }

    /// M, u and c of a rank-1 update, and which entry of its result was pushed out of bounds.
    type WithinCase = (Vec<f64>, Vec<f64>, f64, Option<(usize, usize)>);

    /// Rank-1 updates whose result is 0.5·I (within the bounds of ridge 1), and the same with
    /// one entry of the result pushed out: each off-diagonal entry in turn (0.9, above the
    /// 0.5 its diagonal allows), each diagonal entry in turn (1.5, above 1/ridge), and a NaN.
    /// The entries left of the diagonal, which the kernels compute before zeroing, would be
    /// out of bounds if they counted. Returns (M, u, c, which entry was pushed out, if any).
    fn within_cases(d: usize) -> Vec<WithinCase> {
        let layout = SymLayout::new(d);
        let u: Vec<f64> = (0..d).map(|i| 1.0 + 0.1 * (i % 3) as f64).collect();
        let c = 1.0;
        let base: Vec<f64> = (0..d * d)
            .map(|k| {
                let (i, j) = (k / d, k % d);
                c * u[i] * u[j] + if i == j { 0.5 } else { 0.0 }
            })
            .collect();
        let mut cases = vec![(layout.from_full(&base), layout.pad(&u), c, None)];
        for i in 0..d {
            for j in i..d {
                let mut full = base.clone();
                let pushed = if i == j { 1.0 } else { 0.9 };
                full[i * d + j] += pushed;
                full[j * d + i] += pushed;
                cases.push((layout.from_full(&full), layout.pad(&u), c, Some((i, j))));
            }
        }
        let mut full = base.clone();
        full[d - 1] = f64::NAN;
        full[(d - 1) * d] = f64::NAN;
        cases.push((layout.from_full(&full), layout.pad(&u), c, Some((0, d - 1))));
        cases
    }

    #[test]
    fn rank1_within_answers_as_the_loaders_check_does() {
        let bounds = InverseBounds::new(1.0);
        for d in DIMS {
            let layout = SymLayout::new(d);
            for (m, u, c, pushed) in within_cases(d) {
                let mut want = vec![0.0; m.len()];
                portable::rank1_into(layout, &m, &u, c, &mut want);
                let mut got = vec![f64::NAN; m.len()];
                let within = rank1_into_within(layout, &m, &u, c, &mut got, &bounds);
                let checked = crate::bounds::check_gram_inverse("B", layout, &got, 1.0);
                assert_eq!(within, checked.is_ok(), "d={d} {pushed:?}: {checked:?}");
                assert_eq!(within, pushed.is_none(), "d={d} {pushed:?}");
                let close = |a: &f64, b: &f64| {
                    (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-12 * (1.0 + a.abs())
                };
                assert!(
                    want.iter().zip(&got).all(|(a, b)| close(a, b)),
                    "d={d} {pushed:?}"
                );
            }
        }
    }

    /// Every intrinsics module this CPU can run against the portable kernels, called directly:
    /// the dispatch above only ever reaches the widest one (an AVX-512 machine would otherwise
    /// never run the AVX2 kernels).
    #[cfg(target_arch = "x86_64")]
    #[test]
    #[allow(unsafe_code)]
    fn every_supported_instruction_set_matches_the_portable_kernels() {
        macro_rules! check {
            ($module:ident) => {{
                use crate::simd::$module as k;
                for d in DIMS {
                    let layout = SymLayout::new(d);
                    let (dim, stride) = (d, layout.stride());
                    let m = layout.from_full(&sample_spd(d));
                    let x =
                        layout.pad(&(0..d).map(|i| (i as f64 * 0.53).cos()).collect::<Vec<_>>());
                    let close =
                        |a: f64, b: f64| (a - b).abs() <= 1e-12 * (1.0 + a.abs().max(b.abs()));
                    let all_close =
                        |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(a, b)| close(*a, *b));
                    let what = stringify!($module);
                    // SAFETY: the caller checked the CPU; the lengths follow the layout.
                    unsafe {
                        assert!(
                            close(
                                k::quadratic_form(dim, stride, &m, &x),
                                portable::quadratic_form(layout, &m, &x)
                            ),
                            "{what} quadratic form d={d}"
                        );
                        let mut weights = vec![f64::NAN; layout.len()];
                        k::quadratic_weights(dim, stride, &x, &mut weights);
                        let mut want = vec![0.0; layout.len()];
                        portable::quadratic_weights(layout, &x, &mut want);
                        assert!(all_close(&weights, &want), "{what} weights d={d}");
                        // Every length up to the matrix's, so each remainder path runs.
                        for n in 0..m.len().min(80) {
                            let (a, b) = (&m[..n], &weights[..n]);
                            assert!(close(k::dot(a, b), portable::dot(a, b)), "{what} dot n={n}");
                        }
                        let scaled: Vec<f64> = m.iter().map(|v| 0.5 - v).collect();
                        let operands = [&weights, &m, &scaled, &weights];
                        let four = k::dot4(&m, operands.map(|o| &o[..]));
                        for (j, other) in operands.iter().enumerate() {
                            assert!(
                                close(four[j], portable::dot(&m, other)),
                                "{what} dot4[{j}] d={d}"
                            );
                        }
                        let (mut got, mut want) = (vec![0.0; stride], vec![0.0; stride]);
                        let q = k::symv(dim, stride, &m, &x, &mut got);
                        let q_want = portable::symv(layout, &m, &x, &mut want);
                        assert!(close(q, q_want), "{what} symv xᵀMx d={d}");
                        assert!(all_close(&got, &want), "{what} symv d={d}");
                        let (mut got, mut want) = (vec![0.0; m.len()], vec![0.0; m.len()]);
                        k::rank1(dim, stride, m.as_ptr(), &x, 0.3, got.as_mut_ptr());
                        portable::rank1_into(layout, &m, &x, 0.3, &mut want);
                        assert!(all_close(&got, &want), "{what} rank1 d={d}");
                    }
                }
            }};
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            check!(avx2);
        }
        if is_x86_feature_detected!("avx512f") {
            check!(avx512);
        }
    }

    /// Every intrinsics module's bounded rank-1 update against the portable one (see the
    /// test above).
    #[cfg(target_arch = "x86_64")]
    #[test]
    #[allow(unsafe_code)]
    fn every_supported_instruction_set_keeps_an_update_within_bounds_as_the_portable_kernels() {
        macro_rules! check {
            ($module:ident) => {{
                use crate::simd::$module as k;
                for d in DIMS {
                    let layout = SymLayout::new(d);
                    let (dim, stride) = (d, layout.stride());
                    let close =
                        |a: f64, b: f64| (a - b).abs() <= 1e-12 * (1.0 + a.abs().max(b.abs()));
                    let what = stringify!($module);
                    // SAFETY: the caller checked the CPU; the lengths follow the layout.
                    unsafe {
                        let bounds = InverseBounds::new(1.0);
                        for (m, u, c, pushed) in within_cases(d) {
                            // The roots of the new diagonal, zero-padded, as the safe
                            // wrapper computes them.
                            let mut roots = vec![0.0; stride];
                            for (j, root) in roots.iter_mut().enumerate().take(d) {
                                let at = layout.offset(j) + j - layout.first_column(j);
                                *root = InverseBounds::root(m[at] - c * u[j] * u[j]);
                            }
                            let (mut got, mut want) =
                                (vec![f64::NAN; m.len()], vec![f64::NAN; m.len()]);
                            let within = k::rank1_within(
                                dim,
                                m.as_ptr(),
                                &u,
                                c,
                                got.as_mut_ptr(),
                                &roots,
                                bounds.slack(),
                            );
                            let within_want = portable::rank1_within(
                                layout, &m, &u, c, &mut want, &roots, &bounds,
                            );
                            assert_eq!(within, within_want, "{what} rank1_within d={d} {pushed:?}");
                            let same = got
                                .iter()
                                .zip(&want)
                                .all(|(a, b)| (a.is_nan() && b.is_nan()) || close(*a, *b));
                            assert!(same, "{what} rank1_within d={d} {pushed:?}");
                        }
                    }
                }
            }};
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            check!(avx2);
        }
        if is_x86_feature_detected!("avx512f") {
            check!(avx512);
        }
    }

    #[test]
    fn spd_inverse_is_an_inverse() {
        for d in [1, 3, 16, 33] {
            let layout = SymLayout::new(d);
            let full = sample_spd(d);
            let inv = layout.to_full(&spd_inverse(layout, &layout.from_full(&full)).unwrap());
            for i in 0..d {
                for j in 0..d {
                    let v: f64 = (0..d).map(|k| full[i * d + k] * inv[k * d + j]).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((v - want).abs() < 1e-10, "d={d} ({i},{j}) {v}");
                }
            }
        }
    }

    #[test]
    fn spd_inverse_rejects_indefinite() {
        let layout = SymLayout::new(2);
        let m = layout.from_full(&[1.0, 2.0, 2.0, 1.0]);
        assert!(spd_inverse(layout, &m).is_none());
    }
}
