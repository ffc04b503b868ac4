//! Criterion benchmarks of the decision core, K = 11 models as in RouterBench.
//!
//! `cargo bench -p mixllm-core`. Groups: a single decision and a single update at d = 64 and
//! d = 384, the bare read of the state a decision streams (its floor), a batch of decisions, and decisions while another thread applies updates to the same
//! arms (the cost readers pay for the arc-swap design; compare with `decide/64`).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mixllm_core::kernels::dot;
use mixllm_core::{ModelProfile, Observation, PerRow, Policy, PolicyConfig, Priors};
use rand::{rngs::StdRng, Rng, SeedableRng};

const MODELS: usize = 11;

fn unit_vector(rng: &mut StdRng, dim: usize) -> Vec<f64> {
    let mut x: Vec<f64> = (0..dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
    x.iter_mut().for_each(|v| *v /= norm);
    x
}

/// A pool of 11 models with some learned state, so A⁻¹ is dense.
fn trained_policy(dim: usize, rng: &mut StdRng) -> Policy {
    trained_policy_with(PolicyConfig::new(dim), rng)
}

/// [`trained_policy`] with the given configuration.
fn trained_policy_with(config: PolicyConfig, rng: &mut StdRng) -> Policy {
    let dim = config.dim;
    let policy = Policy::new(config).unwrap();
    for m in 0..MODELS {
        let profile = ModelProfile {
            price_in: 0.1 * m as f64,
            price_out: 0.3 * m as f64,
            fee: 0.0,
            ttft_s: 0.2 + 0.05 * m as f64,
            tokens_per_s: 40.0 + 5.0 * m as f64,
            concurrency: 8,
        };
        policy
            .add_model(&format!("model-{m}"), profile, Priors::default())
            .unwrap();
        for _ in 0..200 {
            let x = unit_vector(rng, dim);
            let obs = Observation {
                x: &x,
                quality: rng.gen(),
                output_tokens: Some(rng.gen_range(10.0..500.0)),
                weight: 1.0,
            };
            policy.update(&format!("model-{m}"), &obs).unwrap();
        }
    }
    policy
}

fn decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    for dim in [64, 384] {
        let mut rng = StdRng::seed_from_u64(7);
        let policy = trained_policy(dim, &mut rng);
        let x = unit_vector(&mut rng, dim);
        group.bench_with_input(BenchmarkId::from_parameter(dim), &dim, |b, _| {
            b.iter(|| policy.decide(black_box(&x), 300.0, 1e4, 0.0).unwrap().index)
        });
    }
    group.finish();
}

/// Sum of every entry with eight independent AVX-512 additions per step: the fastest way to read
/// a buffer once that this benchmark knows (AVX-512 CPUs only; `read_state/sum` is skipped
/// elsewhere).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_avx512(values: &[f64]) -> f64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_pd(); 8];
    let chunks = values.chunks_exact(64);
    let tail: f64 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (j, acc) in acc.iter_mut().enumerate() {
            *acc = _mm512_add_pd(*acc, _mm512_loadu_pd(chunk.as_ptr().add(8 * j)));
        }
    }
    let mut total = acc[0];
    for other in &acc[1..] {
        total = _mm512_add_pd(total, *other);
    }
    _mm512_reduce_add_pd(total) + tail
}

/// The floor under `decide`: streaming every model's A⁻¹ once with no scoring. `read_state/<d>`
/// takes a dot product of each with itself (the batch path's kernel: one pass over memory, the
/// second operand read from the same cache lines); `read_state/sum/<d>`
/// only adds the entries up, the least work a read can do. A decision cannot read less; compare
/// with `decide/<d>`.
fn read_state(c: &mut Criterion) {
    let mut group = c.benchmark_group("read_state");
    for dim in [64, 384] {
        let mut rng = StdRng::seed_from_u64(7);
        let policy = trained_policy(dim, &mut rng);
        let arms: Vec<_> = policy
            .models()
            .iter()
            .map(|name| policy.report(name).unwrap().stats)
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(dim), &dim, |b, _| {
            b.iter(|| {
                arms.iter()
                    .map(|stats| dot(black_box(&stats.a_inv), &stats.a_inv))
                    .sum::<f64>()
            })
        });
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") {
            group.bench_with_input(BenchmarkId::new("sum", dim), &dim, |b, _| {
                b.iter(|| {
                    arms.iter()
                        // SAFETY: AVX-512F was detected just above.
                        .map(|stats| unsafe { sum_avx512(black_box(&stats.a_inv)) })
                        .sum::<f64>()
                })
            });
        }
    }
    group.finish();
}

/// One update, with the default ridges (the two heads share one system) and with a
/// `length_ridge` of its own (two systems, two rank-1 steps).
fn update(c: &mut Criterion) {
    let mut group = c.benchmark_group("update");
    for (dim, own_length_ridge) in [(64, false), (64, true), (384, false), (384, true)] {
        let mut rng = StdRng::seed_from_u64(8);
        let config = PolicyConfig {
            length_ridge: if own_length_ridge { 30.0 } else { 1.0 },
            ..PolicyConfig::new(dim)
        };
        let policy = trained_policy_with(config, &mut rng);
        let x = unit_vector(&mut rng, dim);
        let id = if own_length_ridge {
            BenchmarkId::new("own_length_ridge", dim)
        } else {
            BenchmarkId::from_parameter(dim)
        };
        group.bench_with_input(id, &dim, |b, _| {
            b.iter(|| {
                let obs = Observation {
                    x: black_box(&x),
                    quality: 0.7,
                    output_tokens: Some(120.0),
                    weight: 1.0,
                };
                policy.update("model-3", &obs).unwrap()
            })
        });
    }
    group.finish();
}

fn decide_batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide_batch");
    let dim = 64;
    let rows = 4096;
    let mut rng = StdRng::seed_from_u64(9);
    let policy = trained_policy(dim, &mut rng);
    let xs: Vec<f64> = (0..rows).flat_map(|_| unit_vector(&mut rng, dim)).collect();
    let mut out = vec![0usize; rows];
    group.throughput(Throughput::Elements(rows as u64));
    group.bench_function(BenchmarkId::from_parameter(dim), |b| {
        b.iter(|| {
            policy
                .decide_batch(
                    &xs,
                    PerRow::Same(300.0),
                    PerRow::Same(1e4),
                    0.0,
                    &mut out,
                    1,
                )
                .unwrap();
        })
    });
    group.finish();
}

/// Decisions while a second thread updates the arms as fast as it can.
fn decide_under_updates(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide_under_updates");
    let dim = 64;
    let mut rng = StdRng::seed_from_u64(10);
    let policy = Arc::new(trained_policy(dim, &mut rng));
    let x = unit_vector(&mut rng, dim);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (policy, stop) = (policy.clone(), stop.clone());
        let x = unit_vector(&mut rng, dim);
        std::thread::spawn(move || {
            let mut m = 0;
            while !stop.load(Ordering::Relaxed) {
                let obs = Observation {
                    x: &x,
                    quality: 0.5,
                    output_tokens: None,
                    weight: 1.0,
                };
                policy.update(&format!("model-{m}"), &obs).unwrap();
                m = (m + 1) % MODELS;
            }
        })
    };
    group.bench_function(BenchmarkId::from_parameter(dim), |b| {
        b.iter(|| policy.decide(black_box(&x), 300.0, 1e4, 0.0).unwrap().index)
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    group.finish();
}

criterion_group!(
    benches,
    decide,
    read_state,
    update,
    decide_batch,
    decide_under_updates
);
criterion_main!(benches);
