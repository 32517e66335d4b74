//! The response cache: successful whole answers by a hash of who asked and exactly what, in
//! memory, bounded in bytes, each entry with its time to live; shared between instances
//! through Redis when `REDIS_URL` is set, with the memory in front of it.

mod wire;

use std::{sync::Arc, time::Duration};

use actix_web::{
    http::header::{HeaderName, HeaderValue},
    http::StatusCode,
    web::Bytes,
    HttpResponse,
};
use moka::{sync::Cache, Expiry};
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};

use crate::cluster::Redis;

/// What a request's cache key is made of. The tenant always comes first: one tenant is never
/// served another's answer, however alike the two requests.
pub struct KeyParts<'a> {
    /// The issued key's id, or the caller's key fingerprint; empty only for a caller with no
    /// key at all (a provider that takes none).
    pub tenant: &'a str,
    /// The route, such as `/v1/chat/completions`, and its query string.
    pub route: &'a str,
    /// Headers that change the answer (Anthropic's version and betas), in a fixed order.
    pub headers: &'a [Option<&'a [u8]>],
    /// The `routes` rule that chose the target, if any.
    pub rule: Option<&'a [u8]>,
    /// The request body as it came: every field that changes the answer is in it.
    pub body: &'a [u8],
}

/// A SHA-256 of the parts, each length-prefixed so that no two different requests run together
/// into the same bytes.
pub fn key(parts: &KeyParts<'_>) -> [u8; 32] {
    let mut hash = Sha256::new();
    let mut part = |bytes: Option<&[u8]>| match bytes {
        None => hash.update([0u8]),
        Some(bytes) => {
            hash.update([1u8]);
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(bytes);
        }
    };
    part(Some(parts.tenant.as_bytes()));
    part(Some(parts.route.as_bytes()));
    for header in parts.headers {
        part(*header);
    }
    part(parts.rule);
    part(Some(parts.body));
    hash.finalize().into()
}

/// A stored answer: what is needed to give it again.
pub struct Cached {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    pub ttl: Duration,
}

impl Cached {
    /// What an entry weighs against the cache's byte bound: its body and headers, and a little
    /// for the entry itself.
    fn weight(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        u32::try_from(self.body.len() + headers + 128).unwrap_or(u32::MAX)
    }

    /// The answer again, as it was given.
    pub fn response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        for (name, value) in &self.headers {
            response.insert_header((name.clone(), value.clone()));
        }
        response.body(self.body.clone())
    }
}

struct PerEntry;

impl Expiry<[u8; 32], Arc<Cached>> for PerEntry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Cached>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The process's cache, shared by every worker.
pub struct ResponseCache {
    entries: Cache<[u8; 32], Arc<Cached>>,
    /// An answer larger than this is not kept: one answer never takes the whole cache.
    max_entry_bytes: usize,
    /// The level behind the memory, shared with other instances.
    redis: Option<Redis>,
}

