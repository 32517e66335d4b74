//! The running proxy's keys: the table callers are looked up in, their limits, and the usage
//! every answer leaves, kept in step with the store.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{
    atomic::{AtomicI64, Ordering},
    Arc, Mutex, RwLock,
};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::{
    cluster::Redis,
    keys::{shared, Admission, Budget, KeyRow, KeyTable, Limits, Lookup, Refusal, Release},
    store::{Store, StoreError, UsageRecord, UsageSink},
};

/// How often the store is asked whether a key changed (by another instance, or the `keys`
/// command beside a running proxy): a revoked key stops within this, well inside 1 s.
pub const WATCH_EVERY: Duration = Duration::from_millis(250);

/// How many hex digits of a caller-supplied key's keyed fingerprint usage records keep.
pub const CALLER_FINGERPRINT_HEX: usize = 12;

/// Callers' fingerprints remembered at most; past this the memo starts again empty.
const RECENT_FINGERPRINTS: usize = 4096;

/// Keys, limits and usage for one process. Checking a key costs no database round trip: the
/// table is in memory and replaced whole when the store's key version moves.
pub struct Keyring {
    store: Store,
    sink: UsageSink,
    table: RwLock<Arc<KeyTable>>,
    limits: Limits,
    /// Where limits and budgets are counted across instances, when `REDIS_URL` is set, and
    /// what tells it of each admission's end (for keys with `max_concurrent`).
    redis: Option<(Redis, Arc<dyn Release>)>,
    /// The store's key version the table was read at.
    version: AtomicI64,
    /// Keys the fingerprints of caller-supplied keys, so a usage record cannot be matched
    /// against a list of candidate keys by anyone without the database's secret.
    fingerprint_secret: Vec<u8>,
    /// Fingerprints of the callers' keys seen lately, by a randomly keyed SipHash of the key,
    /// so that the key itself is never kept: a SHA-256 on every request was about 2% of its
    /// instructions. Two keys would share an entry only on a 64-bit hash collision.
    recent: Mutex<HashMap<u64, [u8; CALLER_FINGERPRINT_HEX]>>,
    recent_hasher: std::collections::hash_map::RandomState,
}

