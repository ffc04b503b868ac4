//! The clock the live queue state runs on by default: seconds on a monotonic clock since this
//! process first asked. One epoch per process, not per policy, so a policy refitted while
//! requests are in flight (a new `Policy` taking over) keeps reading the same time line.
//!
//! Every method that reads or changes a queue takes `now_s` explicitly; callers that simulate
//! time pass their own, and must then pass it everywhere for that policy (the two time lines do
//! not mix).

use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Seconds since the process's epoch (the first call), monotonic.
pub fn now_s() -> f64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    #[test]
    fn never_goes_back() {
        let a = super::now_s();
        let b = super::now_s();
        assert!(a >= 0.0 && b >= a);
    }
}
