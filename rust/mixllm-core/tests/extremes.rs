//! Property tests of the decision rule at the extremes of its inputs: whatever finite prices,
//! speeds, token counts, weights and willingness to pay (including ∞) a caller gives, a decision
//! is made, no NaN is ever the best score, and the choice is the best admissible score or, when
//! no model is admissible, the fastest.

use mixllm_core::{ModelProfile, PerRow, Policy, PolicyConfig, Priors};
use proptest::prelude::*;

/// Finite non-negative values from 0 to the largest, the extremes most likely.
fn amount() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(1e308),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE),
        (-300.0f64..308.0).prop_map(|e| 10f64.powf(e)),
    ]
}

fn positive() -> impl Strategy<Value = f64> {
    amount().prop_filter("> 0", |v| *v > 0.0)
}

fn profile() -> impl Strategy<Value = ModelProfile> {
    (amount(), amount(), amount(), amount(), positive(), 1u32..4).prop_map(
        |(price_in, price_out, fee, ttft_s, tokens_per_s, concurrency)| ModelProfile {
            price_in,
            price_out,
            fee,
            ttft_s,
            tokens_per_s,
            concurrency,
        },
    )
}

fn priors() -> impl Strategy<Value = Priors> {
    (prop_oneof![Just(0.5), -1e300f64..1e300], amount()).prop_map(|(quality, output_tokens)| {
        Priors {
            quality,
            output_tokens,
        }
    })
}

fn config() -> impl Strategy<Value = PolicyConfig> {
    (
        prop_oneof![Just(0.0), amount()],
        prop_oneof![Just(0.0), amount()],
        positive(),
        prop_oneof![Just(0.0), amount()],
    )
        .prop_map(|(alpha, beta, tau_s, tau_margin_sd)| PolicyConfig {
            alpha,
            beta,
            tau_s,
            tau_margin_sd,
            ..PolicyConfig::new(2)
        })
}

fn context() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(prop_oneof![Just(0.0), -1e100f64..1e100, -2.0f64..2.0], 2)
}

/// A policy with the given models, some with a request in flight (so a queue adds its wait).
fn policy_of(config: PolicyConfig, models: &[(ModelProfile, Priors, Option<f64>)]) -> Policy {
    let policy = Policy::new(config).unwrap();
    for (i, (profile, priors, busy)) in models.iter().enumerate() {
        let name = format!("m{i}");
        policy.add_model(&name, *profile, *priors).unwrap();
        if let Some(service) = busy {
            for _ in 0..profile.concurrency {
                policy.begin(&name, Some(*service), 0.0).unwrap();
            }
        }
    }
    policy
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_nan_ever_decides(
        config in config(),
        models in prop::collection::vec((profile(), priors(), prop::option::of(amount())), 1..5),
        x in context(),
        prompt_tokens in amount(),
        willingness_to_pay in prop_oneof![Just(f64::INFINITY), positive()],
    ) {
        let policy = policy_of(config, &models);
        let decision = policy.decide(&x, prompt_tokens, willingness_to_pay, 0.0).unwrap();
        let a = &decision.assessments;
        for m in a {
            prop_assert!(!m.latency_s.is_nan(), "{m:?}");
            prop_assert!(!m.cost_usd.is_nan() && m.cost_usd <= f64::MAX, "{m:?}");
            prop_assert!(!m.penalty.is_nan() && !m.uncertainty.is_nan(), "{m:?}");
            // A NaN score never stays in the running.
            prop_assert!(m.excluded || !m.score.is_nan(), "{m:?}");
        }
        let chosen = &a[decision.index];
        if a.iter().any(|m| !m.excluded) {
            prop_assert!(!chosen.excluded);
            for m in a.iter().filter(|m| !m.excluded) {
                prop_assert!(chosen.score >= m.score, "{chosen:?} against {m:?}");
            }
        } else {
            for m in a {
                prop_assert!(chosen.latency_s <= m.latency_s, "{chosen:?} against {m:?}");
            }
        }
        // The batch path decides the same way.
        let mut out = [usize::MAX];
        policy
            .decide_batch(
                &x,
                PerRow::Same(prompt_tokens),
                PerRow::Same(willingness_to_pay),
                0.0,
                &mut out,
                1,
            )
            .unwrap();
        prop_assert_eq!(out[0], decision.index);
    }

    #[test]
    fn an_infinite_willingness_to_pay_ignores_even_a_saturated_cost(
        profile in profile(),
        prompt_tokens in amount(),
    ) {
        let config = PolicyConfig { alpha: 0.0, beta: 0.0, ..PolicyConfig::new(2) };
        let policy = policy_of(config, &[(profile, Priors::default(), None)]);
        let decision = policy.decide(&[1.0, 0.0], prompt_tokens, f64::INFINITY, 0.0).unwrap();
        // The score is the predicted quality alone: the prior.
        prop_assert_eq!(decision.assessments[0].score, 0.5);
    }
}

