//! Property tests of one request's limits in the decision and of length-only learning, through
//! the public API: a decision within limits is the unrestricted rule applied to the eligible
//! models, its ranking is their order under that rule, nothing eligible is one error naming
//! the limit; lengths learned alone equal the exact ridge solution of the length head and
//! leave the quality head untouched, and survive a save and a load.

use mixllm_core::{
    persist, Error, Limits, ModelProfile, Observation, Policy, PolicyConfig, Priors,
};
use proptest::prelude::*;

const MODELS: usize = 5;

fn profile(i: usize) -> ModelProfile {
    ModelProfile {
        price_in: 0.5 + i as f64,
        price_out: 3.0 * i as f64,
        fee: 0.0,
        ttft_s: 0.1 * (MODELS - i) as f64,
        tokens_per_s: 20.0 + 15.0 * i as f64,
        concurrency: 1,
    }
}

fn name(i: usize) -> String {
    format!("m{i}")
}

/// A pool of `MODELS` models, each taught a few observations, with some requests in flight so
/// that latencies (and τ exclusions) differ.
fn pool(dim: usize, tau_s: f64, data: &[(Vec<f64>, f64, f64)], busy: &[usize]) -> Policy {
    let mut config = PolicyConfig::new(dim);
    config.tau_s = tau_s;
    let policy = Policy::new(config).unwrap();
    for i in 0..MODELS {
        let priors = Priors {
            quality: 0.2 + 0.1 * i as f64,
            output_tokens: 50.0 + 40.0 * i as f64,
        };
        policy.add_model(&name(i), profile(i), priors).unwrap();
    }
    for (k, (x, quality, tokens)) in data.iter().enumerate() {
        let obs = Observation {
            x,
            quality: *quality,
            output_tokens: Some(*tokens),
            weight: 1.0,
        };
        policy.update(&name(k % MODELS), &obs).unwrap();
    }
    for &i in busy {
        policy.begin(&name(i), Some(5.0), 0.0).unwrap();
    }
    policy
}

/// A dimension, observations (context, quality, output tokens) and a query of that dimension.
type Case = (usize, Vec<(Vec<f64>, f64, f64)>, Vec<f64>);

