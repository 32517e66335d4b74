//! Passive health and latency per deployment: consecutive failures eject a deployment for a
//! backoff that grows while it keeps failing, a probe readmits it, and a peak-EWMA follows
//! its time to first byte.
//!
//! With callers' own keys, only what says something about the deployment counts: a connect
//! failure, a timeout, a 5xx (529 included). A 400, 401, 403, 404 or 429 is about the caller
//! (its key, its quota, its request) and never ejects anything, so one tenant cannot take a
//! deployment away from the others.
//!
//! State is per process, shared by every worker (atomics and a short `Mutex` per
//! deployment); issue 13 moves it to Redis so that every instance sees it. Time is passed in
//! as a `Duration` since a [`Clock`]'s start, so tests drive it by hand.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use crate::{error::ProxyError, gateway::routing::Observed};

/// Consecutive failures that eject a deployment.
pub const EJECT_AFTER: u32 = 3;
/// The first ejection's length; it doubles each time a probe fails, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The time constant of the latency EWMA: a sample's weight falls to 1/e after this long.
pub const TAU: Duration = Duration::from_secs(10);

/// Monotonic time for health, as a `Duration` since the process started.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Self {
        Self(Instant::now())
    }

    pub fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// What one attempt says about the deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It answered 2xx.
    Success,
    /// It could not be reached, was silent, or answered 5xx.
    Failure,
    /// It answered, but the answer is about the caller (4xx), or the failure is the proxy's.
    Neutral,
}

impl Verdict {
    /// The verdict on a failed attempt. `held_key`: the attempt used a key the proxy holds,
    /// whose 429 says the deployment's quota is spent for everyone; on a caller's own key it
    /// says something about that caller alone.
    pub fn of(error: &ProxyError, held_key: bool) -> Self {
        match error {
            ProxyError::Unreachable(_) | ProxyError::Timeout => Self::Failure,
            ProxyError::Upstream { status, .. } if status.is_server_error() => Self::Failure,
            ProxyError::Upstream { status, .. }
                if held_key && *status == actix_web::http::StatusCode::TOO_MANY_REQUESTS =>
            {
                Self::Failure
            }
            _ => Self::Neutral,
        }
    }
}

/// A peak-EWMA (Linkerd's): a sample above the estimate replaces it at once, so a slowdown
/// shows immediately; a sample below pulls it down by `1 - e^(-elapsed/tau)`, so a recovery
/// shows over a few `tau`; and an estimate without new samples decays (see
/// [`PeakEwma::decayed`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakEwma {
    /// Seconds.
    pub value: f64,
    at: Duration,
}

impl PeakEwma {
    /// The estimate as routing reads it at `now`: drifting toward zero while no sample comes,
    /// by `e^(-elapsed/tau)`, so a deployment left alone because it was slow is tried again
    /// after a while and can show that it recovered (a busy one is sampled too often to drift).
    pub fn decayed(&self, now: Duration, tau: Duration) -> f64 {
        let elapsed = now.saturating_sub(self.at).as_secs_f64();
        self.value * (-elapsed / tau.as_secs_f64()).exp()
    }

