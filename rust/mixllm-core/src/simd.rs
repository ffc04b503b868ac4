//! The kernels written with explicit AVX-512 and AVX2+FMA intrinsics, one module per instruction
//! set generated from one macro, and the run-time choice between them and the portable versions
//! in [`crate::kernels`].
//!
//! Why intrinsics: the compiler's own vectorisation of these loops, even with the instruction set
//! enabled by function multiversioning, came out as 128-bit SSE code with shuffles or as scalar
//! code: a decision at d = 64 took 4.7–7.6 µs and an update 3.9 µs, against ≈ 1 µs and ≈ 1.5 µs
//! with these kernels (criterion, AMD EPYC, 2 cores, same run conditions).
//!
//! Every function here is `unsafe`: it must only run on a CPU with its instruction set, which
//! [`isa`] guarantees, and on slices of the lengths its safe wrapper in `kernels` asserts.

#![allow(unsafe_code)]

use std::sync::OnceLock;

/// Which family of kernels runs on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Portable,
}

/// The instruction set the kernels use on this CPU, detected once. Setting the environment
/// variable `MIXLLM_PORTABLE_KERNELS` forces the portable kernels (for testing them).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    if std::env::var_os("MIXLLM_PORTABLE_KERNELS").is_some() {
        Isa::Portable
    } else if is_x86_feature_detected!("avx512f") {
        Isa::Avx512
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        Isa::Avx2
    } else {
        Isa::Portable
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Isa {
    Isa::Portable
}

/// Generates one module of kernels for an instruction set. `$lanes` f64 per register; the
/// layout's chunks (8 values) are a whole number of registers for both widths.
#[cfg(target_arch = "x86_64")]
macro_rules! x86_kernels {
    (
        $module:ident, $features:literal, $lanes:literal,
        vector: $vector:ty, zero: $zero:ident, splat: $splat:ident, load: $load:ident, store: $store:ident,
        fmadd: $fmadd:ident, fnmadd: $fnmadd:ident, add: $add:ident, mul: $mul:ident,
        sum: $sum:path, and: $and:path,
        flags: $flags:expr, beyond: $beyond:path, none: $none:path
    ) => {
        pub mod $module {
            use std::arch::x86_64::*;

            const LANES: usize = $lanes;
            /// The layout's chunk width (see `kernels::LANES`).
            const CHUNK: usize = 8;

            /// # Safety
            /// CPU support for the module's instruction set; `a.len() == b.len()`.
            #[target_feature(enable = $features)]
            pub unsafe fn dot(a: &[f64], b: &[f64]) -> f64 {
                let n = a.len();
                let (pa, pb) = (a.as_ptr(), b.as_ptr());
                // Eight independent sums: enough FMAs in flight to cover their latency on
                // cores that issue two per cycle.
                let mut acc = [$zero(); 8];
                let mut k = 0;
                while k + 8 * LANES <= n {
                    for (j, acc) in acc.iter_mut().enumerate() {
                        let at = k + j * LANES;
                        *acc = $fmadd($load(pa.add(at)), $load(pb.add(at)), *acc);
                    }
                    k += 8 * LANES;
                }
                let mut j = 0;
                while k + LANES <= n {
                    acc[j] = $fmadd($load(pa.add(k)), $load(pb.add(k)), acc[j]);
                    j += 1;
                    k += LANES;
                }
                let quads = [
                    $add($add(acc[0], acc[1]), $add(acc[2], acc[3])),
                    $add($add(acc[4], acc[5]), $add(acc[6], acc[7])),
                ];
                let mut total = $sum($add(quads[0], quads[1]));
                while k < n {
                    total += *pa.add(k) * *pb.add(k);
                    k += 1;
                }
                total
            }

            /// # Safety
            /// CPU support; every slice of `w` has `a`'s length.
            #[target_feature(enable = $features)]
            pub unsafe fn dot4(a: &[f64], w: [&[f64]; 4]) -> [f64; 4] {
                let n = a.len();
                let pa = a.as_ptr();
                let pw = w.map(|wi| wi.as_ptr());
                // Two chunks per step, so eight independent accumulators hide FMA latency.
                let mut even = [$zero(); 4];
                let mut odd = [$zero(); 4];
                let mut k = 0;
                while k + 2 * LANES <= n {
                    let (a0, a1) = ($load(pa.add(k)), $load(pa.add(k + LANES)));
                    for j in 0..4 {
                        even[j] = $fmadd(a0, $load(pw[j].add(k)), even[j]);
                        odd[j] = $fmadd(a1, $load(pw[j].add(k + LANES)), odd[j]);
                    }
                    k += 2 * LANES;
                }
                while k + LANES <= n {
                    let a0 = $load(pa.add(k));
                    for j in 0..4 {
                        even[j] = $fmadd(a0, $load(pw[j].add(k)), even[j]);
                    }
                    k += LANES;
                }
                let mut out = [0.0; 4];
                for j in 0..4 {
                    out[j] = $sum($add(even[j], odd[j]));
                    for i in k..n {
                        out[j] += *pa.add(i) * *pw[j].add(i);
                    }
                }
                out
            }

            /// `out = M x`; returns `xᵀ M x`.
            /// # Safety
            /// CPU support; `m` in the blocked layout of (`dim`, `stride`), `x` and `out` of
            /// length `stride`.
            #[target_feature(enable = $features)]
            pub unsafe fn symv(
                dim: usize,
                stride: usize,
                m: &[f64],
                x: &[f64],
                out: &mut [f64],
            ) -> f64 {
                let (pm, px, po) = (m.as_ptr(), x.as_ptr(), out.as_mut_ptr());
                let mut k = 0;
                while k < stride {
                    $store(po.add(k), $zero());
                    k += LANES;
                }
                let mut start = 0;
                for i in 0..dim {
                    let first = CHUNK * (i / CHUNK);
                    let len = stride - first;
                    let row = pm.add(start);
                    let xi = *px.add(i);
                    let xi_splat = $splat(xi);
                    let mut upper = $zero();
                    let mut k = 0;
                    while k < len {
                        let r = $load(row.add(k));
                        upper = $fmadd(r, $load(px.add(first + k)), upper);
                        let o = po.add(first + k);
                        $store(o, $fmadd(r, xi_splat, $load(o)));
                        k += LANES;
                    }
                    // The second pass added the diagonal term to out[i], which `upper` holds.
                    *po.add(i) += $sum(upper) - *row.add(i - first) * xi;
                    start += len;
                }
                dot(x, out)
            }

            /// `xᵀ M x`, reading `M` once, front to back, and nothing else of its size. Row
            /// i's lane-wise products with `x` (its stored part: the zeros left of the diagonal
            /// add nothing) are summed in registers and go into the total scaled by 2·x_i; that
            /// counts the diagonal twice, so it is taken back once at the end. Rows are read in
            /// storage order, one sequential stream the hardware prefetcher follows (which
            /// matters most when another core has just written `M`: a snapshot a concurrent
            /// update published); each row has two sums and consecutive rows feed four
            /// totals in turn, so the sums of neighbouring rows overlap.
            /// # Safety
            /// CPU support; `m` in the blocked layout of (`dim`, `stride`), `x` of length
            /// `stride`.
            #[target_feature(enable = $features)]
            pub unsafe fn quadratic_form(dim: usize, stride: usize, m: &[f64], x: &[f64]) -> f64 {
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn row_sum(row: *const f64, x: *const f64, len: usize) -> $vector {
                    let (mut even, mut odd) = ($zero(), $zero());
                    let mut k = 0;
                    while k + 2 * LANES <= len {
                        even = $fmadd($load(row.add(k)), $load(x.add(k)), even);
                        odd = $fmadd($load(row.add(k + LANES)), $load(x.add(k + LANES)), odd);
                        k += 2 * LANES;
                    }
                    if k < len {
                        even = $fmadd($load(row.add(k)), $load(x.add(k)), even);
                    }
                    $add(even, odd)
                }
                let (pm, px) = (m.as_ptr(), x.as_ptr());
                let mut total = [$zero(); 4];
                let mut diagonal = 0.0;
                let mut start = 0;
                let mut i = 0;
                while i < dim {
                    let first = CHUNK * (i / CHUNK);
                    let len = stride - first;
                    if i + 4 <= dim.min(first + CHUNK) {
                        for j in 0..4 {
                            let row = pm.add(start + j * len);
                            let xi = *px.add(i + j);
                            let sum = row_sum(row, px.add(first), len);
                            total[j] = $fmadd($splat(2.0 * xi), sum, total[j]);
                            diagonal += *row.add(i + j - first) * xi * xi;
                        }
                        start += 4 * len;
                        i += 4;
                    } else {
                        let row = pm.add(start);
                        let xi = *px.add(i);
                        let sum = row_sum(row, px.add(first), len);
                        total[0] = $fmadd($splat(2.0 * xi), sum, total[0]);
                        diagonal += *row.add(i - first) * xi * xi;
                        start += len;
                        i += 1;
                    }
                }
                $sum($add($add(total[0], total[1]), $add(total[2], total[3]))) - diagonal
            }

            /// `out = M − c·u·uᵀ`, keeping the zeros left of the diagonal. `out` may be `m`.
            /// # Safety
            /// CPU support; `m` and `out` valid for the layout's length, `u` of length `stride`.
            #[target_feature(enable = $features)]
            pub unsafe fn rank1(
                dim: usize,
                stride: usize,
                m: *const f64,
                u: &[f64],
                c: f64,
                out: *mut f64,
            ) {
                let pu = u.as_ptr();
                let mut start = 0;
                for i in 0..dim {
                    let first = CHUNK * (i / CHUNK);
                    let len = stride - first;
                    let s = $splat(c * *pu.add(i));
                    let mut k = 0;
                    while k < len {
                        let at = start + k;
                        $store(
                            out.add(at),
                            $fnmadd(s, $load(pu.add(first + k)), $load(m.add(at))),
                        );
                        k += LANES;
                    }
                    for j in 0..i - first {
                        *out.add(start + j) = 0.0;
                    }
                    start += len;
                }
            }

            /// `rank1` into a separate `out`, and whether every entry written lies within an
            /// inverse's bounds: |out_ij| ≤ roots_i·roots_j + slack and not NaN, computed as
            /// `bounds::InverseBounds::off_diagonal_within` does (a product and a sum, each
            /// rounded: no fused multiply-add), while the entry is still in a register. `roots`
            /// are the caller's, from the new diagonal; the padding columns hold zeros, which
            /// every bound admits.
            /// # Safety
            /// CPU support; `u` and `roots` of the layout's `stride` (which `u`'s length gives),
            /// `m` and `out` valid for the layout's length and not overlapping.
            #[target_feature(enable = $features)]
            pub unsafe fn rank1_within(
                dim: usize,
                m: *const f64,
                u: &[f64],
                c: f64,
                out: *mut f64,
                roots: &[f64],
                slack: f64,
            ) -> bool {
                // Lane l of a row's first chunk is kept when l ≥ (the diagonal's lane): the
                // mask for a diagonal in lane p starts at KEEP[CHUNK − p].
                const KEEP: [u64; 2 * CHUNK] = {
                    let mut keep = [0; 2 * CHUNK];
                    let mut l = CHUNK;
                    while l < 2 * CHUNK {
                        keep[l] = u64::MAX;
                        l += 1;
                    }
                    keep
                };
                let keep = KEEP.as_ptr().cast::<f64>();
                let stride = u.len();
                let (pu, pr) = (u.as_ptr(), roots.as_ptr());
                let slack = $splat(slack);
                // The lanes found out of bounds so far, in any chunk.
                let mut beyond = $flags;
                let mut start = 0;
                for i in 0..dim {
                    let first = CHUNK * (i / CHUNK);
                    let len = stride - first;
                    let s = $splat(c * *pu.add(i));
                    let root_i = $splat(*pr.add(i));
                    // The first chunk, with the entries left of the diagonal zeroed in the
                    // register before they are stored and checked.
                    let mut k = 0;
                    while k < CHUNK {
                        let at = start + k;
                        let v = $fnmadd(s, $load(pu.add(first + k)), $load(m.add(at)));
                        let v = $and(v, $load(keep.add(CHUNK - (i - first) + k)));
                        $store(out.add(at), v);
                        let bound = $add($mul(root_i, $load(pr.add(first + k))), slack);
                        beyond = $beyond(beyond, v, bound);
                        k += LANES;
                    }
                    while k < len {
                        let at = start + k;
                        let v = $fnmadd(s, $load(pu.add(first + k)), $load(m.add(at)));
                        $store(out.add(at), v);
                        let bound = $add($mul(root_i, $load(pr.add(first + k))), slack);
                        beyond = $beyond(beyond, v, bound);
                        k += LANES;
                    }
                    start += len;
                }
                $none(beyond)
            }

            /// Writes `kernels::quadratic_weights` of `x` into `out`.
            /// # Safety
            /// CPU support; `x` of length `stride`, `out` valid for the layout's length.
            #[target_feature(enable = $features)]
            pub unsafe fn quadratic_weights(dim: usize, stride: usize, x: &[f64], out: &mut [f64]) {
                let (px, po) = (x.as_ptr(), out.as_mut_ptr());
                let mut start = 0;
                for i in 0..dim {
                    let first = CHUNK * (i / CHUNK);
                    let len = stride - first;
                    let xi = *px.add(i);
                    let twice = $splat(2.0 * xi);
                    let mut k = 0;
                    while k < len {
                        $store(po.add(start + k), $mul(twice, $load(px.add(first + k))));
                        k += LANES;
                    }
                    for j in 0..i - first {
                        *po.add(start + j) = 0.0;
                    }
                    *po.add(start + i - first) = xi * xi;
                    start += len;
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum256(v: std::arch::x86_64::__m256d) -> f64 {
    use std::arch::x86_64::*;
    let pair = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd::<1>(v));
    _mm_cvtsd_f64(_mm_add_sd(pair, _mm_unpackhi_pd(pair, pair)))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum512(v: std::arch::x86_64::__m512d) -> f64 {
    std::arch::x86_64::_mm512_reduce_add_pd(v)
}

/// Bitwise and of two vectors (AVX-512F has it on integers only).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn and512(
    a: std::arch::x86_64::__m512d,
    b: std::arch::x86_64::__m512d,
) -> std::arch::x86_64::__m512d {
    use std::arch::x86_64::*;
    _mm512_castsi512_pd(_mm512_and_si512(
        _mm512_castpd_si512(a),
        _mm512_castpd_si512(b),
    ))
}

/// `flags` with the lanes where `!(|v| <= bound)` (NaN included) added.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn beyond512(
    flags: std::arch::x86_64::__mmask8,
    v: std::arch::x86_64::__m512d,
    bound: std::arch::x86_64::__m512d,
) -> std::arch::x86_64::__mmask8 {
    use std::arch::x86_64::*;
    flags | _mm512_cmp_pd_mask::<_CMP_NLE_UQ>(_mm512_abs_pd(v), bound)
}

/// No lane flagged.
#[cfg(target_arch = "x86_64")]
fn none512(flags: std::arch::x86_64::__mmask8) -> bool {
    flags == 0
}

/// `flags` with the lanes where `!(|v| <= bound)` (NaN included) set to all ones.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn beyond256(
    flags: std::arch::x86_64::__m256d,
    v: std::arch::x86_64::__m256d,
    bound: std::arch::x86_64::__m256d,
) -> std::arch::x86_64::__m256d {
    use std::arch::x86_64::*;
    let magnitude = _mm256_andnot_pd(_mm256_set1_pd(-0.0), v);
    _mm256_or_pd(flags, _mm256_cmp_pd::<_CMP_NLE_UQ>(magnitude, bound))
}

/// No lane flagged.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn none256(flags: std::arch::x86_64::__m256d) -> bool {
    std::arch::x86_64::_mm256_movemask_pd(flags) == 0
}

#[cfg(target_arch = "x86_64")]
x86_kernels!(
    avx512, "avx512f", 8, vector: __m512d,
    zero: _mm512_setzero_pd, splat: _mm512_set1_pd, load: _mm512_loadu_pd,
    store: _mm512_storeu_pd, fmadd: _mm512_fmadd_pd, fnmadd: _mm512_fnmadd_pd,
    add: _mm512_add_pd, mul: _mm512_mul_pd, sum: super::sum512,
    and: super::and512,
    flags: 0, beyond: super::beyond512, none: super::none512
);

#[cfg(target_arch = "x86_64")]
x86_kernels!(
    avx2, "avx2,fma", 4, vector: __m256d,
    zero: _mm256_setzero_pd, splat: _mm256_set1_pd, load: _mm256_loadu_pd,
    store: _mm256_storeu_pd, fmadd: _mm256_fmadd_pd, fnmadd: _mm256_fnmadd_pd,
    add: _mm256_add_pd, mul: _mm256_mul_pd, sum: super::sum256,
    and: _mm256_and_pd,
    flags: _mm256_setzero_pd(), beyond: super::beyond256, none: super::none256
);
