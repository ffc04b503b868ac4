//! Live serving state of one model: requests in flight, the service time predicted for them,
//! and a moving average of observed service times. Plain atomics: each is a scalar, so a reader
//! never sees half an update of one (the count and the predicted work are two atomics and may
//! be one request apart for an instant, which a wait estimate tolerates), and
//! `begin`/`end` never take a lock.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{ensure_non_negative, Error, Result};
use crate::profile::ModelProfile;

/// Bits of f64 NaN: "no service time observed yet".
const NO_OBSERVATION: u64 = 0x7ff8_0000_0000_0000;

#[derive(Debug)]
pub struct LiveStats {
    in_flight: AtomicU64,
    /// Bits of f64: the sum of the predicted service times of the requests in flight.
    work_bits: AtomicU64,
    mean_service_bits: AtomicU64,
    completed: AtomicU64,
}

impl Default for LiveStats {
    fn default() -> Self {
        Self {
            in_flight: AtomicU64::new(0),
            work_bits: AtomicU64::new(0.0f64.to_bits()),
            mean_service_bits: AtomicU64::new(NO_OBSERVATION),
            completed: AtomicU64::new(0),
        }
    }
}

impl LiveStats {
    /// Restores the persistent part (the moving average and its count); nothing is in flight.
    pub fn restored(mean_service_s: Option<f64>, completed: u64) -> Self {
        let stats = Self::default();
        if let Some(mean) = mean_service_s {
            stats
                .mean_service_bits
                .store(mean.to_bits(), Ordering::Relaxed);
        }
        stats.completed.store(completed, Ordering::Relaxed);
        stats
    }

    /// A request was sent to the model, predicted to take `predicted_service_s` seconds once
    /// served (first token + generation; 0 when unknown). Validated before anything changes.
    pub fn begin(&self, predicted_service_s: f64) -> Result<()> {
        ensure_non_negative("predicted_service_s", predicted_service_s)?;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.add_work(predicted_service_s);
        Ok(())
    }

