//! Live serving state of one model: requests in flight and a moving average of observed service
//! times. Plain atomics: these are scalars, so a reader can never see half an update, and
//! `begin`/`end` never take a lock.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{ensure_non_negative, Error, Result};
use crate::profile::ModelProfile;

/// Bits of f64 NaN: "no service time observed yet".
const NO_OBSERVATION: u64 = 0x7ff8_0000_0000_0000;

#[derive(Debug)]
pub struct LiveStats {
    in_flight: AtomicU64,
    mean_service_bits: AtomicU64,
    completed: AtomicU64,
}

impl Default for LiveStats {
    fn default() -> Self {
        Self {
            in_flight: AtomicU64::new(0),
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

    /// A request was sent to the model.
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request finished after `latency_s` seconds (validated: finite and ≥ 0).
    pub fn end(&self, model: &str, latency_s: f64, smoothing: f64) -> Result<()> {
        ensure_non_negative("latency_s", latency_s)?;
        self.in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .map_err(|_| Error::NothingInFlight(model.to_string()))?;
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
    /// counting towards the service-time average.
    pub fn cancel(&self, model: &str) -> Result<()> {
        self.in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .map(|_| ())
            .map_err(|_| Error::NothingInFlight(model.to_string()))
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
    /// observed mean service time (or, before any request has finished, `fallback_service_s`).
    pub fn predicted_wait_s(&self, profile: &ModelProfile, fallback_service_s: f64) -> f64 {
        let concurrency = u64::from(profile.concurrency);
        let ahead = (self.in_flight() + 1).saturating_sub(concurrency);
        if ahead == 0 {
            return 0.0;
        }
        let service = self.mean_service_s().unwrap_or(fallback_service_s);
        ahead as f64 * service / concurrency as f64
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
        live.begin();
        assert_eq!(live.predicted_wait_s(&p, 4.0), 0.0);
        live.begin();
        assert_eq!(live.predicted_wait_s(&p, 4.0), 2.0);
        live.begin();
        assert_eq!(live.predicted_wait_s(&p, 4.0), 4.0);
        live.end("m", 10.0, 0.5).unwrap();
        assert_eq!(live.mean_service_s(), Some(10.0));
        assert_eq!(live.predicted_wait_s(&p, 4.0), 5.0);
    }

    #[test]
    fn end_without_begin_is_rejected_and_changes_nothing() {
        let live = LiveStats::default();
        assert!(matches!(
            live.end("m", 1.0, 0.1),
            Err(Error::NothingInFlight(_))
        ));
        assert!(matches!(live.cancel("m"), Err(Error::NothingInFlight(_))));
        assert_eq!(live.mean_service_s(), None);
        live.begin();
        assert!(live.end("m", f64::NAN, 0.1).is_err());
        assert_eq!(live.in_flight(), 1);
        live.cancel("m").unwrap();
        assert_eq!((live.in_flight(), live.mean_service_s()), (0, None));
    }
}
