//! mixllm's decision core: per-model LinUCB state with Sherman–Morrison updates, ridge quality
//! and output-length predictors, latency-aware scoring, a live pool that models join and leave,
//! persistence, and the text side of the encoders (tokenizing, a static token-table encoder).
//! Pure Rust, no Python: the binding crate wraps [`Policy`].
//!
//! See `policy` for the concurrency design and `scoring` for the decision rule.

// `simd` holds the measured hot loops written with intrinsics (see its docs) and `kernels` the
// dispatch to them; everything else is safe code.
#![deny(unsafe_code)]

pub mod arm;
pub mod bounds;
pub mod clock;
pub mod config;
pub mod error;
pub mod kernels;
pub mod live;
pub mod persist;
pub mod policy;
pub mod profile;
pub mod scoring;
pub mod simd;
pub mod static_encoder;
pub mod tokenize;

pub use arm::{ArmLedger, ArmStats, Observation};
pub use config::PolicyConfig;
pub use error::{Error, Result};
pub use policy::{ArmReport, Decision, Limits, PerRow, Policy};
pub use profile::{ModelProfile, Priors};
pub use scoring::Assessment;
pub use static_encoder::StaticEncoder;
pub use tokenize::{Keep, TextTokenizer};
