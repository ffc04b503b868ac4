//! Live serving state of one model: requests in flight, when the predicted work in its queue
//! would be done, and a moving average of observed service times. Plain atomics: each is a
//! scalar, so a reader never sees half an update of one (the count and the finishing time are
//! two atomics and may be one request apart for an instant, which a wait estimate tolerates),
//! and `begin`/`end` never take a lock.
//!
//! Times are seconds on the caller's clock (`now_s`; [`crate::clock::now_s`] by default).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{ensure_finite, ensure_non_negative, Error, Result};
use crate::profile::ModelProfile;

/// Bits of f64 NaN: "no service time observed yet".
const NO_OBSERVATION: u64 = 0x7ff8_0000_0000_0000;

#[derive(Debug)]
pub struct LiveStats {
    in_flight: AtomicU64,
    /// Bits of f64: when the model's slots would have done the predicted work of every request
    /// in flight, draining it `concurrency` requests at a time (a virtual finishing time, as in
    /// fair queueing). See [`LiveStats::predicted_wait_s`].
    clears_at_bits: AtomicU64,
    mean_service_bits: AtomicU64,
    /// Bits of f64: moving averages of the predicted and of the observed service time over the
    /// finished requests that had a prediction (NaN: none yet). Their ratio scales the model's
    /// estimates: a length head that is wrong in one direction, on queries unlike its training
    /// data, would otherwise keep every wait it predicts for the model too short (or too long).
    mean_predicted_bits: AtomicU64,
    mean_observed_bits: AtomicU64,
    /// Bits of f64: moving average of the squared error of those requests' service estimates
    /// (observed − predicted × the service ratio as it stood), in s² (NaN: none yet). How far
    /// a wait estimate built from such predictions may be off: see
    /// [`LiveStats::predicted_latency`].
    service_mse_bits: AtomicU64,
    completed: AtomicU64,
    /// The requests other routers (replicas sharing the model's endpoint) have in flight for
    /// this model, and the predicted work they hold per slot, in seconds (bits of f64), as last
    /// reported by [`LiveStats::set_remote`]: the slots are shared, so both add to the wait.
    remote_in_flight: AtomicU64,
    remote_work_bits: AtomicU64,
}

impl Default for LiveStats {
    fn default() -> Self {
        Self {
            in_flight: AtomicU64::new(0),
            clears_at_bits: AtomicU64::new(f64::NEG_INFINITY.to_bits()),
            mean_service_bits: AtomicU64::new(NO_OBSERVATION),
            mean_predicted_bits: AtomicU64::new(NO_OBSERVATION),
            mean_observed_bits: AtomicU64::new(NO_OBSERVATION),
            service_mse_bits: AtomicU64::new(NO_OBSERVATION),
            completed: AtomicU64::new(0),
            remote_in_flight: AtomicU64::new(0),
            remote_work_bits: AtomicU64::new(0.0_f64.to_bits()),
        }
    }
}

/// The service ratio stays below this: predictions of microseconds for answers of seconds must
/// not make every later estimate infinite.
const MAX_RATIO: f64 = 1000.0;

/// Folds `value` into the moving average stored as f64 bits in `cell` (NaN: none yet, the first
/// value starts it).
fn smooth(cell: &AtomicU64, value: f64, smoothing: f64) {
    // The closure always returns Some, so this cannot fail.
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
        let mean = f64::from_bits(bits);
        let next = if mean.is_nan() {
            value
        } else {
            mean + smoothing * (value - mean)
        };
        Some(next.to_bits())
    });
}

/// The service ratio of the moving averages `(predicted, observed)` (see
/// [`LiveStats::service_ratio`]): one place for the rule, for the live state and for a report
/// of it.
pub fn ratio_of(service_means_s: Option<(f64, f64)>) -> f64 {
    match service_means_s {
        Some((predicted, observed)) if predicted > 0.0 => {
            (observed / predicted).clamp(1.0, MAX_RATIO)
        }
        _ => 1.0,
    }
}

/// A predicted latency and the spread of its error ([`LiveStats::predicted_latency`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyEstimate {
    /// Predicted seconds from sending to the complete answer.
    pub mean_s: f64,
    /// Standard deviation of that prediction's error, in seconds.
    pub sd_s: f64,
}

/// Seconds of a slot's time that `service_s` of one request's work amounts to when
/// `concurrency` slots share the queue.
fn per_slot(service_s: f64, concurrency: u32) -> f64 {
    service_s / f64::from(concurrency.max(1))
}

