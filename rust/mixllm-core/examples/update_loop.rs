//! Runs a given number of `Policy::update` calls on one arm, for counting instructions per
//! update under callgrind (a count that does not depend on the machine's load):
//!
//! ```text
//! cargo build --release -p mixllm-core --example update_loop
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/update_loop DIM UPDATES [own]
//! ```
//!
//! The difference between two runs with different `UPDATES`, divided by the difference in
//! updates, is the cost of one update without the setup. `own` gives the length head a ridge of
//! its own, so an update does two rank-1 steps. Exact refactorisations are disabled so that
//! every update takes the rank-1 path.

use mixllm_core::{ModelProfile, Observation, Policy, PolicyConfig, Priors};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: update_loop DIM UPDATES [own]";
    let dim: usize = args.get(1).and_then(|a| a.parse().ok()).expect(usage);
    let updates: usize = args.get(2).and_then(|a| a.parse().ok()).expect(usage);
    let own_length_ridge = args.get(3).is_some_and(|a| a == "own");
    let config = PolicyConfig {
        length_ridge: if own_length_ridge { 30.0 } else { 1.0 },
        refactor_every: u64::MAX,
        ..PolicyConfig::new(dim)
    };
    let policy = Policy::new(config).expect("a valid configuration");
    let profile = ModelProfile {
        price_in: 0.1,
        price_out: 0.3,
        fee: 0.0,
        ttft_s: 0.2,
        tokens_per_s: 40.0,
        concurrency: 8,
    };
    policy
        .add_model("model", profile, Priors::default())
        .expect("a new model");
    // Deterministic contexts of unit norm that differ from one update to the next.
    let mut x = vec![0.0; dim];
    for n in 0..updates {
        for (k, v) in x.iter_mut().enumerate() {
            *v = ((n * dim + k) as f64 * 0.7311).sin();
        }
        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        x.iter_mut().for_each(|v| *v /= norm);
        let obs = Observation {
            x: &x,
            quality: (n % 3) as f64 / 2.0,
            output_tokens: Some(10.0 + (n % 50) as f64),
            weight: 1.0,
        };
        policy.update("model", &obs).expect("an accepted update");
    }
}
