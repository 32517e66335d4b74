//! State that several instances share through Redis (`REDIS_URL`): the response cache, issued
//! keys' limits and budgets, and deployment ejections. Without `REDIS_URL` every piece lives in
//! the process, as it always has.
//!
//! Redis is never on the critical path of an answer: every call is bounded by
//! `REDIS_TIMEOUT_MS`, and once one fails the proxy stops asking until a ping answers again
//! (checked every [`TICK`]). Meanwhile the cache misses and limits count per instance, or refuse
//! with `LIMITS_FAIL_CLOSED=true`. A log line and `llm_proxy_redis_up` say so.
//!
//! Every call runs on Redis's own thread and runtime (see [`crate::util::runtime`]), so the
//! connection and its reconnections belong to no worker.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError, Weak,
    },
    time::Duration,
};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    RedisResult,
};
use tokio::{runtime::Handle, sync::mpsc};

/// How often the watcher runs its chores: a heartbeat, ejections, and, while Redis is down, a
/// ping to see whether it is back.
pub const TICK: Duration = Duration::from_millis(250);

/// How long an instance counts as alive after its last heartbeat: its requests in flight stop
/// counting against a key's `max_concurrent` this long after it dies.
pub const ALIVE_FOR: Duration = Duration::from_secs(3);

/// The prefix of every key the proxy writes.
pub const PREFIX: &str = "llm-proxy:";

/// A chore run on each tick while Redis answers; `true` on the first tick after it came back
/// (or the first ever), for chores that must put state back.
pub type Chore = Box<dyn Fn(Redis, bool) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The shared connection: cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    runtime: Handle,
    /// Keeps Redis's thread running while any clone lives.
    _alive: mpsc::Sender<()>,
    up: AtomicBool,
    timeout: Duration,
    fail_closed: bool,
    /// This process among the instances: random, new at every start.
    instance: String,
    metrics: RedisMetrics,
    chores: Mutex<Vec<Arc<Chore>>>,
}

/// `llm_proxy_redis_up` and `llm_proxy_redis_errors_total`.
#[derive(Clone, Debug, Default)]
pub struct RedisMetrics {
    pub up: Gauge,
    pub errors: Counter,
}

