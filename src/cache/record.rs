//! A stream recorded for the response cache as it passes to the caller, stored once it ended
//! whole.
//!
//! The recorder wraps the body the door sends, so what it keeps is exactly what the caller
//! got, in the door's format, after any translation. It never reads ahead of the caller: it
//! sees a chunk only when actix polls the body to write it, so a slow reader slows the
//! recording, never the reverse, and the bytes it holds are the caller's bytes sent so far.
//! Those bytes are bounded twice: one recording stops at the cache's per-entry bound, and all
//! recordings in progress together hold at most the cache's own bound ([`Budget`]), so many
//! slow callers cannot hold more than that between them.

use std::{
    pin::Pin,
    rc::Rc,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use actix_web::{
    body::{BodySize, BoxBody, MessageBody},
    http::header::{HeaderName, HeaderValue},
    http::StatusCode,
    web::{self, Bytes},
};

use crate::{
    cache::{Cached, ResponseCache},
    upstream::{self, report::StreamReport},
    util::sse,
};

/// The bytes every recording in progress holds together, against one limit.
#[derive(Debug)]
pub struct Budget {
    held: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Self {
        Self {
            held: AtomicUsize::new(0),
            limit,
        }
    }

    /// Takes `bytes` from the budget, or nothing when they do not fit.
    fn take(&self, bytes: usize) -> bool {
        let mut held = self.held.load(Ordering::Relaxed);
        loop {
            let Some(after) = held.checked_add(bytes).filter(|&after| after <= self.limit) else {
                return false;
            };
            match self
                .held
                .compare_exchange_weak(held, after, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => held = now,
            }
        }
    }

    fn give_back(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// What the recordings in progress hold now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// The bytes of one stream so far, up to `bound`. Past the bound, or when the budget is spent,
/// it stops for good and gives its bytes back: a stream too big to keep is not kept in part.
#[derive(Debug)]
pub struct Recording {
    bytes: Vec<u8>,
    bound: usize,
    stopped: bool,
    budget: Arc<Budget>,
}

impl Recording {
    pub fn new(bound: usize, budget: Arc<Budget>) -> Self {
        Self {
            bytes: Vec::new(),
            bound,
            stopped: false,
            budget,
        }
    }

    /// Adds a chunk the caller is being sent; false once the recording has stopped.
    pub fn push(&mut self, chunk: &[u8]) -> bool {
        if self.stopped {
            return false;
        }
        let fits = self.bytes.len() + chunk.len() <= self.bound;
        if !fits || !self.budget.take(chunk.len()) {
            self.stop();
            return false;
        }
        self.bytes.extend_from_slice(chunk);
        true
    }

    /// The bytes held now (zero once stopped).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The whole stream, unless the recording stopped.
    pub fn finish(mut self) -> Option<Bytes> {
        if self.stopped {
            return None;
        }
        let mut bytes = std::mem::take(&mut self.bytes);
        self.budget.give_back(bytes.len());
        // The entry weighs its length; its memory should be no more.
        bytes.shrink_to_fit();
        Some(Bytes::from(bytes))
    }

    fn stop(&mut self) {
        self.stopped = true;
        self.budget.give_back(self.bytes.len());
        self.bytes = Vec::new();
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes.len());
    }
}

/// Whether a stream holds an error event: an upstream of the door's own format passes its
/// in-band errors (Anthropic's `overloaded_error` mid-stream) through as they came, and an
/// answer that ends in one is no answer to keep. Only events that mention `error` are read.
pub fn has_error_event(stream: &[u8]) -> bool {
    if memchr::memmem::find(stream, b"error").is_none() {
        return false;
    }
    let mut parser = sse::Parser::with_limit(stream.len());
    let mut found = false;
    let mut look = |event: sse::Event<'_>| {
        found = found || upstream::is_error_event(&event);
        Ok::<(), ()>(())
    };
    let _ = parser.feed(stream, &mut look);
    let _ = parser.finish(&mut look);
    found
}

/// What a recorded stream is stored as, besides its bytes.
pub struct Entry {
    pub key: [u8; 32],
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub ttl: Duration,
}

/// The stream's body, recorded as it passes and stored in the cache when it ends whole: its
/// body ended without an error, the upstream did not break it (see [`StreamReport::broken`]),
/// and it holds no error event. Dropped before its end (the caller left), it stores nothing.
pub struct Recorder {
    body: BoxBody,
    recording: Option<Recording>,
    entry: Entry,
    report: Option<Rc<StreamReport>>,
    cache: web::Data<ResponseCache>,
}

impl Recorder {
    /// Records `body`, a successful stream, for `entry`.
    pub fn new(
        body: BoxBody,
        entry: Entry,
        report: Option<Rc<StreamReport>>,
        cache: web::Data<ResponseCache>,
    ) -> Self {
        Self {
            body,
            recording: Some(cache.recording()),
            entry,
            report,
            cache,
        }
    }

    fn store(&mut self, recording: Recording) {
        if self.report.as_ref().is_some_and(|r| r.broken().is_some()) {
            return;
        }
        let Some(body) = recording.finish() else {
            return;
        };
        if has_error_event(&body) {
            return;
        }
        let entry = &mut self.entry;
        self.cache.insert(
            entry.key,
            Cached {
                status: entry.status,
                headers: std::mem::take(&mut entry.headers),
                body,
                ttl: entry.ttl,
            },
        );
    }
}

impl MessageBody for Recorder {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        let next = Pin::new(&mut this.body).poll_next(cx);
        match &next {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(recording) = &mut this.recording {
                    if !recording.push(chunk) {
                        this.recording = None;
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => this.recording = None,
            Poll::Ready(None) => {
                if let Some(recording) = this.recording.take() {
                    this.store(recording);
                }
            }
            Poll::Pending => {}
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    #[test]
    fn a_recording_past_its_bound_stops_and_gives_its_bytes_back() {
        let budget = Arc::new(Budget::new(100));
        let mut recording = Recording::new(10, budget.clone());
        assert!(recording.push(b"12345"));
        assert_eq!(budget.held(), 5);
        assert!(recording.push(b"67890"), "exactly the bound fits");
        assert!(!recording.push(b"!"));
        assert_eq!((recording.len(), budget.held()), (0, 0));
        assert!(!recording.push(b""), "stopped for good");
        assert_eq!(recording.finish(), None);
    }

    #[test]
    fn recordings_in_progress_share_one_budget() {
        let budget = Arc::new(Budget::new(8));
        let mut one = Recording::new(8, budget.clone());
        let mut two = Recording::new(8, budget.clone());
        assert!(one.push(b"12345"));
        assert!(!two.push(b"1234"), "5 + 4 is over the budget of 8");
        assert!(two.finish().is_none());
        assert!(one.push(b"678"));
        assert_eq!(one.finish().as_deref(), Some(&b"12345678"[..]));
        assert_eq!(budget.held(), 0, "a finished recording holds nothing");
        let mut dropped = Recording::new(8, budget.clone());
        dropped.push(b"1234");
        drop(dropped);
        assert_eq!(budget.held(), 0, "nor does a dropped one");
    }

    #[test]
    fn error_events_of_each_door_are_found() {
        let anthropic = b"event: message_start\ndata: {\"type\":\"message_start\"}\n\n\
            event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n";
        assert!(has_error_event(anthropic));
        let openai = b"data: {\"choices\":[]}\n\ndata: {\"error\":{\"message\":\"cut\"}}\n\n";
        assert!(has_error_event(openai));
        let told = b"data: {\"choices\":[{\"delta\":{\"content\":\"an error\"}}]}\n\n\
            data: [DONE]\n\n";
        assert!(!has_error_event(told), "an answer about errors is no error");
        assert!(!has_error_event(b"data: [DONE]\n\n"));
    }

    proptest! {
        #[test]
        fn a_recording_is_the_stream_whole_or_nothing(
            chunks in proptest::collection::vec(
                proptest::collection::vec(proptest::num::u8::ANY, 0..40), 0..20),
            bound in 0usize..400,
            budget in 0usize..400,
        ) {
            let budget = Arc::new(Budget::new(budget));
            let mut recording = Recording::new(bound, budget.clone());
            let mut kept = true;
            for chunk in &chunks {
                kept = recording.push(chunk) && kept;
                prop_assert!(recording.len() <= bound);
                prop_assert_eq!(budget.held(), recording.len());
            }
            let whole: Vec<u8> = chunks.concat();
            let fits = whole.len() <= bound.min(budget.limit);
            prop_assert_eq!(kept, fits);
            match recording.finish() {
                Some(bytes) => prop_assert_eq!(&bytes[..], &whole[..]),
                None => prop_assert!(!fits),
            }
            prop_assert_eq!(budget.held(), 0);
        }

        #[test]
        fn any_bytes_are_checked_for_error_events_without_panicking(
            stream in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
        ) {
            let _ = has_error_event(&stream);
        }
    }
}
