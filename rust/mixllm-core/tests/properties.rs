//! Property tests of the core through its public API: whatever the dimension, weights, pool
//! changes and refactorisation period, online learning equals the exact batch solution, rejected
//! calls change nothing, and a save/load round trip is exact.

use mixllm_core::{persist, ModelProfile, Observation, PerRow, Policy, PolicyConfig, Priors};
use proptest::prelude::*;

fn profile(i: usize) -> ModelProfile {
    ModelProfile {
        price_in: i as f64,
        price_out: 2.0 * i as f64,
        fee: 0.0,
        ttft_s: 0.2,
        tokens_per_s: 30.0 + i as f64,
        concurrency: 2,
    }
}

/// One observation: context, quality, output tokens, weight.
type Row = (Vec<f64>, f64, f64, f64);

/// Rows of observations for a given dimension.
fn rows(dim: usize) -> impl Strategy<Value = Vec<Row>> {
    prop::collection::vec(
        (
            prop::collection::vec(-2.0f64..2.0, dim),
            0.0f64..1.0,
            0.0f64..2000.0,
            prop_oneof![Just(1.0), 0.01f64..100.0],
        ),
        1..60,
    )
}

/// A dimension, a refactorisation period and observations of that dimension.
fn case() -> impl Strategy<Value = (usize, u64, Vec<Row>)> {
    (1usize..24, 1u64..40).prop_flat_map(|(dim, every)| (Just(dim), Just(every), rows(dim)))
}

