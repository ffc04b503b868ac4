//! Fuzzing the state loader with proptest: arbitrary bytes, and valid files with fields
//! overwritten and the checksum recomputed (so the damage gets past it). Every input must give
//! an error or a policy that works: one that decides, learns, and saves a state that loads
//! again. Never a panic.

use mixllm_core::{persist, ModelProfile, Observation, Policy, PolicyConfig, Priors};
use proptest::prelude::*;

const HEADER_LEN: usize = 20;

/// A valid state of two models of dimension 3, one with its own length system, with learned
/// statistics and finished requests.
fn valid_state() -> Vec<u8> {
    let config = PolicyConfig {
        length_ridge: 2.0,
        refactor_every: 7,
        ..PolicyConfig::new(3)
    };
    let policy = Policy::new(config).unwrap();
    let profile = ModelProfile {
        price_in: 1.0,
        price_out: 2.0,
        fee: 0.001,
        ttft_s: 0.3,
        tokens_per_s: 40.0,
        concurrency: 2,
    };
    for name in ["alpha", "beta"] {
        policy.add_model(name, profile, Priors::default()).unwrap();
    }
    for i in 0..20 {
        let x = [1.0, (i as f64 * 0.7).sin(), (i as f64 * 1.3).cos()];
        let obs = Observation {
            x: &x,
            quality: (i % 3) as f64 / 2.0,
            output_tokens: (i % 4 != 0).then_some(10.0 * i as f64),
            weight: 1.0,
        };
        policy.update(["alpha", "beta"][i % 2], &obs).unwrap();
    }
    policy.begin("alpha", Some(2.0), 0.0).unwrap();
    policy.end("alpha", Some(3.0), Some(2.0), 3.0).unwrap();
    persist::to_bytes(&policy)
}

/// Recomputes the trailing checksum, and with `fix_length` the header's payload length.
fn resealed(mut bytes: Vec<u8>, fix_length: bool) -> Vec<u8> {
    if bytes.len() < HEADER_LEN + 4 {
        return bytes;
    }
    if fix_length {
        let payload = (bytes.len() - HEADER_LEN - 4) as u64;
        bytes[12..20].copy_from_slice(&payload.to_le_bytes());
    }
    let body = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..body]);
    bytes[body..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// What a loaded policy must do: decide (on a defined score or the fastest), learn, and save a
/// state that loads to the same bytes.
fn works(policy: &Policy) -> Result<(), TestCaseError> {
    let dim = policy.config().dim;
    let x = vec![0.5; dim];
    match policy.decide(&x, 100.0, 1.0, 0.0) {
        Ok(decision) => {
            let chosen = &decision.assessments[decision.index];
            prop_assert!(chosen.excluded || !chosen.score.is_nan());
            for name in decision.models.iter() {
                // An update may be refused (a value out of range), never panic.
                let _ = policy.update(
                    name,
                    &Observation {
                        x: &x,
                        quality: 1.0,
                        output_tokens: Some(5.0),
                        weight: 1.0,
                    },
                );
            }
        }
        Err(e) => prop_assert!(policy.models().is_empty(), "{e}"),
    }
    let bytes = persist::to_bytes(policy);
    let again = persist::from_bytes(&bytes, Some(dim));
    prop_assert!(
        again.is_ok(),
        "a loaded policy saved a state that does not load: {:?}",
        again.err()
    );
    prop_assert_eq!(persist::to_bytes(&again.unwrap()), bytes);
    Ok(())
}

/// Interesting 8-byte values for a field: counts, lengths and floats at their extremes.
fn field_value() -> impl Strategy<Value = [u8; 8]> {
    prop_oneof![
        any::<u64>().prop_map(u64::to_le_bytes),
        prop::sample::select(vec![
            0u64,
            1,
            2,
            3,
            4096,
            4097,
            u64::MAX,
            u64::MAX / 2,
            1 << 32,
        ])
        .prop_map(u64::to_le_bytes),
        prop::sample::select(vec![
            0.0f64,
            -0.0,
            -1.0,
            1.0,
            0.5,
            2.0,
            -1e150,
            1e150,
            1e300,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ])
        .prop_map(f64::to_le_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        magic in any::<bool>(),
        version in 0u32..6,
    ) {
        let mut bytes = bytes;
        if magic && bytes.len() >= HEADER_LEN + 4 {
            bytes[..8].copy_from_slice(b"MIXLLMP\0");
            bytes[8..12].copy_from_slice(&version.to_le_bytes());
        }
        for candidate in [bytes.clone(), resealed(bytes, true)] {
            if let Ok(policy) = persist::from_bytes(&candidate, None) {
                works(&policy)?;
            }
        }
    }

    #[test]
    fn overwritten_fields_give_an_error_or_a_working_policy(
        edits in prop::collection::vec((any::<prop::sample::Index>(), field_value(), any::<bool>()), 1..4),
    ) {
        let mut bytes = valid_state();
        let payload = HEADER_LEN..bytes.len() - 4;
        for (at, value, aligned) in edits {
            let mut at = payload.start + at.index(payload.len() - 8);
            if aligned {
                // Fields sit at multiples of 8 from the payload's start.
                at -= (at - payload.start) % 8;
            }
            bytes[at..at + 8].copy_from_slice(&value);
        }
        if let Ok(policy) = persist::from_bytes(&resealed(bytes, false), None) {
            works(&policy)?;
        }
    }

    #[test]
    fn flipped_truncated_or_extended_files_give_an_error_or_a_working_policy(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
        extra in prop::collection::vec(any::<u8>(), 0..40),
        reseal in any::<bool>(),
    ) {
        let mut bytes = valid_state();
        for (at, bits) in flips {
            let at = at.index(bytes.len());
            bytes[at] ^= bits;
        }
        let keep = HEADER_LEN + cut.index(bytes.len() - HEADER_LEN + 1);
        bytes.truncate(keep);
        bytes.extend_from_slice(&extra);
        let bytes = if reseal { resealed(bytes, true) } else { bytes };
        if let Ok(policy) = persist::from_bytes(&bytes, None) {
            works(&policy)?;
        }
    }
}

#[test]
fn the_valid_state_itself_works() {
    let policy = persist::from_bytes(&valid_state(), Some(3)).unwrap();
    let mut runner = proptest::test_runner::TestRunner::default();
    runner.run(&Just(()), |()| works(&policy)).unwrap();
}