impl ResponseCache {
    pub fn new(max_bytes: u64, redis: Option<Redis>) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_, value: &Arc<Cached>| value.weight())
                .expire_after(PerEntry)
                .build(),
            max_entry_bytes: usize::try_from(max_bytes / 8).unwrap_or(usize::MAX),
            redis,
        }
    }

    /// The answer kept in this process's memory under `key`.
    pub fn get(&self, key: &[u8; 32]) -> Option<Arc<Cached>> {
        self.entries.get(key)
    }

    /// The answer under `key`: from memory, else from Redis (then kept in memory for the rest
    /// of its time to live). A Redis that is down or slow is a miss.
    pub async fn lookup(&self, key: &[u8; 32]) -> Option<Arc<Cached>> {
        if let Some(hit) = self.entries.get(key) {
            return Some(hit);
        }
        let redis = self.redis.as_ref()?;
        let name = redis_key(key);
        let stored: Vec<u8> = redis
            .call(move |mut conn: ConnectionManager| async move {
                redis::cmd("GET")
                    .arg(&name)
                    .query_async::<Option<Vec<u8>>>(&mut conn)
                    .await
            })
            .await??;
        let answer = wire::decode(&stored, crate::keys::now_ms())?;
        if answer.body.len() > self.max_entry_bytes {
            return None;
        }
        let answer = Arc::new(answer);
        self.entries.insert(*key, Arc::clone(&answer));
        Some(answer)
    }

    /// Keeps a successful answer, in memory and in Redis; anything else, or one too big, is
    /// not kept.
    pub fn insert(&self, key: [u8; 32], answer: Cached) {
        if !answer.status.is_success() || answer.body.len() > self.max_entry_bytes {
            return;
        }
        if let Some(redis) = &self.redis {
            let ttl_ms = u64::try_from(answer.ttl.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            let stored = wire::encode(&answer, crate::keys::now_ms());
            let name = redis_key(&key);
            redis.send(move |mut conn: ConnectionManager| async move {
                redis::cmd("SET")
                    .arg(&name)
                    .arg(stored)
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async::<()>(&mut conn)
                    .await
            });
        }
        self.entries.insert(key, Arc::new(answer));
    }
}

/// The Redis key of cache key `key`: the proxy's prefix and the key in hex.
fn redis_key(key: &[u8; 32]) -> String {
    Redis::key(&["cache", &crate::util::hex::encode(key)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(tenant: &'a str, body: &'a [u8]) -> KeyParts<'a> {
        KeyParts {
            tenant,
            route: "/v1/chat/completions",
            headers: &[],
            rule: None,
            body,
        }
    }

    fn answer(body: &'static str, ttl: Duration) -> Cached {
        Cached {
            status: StatusCode::OK,
            headers: vec![],
            body: Bytes::from_static(body.as_bytes()),
            ttl,
        }
    }

    #[test]
    fn the_tenant_is_always_part_of_the_key() {
        let body = br#"{"model":"m"}"#;
        assert_ne!(key(&parts("key_a", body)), key(&parts("key_b", body)));
        assert_eq!(key(&parts("key_a", body)), key(&parts("key_a", body)));
        // Length prefixes: moving bytes from the tenant to the route is another key.
        let shifted = KeyParts {
            tenant: "key_a/v1",
            route: "/chat/completions",
            ..parts("", body)
        };
        assert_ne!(key(&parts("key_a", body)), key(&shifted));
        let absent = KeyParts {
            headers: &[None],
            ..parts("key_a", body)
        };
        let empty = KeyParts {
            headers: &[Some(b"")],
            ..parts("key_a", body)
        };
        assert_ne!(key(&absent), key(&empty));
    }

    #[test]
    fn only_successful_answers_within_the_bound_are_kept() {
        let cache = ResponseCache::new(8 * 1024, None);
        cache.insert([1; 32], answer("ok", Duration::from_secs(60)));
        assert_eq!(cache.get(&[1; 32]).unwrap().body, "ok");
        let mut failed = answer("no", Duration::from_secs(60));
        failed.status = StatusCode::TOO_MANY_REQUESTS;
        cache.insert([2; 32], failed);
        assert!(cache.get(&[2; 32]).is_none());
        let big = Cached {
            body: Bytes::from(vec![b'x'; 2 * 1024]),
            ..answer("", Duration::from_secs(60))
        };
        cache.insert([3; 32], big);
        assert!(cache.get(&[3; 32]).is_none(), "over an eighth of the cache");
    }

    #[test]
    fn an_entry_expires_after_its_own_time_to_live() {
        let cache = ResponseCache::new(1 << 20, None);
        cache.insert([1; 32], answer("short", Duration::from_millis(1)));
        cache.insert([2; 32], answer("long", Duration::from_secs(600)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(cache.get(&[1; 32]).is_none());
        assert!(cache.get(&[2; 32]).is_some());
    }

    proptest::proptest! {
        #[test]
        fn any_parts_hash_without_panicking(
            tenant in ".{0,40}",
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        ) {
            let _ = key(&parts(&tenant, &body));
        }
    }
}
