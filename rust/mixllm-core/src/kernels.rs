//! The hot numeric kernels, on plain slices, compiled for several instruction sets and picked at
//! run time (AVX-512, AVX2+FMA, or the x86-64 baseline), so one wheel runs everywhere and still
//! uses the wide registers where the CPU has them.
//!
//! Symmetric d×d matrices (A and A⁻¹) are stored *packed*: the upper triangle row by row, row `i`
//! holding columns `i..d`. That halves the bytes a decision streams from memory, which is what
//! bounds it at d = 384 (11 models × 0.6 MiB instead of 1.2 MiB each), and halves the copy an
//! update makes when it publishes a new snapshot.
//!
//! Sums use eight independent accumulators: Rust never reassociates float additions, so this is
//! what lets the compiler fill a vector register; results differ from a sequential sum only in
//! the last bits.

use multiversion::multiversion;

/// Number of stored entries of a packed symmetric `d`×`d` matrix.
pub const fn packed_len(d: usize) -> usize {
    d * (d + 1) / 2
}

#[inline(always)]
fn dot_unrolled(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (xa, xb) in (&mut ca).zip(&mut cb) {
        for k in 0..8 {
            acc[k] += xa[k] * xb[k];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[inline(always)]
fn axpy_unrolled(alpha: f64, x: &[f64], y: &mut [f64]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// `a · b`.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    dot_unrolled(a, b)
}

/// `xᵀ M x` for a packed symmetric `M` of order `x.len()`.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
pub fn quad_form_packed(m: &[f64], x: &[f64]) -> f64 {
    let d = x.len();
    debug_assert_eq!(m.len(), packed_len(d));
    let mut total = 0.0;
    let mut start = 0;
    for i in 0..d {
        let row = &m[start..start + d - i];
        let xi = x[i];
        // Off-diagonal entries appear twice in the full matrix.
        let off_diagonal = dot_unrolled(&row[1..], &x[i + 1..]);
        total += xi * (row[0] * xi + 2.0 * off_diagonal);
        start += d - i;
    }
    total
}

/// `out = M x` for a packed symmetric `M`; returns `xᵀ M x` as well, which comes for free.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
pub fn symv_packed(m: &[f64], x: &[f64], out: &mut [f64]) -> f64 {
    let d = x.len();
    debug_assert_eq!(m.len(), packed_len(d));
    debug_assert_eq!(out.len(), d);
    out.fill(0.0);
    let mut start = 0;
    for i in 0..d {
        let row = &m[start..start + d - i];
        // Upper part of row i, and (by symmetry) the column-i entries below the diagonal.
        out[i] += dot_unrolled(row, &x[i..]);
        axpy_unrolled(x[i], &row[1..], &mut out[i + 1..]);
        start += d - i;
    }
    dot_unrolled(x, out)
}

/// `out = M − c·u·uᵀ` for packed symmetric matrices, reading `M` and writing `out` in one pass.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
pub fn rank1_packed_into(m: &[f64], u: &[f64], c: f64, out: &mut [f64]) {
    let d = u.len();
    debug_assert_eq!(m.len(), packed_len(d));
    debug_assert_eq!(out.len(), packed_len(d));
    let mut start = 0;
    for i in 0..d {
        let len = d - i;
        let s = c * u[i];
        let tail = &u[i..];
        for ((o, mi), uj) in out[start..start + len]
            .iter_mut()
            .zip(&m[start..start + len])
            .zip(tail)
        {
            *o = mi - s * uj;
        }
        start += len;
    }
}

/// `M ← M − c·u·uᵀ` in place, for a packed symmetric `M`.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
pub fn rank1_packed_in_place(m: &mut [f64], u: &[f64], c: f64) {
    let d = u.len();
    debug_assert_eq!(m.len(), packed_len(d));
    let mut start = 0;
    for i in 0..d {
        let len = d - i;
        axpy_unrolled(-c * u[i], &u[i..], &mut m[start..start + len]);
        start += len;
    }
}

/// `y ← y + alpha·x`.
pub fn axpy(alpha: f64, x: &[f64], y: &mut [f64]) {
    axpy_unrolled(alpha, x, y);
}

/// The packed upper triangle of the full row-major symmetric matrix `full` (`d`×`d`).
pub fn pack(full: &[f64], d: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(packed_len(d));
    for i in 0..d {
        out.extend_from_slice(&full[i * d + i..(i + 1) * d]);
    }
    out
}

/// The full row-major `d`×`d` matrix of a packed symmetric matrix.
pub fn unpack(m: &[f64], d: usize) -> Vec<f64> {
    let mut full = vec![0.0; d * d];
    let mut start = 0;
    for i in 0..d {
        for j in i..d {
            let v = m[start + j - i];
            full[i * d + j] = v;
            full[j * d + i] = v;
        }
        start += d - i;
    }
    full
}

/// Inverse of a packed symmetric positive-definite matrix, by Cholesky factorisation
/// (A = L·Lᵀ, A⁻¹ = L⁻ᵀ·L⁻¹). `None` when the matrix is not numerically positive definite.
/// O(d³); used for exact refits and to bound the drift of rank-1 updates.
pub fn spd_inverse_packed(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let full = unpack(a, d);
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
    let mut inv = Vec::with_capacity(packed_len(d));
    for i in 0..d {
        for j in i..d {
            inv.push(dot(
                &w_t[i * d + j..(i + 1) * d],
                &w_t[j * d + j..(j + 1) * d],
            ));
        }
    }
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_full_matvec(full: &[f64], x: &[f64]) -> Vec<f64> {
        let d = x.len();
        (0..d)
            .map(|i| (0..d).map(|j| full[i * d + j] * x[j]).sum())
            .collect()
    }

    fn sample_spd(d: usize) -> Vec<f64> {
        let mut full = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                let v = ((i * 7 + j * 3) % 11) as f64 / 11.0 - 0.5;
                full[i * d + j] += v;
            }
        }
        // B·Bᵀ + d·I is symmetric positive definite.
        let mut spd = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                spd[i * d + j] = (0..d)
                    .map(|k| full[i * d + k] * full[j * d + k])
                    .sum::<f64>()
                    + if i == j { d as f64 } else { 0.0 };
            }
        }
        spd
    }

    #[test]
    fn pack_unpack_round_trip() {
        let d = 9;
        let full = sample_spd(d);
        assert_eq!(unpack(&pack(&full, d), d), full);
    }

    #[test]
    fn symv_and_quad_form_match_naive() {
        for d in [1, 2, 7, 8, 9, 17, 65] {
            let full = sample_spd(d);
            let m = pack(&full, d);
            let x: Vec<f64> = (0..d).map(|i| (i as f64 * 0.37).sin()).collect();
            let expected = naive_full_matvec(&full, &x);
            let mut out = vec![0.0; d];
            let q = symv_packed(&m, &x, &mut out);
            for (a, b) in out.iter().zip(&expected) {
                assert!((a - b).abs() < 1e-9 * (1.0 + b.abs()));
            }
            let q_naive: f64 = x.iter().zip(&expected).map(|(a, b)| a * b).sum();
            assert!((q - q_naive).abs() < 1e-9 * (1.0 + q_naive.abs()));
            assert!((quad_form_packed(&m, &x) - q_naive).abs() < 1e-9 * (1.0 + q_naive.abs()));
        }
    }

    #[test]
    fn rank1_variants_agree() {
        let d = 13;
        let m = pack(&sample_spd(d), d);
        let u: Vec<f64> = (0..d).map(|i| i as f64 - 6.0).collect();
        let mut into = vec![0.0; m.len()];
        rank1_packed_into(&m, &u, 0.25, &mut into);
        let mut in_place = m.clone();
        rank1_packed_in_place(&mut in_place, &u, 0.25);
        assert_eq!(into.len(), in_place.len());
        for (a, b) in into.iter().zip(&in_place) {
            assert!((a - b).abs() < 1e-12 * (1.0 + a.abs()));
        }
        let full = unpack(&into, d);
        let orig = sample_spd(d);
        for i in 0..d {
            for j in 0..d {
                let want = orig[i * d + j] - 0.25 * u[i] * u[j];
                assert!((full[i * d + j] - want).abs() < 1e-12 * (1.0 + want.abs()));
            }
        }
    }

    #[test]
    fn spd_inverse_is_an_inverse() {
        for d in [1, 3, 16, 33] {
            let full = sample_spd(d);
            let inv = unpack(&spd_inverse_packed(&pack(&full, d), d).unwrap(), d);
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
        let m = pack(&[1.0, 2.0, 2.0, 1.0], 2);
        assert!(spd_inverse_packed(&m, 2).is_none());
    }
}