    /// A request finished after `latency_s` seconds of service; `predicted_service_s` is what
    /// its `begin` was given. Both are validated before anything changes.
    pub fn end(
        &self,
        model: &str,
        latency_s: f64,
        predicted_service_s: f64,
        smoothing: f64,
    ) -> Result<()> {
        ensure_non_negative("latency_s", latency_s)?;
        self.leave(model, predicted_service_s)?;
        // The closure always returns Some, so this cannot fail.
        let _ = self
            .mean_service_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let mean = f64::from_bits(bits);
                let next = if mean.is_nan() {
                    latency_s
                } else {
                    mean + smoothing * (latency_s - mean)
                };
                Some(next.to_bits())
            });
        self.completed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A request was abandoned (or its service time is unknown): it leaves the queue without
    /// counting towards the service-time average. `predicted_service_s` is what its `begin`
    /// was given.
    pub fn cancel(&self, model: &str, predicted_service_s: f64) -> Result<()> {
        self.leave(model, predicted_service_s)
    }

    fn leave(&self, model: &str, predicted_service_s: f64) -> Result<()> {
        ensure_non_negative("predicted_service_s", predicted_service_s)?;
        let before = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .map_err(|_| Error::NothingInFlight(model.to_string()))?;
        if before == 1 {
            // Idle: whatever work is left is a caller's mismatch (an `end` without the
            // prediction its `begin` had) or rounding, and must not outlive the queue. A `begin`
            // racing this store loses its share only until it ends.
            self.work_bits.store(0.0f64.to_bits(), Ordering::Relaxed);
        } else {
            self.add_work(-predicted_service_s);
        }
        Ok(())
    }

    /// Adds to the predicted work in flight, never below 0: a caller that ends a request with
    /// another prediction than it began it with skews the estimate, never makes it negative.
    fn add_work(&self, seconds: f64) {
        // The closure always returns Some, so this cannot fail.
        let _ = self
            .work_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + seconds).max(0.0).to_bits())
            });
    }

    /// The mean predicted service time of the requests in flight, if any are.
    pub fn mean_predicted_in_flight_s(&self) -> Option<f64> {
        self.mean_predicted_of(self.in_flight())
    }

    /// The mean predicted service of `n` requests in flight (`n` read by the caller).
    fn mean_predicted_of(&self, n: u64) -> Option<f64> {
        (n > 0).then(|| f64::from_bits(self.work_bits.load(Ordering::Relaxed)) / n as f64)
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Moving average of observed service times, if any request has finished.
    pub fn mean_service_s(&self) -> Option<f64> {
        let mean = f64::from_bits(self.mean_service_bits.load(Ordering::Relaxed));
        (!mean.is_nan()).then_some(mean)
    }

    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Predicted seconds a new request waits in this model's queue before it is served.
    ///
    /// With `c` slots and `n` requests in flight, a new request is served at once while `n < c`;
    /// otherwise it waits behind `n − c + 1` requests that drain `c` at a time, each taking the
    /// longer of two estimates of a request's service time: the observed mean (or, before any
    /// request has finished, `fallback_service_s`), and the mean predicted for the requests in
    /// flight. The second matters when service times differ widely: short requests finish
    /// first and pull the observed mean down while long ones hold the slots, so the observed
    /// mean alone can put a 30 s wait at a few seconds.
    pub fn predicted_wait_s(&self, profile: &ModelProfile, fallback_service_s: f64) -> f64 {
        let concurrency = u64::from(profile.concurrency);
        let n = self.in_flight();
        let ahead = (n + 1).saturating_sub(concurrency);
        if ahead == 0 {
            return 0.0;
        }
        let observed = self.mean_service_s().unwrap_or(fallback_service_s);
        let in_flight = self.mean_predicted_of(n).unwrap_or(0.0);
        ahead as f64 * observed.max(in_flight) / concurrency as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(concurrency: u32) -> ModelProfile {
        ModelProfile {
            price_in: 1.0,
            price_out: 2.0,
            fee: 0.0,
            ttft_s: 0.5,
            tokens_per_s: 50.0,
            concurrency,
        }
    }

    #[test]
    fn waits_only_when_slots_are_full() {
        let live = LiveStats::default();
        let p = profile(2);
        live.begin(0.0).unwrap();
        assert_eq!(live.predicted_wait_s(&p, 4.0), 0.0);
        live.begin(0.0).unwrap();
        assert_eq!(live.predicted_wait_s(&p, 4.0), 2.0);
        live.begin(0.0).unwrap();
        assert_eq!(live.predicted_wait_s(&p, 4.0), 4.0);
        live.end("m", 10.0, 0.0, 0.5).unwrap();
        assert_eq!(live.mean_service_s(), Some(10.0));
        assert_eq!(live.predicted_wait_s(&p, 4.0), 5.0);
    }

    #[test]
    fn long_requests_in_flight_lengthen_the_wait_the_observed_mean_would_give() {
        let live = LiveStats::default();
        let p = profile(2);
        // Short requests have finished: the observed mean is 1 s.
        live.begin(1.0).unwrap();
        live.end("m", 1.0, 1.0, 1.0).unwrap();
        // Two 30 s requests hold both slots and a third waits: the next one is 2 behind.
        for _ in 0..3 {
            live.begin(30.0).unwrap();
        }
        assert_eq!(live.mean_predicted_in_flight_s(), Some(30.0));
        assert_eq!(live.predicted_wait_s(&p, 4.0), 2.0 * 30.0 / 2.0);
        // When the requests in flight are predicted shorter than observed, the observed wins.
        live.cancel("m", 30.0).unwrap();
        live.cancel("m", 30.0).unwrap();
        live.cancel("m", 30.0).unwrap();
        live.begin(0.2).unwrap();
        live.begin(0.2).unwrap();
        assert_eq!(live.predicted_wait_s(&p, 4.0), 1.0 / 2.0);
        live.end("m", 0.3, 0.2, 0.0).unwrap();
        live.end("m", 0.3, 0.2, 0.0).unwrap();
        assert_eq!(
            (live.in_flight(), live.mean_predicted_in_flight_s()),
            (0, None)
        );
        assert_eq!(f64::from_bits(live.work_bits.load(Ordering::Relaxed)), 0.0);
    }

    #[test]
    fn end_without_begin_is_rejected_and_changes_nothing() {
        let live = LiveStats::default();
        assert!(matches!(
            live.end("m", 1.0, 0.0, 0.1),
            Err(Error::NothingInFlight(_))
        ));
        assert!(matches!(
            live.cancel("m", 0.0),
            Err(Error::NothingInFlight(_))
        ));
        assert_eq!(live.mean_service_s(), None);
        live.begin(2.0).unwrap();
        assert!(live.end("m", f64::NAN, 2.0, 0.1).is_err());
        assert!(live.end("m", 1.0, -1.0, 0.1).is_err());
        assert!(live.cancel("m", f64::INFINITY).is_err());
        assert!(live.begin(f64::NAN).is_err());
        assert!(live.begin(-0.5).is_err());
        assert_eq!(live.in_flight(), 1);
        assert_eq!(live.mean_predicted_in_flight_s(), Some(2.0));
        live.cancel("m", 2.0).unwrap();
        assert_eq!((live.in_flight(), live.mean_service_s()), (0, None));
    }

    #[test]
    fn work_left_by_a_mismatched_end_is_cleared_when_the_model_goes_idle() {
        let live = LiveStats::default();
        live.begin(30.0).unwrap();
        live.begin(30.0).unwrap();
        live.end("m", 1.0, 0.0, 0.1).unwrap(); // the caller forgot the prediction
        assert_eq!(live.mean_predicted_in_flight_s(), Some(60.0));
        live.cancel("m", 0.0).unwrap();
        assert_eq!(f64::from_bits(live.work_bits.load(Ordering::Relaxed)), 0.0);
        live.begin(2.0).unwrap();
        assert_eq!(live.mean_predicted_in_flight_s(), Some(2.0));
    }

    #[test]
    fn a_mismatched_end_never_makes_the_work_negative() {
        let live = LiveStats::default();
        live.begin(1.0).unwrap();
        live.begin(1.0).unwrap();
        live.end("m", 1.0, 5.0, 0.1).unwrap();
        assert_eq!(live.mean_predicted_in_flight_s(), Some(0.0));
    }
}