    pub fn update(estimate: Option<Self>, sample: f64, now: Duration, tau: Duration) -> Self {
        match estimate {
            Some(old) if sample <= old.value => {
                let elapsed = now.saturating_sub(old.at).as_secs_f64();
                let kept = (-elapsed / tau.as_secs_f64()).exp();
                Self {
                    value: old.value * kept + sample * (1.0 - kept),
                    at: now,
                }
            }
            _ => Self {
                value: sample,
                at: now,
            },
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    failures: u32,
    ejected_at: Option<Duration>,
    backoff: Duration,
    /// When the one request let through after the backoff was sent.
    probe_since: Option<Duration>,
    ttfb: Option<PeakEwma>,
    /// Moves whenever this process ejects or readmits the deployment; not when another
    /// instance's ejection is applied here.
    epoch: u64,
}

impl Inner {
    /// Ejected and not (yet) letting a probe through.
    fn is_out(&self, now: Duration) -> bool {
        let Some(at) = self.ejected_at else {
            return false;
        };
        match self.probe_since {
            // A probe that never reported (its caller went away) frees the way after a while.
            Some(since) => now.saturating_sub(since) < MAX_BACKOFF,
            None => now.saturating_sub(at) < self.backoff,
        }
    }

    fn readmit(&mut self) {
        if self.ejected_at.is_some() {
            self.epoch += 1;
        }
        self.failures = 0;
        self.ejected_at = None;
        self.backoff = Duration::ZERO;
        self.probe_since = None;
    }
}

/// One deployment's health, latency and requests in flight.
#[derive(Debug, Default)]
pub struct Deployment {
    inner: Mutex<Inner>,
    /// Shared with each attempt's guard, which a stream's body holds to its last byte.
    in_flight: Arc<AtomicU64>,
}

impl Deployment {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding it; a poisoned state is still a valid one.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What routing needs to know at `now`.
    pub fn observe(&self, now: Duration) -> Observed {
        let inner = self.lock();
        Observed {
            ejected_at: inner.ejected_at.filter(|_| inner.is_out(now)),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            ttfb: inner.ttfb.map(|ewma| ewma.decayed(now, TAU)),
        }
    }

    /// Whether it takes requests: not ejected (a deployment waiting for its probe is not up).
    pub fn is_up(&self) -> bool {
        self.lock().ejected_at.is_none()
    }

    /// The peak-EWMA of its time to first byte, in seconds, once measured.
    pub fn ttfb_ewma(&self) -> Option<f64> {
        self.lock().ttfb.map(|ewma| ewma.value)
    }

    /// Called as an attempt is sent; counts it in flight until the guard drops. An attempt on
    /// an ejected deployment past its backoff is its probe.
    pub fn start(&self, now: Duration) -> InFlight {
        {
            let mut inner = self.lock();
            if inner.ejected_at.is_some() && !inner.is_out(now) {
                inner.probe_since = Some(now);
            }
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(&self.in_flight))
    }

    /// What came of an attempt. A success readmits; so does any answer to a probe, since an
    /// answer shows the deployment is back. A failure counts toward ejection, and while
    /// ejected doubles the backoff and ejects again from `now`.
    pub fn record(&self, verdict: Verdict, now: Duration) {
        let mut inner = self.lock();
        match verdict {
            Verdict::Success => inner.readmit(),
            Verdict::Neutral if inner.probe_since.is_some() => inner.readmit(),
            Verdict::Neutral => {}
            Verdict::Failure if inner.ejected_at.is_some() => {
                inner.backoff = (inner.backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
                inner.ejected_at = Some(now);
                inner.probe_since = None;
                inner.epoch += 1;
            }
            Verdict::Failure => {
                inner.failures += 1;
                if inner.failures >= EJECT_AFTER {
                    inner.ejected_at = Some(now);
                    inner.backoff = FIRST_BACKOFF;
                    inner.epoch += 1;
                }
            }
        }
    }

    /// The count of this process's ejections and readmissions, to see whether one happened.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// How much longer it stays out at `now`, when it is ejected and not yet probing.
    pub fn out_for(&self, now: Duration) -> Option<Duration> {
        let inner = self.lock();
        let at = inner.ejected_at.filter(|_| inner.probe_since.is_none())?;
        Some(inner.backoff.saturating_sub(now.saturating_sub(at))).filter(|left| !left.is_zero())
    }

    /// Another instance ejected it, for `left` more: out here too from `now`, unless it is out
    /// already. Its own probe after `left` readmits it, as after an ejection of its own.
    pub fn eject_for(&self, left: Duration, now: Duration) {
        let mut inner = self.lock();
        if inner.ejected_at.is_none() {
            inner.failures = EJECT_AFTER;
            inner.ejected_at = Some(now);
            inner.backoff = left.clamp(Duration::from_millis(1), MAX_BACKOFF);
        }
    }

    /// A time to first byte, for the latency estimate.
    pub fn sample_ttfb(&self, ttfb: Duration, now: Duration) {
        let mut inner = self.lock();
        inner.ttfb = Some(PeakEwma::update(inner.ttfb, ttfb.as_secs_f64(), now, TAU));
    }
}

/// An attempt in flight; dropping it ends it. It owns its count, so an answer's body can
/// carry it until the caller has the last byte.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One group's deployments and its round-robin counter.
#[derive(Debug)]
pub struct Group {
    pub deployments: Vec<Deployment>,
    tickets: AtomicU64,
}

impl Group {
    pub fn new(deployments: usize) -> Self {
        Self {
            deployments: (0..deployments).map(|_| Deployment::default()).collect(),
            tickets: AtomicU64::new(0),
        }
    }

    /// Every deployment as routing sees it at `now`.
    pub fn observe(&self, now: Duration) -> Vec<Observed> {
        self.deployments.iter().map(|d| d.observe(now)).collect()
    }

    /// The next round-robin ticket.
    pub fn ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{http::StatusCode, web::Bytes};

    const fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn upstream(status: u16) -> ProxyError {
        ProxyError::Upstream {
            status: StatusCode::from_u16(status).unwrap(),
            body: Bytes::new(),
            headers: Vec::new(),
        }
    }

    fn fail(d: &Deployment, times: u32, now: Duration) {
        for _ in 0..times {
            let _attempt = d.start(now);
            d.record(Verdict::Failure, now);
        }
    }

    #[test]
    fn only_what_is_about_the_deployment_is_a_failure() {
        for status in [500, 502, 503, 504, 529] {
            assert_eq!(
                Verdict::of(&upstream(status), false),
                Verdict::Failure,
                "{status}"
            );
        }
        for status in [400, 401, 403, 404, 408, 422, 429] {
            assert_eq!(
                Verdict::of(&upstream(status), false),
                Verdict::Neutral,
                "{status}"
            );
        }
        // On a key the proxy holds, a 429 is the deployment's quota, spent for every caller.
        assert_eq!(Verdict::of(&upstream(429), true), Verdict::Failure);
        for status in [400, 401, 403, 404] {
            assert_eq!(
                Verdict::of(&upstream(status), true),
                Verdict::Neutral,
                "{status}"
            );
        }
        assert_eq!(Verdict::of(&ProxyError::Timeout, false), Verdict::Failure);
        assert_eq!(
            Verdict::of(&ProxyError::Unreachable("refused".into()), false),
            Verdict::Failure
        );
        assert_eq!(
            Verdict::of(&ProxyError::MissingKey, false),
            Verdict::Neutral
        );
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_between_resets_the_count() {
        let d = Deployment::default();
        fail(&d, 2, secs(0));
        d.record(Verdict::Success, secs(0));
        fail(&d, 2, secs(0));
        assert!(d.is_up());
        assert_eq!(d.observe(secs(0)).ejected_at, None);
        fail(&d, 1, secs(1));
        assert!(!d.is_up());
        assert_eq!(d.observe(secs(1)).ejected_at, Some(secs(1)));
    }

    #[test]
    fn callers_mistakes_never_eject() {
        let d = Deployment::default();
        for status in [400, 401, 403, 404, 429] {
            for _ in 0..10 {
                d.record(Verdict::of(&upstream(status), false), secs(0));
            }
        }
        assert!(d.is_up());
    }

    #[test]
    fn after_the_backoff_one_probe_goes_and_its_answer_decides() {
        let d = Deployment::default();
        fail(&d, EJECT_AFTER, secs(10));
        assert!(d.observe(secs(10)).ejected_at.is_some());
        // 1 s later the backoff is over: routing may send the probe.
        assert_eq!(d.observe(secs(11)).ejected_at, None);
        let probe = d.start(secs(11));
        assert!(
            d.observe(secs(11)).ejected_at.is_some(),
            "one probe at a time"
        );
        d.record(Verdict::Failure, secs(12));
        drop(probe);
        // Failed: out again for twice as long, from the probe's failure.
        assert!(d.observe(secs(13)).ejected_at.is_some());
        assert_eq!(d.observe(secs(14)).ejected_at, None);
        let _probe = d.start(secs(14));
        d.record(Verdict::Success, secs(14));
        assert!(d.is_up());
        assert_eq!(d.observe(secs(14)).ejected_at, None);
        // Readmitted with a clean slate: it takes EJECT_AFTER failures again.
        fail(&d, EJECT_AFTER - 1, secs(15));
        assert!(d.is_up());
    }

    #[test]
    fn the_backoff_doubles_up_to_a_minute() {
        let d = Deployment::default();
        fail(&d, EJECT_AFTER, Duration::ZERO);
        let mut now = Duration::ZERO;
        let mut backoffs = Vec::new();
        for _ in 0..9 {
            let mut waited = Duration::ZERO;
            while d.observe(now + waited).ejected_at.is_some() {
                waited += secs(1);
            }
            backoffs.push(waited.as_secs());
            now += waited;
            fail(&d, 1, now);
        }
        assert_eq!(backoffs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn any_answer_to_a_probe_readmits() {
        let d = Deployment::default();
        fail(&d, EJECT_AFTER, secs(0));
        let _probe = d.start(secs(2));
        d.record(Verdict::of(&upstream(401), false), secs(2));
        assert!(d.is_up());
    }

    #[test]
    fn a_probe_that_never_reports_frees_the_way() {
        let d = Deployment::default();
        fail(&d, EJECT_AFTER, secs(0));
        drop(d.start(secs(1)));
        assert!(d.observe(secs(30)).ejected_at.is_some());
        assert_eq!(d.observe(secs(1) + MAX_BACKOFF).ejected_at, None);
    }

    #[test]
    fn in_flight_counts_until_the_guard_drops() {
        let group = Group::new(2);
        let one = group.deployments[1].start(secs(0));
        let two = group.deployments[1].start(secs(0));
        assert_eq!(group.observe(secs(0))[1].in_flight, 2);
        drop(one);
        drop(two);
        assert_eq!(group.observe(secs(0))[1].in_flight, 0);
        assert_eq!((group.ticket(), group.ticket()), (0, 1));
    }

    #[test]
    fn an_estimate_without_samples_drifts_down_so_the_deployment_is_tried_again() {
        let d = Deployment::default();
        d.sample_ttfb(Duration::from_millis(200), secs(0));
        let read = |at| d.observe(secs(at)).ttfb.unwrap();
        assert!((read(0) - 0.2).abs() < 1e-9);
        assert!((read(10) - 0.2 / std::f64::consts::E).abs() < 1e-9);
        assert!(read(60) < 0.001);
    }

    #[test]
    fn the_peak_ewma_jumps_up_at_once_and_decays_down_with_tau() {
        let d = Deployment::default();
        assert_eq!(d.ttfb_ewma(), None);
        d.sample_ttfb(Duration::from_millis(20), secs(0));
        assert_eq!(d.ttfb_ewma(), Some(0.02));
        d.sample_ttfb(Duration::from_millis(200), secs(1));
        assert_eq!(d.ttfb_ewma(), Some(0.2), "a peak replaces at once");
        d.sample_ttfb(Duration::from_millis(20), secs(11));
        let after_tau = d.ttfb_ewma().unwrap();
        let expected = 0.2 / std::f64::consts::E + 0.02 * (1.0 - 1.0 / std::f64::consts::E);
        assert!((after_tau - expected).abs() < 1e-9, "{after_tau}");
        // Samples close together barely move it.
        d.sample_ttfb(Duration::from_millis(20), secs(11));
        assert!((d.ttfb_ewma().unwrap() - after_tau).abs() < 1e-9);
        for s in 12..100 {
            d.sample_ttfb(Duration::from_millis(20), secs(s));
        }
        assert!((d.ttfb_ewma().unwrap() - 0.02).abs() < 1e-3);
    }
}