#[test]
fn the_audits_cases_pick_a_model_with_a_score() {
    // An infinite cost against an infinite willingness to pay gave NaN, which won.
    let cheap = ModelProfile {
        price_in: 1.0,
        price_out: 1.0,
        fee: 0.0,
        ttft_s: 0.1,
        tokens_per_s: 100.0,
        concurrency: 1,
    };
    let dear = ModelProfile {
        price_out: 1e308,
        ..cheap
    };
    let config = PolicyConfig::new(2);
    let better = Priors {
        quality: 0.9,
        ..Priors::default()
    };
    let policy = policy_of(
        config,
        &[(dear, Priors::default(), None), (cheap, better, None)],
    );
    for willingness_to_pay in [f64::INFINITY, 1.0, 1e-300] {
        let decision = policy
            .decide(&[1.0, 0.0], 1e308, willingness_to_pay, 0.0)
            .unwrap();
        assert!(
            decision.assessments.iter().all(|a| !a.score.is_nan()),
            "{decision:?}"
        );
    }
    // With cost ignored, the better model wins; the dear one's saturated cost is no NaN.
    let decision = policy
        .decide(&[1.0, 0.0], 1e308, f64::INFINITY, 0.0)
        .unwrap();
    assert_eq!(decision.model(), "m1");
    assert!(decision.assessments[0].score.is_finite(), "{decision:?}");
}

/// One observation at the extremes the API accepts: context and quality up to 1e100 in
/// magnitude, any non-negative length, weights from 1e-100 to 1e100.
type Extreme = (Vec<f64>, f64, Option<f64>, f64);

fn extreme_observation(dim: usize) -> impl Strategy<Value = Extreme> {
    let magnitude = || {
        prop_oneof![
            Just(0.0),
            -2.0f64..2.0,
            (-100.0f64..100.0, any::<bool>()).prop_map(|(e, negative)| if negative {
                -1.0
            } else {
                1.0
            } * 10f64.powf(e)),
        ]
    };
    (
        prop::collection::vec(magnitude(), dim),
        magnitude(),
        prop::option::of(prop_oneof![
            Just(0.0),
            (0.0f64..100.0).prop_map(|e| 10f64.powf(e))
        ]),
        (-100.0f64..100.0).prop_map(|e| 10f64.powf(e)),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever `update` accepts, the state it leaves saves and loads to the same bytes.
    #[test]
    fn every_accepted_update_leaves_a_state_that_loads(
        (dim, rows) in (1usize..5).prop_flat_map(|dim| {
            (Just(dim), prop::collection::vec(extreme_observation(dim), 1..30))
        }),
        refactor_every in prop_oneof![Just(1u64), Just(3), Just(1000)],
        length_ridge in prop_oneof![Just(1.0), Just(1e-3), Just(1e3)],
    ) {
        let config = PolicyConfig { refactor_every, length_ridge, ..PolicyConfig::new(dim) };
        let policy = policy_of(config, &[(ModelProfile {
            price_in: 1.0,
            price_out: 1.0,
            fee: 0.0,
            ttft_s: 0.1,
            tokens_per_s: 10.0,
            concurrency: 1,
        }, Priors::default(), None)]);
        for (x, quality, output_tokens, weight) in &rows {
            let obs = mixllm_core::Observation { x, quality: *quality, output_tokens: *output_tokens, weight: *weight };
            // A refusal changes nothing; an acceptance must leave a loadable state.
            if policy.update("m0", &obs).is_ok() {
                let bytes = mixllm_core::persist::to_bytes(&policy);
                let loaded = mixllm_core::persist::from_bytes(&bytes, Some(dim));
                prop_assert!(loaded.is_ok(), "{:?} after {x:?} {quality} {output_tokens:?} {weight}", loaded.err());
                prop_assert_eq!(mixllm_core::persist::to_bytes(&loaded.unwrap()), bytes);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever `fit` accepts, the state it leaves saves and loads to the same bytes.
    #[test]
    fn every_accepted_fit_leaves_a_state_that_loads(
        (dim, rows) in (1usize..5).prop_flat_map(|dim| {
            (Just(dim), prop::collection::vec(extreme_observation(dim), 1..30))
        }),
        length_ridge in prop_oneof![Just(1.0), Just(1e-3), Just(1e3)],
    ) {
        let config = PolicyConfig { length_ridge, ..PolicyConfig::new(dim) };
        let policy = policy_of(config, &[(ModelProfile {
            price_in: 1.0,
            price_out: 1.0,
            fee: 0.0,
            ttft_s: 0.1,
            tokens_per_s: 10.0,
            concurrency: 1,
        }, Priors::default(), None)]);
        let xs: Vec<f64> = rows.iter().flat_map(|r| r.0.clone()).collect();
        let quality: Vec<f64> = rows.iter().map(|r| r.1).collect();
        let tokens: Vec<f64> = rows.iter().map(|r| r.2.unwrap_or(f64::NAN)).collect();
        let weights: Vec<f64> = rows.iter().map(|r| r.3).collect();
        if policy.fit("m0", &xs, &quality, Some(&tokens), Some(&weights)).is_ok() {
            let bytes = mixllm_core::persist::to_bytes(&policy);
            let loaded = mixllm_core::persist::from_bytes(&bytes, Some(dim));
            prop_assert!(loaded.is_ok(), "{:?}", loaded.err());
            prop_assert_eq!(mixllm_core::persist::to_bytes(&loaded.unwrap()), bytes);
        }
    }
}