impl Redis {
    /// Connects lazily to `url`: a proxy whose Redis is down at start serves all the same, and
    /// the watcher finds Redis when it comes.
    pub fn connect(url: &str, timeout: Duration, fail_closed: bool) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("REDIS_URL: {e}"))?;
        let (runtime, alive) =
            crate::util::runtime::own_thread("llm-proxy-redis").map_err(|e| e.to_string())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = {
            let _inside = runtime.enter();
            client
                .get_connection_manager_lazy(config)
                .map_err(|e| format!("REDIS_URL: {e}"))?
        };
        let mut instance = [0u8; 8];
        getrandom::fill(&mut instance).map_err(|e| e.to_string())?;
        let inner = Arc::new(Inner {
            conn,
            runtime: runtime.clone(),
            _alive: alive,
            // Down until the watcher's first ping answers: nothing waits on a Redis that is
            // not there at start.
            up: AtomicBool::new(false),
            timeout,
            fail_closed,
            instance: crate::util::hex::encode(&instance),
            metrics: RedisMetrics::default(),
            chores: Mutex::new(Vec::new()),
        });
        runtime.spawn(watch(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// From the configuration: `None` without `REDIS_URL`.
    pub fn from_config(config: &crate::config::Config) -> Result<Option<Self>, String> {
        config
            .redis_url
            .as_ref()
            .map(|url| Self::connect(&url.0, config.redis_timeout, config.limits_fail_closed))
            .transpose()
    }

    /// Whether Redis answered the last call.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    /// `LIMITS_FAIL_CLOSED`: refuse keys with limits while Redis is down.
    pub fn fail_closed(&self) -> bool {
        self.inner.fail_closed
    }

    /// This process's id among the instances.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    pub fn metrics(&self) -> &RedisMetrics {
        &self.inner.metrics
    }

    /// Adds a chore to every tick.
    pub fn add_chore(&self, chore: Chore) {
        lock(&self.inner.chores).push(Arc::new(chore));
    }

    /// Runs `call` on Redis's runtime. `None` when Redis is known to be down, or the call fails
    /// or takes longer than `REDIS_TIMEOUT_MS`; a failure marks Redis down until a ping answers.
    pub async fn call<T, F>(&self, call: impl FnOnce(ConnectionManager) -> F) -> Option<T>
    where
        F: Future<Output = RedisResult<T>> + Send + 'static,
        T: Send + 'static,
    {
        if !self.is_up() {
            return None;
        }
        let (this, call) = (self.clone(), call(self.inner.conn.clone()));
        let task = self
            .inner
            .runtime
            .spawn(async move { this.bounded(call).await });
        task.await.unwrap_or_else(|e| self.failed(&e.to_string()))
    }

    /// Sends `call` without waiting for it: for writes nobody waits on (a charge, a release,
    /// a cache entry). Dropped while Redis is down.
    pub fn send<F>(&self, call: impl FnOnce(ConnectionManager) -> F + Send + 'static)
    where
        F: Future<Output = RedisResult<()>> + Send + 'static,
    {
        if !self.is_up() {
            return;
        }
        let (this, call) = (self.clone(), call(self.inner.conn.clone()));
        self.inner
            .runtime
            .spawn(async move { this.bounded(call).await });
    }

    /// Awaits `call` for at most `REDIS_TIMEOUT_MS`, on Redis's runtime.
    async fn bounded<T>(&self, call: impl Future<Output = RedisResult<T>>) -> Option<T> {
        match tokio::time::timeout(self.inner.timeout, call).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => self.failed(&e.to_string()),
            Err(_) => self.failed("no answer within REDIS_TIMEOUT_MS"),
        }
    }

    fn failed<T>(&self, why: &str) -> Option<T> {
        self.inner.metrics.errors.inc();
        if self.inner.up.swap(false, Ordering::AcqRel) {
            self.inner.metrics.up.set(0);
            let limits = match self.inner.fail_closed {
                true => "keys with limits are refused (LIMITS_FAIL_CLOSED)",
                false => "limits count per instance",
            };
            log::warn!("redis unreachable ({why}): the cache misses and {limits} until it answers");
        }
        None
    }

    /// A key of the proxy's: [`PREFIX`] and `parts` joined by `:`.
    pub fn key(parts: &[&str]) -> String {
        let mut key = String::from(PREFIX);
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                key.push(':');
            }
            key.push_str(part);
        }
        key
    }

    /// The heartbeat key of `instance`.
    pub fn alive_key(instance: &str) -> String {
        Self::key(&["alive", instance])
    }
}

/// Every [`TICK`] while Redis's `Inner` lives: pings while Redis is down, and once it answers
/// beats the heartbeat and runs the chores.
async fn watch(inner: Weak<Inner>) {
    let mut answered_before = false;
    loop {
        tokio::time::sleep(TICK).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let redis = Redis { inner };
        let came_back = !redis.is_up();
        let alive = Redis::alive_key(redis.instance());
        let ms = u64::try_from(ALIVE_FOR.as_millis()).unwrap_or(u64::MAX);
        let beat = move |mut conn: ConnectionManager| async move {
            redis::cmd("SET")
                .arg(&alive)
                .arg(1)
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut conn)
                .await
        };
        if came_back {
            // `call` refuses while down; the ping goes around it.
            let bounded = tokio::time::timeout(redis.inner.timeout, beat(redis.inner.conn.clone()));
            if !matches!(bounded.await, Ok(Ok(()))) {
                continue;
            }
            redis.inner.up.store(true, Ordering::Release);
            redis.inner.metrics.up.set(1);
            match answered_before {
                true => log::info!("redis answers again: the cache and limits are shared again"),
                false => log::info!("redis answers: the cache and limits are shared"),
            }
            answered_before = true;
        } else if redis.call(beat).await.is_none() {
            continue;
        }
        let chores: Vec<Arc<Chore>> = lock(&redis.inner.chores).clone();
        for chore in chores {
            chore(redis.clone(), came_back).await;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