impl Keyring {
    /// Reads every key and the spend of each budget's current period.
    pub async fn open(
        store: Store,
        sink: UsageSink,
        redis: Option<Redis>,
        now: i64,
    ) -> Result<Self, StoreError> {
        let fingerprint_secret = store.secret("caller-fingerprint").await?;
        let keyring = Self {
            store,
            sink,
            table: RwLock::new(Arc::default()),
            limits: Limits::new(),
            redis: redis.map(|redis| {
                let release = shared::SharedRelease::of(&redis);
                (redis, release)
            }),
            version: AtomicI64::new(i64::MIN),
            fingerprint_secret,
            recent: Mutex::default(),
            recent_hasher: Default::default(),
        };
        keyring.refresh(now).await?;
        Ok(keyring)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The table as it is now (an `Arc` clone under a read lock).
    pub fn table(&self) -> Arc<KeyTable> {
        Arc::clone(&self.table.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// What a caller presented, looked up in memory.
    pub fn lookup(&self, presented: &str, now: i64) -> Lookup {
        self.table().lookup(presented, now)
    }

    /// Rereads the table if the store's key version moved since the last read; true if it
    /// did. A key that is new, or whose budget changed, has its period's spend read again.
    pub async fn refresh(&self, now: i64) -> Result<bool, StoreError> {
        let version = self.store.keys_version().await?;
        if version == self.version.load(Ordering::Acquire) {
            return Ok(false);
        }
        let rows = self.store.list_keys().await?;
        let old = self.table();
        let mut reseed = Vec::new();
        for row in &rows {
            let Some(budget) = Budget::of(row) else {
                continue;
            };
            let unchanged = old
                .get(&row.id)
                .is_some_and(|key| Budget::of(&key.row) == Some(budget));
            if !unchanged {
                reseed.push((row.id.clone(), budget.period.start(now)));
            }
        }
        for (id, since) in reseed {
            let spent = self.store.spend_since(&id, since).await?;
            self.limits.seed_spend(&id, since, spent);
            if let (Some((redis, _)), Some(row)) = (&self.redis, rows.iter().find(|r| r.id == id)) {
                shared::seed_spend(redis, row, spent, now).await;
            }
        }
        let table = Arc::new(KeyTable::new(rows));
        self.limits.retain(&table);
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = table;
        self.version.store(version, Ordering::Release);
        Ok(true)
    }

    /// Keeps the table in step with the store until the process ends. A failing store is
    /// logged once per outage and the table in memory keeps serving.
    pub async fn watch(self: Arc<Self>) {
        let mut failing = false;
        loop {
            actix_web::rt::time::sleep(WATCH_EVERY).await;
            match self.refresh(crate::keys::now_ms()).await {
                Ok(_) if failing => {
                    log::info!("the key store answers again");
                    failing = false;
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    log::warn!("cannot read keys from the store (serving the last table): {e}");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    }

    /// Lets a request of `key` through at `now`, or says which limit refuses it: counted across
    /// instances when Redis is set and answers, else in this process (see [`Limits::admit`]).
    /// While Redis is down, `LIMITS_FAIL_CLOSED` refuses a key with limits instead.
    pub async fn admit(&self, key: &KeyRow, now: i64) -> Result<Admission, Denial> {
        let Some((redis, release)) = self.redis.as_ref().filter(|_| has_limits(key)) else {
            return self.limits.admit(key, now).map_err(Denial::Limit);
        };
        let release = key.max_concurrent.map(|_| Arc::clone(release));
        let (admission, here) = self.limits.hold(&key.id, release);
        match shared::admit(redis, key, here, now).await {
            Some(Ok(())) => {
                self.limits.note(key, now);
                Ok(admission)
            }
            Some(Err(refusal)) => Err(Denial::Limit(refusal)),
            None if redis.fail_closed() => Err(Denial::SharedLimitsDown),
            None => {
                drop(admission);
                self.limits.admit(key, now).map_err(Denial::Limit)
            }
        }
    }

    /// Puts this instance's share of the shared limits back after Redis was away: each
    /// budget's spend as the store has it (Redis may have restarted empty, or missed charges),
    /// and the requests in flight here.
    pub async fn restore_shared(&self, redis: &Redis, now: i64) -> Result<(), StoreError> {
        let table = self.table();
        let mut in_flight = Vec::new();
        for key in table.keys() {
            let row = &key.row;
            if let Some(budget) = Budget::of(row) {
                let spent = self
                    .store
                    .spend_since(&row.id, budget.period.start(now))
                    .await?;
                shared::seed_spend(redis, row, spent, now).await;
            }
            if row.max_concurrent.is_some() {
                in_flight.push((row.id.clone(), self.limits.in_flight(&row.id)));
            }
        }
        shared::SharedRelease::rewrite(redis, in_flight);
        Ok(())
    }

    /// A caller-supplied key's fingerprint: 12 hex digits of SHA-256 over the database's
    /// secret and the key.
    pub fn fingerprint(&self, key: &[u8]) -> String {
        let hash = self.recent_hasher.hash_one(key);
        let remembered = self
            .recent
            .lock()
            .ok()
            .and_then(|recent| recent.get(&hash).copied());
        let hex = remembered.unwrap_or_else(|| {
            let digest = Sha256::new()
                .chain_update(&self.fingerprint_secret)
                .chain_update(key)
                .finalize();
            let hex = crate::util::hex::encode(&digest[..CALLER_FINGERPRINT_HEX / 2]);
            let hex: [u8; CALLER_FINGERPRINT_HEX] = hex
                .as_bytes()
                .try_into()
                .expect("6 bytes are 12 hex digits");
            if let Ok(mut recent) = self.recent.lock() {
                if recent.len() >= RECENT_FINGERPRINTS {
                    recent.clear();
                }
                recent.insert(hash, hex);
            }
            hex
        });
        String::from_utf8_lossy(&hex).into_owned()
    }

    /// One answered (or refused) request: charged to its key's limits and budget, and queued
    /// for the store. Never blocks.
    pub fn record(&self, record: UsageRecord, now: i64) {
        if let Some(id) = &record.key_id {
            let tokens = (record.input_tokens.max(0) + record.output_tokens.max(0)) as u64;
            self.limits.charge(id, tokens, record.cost_usd, now);
            if let Some((redis, _)) = &self.redis {
                if let Some(key) = self.table().get(id) {
                    shared::charge(redis, &key.row, tokens, record.cost_usd, now);
                }
            }
        }
        self.sink.record(record);
    }

    /// Waits until every record queued so far is written (or given up), for shutdown and tests.
    pub async fn flush(&self) {
        self.sink.flush().await;
    }
}

/// Whether any of `key`'s limits counts requests, tokens or spend.
fn has_limits(key: &KeyRow) -> bool {
    key.rpm.is_some()
        || key.tpm.is_some()
        || key.max_concurrent.is_some()
        || Budget::of(key).is_some()
}

/// Why [`Keyring::admit`] turned a request away.
#[derive(Debug)]
pub enum Denial {
    /// One of the key's limits (a 429).
    Limit(Refusal),
    /// The limits are shared through Redis, which is down, and `LIMITS_FAIL_CLOSED` is set.
    SharedLimitsDown,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{test_db, KeyRow};

    fn row(id: &str, secret: &str) -> KeyRow {
        KeyRow {
            budget_usd: Some(1.0),
            budget_period: Some("day".into()),
            ..KeyRow::new(
                id.into(),
                crate::keys::hash_hex(secret),
                secret[..8].into(),
                format!("name-{id}"),
                0,
            )
        }
    }

    /// A keyring over `store`, read at time 1,000.
    async fn open(store: &Store) -> Keyring {
        let counter = prometheus_client::metrics::counter::Counter::default();
        Keyring::open(store.clone(), store.usage_sink(10, counter), None, 1_000)
            .await
            .unwrap()
    }

    #[actix_web::test]
    async fn remembered_fingerprints_are_the_computed_ones_and_the_memo_stays_bounded() {
        let db = test_db::sqlite().await;
        let store = db.store.clone();
        let keyring = open(&store).await;
        let first = keyring.fingerprint(b"sk-caller");
        assert_eq!(keyring.fingerprint(b"sk-caller"), first, "remembered");
        for i in 0..RECENT_FINGERPRINTS + 10 {
            keyring.fingerprint(format!("sk-{i}").as_bytes());
        }
        assert!(keyring.recent.lock().unwrap().len() <= RECENT_FINGERPRINTS);
        assert_eq!(keyring.fingerprint(b"sk-caller"), first, "computed again");
        let computed = |key: &[u8]| {
            let digest = Sha256::new()
                .chain_update(&keyring.fingerprint_secret)
                .chain_update(key)
                .finalize();
            crate::util::hex::encode(&digest[..CALLER_FINGERPRINT_HEX / 2])
        };
        assert_eq!(first, computed(b"sk-caller"));
        assert_eq!(keyring.fingerprint(b"sk-7"), computed(b"sk-7"));
    }

    #[actix_web::test]
    async fn a_key_added_to_the_store_is_found_after_a_refresh_and_its_spend_is_read() {
        let db = test_db::sqlite().await;
        let store = db.store.clone();
        let keyring = open(&store).await;
        let secret = "lp-0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";
        assert!(matches!(keyring.lookup(secret, 1_000), Lookup::Unknown));
        assert!(!keyring.refresh(1_000).await.unwrap(), "nothing changed");

        store.insert_key(&row("key_a", secret)).await.unwrap();
        assert!(keyring.refresh(1_000).await.unwrap());
        assert!(matches!(keyring.lookup(secret, 1_000), Lookup::Found(_)));

        let fingerprint = keyring.fingerprint(b"sk-caller");
        assert_eq!(fingerprint.len(), CALLER_FINGERPRINT_HEX);
        assert!(fingerprint.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(fingerprint, keyring.fingerprint(b"sk-caller"));
        assert_ne!(fingerprint, keyring.fingerprint(b"sk-other"));
    }
}