impl LiveStats {
    /// Restores the persistent part (the moving averages, of service, of predicted and
    /// observed service and of the squared error between them, and the count); nothing is in
    /// flight.
    pub fn restored(
        mean_service_s: Option<f64>,
        completed: u64,
        service_means_s: Option<(f64, f64)>,
        service_mse_s2: Option<f64>,
    ) -> Self {
        let stats = Self::default();
        let store = |cell: &AtomicU64, value: f64| cell.store(value.to_bits(), Ordering::Relaxed);
        if let Some(mean) = mean_service_s {
            store(&stats.mean_service_bits, mean);
        }
        if let Some((predicted, observed)) = service_means_s {
            store(&stats.mean_predicted_bits, predicted);
            store(&stats.mean_observed_bits, observed);
        }
        if let Some(mse) = service_mse_s2 {
            store(&stats.service_mse_bits, mse);
        }
        stats.completed.store(completed, Ordering::Relaxed);
        stats
    }

    /// The moving averages of predicted and of observed service over the finished requests
    /// that had a prediction (None before the first): what [`LiveStats::service_ratio`] is
    /// made of, and what a save keeps of it.
    pub fn service_means_s(&self) -> Option<(f64, f64)> {
        let load = |cell: &AtomicU64| f64::from_bits(cell.load(Ordering::Relaxed));
        let (predicted, observed) = (
            load(&self.mean_predicted_bits),
            load(&self.mean_observed_bits),
        );
        (!predicted.is_nan() && !observed.is_nan()).then_some((predicted, observed))
    }

    /// The moving average of the squared error of the service estimates (each prediction
    /// scaled by the service ratio as it stood), in s² (None before a request with a
    /// prediction has finished).
    pub fn service_mse_s2(&self) -> Option<f64> {
        let mse = f64::from_bits(self.service_mse_bits.load(Ordering::Relaxed));
        (!mse.is_nan()).then_some(mse)
    }

    /// The service a request is counted with: its prediction (validated), or when there is
    /// none the observed mean (0 before any request has finished). `begin`, `end` and `cancel`
    /// given `None` each read the mean then; it moves little between them.
    fn counted(&self, predicted_service_s: Option<f64>) -> Result<f64> {
        match predicted_service_s {
            Some(seconds) => {
                ensure_non_negative("predicted_service_s", seconds)?;
                Ok(seconds)
            }
            None => Ok(self.mean_service_s().unwrap_or(0.0)),
        }
    }

    /// How much longer than predicted this model's requests have been taking lately: the ratio
    /// of the moving averages of their observed and predicted service times, within
    /// [1, `MAX_RATIO`] (1 until a request with a prediction has finished, or while those
    /// predictions average 0). A ratio of averages, not an average of ratios: long requests,
    /// which hold the slots, weigh as much as they last, where the many short ones that finish
    /// first would dominate a per-request average. Never below 1: it is there for predictions
    /// that run short, which fill a queue past τ; scaling estimates down because some answers
    /// ran shorter than predicted only adds noise where the predictions are right on average
    /// (`docs/evaluation.md` measures both). Each `end` learns it; the predictions' own errors
    /// stay in the books, so it scales estimates, never the bookkeeping.
    pub fn service_ratio(&self) -> f64 {
        ratio_of(self.service_means_s())
    }

    /// A request was sent at `now_s` to a model with `concurrency` slots, predicted to take
    /// `predicted_service_s` seconds once served (first token + generation). Validated before
    /// anything changes.
    pub fn begin(
        &self,
        predicted_service_s: Option<f64>,
        concurrency: u32,
        now_s: f64,
    ) -> Result<()> {
        let service_s = self.counted(predicted_service_s)?;
        ensure_finite("now_s", now_s)?;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let work = per_slot(service_s, concurrency);
        self.move_clears_at(|clears_at| Some(clears_at.max(now_s) + work));
        Ok(())
    }