fn case() -> impl Strategy<Value = Case> {
    (1usize..8).prop_flat_map(|dim| {
        (
            Just(dim),
            prop::collection::vec(
                (
                    prop::collection::vec(-1.0f64..1.0, dim),
                    0.0f64..1.0,
                    1.0f64..800.0,
                ),
                0..20,
            ),
            prop::collection::vec(-1.0f64..1.0, dim),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn a_decision_within_limits_is_the_rule_on_the_eligible_models(
        (dim, data, x) in case(),
        tau_s in prop_oneof![Just(1e9), 0.5f64..20.0],
        busy in prop::collection::vec(0usize..MODELS, 0..6),
        allowed in prop::option::of(prop::collection::vec(0usize..MODELS + 2, 1..4)),
        cost_quantile in prop::option::of(0.0f64..1.2),
        latency_quantile in prop::option::of(0.0f64..1.2),
    ) {
        let policy = pool(dim, tau_s, &data, &busy);
        let whole = policy.decide(&x, 200.0, 0.05, 1.0).unwrap();
        let costs: Vec<f64> = whole.assessments.iter().map(|a| a.cost_usd).collect();
        let latencies: Vec<f64> = whole.assessments.iter().map(|a| a.latency_s).collect();
        // Limits placed among the models' own predictions, so every outcome occurs.
        let between = |values: &[f64], q: f64| {
            let (lo, hi) = values.iter().fold((f64::MAX, 0.0f64), |(l, h), &v| (l.min(v), h.max(v)));
            (lo + q * (hi - lo)).max(1e-12)
        };
        let names: Option<Vec<String>> = allowed.map(|a| a.into_iter().map(name).collect());
        let limits = Limits {
            models: names.as_deref(),
            max_cost_usd: cost_quantile.map_or(f64::INFINITY, |q| between(&costs, q)),
            max_latency_s: latency_quantile.map_or(f64::INFINITY, |q| between(&latencies, q)),
        };
        let within = policy.decide_within(&x, 200.0, 0.05, 1.0, &limits);

        let eligible: Vec<usize> = (0..MODELS)
            .filter(|&i| names.as_ref().is_none_or(|n| n.contains(&name(i))))
            .filter(|&i| costs[i] <= limits.max_cost_usd && latencies[i] <= limits.max_latency_s)
            .collect();
        let a = &whole.assessments;
        let mut admissible: Vec<usize> = eligible.iter().copied().filter(|&i| !a[i].excluded).collect();
        admissible.sort_by(|&i, &j| a[j].score.partial_cmp(&a[i].score).unwrap());
        let mut excluded: Vec<usize> = eligible.iter().copied().filter(|&i| a[i].excluded).collect();
        excluded.sort_by(|&i, &j| a[i].latency_s.partial_cmp(&a[j].latency_s).unwrap());
        let expected: Vec<usize> = admissible.into_iter().chain(excluded).collect();

        match within {
            Ok(decision) => {
                prop_assert_eq!(decision.index, expected[0]);
                prop_assert_eq!(decision.ranking(), expected.clone());
                for (i, (got, all)) in decision.assessments.iter().zip(a).enumerate() {
                    // The same predictions and scores; only eligibility differs.
                    prop_assert_eq!(got.score, all.score);
                    prop_assert_eq!(got.cost_usd, all.cost_usd);
                    prop_assert_eq!(got.eligible, expected.contains(&i));
                }
            }
            Err(Error::NoneAllowed(message)) => {
                prop_assert!(expected.is_empty());
                prop_assert!(names.as_ref().unwrap().iter().all(|n| !policy.models().iter().any(|m| **m == **n)));
                prop_assert!(message.contains("m"));
            }
            Err(Error::NoModelWithinLimits(message)) => {
                prop_assert!(expected.is_empty());
                let allowed_in_pool: Vec<usize> = (0..MODELS)
                    .filter(|&i| names.as_ref().is_none_or(|n| n.contains(&name(i))))
                    .collect();
                let any_within_cost = allowed_in_pool.iter().any(|&i| costs[i] <= limits.max_cost_usd);
                let named = if any_within_cost { "max_latency_s" } else { "max_cost_usd =" };
                prop_assert!(message.contains(named), "{}", message);
            }
            Err(other) => prop_assert!(false, "unexpected error {}", other),
        }
        // Deciding changed nothing: the same decision again.
        let again = policy.decide(&x, 200.0, 0.05, 1.0).unwrap();
        prop_assert_eq!(again.index, whole.index);
    }

    #[test]
    fn lengths_learned_alone_are_the_exact_length_head_and_leave_quality_alone(
        (dim, data, _x) in case(),
        lengths in prop::collection::vec((prop::collection::vec(-1.0f64..1.0, 8), 0.0f64..3000.0, 0.1f64..5.0), 1..30),
        every in 1u64..12,
        length_ridge in prop_oneof![Just(1.0), 0.1f64..10.0],
    ) {
        let mut config = PolicyConfig::new(dim);
        config.refactor_every = every;
        config.length_ridge = length_ridge;
        let online = Policy::new(config).unwrap();
        let batch = Policy::new(config).unwrap();
        let priors = Priors::default();
        for p in [&online, &batch] {
            p.add_model("m", profile(1), priors).unwrap();
        }
        // Feedback with lengths, then lengths alone: the batch fit sees the feedback rows
        // with their quality, and the length-only rows with no quality, which a fit can only
        // express by giving them to A too; so compare the length head against the batch fit
        // of every length, and the quality head against the fit of the feedback alone.
        for (x, quality, tokens) in &data {
            let obs = Observation { x, quality: *quality, output_tokens: Some(*tokens), weight: 1.0 };
            online.update("m", &obs).unwrap();
        }
        let quality_only = online.report("m").unwrap();
        let mut xs: Vec<f64> = data.iter().flat_map(|r| r.0.clone()).collect();
        let mut tokens: Vec<f64> = data.iter().map(|r| r.2).collect();
        let mut weights: Vec<f64> = vec![1.0; data.len()];
        for (row, t, w) in &lengths {
            let x = &row[..dim];
            online.update_length("m", x, *t, *w).unwrap();
            xs.extend_from_slice(x);
            tokens.push(*t);
            weights.push(*w);
        }
        let after = online.report("m").unwrap();
        // The quality head and A⁻¹ are as the feedback left them, bit for bit or nearly (an
        // exact refactorisation may recompute A⁻¹).
        prop_assert!(close(&after.stats.theta_quality, &quality_only.stats.theta_quality, 1e-9));
        prop_assert!(close(&after.stats.a_inv, &quality_only.stats.a_inv, 1e-9));
        prop_assert_eq!(&after.ledger.a, &quality_only.ledger.a);
        prop_assert_eq!(after.stats.observations, data.len() as u64);
        // The length head: a fit of every length (quality irrelevant to it).
        let filler = vec![0.5; tokens.len()];
        batch.fit("m", &xs, &filler, Some(&tokens), Some(&weights)).unwrap();
        let exact = batch.report("m").unwrap();
        prop_assert!(close(&after.stats.theta_log_length, &exact.stats.theta_log_length, 1e-6));
        prop_assert!(close(after.ledger.length_a(), exact.ledger.length_a(), 1e-9));
        prop_assert!(close(after.length_a_inv(), exact.length_a_inv(), 1e-7));
        // Saved and loaded: the same arm.
        let restored = persist::from_bytes(&persist::to_bytes(&online), None).unwrap();
        let back = restored.report("m").unwrap();
        prop_assert_eq!(&back.stats.theta_log_length, &after.stats.theta_log_length);
        prop_assert_eq!(&back.ledger, &after.ledger);
    }

    #[test]
    fn a_rejected_length_changes_nothing(
        (dim, data, x) in case(),
        bad in prop_oneof![Just(-1.0), Just(f64::NAN), Just(f64::INFINITY), Just(1e101)],
        bad_weight in prop::bool::ANY,
    ) {
        let policy = pool(dim, 1e9, &data, &[]);
        let before = persist::to_bytes(&policy);
        let (tokens, weight) = if bad_weight { (10.0, bad.min(0.0)) } else { (bad, 1.0) };
        prop_assert!(policy.update_length("m0", &x, tokens, weight).is_err());
        prop_assert!(policy.update_length("nope", &x, 10.0, 1.0).is_err());
        let short = vec![0.0; dim + 1];
        prop_assert!(policy.update_length("m0", &short, 10.0, 1.0).is_err());
        prop_assert_eq!(persist::to_bytes(&policy), before);
    }
}

fn close(a: &[f64], b: &[f64], tolerance: f64) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= tolerance * (1.0 + x.abs().max(y.abs())))
}