fn close(a: &[f64], b: &[f64], tolerance: f64) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= tolerance * (1.0 + x.abs().max(y.abs())))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn online_updates_equal_the_batch_fit(
        (dim, every, data) in case(),
        length_ridge in prop_oneof![Just(1.0), 0.05f64..50.0],
    ) {
        let mut config = PolicyConfig::new(dim);
        config.refactor_every = every;
        config.length_ridge = length_ridge;
        let online = Policy::new(config).unwrap();
        let batch = Policy::new(config).unwrap();
        for policy in [&online, &batch] {
            policy.add_model("m", profile(1), Priors::default()).unwrap();
        }
        for (x, quality, tokens, weight) in &data {
            let obs = Observation { x, quality: *quality, output_tokens: Some(*tokens), weight: *weight };
            online.update("m", &obs).unwrap();
        }
        let xs: Vec<f64> = data.iter().flat_map(|r| r.0.clone()).collect();
        let quality: Vec<f64> = data.iter().map(|r| r.1).collect();
        let tokens: Vec<f64> = data.iter().map(|r| r.2).collect();
        let weights: Vec<f64> = data.iter().map(|r| r.3).collect();
        batch.fit("m", &xs, &quality, Some(&tokens), Some(&weights)).unwrap();
        let (a, b) = (online.report("m").unwrap(), batch.report("m").unwrap());
        prop_assert!(close(&a.stats.a_inv, &b.stats.a_inv, 1e-7));
        prop_assert!(close(&a.stats.theta_quality, &b.stats.theta_quality, 1e-6));
        prop_assert!(close(&a.stats.theta_log_length, &b.stats.theta_log_length, 1e-6));
        prop_assert!(close(&a.ledger.a, &b.ledger.a, 1e-9));
        prop_assert!(close(a.ledger.length_a(), b.ledger.length_a(), 1e-9));
        prop_assert!(close(a.length_a_inv(), b.length_a_inv(), 1e-7));
        // The length head keeps its own matrices only when its ridge differs.
        prop_assert_eq!(a.ledger.length.is_some(), length_ridge != 1.0);
        prop_assert_eq!(b.ledger.length.is_some(), length_ridge != 1.0);
        prop_assert_eq!(a.stats.observations, data.len() as u64);
    }

    #[test]
    fn decisions_follow_the_pool_and_batches_agree(
        (dim, _every, data) in case(),
        // Up to 11 draws of 6 models: some cases remove every model.
        removals in prop::collection::vec(0usize..6, 0..12),
    ) {
        let policy = Policy::new(PolicyConfig::new(dim)).unwrap();
        for m in 0..6 {
            policy.add_model(&format!("m{m}"), profile(m), Priors::default()).unwrap();
        }
        for (i, (x, quality, tokens, weight)) in data.iter().enumerate() {
            let obs = Observation { x, quality: *quality, output_tokens: Some(*tokens), weight: *weight };
            policy.update(&format!("m{}", i % 6), &obs).unwrap();
        }
        let mut expected: Vec<String> = (0..6).map(|m| format!("m{m}")).collect();
        for r in removals {
            let name = format!("m{r}");
            let removed = policy.remove_model(&name);
            prop_assert_eq!(removed.is_ok(), expected.contains(&name));
            expected.retain(|n| n != &name);
        }
        let models: Vec<String> = policy.models().iter().map(|m| m.to_string()).collect();
        prop_assert_eq!(&models, &expected);
        if let Some(name) = models.first() {
            // Removing and adding a model again gives its arm a new generation each time, and
            // it goes to the end of the pool.
            let first = policy.generation(name).unwrap();
            policy.remove_model(name).unwrap();
            policy.add_model(name, profile(0), Priors::default()).unwrap();
            let second = policy.generation(name).unwrap();
            prop_assert!(second != first);
            policy.remove_model(name).unwrap();
            policy.add_model(name, profile(0), Priors::default()).unwrap();
            prop_assert!(policy.generation(name).unwrap() != second);
            prop_assert_eq!(policy.models().last().map(|m| m.to_string()), Some(name.clone()));
        }
        let models: Vec<String> = policy.models().iter().map(|m| m.to_string()).collect();
        if expected.is_empty() {
            prop_assert!(policy.decide(&data[0].0, 10.0, 0.1, 0.0).is_err());
            return Ok(());
        }
        let xs: Vec<f64> = data.iter().flat_map(|r| r.0.clone()).collect();
        let mut chosen = vec![0usize; data.len()];
        policy.decide_batch(&xs, PerRow::Same(10.0), PerRow::Same(0.1), 0.0, &mut chosen, 2).unwrap();
        for ((x, ..), batch_choice) in data.iter().zip(&chosen) {
            let decision = policy.decide(x, 10.0, 0.1, 0.0).unwrap();
            prop_assert_eq!(decision.index, *batch_choice);
            prop_assert_eq!(decision.model(), models[decision.index].as_str());
        }
    }

    #[test]
    fn rejected_updates_change_nothing_and_saves_round_trip((dim, _every, data) in case()) {
        let config = PolicyConfig { length_ridge: 3.0, tau_margin_sd: 1.0, ..PolicyConfig::new(dim) };
        let policy = Policy::new(config).unwrap();
        policy.add_model("m", profile(2), Priors::default()).unwrap();
        // Served requests, so the service averages and their squared error are saved too.
        for (i, (_, quality, tokens, _)) in data.iter().take(3).enumerate() {
            let now = 100.0 * i as f64;
            policy.begin("m", Some(tokens / 10.0), now).unwrap();
            policy.end("m", Some(quality * 20.0), Some(tokens / 10.0), now + 1.0).unwrap();
        }
        for (i, (x, quality, tokens, weight)) in data.iter().enumerate() {
            // Some lengths unseen, so the two heads' matrices differ.
            let tokens = (i % 3 != 1).then_some(*tokens);
            let obs = Observation { x, quality: *quality, output_tokens: tokens, weight: *weight };
            policy.update("m", &obs).unwrap();
        }
        let before = persist::to_bytes(&policy);
        let x = &data[0].0;
        let mut nan_x = x.clone();
        nan_x[0] = f64::NAN;
        let bad = [
            Observation { x: &nan_x, quality: 0.5, output_tokens: None, weight: 1.0 },
            Observation { x, quality: f64::INFINITY, output_tokens: None, weight: 1.0 },
            Observation { x, quality: 0.5, output_tokens: Some(-1.0), weight: 1.0 },
            Observation { x, quality: 0.5, output_tokens: None, weight: 0.0 },
            Observation { x, quality: 1e200, output_tokens: None, weight: 1.0 },
        ];
        for obs in &bad {
            prop_assert!(policy.update("m", obs).is_err());
        }
        let short = Observation { x: &x[..dim - 1], quality: 0.5, output_tokens: None, weight: 1.0 };
        let rejected = policy.update("m", &short).is_err();
        prop_assert!(rejected);
        prop_assert_eq!(&persist::to_bytes(&policy), &before);
        let restored = persist::from_bytes(&before, Some(dim)).unwrap();
        prop_assert_eq!(persist::to_bytes(&restored), before);
        let (a, b) = (policy.decide(x, 5.0, 0.2, 0.0).unwrap(), restored.decide(x, 5.0, 0.2, 0.0).unwrap());
        prop_assert_eq!(a.assessments, b.assessments);
    }
}

