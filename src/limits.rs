//! Admission: the process-wide cap on requests in flight, the bytes of request bodies still
//! arriving, and each worker's upstream connection slots.
//!
//! A request counts against `MAX_CONCURRENT_REQUESTS` only once its body is in: callers that
//! send their bodies slowly hold nothing but the few bytes they have sent (bounded together by
//! `MAX_PENDING_BODY_BYTES`, and each by `CLIENT_BODY_TIMEOUT_SECONDS`), so they cannot lock
//! out everyone else. The request limit and the body budget answer "no" at once; a full
//! connection pool is waited on for `HTTP_POOL_TIMEOUT_SECONDS` at most.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ProxyError;

/// `MAX_CONCURRENT_REQUESTS`, shared by every worker.
#[derive(Clone, Debug)]
pub struct RequestLimit {
    in_flight: Arc<AtomicUsize>,
    max: usize,
}

/// One request's place under the limit, given back when dropped (for a stream: when it ends).
#[derive(Debug)]
pub struct RequestPermit(Arc<AtomicUsize>);

impl RequestLimit {
    pub fn new(max: usize) -> Self {
        Self {
            in_flight: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    pub fn try_acquire(&self) -> Result<RequestPermit, ProxyError> {
        if take(&self.in_flight, 1, self.max) {
            Ok(RequestPermit(self.in_flight.clone()))
        } else {
            Err(ProxyError::Overloaded)
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

impl Drop for RequestPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Adds `amount` to `counter` unless that would pass `max`.
fn take(counter: &AtomicUsize, amount: usize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            n.checked_add(amount).filter(|total| *total <= max)
        })
        .is_ok()
}

/// `MAX_PENDING_BODY_BYTES`: the bytes of request bodies being received, across the process.
/// A reservation borrows it: a body is read within its handler, which holds the budget.
#[derive(Debug)]
pub struct BodyBudget {
    pending: AtomicUsize,
    max: usize,
}

/// The bytes one body being received holds of the budget, given back when dropped.
#[derive(Debug)]
pub struct BodyReservation<'b> {
    budget: &'b BodyBudget,
    held: usize,
}

impl BodyBudget {
    pub fn new(max: usize) -> Self {
        Self {
            pending: AtomicUsize::new(0),
            max,
        }
    }

    /// A reservation of nothing yet, to grow as the body arrives.
    pub fn reserve(&self) -> BodyReservation<'_> {
        BodyReservation {
            budget: self,
            held: 0,
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

impl BodyReservation<'_> {
    /// Holds `more` bytes too, or fails when the budget has no room for them.
    pub fn grow(&mut self, more: usize) -> Result<(), ProxyError> {
        if !take(&self.budget.pending, more, self.budget.max) {
            return Err(ProxyError::BodiesOverloaded);
        }
        self.held += more;
        Ok(())
    }
}

impl Drop for BodyReservation<'_> {
    fn drop(&mut self) {
        self.budget.pending.fetch_sub(self.held, Ordering::AcqRel);
    }
}

/// A worker's upstream connections (`HTTP_MAX_CONNECTIONS` split across workers), or no limit.
/// Each exchange holds a slot while it uses its connection, so awc's own pool never has to
/// wait: a request waits here, at most `wait`, and then gets a 503.
#[derive(Clone, Debug)]
pub struct UpstreamSlots {
    slots: Option<Arc<Semaphore>>,
    wait: Duration,
}

/// One upstream exchange's connection, given back when dropped.
#[derive(Debug)]
pub struct UpstreamSlot(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl UpstreamSlots {
    /// `max` slots, or no limit when it is zero.
    pub fn new(max: usize, wait: Duration) -> Self {
        Self {
            slots: (max > 0).then(|| Arc::new(Semaphore::new(max))),
            wait,
        }
    }

    pub async fn acquire(&self) -> Result<UpstreamSlot, ProxyError> {
        let Some(slots) = &self.slots else {
            return Ok(UpstreamSlot(None));
        };
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            return Ok(UpstreamSlot(Some(permit)));
        }
        match actix_web::rt::time::timeout(self.wait, slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(UpstreamSlot(Some(permit))),
            // Elapsed, or closed (never: the semaphore lives as long as the worker).
            _ => Err(ProxyError::PoolExhausted),
        }
    }
}

/// What a response body keeps alive until it ends: its request's permit and its slot.
#[derive(Debug, Default)]
pub struct Guards {
    pub request: Option<RequestPermit>,
    pub upstream: Option<UpstreamSlot>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_limit_refuses_past_its_maximum_and_frees_on_drop() {
        let limit = RequestLimit::new(2);
        let first = limit.try_acquire().unwrap();
        let _second = limit.try_acquire().unwrap();
        assert!(matches!(limit.try_acquire(), Err(ProxyError::Overloaded)));
        drop(first);
        assert_eq!(limit.in_flight(), 1);
        assert!(limit.try_acquire().is_ok());
    }

    #[test]
    fn the_body_budget_holds_what_bodies_have_sent_until_they_are_done() {
        let budget = BodyBudget::new(100);
        let mut slow = budget.reserve();
        slow.grow(60).unwrap();
        let mut other = budget.reserve();
        assert!(matches!(other.grow(41), Err(ProxyError::BodiesOverloaded)));
        other.grow(40).unwrap();
        assert_eq!(budget.pending(), 100);
        drop(slow);
        assert_eq!(budget.pending(), 40);
        drop(other);
        assert_eq!(budget.pending(), 0);
        assert!(matches!(
            budget.reserve().grow(usize::MAX),
            Err(ProxyError::BodiesOverloaded)
        ));
        assert_eq!(budget.pending(), 0, "an overflowing request takes nothing");
    }

    #[actix_web::test]
    async fn a_full_pool_is_waited_on_for_its_time_then_refused() {
        let slots = UpstreamSlots::new(1, Duration::from_millis(50));
        let _slot = slots.acquire().await.unwrap();
        assert!(matches!(
            slots.acquire().await,
            Err(ProxyError::PoolExhausted)
        ));
    }

    #[actix_web::test]
    async fn a_slot_freed_while_a_request_waits_goes_to_it() {
        let slots = UpstreamSlots::new(1, Duration::from_secs(10));
        let slot = slots.acquire().await.unwrap();
        actix_web::rt::spawn(async move {
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
            drop(slot);
        });
        assert!(slots.acquire().await.is_ok());
    }

    #[actix_web::test]
    async fn no_connection_limit_means_every_request_gets_a_slot() {
        let slots = UpstreamSlots::new(0, Duration::ZERO);
        let held: Vec<_> = futures_util::future::join_all((0..10_000).map(|_| slots.acquire()))
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(held.len(), 10_000);
    }
}