    /// A request finished at `now_s` after `latency_s` seconds of service (`None`: finished, its
    /// service time unknown); `predicted_service_s` is what its `begin` was given. All are
    /// validated before anything changes.
    ///
    /// With a latency, its error (latency − counted service) delays or advances the work queued
    /// behind it by its share of a slot, and the averages learn from it. Without one it leaves
    /// as if served as predicted: its work has been draining with the clock since it was sent,
    /// so taking it off again would count it twice.
    pub fn end(
        &self,
        model: &str,
        latency_s: Option<f64>,
        predicted_service_s: Option<f64>,
        smoothing: f64,
        concurrency: u32,
        now_s: f64,
    ) -> Result<()> {
        if let Some(latency) = latency_s {
            ensure_non_negative("latency_s", latency)?;
        }
        let service_s = self.counted(predicted_service_s)?;
        let Some(latency_s) = latency_s else {
            return self.leave(model, 0.0, now_s);
        };
        // The error of the estimate the prediction gave, scaled by the service ratio as it
        // stood: what a decision's spread is about. A bias the ratio corrects is no error.
        let squared_error =
            predicted_service_s.map(|p| (latency_s - p * self.service_ratio()).powi(2));
        if let Some(error) = squared_error.filter(|e| !e.is_finite()) {
            return Err(Error::InvalidValue(format!(
                "latency_s {latency_s} and predicted_service_s {predicted_service_s:?} are too \
                 far apart to learn from (squared error {error})"
            )));
        }
        self.leave(model, per_slot(latency_s - service_s, concurrency), now_s)?;
        smooth(&self.mean_service_bits, latency_s, smoothing);
        if let (Some(predicted), Some(error)) = (predicted_service_s, squared_error) {
            smooth(&self.mean_predicted_bits, predicted, smoothing);
            smooth(&self.mean_observed_bits, latency_s, smoothing);
            smooth(&self.service_mse_bits, error, smoothing);
        }
        // Saturates rather than wraps: a count restored near the top stays at it.
        let _ = self
            .completed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
        Ok(())
    }

    /// A request was withdrawn at `now_s` before it was served (never sent, or abandoned while
    /// queued): it leaves the queue with the work its `begin` counted (`predicted_service_s`),
    /// and nothing is learned. A request that did run but whose service time is unknown ends
    /// with [`Self::end`] and no latency instead.
    pub fn cancel(
        &self,
        model: &str,
        predicted_service_s: Option<f64>,
        concurrency: u32,
        now_s: f64,
    ) -> Result<()> {
        let service_s = self.counted(predicted_service_s)?;
        self.leave(model, -per_slot(service_s, concurrency), now_s)
    }

    /// The model's slots went from `old` to `new` at `now_s`: the work still ahead, counted in
    /// a slot's seconds, is spread over the new number of slots, so the books stay those of a
    /// queue that had always had them (a request's `end` and `cancel` then count its share by
    /// the new number too). A drained queue has nothing to move.
    pub fn resize(&self, old: u32, new: u32, now_s: f64) -> Result<()> {
        ensure_finite("now_s", now_s)?;
        let factor = f64::from(old.max(1)) / f64::from(new.max(1));
        // Nothing ahead (None) leaves the value as it is.
        self.move_clears_at(|clears_at| {
            (clears_at > now_s).then_some(now_s + (clears_at - now_s) * factor)
        });
        Ok(())
    }