/// Batches large enough to be split over threads (the split starts at 1,024 rows per thread),
/// with per-row arguments: each thread must read its own rows' values.
#[test]
fn batches_split_over_threads_match_one_thread_and_single_decisions() {
    let dim = 6;
    let policy = Policy::new(PolicyConfig::new(dim)).unwrap();
    for m in 0..5 {
        policy
            .add_model(&format!("m{m}"), profile(m), Priors::default())
            .unwrap();
    }
    let rows = 2_100;
    let value = |i: usize, j: usize| ((i * 7 + j * 13) % 17) as f64 / 17.0 - 0.4;
    let xs: Vec<f64> = (0..rows)
        .flat_map(|i| (0..dim).map(move |j| value(i, j)))
        .collect();
    for (i, x) in xs.chunks_exact(dim).enumerate().take(300) {
        let obs = Observation {
            x,
            quality: (i % 5) as f64 / 4.0,
            output_tokens: Some((i % 7) as f64 * 90.0),
            weight: 1.0,
        };
        policy.update(&format!("m{}", i % 5), &obs).unwrap();
    }
    // Queues as of NOW_S: m0 waits 10 s (penalised), m1 35 s (over τ, excluded), m2 none (a
    // slot is free).
    const NOW_S: f64 = 5.0;
    for (model, requests, service_s) in [("m0", 3, 10.0), ("m1", 2, 40.0), ("m2", 1, 50.0)] {
        for _ in 0..requests {
            policy.begin(model, Some(service_s), 0.0).unwrap();
        }
    }
    assert_eq!(policy.predicted_wait_s("m0", NOW_S).unwrap(), 10.0);
    assert_eq!(policy.predicted_wait_s("m1", NOW_S).unwrap(), 35.0);
    assert_eq!(policy.predicted_wait_s("m2", NOW_S).unwrap(), 0.0);
    let prompt_tokens: Vec<f64> = (0..rows).map(|i| (i % 11) as f64 * 400.0).collect();
    let willingness: Vec<f64> = (0..rows).map(|i| 10f64.powi((i % 5) as i32 - 3)).collect();
    let batch = |threads: usize| {
        let mut out = vec![usize::MAX; rows];
        policy
            .decide_batch(
                &xs,
                PerRow::Each(&prompt_tokens),
                PerRow::Each(&willingness),
                NOW_S,
                &mut out,
                threads,
            )
            .unwrap();
        out
    };
    let (one, two) = (batch(1), batch(2));
    assert_eq!(one, two);
    for (i, x) in xs.chunks_exact(dim).enumerate() {
        let single = policy
            .decide(x, prompt_tokens[i], willingness[i], NOW_S)
            .unwrap();
        assert_eq!(single.index, two[i], "row {i}");
        assert!(single.assessments[1].excluded);
        let m0 = &single.assessments[0];
        assert!((m0.latency_s - m0.service_s - 10.0).abs() < 1e-9);
    }
    assert!(!two.contains(&1), "m1 is over τ at NOW_S");
    let distinct: std::collections::HashSet<_> = two.iter().collect();
    assert!(distinct.len() > 1, "the batch chose between models");
}
