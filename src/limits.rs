//! Admission: the process-wide cap on requests in flight, and each worker's upstream
//! connection slots. Both answer "no" at once rather than queue.

use std::{
    cell::Cell,
    rc::Rc,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

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
        let taken = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(RequestPermit(self.in_flight.clone())),
            Err(_) => Err(ProxyError::Overloaded),
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

/// A worker's upstream connections, mirroring awc's own per-worker limit so that a full pool
/// is a fast 503 instead of a wait inside awc.
#[derive(Clone, Debug)]
pub struct UpstreamSlots {
    in_use: Rc<Cell<usize>>,
    max: usize,
}

/// One upstream exchange's connection, given back when dropped.
#[derive(Debug)]
pub struct UpstreamSlot(Rc<Cell<usize>>);

impl UpstreamSlots {
    pub fn new(max: usize) -> Self {
        Self {
            in_use: Rc::new(Cell::new(0)),
            max,
        }
    }

    pub fn try_acquire(&self) -> Result<UpstreamSlot, ProxyError> {
        let in_use = self.in_use.get();
        if in_use >= self.max {
            return Err(ProxyError::PoolExhausted);
        }
        self.in_use.set(in_use + 1);
        Ok(UpstreamSlot(self.in_use.clone()))
    }
}

impl Drop for UpstreamSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
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
    fn upstream_slots_refuse_when_full_and_free_on_drop() {
        let slots = UpstreamSlots::new(1);
        let slot = slots.try_acquire().unwrap();
        assert!(matches!(
            slots.try_acquire(),
            Err(ProxyError::PoolExhausted)
        ));
        drop(slot);
        assert!(slots.try_acquire().is_ok());
    }
}