    /// Moves the finishing time atomically to `next(current)`; `None` leaves it.
    fn move_clears_at(&self, next: impl Fn(f64) -> Option<f64>) {
        // A `None` from `next` is the only way this fails, and it means "leave it".
        let _ = self
            .clears_at_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                next(f64::from_bits(bits)).map(f64::to_bits)
            });
    }

    /// One request out of flight; the finishing time moves by `shift_s`.
    fn leave(&self, model: &str, shift_s: f64, now_s: f64) -> Result<()> {
        ensure_finite("now_s", now_s)?;
        let before = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .map_err(|_| Error::NothingInFlight(model.to_string()))?;
        if before == 1 {
            // Idle: no work is left, whatever the predictions said (a caller's mismatch or
            // rounding must not outlive the queue). A `begin` racing this store loses its
            // share only until the queue next empties.
            self.clears_at_bits
                .store(now_s.to_bits(), Ordering::Relaxed);
        } else {
            self.move_clears_at(|clears_at| Some(clears_at + shift_s));
        }
        Ok(())
    }

    /// The load other routers put on this model's slots: `in_flight` requests holding `work_s`
    /// seconds of predicted work per slot (the backlog of their own wait estimate). Replaces
    /// the previous report; validated before anything changes.
    pub fn set_remote(&self, in_flight: u64, work_s: f64) -> Result<()> {
        ensure_non_negative("work_s", work_s)?;
        self.remote_in_flight.store(in_flight, Ordering::Relaxed);
        self.remote_work_bits
            .store(work_s.to_bits(), Ordering::Relaxed);
        Ok(())
    }

    /// The other routers' load as last reported: requests in flight and work per slot (s).
    pub fn remote(&self) -> (u64, f64) {
        (
            self.remote_in_flight.load(Ordering::Relaxed),
            f64::from_bits(self.remote_work_bits.load(Ordering::Relaxed)),
        )
    }

    /// This router's own requests in flight (not the other routers').
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// When the predicted work in flight would be done (seconds on the caller's clock); −∞
    /// before the first request.
    pub fn clears_at_s(&self) -> f64 {
        f64::from_bits(self.clears_at_bits.load(Ordering::Relaxed))
    }

    /// Moving average of observed service times, if any request has finished.
    pub fn mean_service_s(&self) -> Option<f64> {
        let mean = f64::from_bits(self.mean_service_bits.load(Ordering::Relaxed));
        (!mean.is_nan()).then_some(mean)
    }

    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Predicted seconds a request sent at `now_s` waits in this model's queue before it is
    /// served.
    ///
    /// With `c` slots and `n` requests in flight, a new request is served at once while `n < c`.
    /// Otherwise it waits until the slots have done the predicted work ahead of it, which they
    /// drain `c` requests at a time: the time left to the finishing time `begin` and `end`
    /// keep, scaled by [`Self::service_ratio`]. That is exact when the requests ahead were sent
    /// together and predicted right (for `c` = 1, whenever they were predicted right), and an
    /// approximation otherwise. Unlike a queue position times a mean service time, it knows how
    /// long the requests ahead have already been served and weighs each by its own predicted
    /// length: short answers finishing do not shorten the wait behind long ones.
    pub fn predicted_wait_s(&self, profile: &ModelProfile, now_s: f64) -> f64 {
        self.predicted_latency_s(profile, now_s, 0.0)
    }

    /// Predicted seconds from sending a request at `now_s` to its complete answer: the wait
    /// ([`Self::predicted_wait_s`]) plus `service_s`, the service the length head predicts,
    /// both scaled by [`Self::service_ratio`] (read once).
    pub fn predicted_latency_s(&self, profile: &ModelProfile, now_s: f64, service_s: f64) -> f64 {
        let (backlog_s, _) = self.work_ahead(profile, now_s);
        (backlog_s + service_s) * self.service_ratio()
    }

    /// The predicted seconds of queue a request sent at `now_s` waits for, and how many
    /// requests that work belongs to (0 and 0 while a slot is free).
    fn work_ahead(&self, profile: &ModelProfile, now_s: f64) -> (f64, u64) {
        let (remote_in_flight, remote_work_s) = self.remote();
        let in_flight = self.in_flight() + remote_in_flight;
        if in_flight < u64::from(profile.concurrency) {
            (0.0, 0)
        } else {
            // The slots drain both routers' work: per slot, the two backlogs add up.
            let own_s = (self.clears_at_s() - now_s).max(0.0);
            (own_s + remote_work_s, in_flight)
        }
    }

    /// [`Self::predicted_latency_s`], with the spread of its error; `smoothing` is the weight
    /// `end` folds each request into the moving averages with.
    ///
    /// The spread comes from the model's recent service estimates, whose errors have a mean
    /// square σ² ([`Self::service_mse_s2`]), in two parts:
    /// - **Each request's own error**, taken as independent between requests. A request that
    ///   queues waits for the predicted work of the `n` requests in flight shared by `c` slots,
    ///   each one's error counting 1/c: variance n·σ²/c². Its own service adds σ scaled to its
    ///   size (σ · `service_s` / the mean predicted service), so a one-token answer carries
    ///   little of the error of the model's long ones.
    /// - **The service ratio's error**, shared by every request ahead: it scales the whole
    ///   estimate, and it is a moving average of a few recent requests. With weight `s`, such an
    ///   average of independent errors has variance s/(2 − s) times theirs, so the ratio's
    ///   relative variance is s/(2 − s) · σ² / (mean observed service)², times L².
    ///
    /// The second dominates a long queue: a length head that runs short on long answers leaves
    /// the ratio to correct it, and a queue held near τ runs over whenever the ratio's latest
    /// average comes out low. 0 before any request with a prediction has finished.
    pub fn predicted_latency(
        &self,
        profile: &ModelProfile,
        now_s: f64,
        service_s: f64,
        smoothing: f64,
    ) -> LatencyEstimate {
        let (backlog_s, ahead) = self.work_ahead(profile, now_s);
        let means = self.service_means_s();
        let mean_s = (backlog_s + service_s) * ratio_of(means);
        let sd_s = match (self.service_mse_s2(), means) {
            (Some(mse), Some((mean_predicted, mean_observed))) => {
                let slots = f64::from(profile.concurrency.max(1));
                // Relative standard deviations: σ over a mean.
                let relative = |mean: f64| if mean > 0.0 { mse.sqrt() / mean } else { 0.0 };
                let queue_sd = (mse * ahead as f64).sqrt() / slots;
                let own_sd = relative(mean_predicted) * service_s;
                let ratio_sd = (smoothing / (2.0 - smoothing)).sqrt() * relative(mean_observed);
                // hypot, not a sum of squares: an enormous estimate gives an enormous spread,
                // not an overflow.
                queue_sd.hypot(own_sd).hypot(ratio_sd * mean_s)
            }
            _ => 0.0,
        };
        LatencyEstimate { mean_s, sd_s }
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
    fn other_routers_load_fills_the_slots_and_adds_its_work() {
        let live = LiveStats::default();
        let p = profile(2);
        live.begin(Some(10.0), 2, 100.0).unwrap();
        assert_eq!(live.predicted_wait_s(&p, 100.0), 0.0);
        // Another router has one request in flight with 3 s of work per slot: the slots are
        // full, and the wait is both backlogs.
        live.set_remote(1, 3.0).unwrap();
        assert_eq!(live.predicted_wait_s(&p, 100.0), 5.0 + 3.0);
        assert_eq!(live.in_flight(), 1);
        // A bad report changes nothing.
        assert!(live.set_remote(5, f64::NAN).is_err());
        assert!(live.set_remote(5, -1.0).is_err());
        assert_eq!(live.remote(), (1, 3.0));
        live.set_remote(0, 0.0).unwrap();
        assert_eq!(live.predicted_wait_s(&p, 100.0), 0.0);
    }

    #[test]
    fn waits_only_when_slots_are_full_and_for_the_work_left() {
        let live = LiveStats::default();
        let p = profile(2);
        live.begin(Some(10.0), 2, 100.0).unwrap();
        assert_eq!(live.predicted_wait_s(&p, 100.0), 0.0);
        live.begin(Some(10.0), 2, 100.0).unwrap();
        // Both slots busy until 110: the next request waits for what is left of that.
        assert_eq!(live.predicted_wait_s(&p, 100.0), 10.0);
        assert_eq!(live.predicted_wait_s(&p, 104.0), 6.0);
        assert_eq!(live.predicted_wait_s(&p, 111.0), 0.0);
        // A third request queues: its 10 s are shared by the two slots.
        live.begin(Some(10.0), 2, 104.0).unwrap();
        assert_eq!(live.predicted_wait_s(&p, 104.0), 11.0);
    }

    #[test]
    fn more_slots_share_the_work_left() {
        let live = LiveStats::default();
        for _ in 0..4 {
            live.begin(Some(10.0), 2, 0.0).unwrap();
        }
        assert_eq!(live.clears_at_s(), 20.0);
        // At 4 s, 16 s of two slots' work is left: 8 s of four slots'.
        live.resize(2, 4, 4.0).unwrap();
        assert_eq!(live.clears_at_s(), 12.0);
        assert_eq!(live.predicted_wait_s(&profile(4), 4.0), 8.0);
        // Back to two: 2 s of four slots' work left at 10 s is 4 s of two slots'.
        live.resize(4, 2, 10.0).unwrap();
        assert_eq!(live.clears_at_s(), 14.0);
        // A drained queue has nothing to move, and a bad time changes nothing.
        live.resize(2, 1, 30.0).unwrap();
        assert_eq!(live.clears_at_s(), 14.0);
        assert!(live.resize(1, 2, f64::NAN).is_err());
        assert_eq!(live.clears_at_s(), 14.0);
    }

    #[test]
    fn staggered_requests_on_one_slot_are_exact() {
        let live = LiveStats::default();
        let p = profile(1);
        live.begin(Some(4.0), 1, 0.0).unwrap(); // served 0..4
        live.begin(Some(3.0), 1, 1.0).unwrap(); // queued, served 4..7
        assert_eq!(live.predicted_wait_s(&p, 2.0), 5.0);
        live.end("m", Some(4.0), Some(4.0), 0.5, 1, 4.0).unwrap();
        assert_eq!(live.predicted_wait_s(&p, 5.0), 2.0);
        // After an idle spell a request starts from now, not from the old finishing time.
        live.end("m", Some(3.0), Some(3.0), 0.5, 1, 7.0).unwrap();
        live.begin(Some(2.0), 1, 50.0).unwrap();
        assert_eq!(live.clears_at_s(), 52.0);
        assert_eq!(live.predicted_wait_s(&p, 51.0), 1.0);
    }

    #[test]
    fn a_request_slower_or_faster_than_predicted_moves_the_work_behind_it() {
        let live = LiveStats::default();
        for _ in 0..3 {
            live.begin(Some(10.0), 2, 0.0).unwrap();
        }
        assert_eq!(live.clears_at_s(), 15.0);
        // One of the first two took 14 s: the queue behind it is 2 s (14 − 10 over 2 slots)
        // later than predicted.
        live.end("m", Some(14.0), Some(10.0), 0.5, 2, 14.0).unwrap();
        assert_eq!(live.clears_at_s(), 17.0);
        // Another took 4 s: 3 s earlier.
        live.end("m", Some(4.0), Some(10.0), 0.5, 2, 14.0).unwrap();
        assert_eq!(live.clears_at_s(), 14.0);
        assert_eq!(live.mean_service_s(), Some(9.0));
        assert_eq!(live.completed(), 2);
    }

    #[test]
    fn cancel_takes_its_predicted_work_out_and_an_empty_queue_starts_over() {
        let live = LiveStats::default();
        let p = profile(1);
        live.begin(Some(30.0), 1, 0.0).unwrap();
        live.begin(Some(30.0), 1, 0.0).unwrap();
        live.cancel("m", Some(30.0), 1, 1.0).unwrap();
        assert_eq!(live.clears_at_s(), 30.0);
        assert_eq!(live.mean_service_s(), None);
        // The last one leaves with a wrong prediction: nothing of it outlives the queue.
        live.end("m", Some(1.0), Some(0.0), 0.5, 1, 2.0).unwrap();
        assert_eq!((live.in_flight(), live.clears_at_s()), (0, 2.0));
        live.begin(Some(1.0), 1, 3.0).unwrap();
        assert_eq!(live.predicted_wait_s(&p, 3.0), 1.0);
    }

    #[test]
    fn a_wait_is_never_negative() {
        let live = LiveStats::default();
        let p = profile(1);
        for _ in 0..3 {
            live.begin(Some(1.0), 1, 0.0).unwrap();
        }
        // Much faster than predicted, then a cancel predicted long: the finishing time of the
        // one left in flight moves before now.
        live.end("m", Some(0.0), Some(1.0), 0.5, 1, 0.1).unwrap();
        live.cancel("m", Some(5.0), 1, 0.1).unwrap();
        assert_eq!(live.in_flight(), 1);
        assert!(live.clears_at_s() < 0.2);
        assert_eq!(live.predicted_wait_s(&p, 0.2), 0.0);
        // The next request starts from now.
        live.begin(Some(2.0), 1, 0.2).unwrap();
        assert_eq!(live.clears_at_s(), 2.2);
    }

    #[test]
    fn bad_input_is_rejected_and_changes_nothing() {
        let live = LiveStats::default();
        assert!(matches!(
            live.end("m", Some(1.0), Some(0.0), 0.1, 1, 0.0),
            Err(Error::NothingInFlight(_))
        ));
        assert!(matches!(
            live.cancel("m", Some(0.0), 1, 0.0),
            Err(Error::NothingInFlight(_))
        ));
        assert_eq!(live.mean_service_s(), None);
        live.begin(Some(2.0), 1, 0.0).unwrap();
        let clears_at = live.clears_at_s();
        assert!(live
            .end("m", Some(f64::NAN), Some(2.0), 0.1, 1, 1.0)
            .is_err());
        assert!(live.end("m", Some(1.0), Some(-1.0), 0.1, 1, 1.0).is_err());
        assert!(live
            .end("m", Some(1.0), Some(2.0), 0.1, 1, f64::NAN)
            .is_err());
        assert!(live.cancel("m", Some(f64::INFINITY), 1, 1.0).is_err());
        assert!(live.cancel("m", Some(2.0), 1, f64::INFINITY).is_err());
        assert!(live.begin(Some(f64::NAN), 1, 1.0).is_err());
        assert!(live.begin(Some(-0.5), 1, 1.0).is_err());
        assert!(live.begin(Some(1.0), 1, f64::NEG_INFINITY).is_err());
        assert_eq!(
            (live.in_flight(), live.clears_at_s(), live.mean_service_s()),
            (1, clears_at, None)
        );
        live.cancel("m", Some(2.0), 1, 1.0).unwrap();
        assert_eq!(live.in_flight(), 0);
    }

    #[test]
    fn without_a_prediction_a_request_counts_the_observed_mean() {
        let live = LiveStats::default();
        let p = profile(1);
        // Nothing observed yet: it counts as no work until it ends.
        live.begin(None, 1, 0.0).unwrap();
        live.begin(None, 1, 0.0).unwrap();
        assert_eq!(live.predicted_wait_s(&p, 0.0), 0.0);
        live.end("m", Some(4.0), None, 0.5, 1, 4.0).unwrap();
        assert_eq!(live.clears_at_s(), 4.0);
        assert_eq!(live.mean_service_s(), Some(4.0));
        live.begin(None, 1, 4.0).unwrap();
        assert_eq!(live.predicted_wait_s(&p, 4.0), 4.0);
        live.cancel("m", None, 1, 5.0).unwrap();
        assert_eq!(live.clears_at_s(), 4.0);
    }

    #[test]
    fn predictions_that_run_long_lengthen_the_wait_and_the_service_estimate() {
        let live = LiveStats::default();
        let p = profile(1);
        assert_eq!(live.service_ratio(), 1.0);
        // A request predicted at 1 s took 4 s: the next estimates are 4 times longer, the
        // books (the finishing time) are not.
        live.begin(Some(1.0), 1, 0.0).unwrap();
        live.end("m", Some(4.0), Some(1.0), 0.5, 1, 4.0).unwrap();
        assert_eq!(live.service_ratio(), 4.0);
        assert_eq!(live.predicted_latency_s(&p, 0.0, 2.0), 8.0); // no queue: service only
        live.begin(Some(1.0), 1, 10.0).unwrap();
        live.begin(Some(1.0), 1, 10.0).unwrap();
        assert_eq!(live.clears_at_s(), 12.0);
        assert_eq!(live.predicted_wait_s(&p, 10.0), 8.0);
        // Half its prediction: the observed average moves halfway (smoothing 0.5) to 0.5.
        live.end("m", Some(0.5), Some(1.0), 0.5, 1, 10.5).unwrap();
        assert_eq!(live.service_ratio(), 2.25);
        // A long request weighs as long as it lasts: right on its 10 s, it brings the ratio
        // near 1 at once ((2.25 + 10) / 2 over (1 + 10) / 2).
        live.end("m", Some(10.0), Some(10.0), 0.5, 1, 20.5).unwrap();
        assert_eq!(live.service_ratio(), 6.125 / 5.5);
        // Requests begun without a prediction teach nothing about predictions.
        live.begin(None, 1, 21.0).unwrap();
        live.end("m", Some(30.0), None, 0.5, 1, 51.0).unwrap();
        assert_eq!(live.service_ratio(), 6.125 / 5.5);
        // Answers shorter than predicted never scale the estimates down.
        let short = LiveStats::default();
        short.begin(Some(4.0), 1, 0.0).unwrap();
        short.end("m", Some(1.0), Some(4.0), 0.5, 1, 1.0).unwrap();
        assert_eq!(short.service_ratio(), 1.0);
        // Absurd predictions move it a bounded way; predictions averaging 0 leave it at 1.
        let absurd = LiveStats::default();
        absurd.begin(Some(1e-300), 1, 0.0).unwrap();
        absurd
            .end("m", Some(5.0), Some(1e-300), 0.5, 1, 5.0)
            .unwrap();
        assert_eq!(absurd.service_ratio(), MAX_RATIO);
        let zero = LiveStats::default();
        zero.begin(Some(0.0), 1, 0.0).unwrap();
        zero.end("m", Some(3.0), Some(0.0), 0.5, 1, 3.0).unwrap();
        assert_eq!(zero.service_ratio(), 1.0);
    }

    #[test]
    fn the_spread_of_an_estimate_grows_with_the_queue_and_the_answer() {
        let live = LiveStats::default();
        let p = profile(2);
        // Nothing finished yet: no error known, no spread.
        live.begin(Some(2.0), 2, 0.0).unwrap();
        assert_eq!(live.predicted_latency(&p, 0.0, 2.0, 0.5).sd_s, 0.0);
        // Predicted 2 s, took 5 s (no ratio yet: error 3 s); then predicted 2 s, which the
        // ratio of 2.5 made 5 s, took 1 s (error 4 s): squared errors 9 and 16, averaged with
        // smoothing 0.5 to 12.5. The averages: 2 s predicted, 3 s observed, a ratio of 1.5.
        live.end("m", Some(5.0), Some(2.0), 0.5, 2, 5.0).unwrap();
        live.begin(Some(2.0), 2, 5.0).unwrap();
        live.end("m", Some(1.0), Some(2.0), 0.5, 2, 6.0).unwrap();
        assert_eq!(live.service_mse_s2(), Some(12.5));
        assert_eq!(live.service_means_s(), Some((2.0, 3.0)));
        // Predicted 2 s and took the 3 s the ratio made of it: no error, whatever the
        // prediction's own bias. The squared error halves; the averages stay.
        live.begin(Some(2.0), 2, 6.0).unwrap();
        live.end("m", Some(3.0), Some(2.0), 0.5, 2, 6.0).unwrap();
        let mse = 6.25;
        assert_eq!(live.service_mse_s2(), Some(mse));
        assert_eq!(live.service_means_s(), Some((2.0, 3.0)));
        // The ratio is a moving average with weight 0.5: its relative variance is 0.5 / 1.5
        // of σ² over the observed mean's square (9), on the whole estimate.
        let shared = 0.5 / 1.5 * mse / 9.0;
        // A free slot: the answer's own error, scaled to its size (4 s is twice the mean
        // prediction), and the ratio's.
        let alone = live.predicted_latency(&p, 6.0, 4.0, 0.5);
        assert_eq!(alone.mean_s, 4.0 * 1.5);
        let expected = (mse * 4.0 + shared * 6.0f64.powi(2)).sqrt();
        assert!((alone.sd_s - expected).abs() < 1e-12, "{}", alone.sd_s);
        // Three in flight on two slots: it queues behind three requests, each one's error
        // counting half (σ²·3/4), beside its own; the ratio's error grows with the estimate.
        for _ in 0..3 {
            live.begin(Some(2.0), 2, 6.0).unwrap();
        }
        let queued = live.predicted_latency(&p, 6.0, 4.0, 0.5);
        assert_eq!(queued.mean_s, (3.0 + 4.0) * 1.5);
        let expected = (mse * (0.75 + 4.0) + shared * 10.5f64.powi(2)).sqrt();
        assert!((queued.sd_s - expected).abs() < 1e-12, "{}", queued.sd_s);
        assert_eq!(queued.mean_s, live.predicted_latency_s(&p, 6.0, 4.0));
        // A slower average is a steadier ratio: less of its error.
        assert!(live.predicted_latency(&p, 6.0, 4.0, 0.05).sd_s < queued.sd_s);
        // Requests begun without a prediction teach nothing about its error.
        live.end("m", Some(30.0), None, 0.5, 2, 7.0).unwrap();
        assert_eq!(live.service_mse_s2(), Some(mse));
        // Answers too far from their predictions to square are refused, changing nothing.
        let before = (live.in_flight(), live.clears_at_s(), live.service_means_s());
        assert!(live.end("m", Some(1e300), Some(0.0), 0.5, 2, 7.0).is_err());
        assert_eq!(
            (live.in_flight(), live.clears_at_s(), live.service_means_s()),
            before
        );
        assert_eq!(live.service_mse_s2(), Some(mse));
        // An enormous estimate has an enormous spread, not a NaN.
        let huge = live.predicted_latency(&p, 7.0, 1e300, 0.5);
        assert!(huge.sd_s.is_finite() && huge.sd_s > 1e300, "{huge:?}");
        // Restored, the spread is the same.
        let restored =
            LiveStats::restored(live.mean_service_s(), 3, live.service_means_s(), Some(mse));
        assert!(
            (restored.predicted_latency(&p, 6.0, 4.0, 0.5).sd_s - alone.sd_s).abs() < 1e-12,
            "nothing in flight after a restore"
        );
    }

    #[test]
    fn a_request_finished_without_a_latency_leaves_as_predicted_and_teaches_nothing() {
        let live = LiveStats::default();
        let p = profile(1);
        live.begin(Some(10.0), 1, 0.0).unwrap();
        live.begin(Some(10.0), 1, 0.0).unwrap();
        assert_eq!(live.clears_at_s(), 20.0);
        // The first finishes at 10 without a latency: the second still holds the slot to 20.
        live.end("m", None, Some(10.0), 0.5, 1, 10.0).unwrap();
        assert_eq!(live.clears_at_s(), 20.0);
        live.begin(Some(1.0), 1, 10.0).unwrap();
        assert_eq!(live.predicted_wait_s(&p, 10.0), 11.0);
        assert_eq!(
            (
                live.mean_service_s(),
                live.service_ratio(),
                live.completed()
            ),
            (None, 1.0, 0)
        );
        // A bad prediction is still rejected, and changes nothing.
        assert!(live.end("m", None, Some(-1.0), 0.5, 1, 11.0).is_err());
        assert_eq!((live.in_flight(), live.clears_at_s()), (2, 21.0));
    }

    #[test]
    fn concurrent_begins_and_ends_leave_an_empty_queue_that_starts_over() {
        let live = LiveStats::default();
        std::thread::scope(|scope| {
            for t in 0..4 {
                let live = &live;
                scope.spawn(move || {
                    for i in 0..5_000 {
                        let now = f64::from(i);
                        let predicted = f64::from(t + 1);
                        live.begin(Some(predicted), 8, now).unwrap();
                        live.end("m", Some(predicted * 1.5), Some(predicted), 0.1, 8, now)
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!((live.in_flight(), live.completed()), (0, 20_000));
        // Emptied at one of the last ends (give or take a racing shift), whatever the
        // interleaving left before it.
        assert!(live.clears_at_s() <= 5_000.0);
        // Nothing in flight: the next request starts from now.
        live.begin(Some(8.0), 8, 1e6).unwrap();
        assert_eq!(live.clears_at_s(), 1e6 + 1.0);
        // Every answer took 1.5 times its prediction, but the two averages are folded in
        // separately, so interleaved threads can pair them differently: the ratio is only
        // bounded by the extremes (1.5 × 4 / 1).
        assert!((1.0..=6.0).contains(&live.service_ratio()));
    }
}
