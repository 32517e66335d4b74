//! The database: issued keys, usage records and secrets, over SQLite by default or Postgres.
//!
//! One query layer (`sqlx::AnyPool`, `$1` placeholders) and one set of versioned migrations
//! (`migrations/`) serve both. Every query runs on the store's own thread and tokio runtime:
//! actix runs one current-thread runtime per worker, and a pool's sockets and tasks belong to the
//! runtime that made them, so a handler on any worker awaits a task spawned there instead.
//! [`keys`]: the key rows; [`usage`]: usage records and the sums read back; [`sink`]: the
//! batch writer that takes records off the request path.

pub mod keys;
pub mod sink;
pub mod usage;

#[cfg(test)]
pub(crate) mod test_db;

use std::{fmt, future::Future, sync::Arc, time::Duration};

use sqlx::{
    any::{AnyArguments, AnyPoolOptions},
    query::Query,
    Any, AnyPool, Row,
};
use tokio::{runtime::Handle, sync::mpsc};

pub use keys::KeyRow;
pub use sink::UsageSink;
pub use usage::UsageRecord;

/// The default `DATABASE_URL`: one SQLite file beside the process.
pub const DEFAULT_URL: &str = "sqlite://llm-proxy.db";

/// How long a query waits for a connection before it fails: a database that is down answers
/// the admin API with an error in seconds, not after sqlx's default of 30.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The store: cheap to clone, `Send + Sync`; its thread stops when the last clone, sink and
/// writer are gone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    pool: AnyPool,
    kind: &'static str,
    runtime: Handle,
    /// Held by every store and writer: the store's thread runs until all are dropped.
    alive: mpsc::Sender<()>,
}

/// What went wrong with the database. No variant carries a key or the database URL.
#[derive(Debug)]
pub enum StoreError {
    /// `DATABASE_URL` names a database this build does not speak.
    Unsupported(String),
    /// Connecting, a query or a transaction failed.
    Database(sqlx::Error),
    /// The migrations could not be applied.
    Migrate(sqlx::migrate::MigrateError),
    /// A row that cannot be read back (for example a column that is not the JSON we wrote).
    Data(String),
    /// The store's thread could not start, or is gone.
    Runtime(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unsupported(scheme) => write!(
                f,
                "DATABASE_URL: unsupported database {scheme:?} (use sqlite://FILE or postgres://...)"
            ),
            StoreError::Database(e) => write!(f, "database: {e}"),
            StoreError::Migrate(e) => write!(f, "database migration: {e}"),
            StoreError::Data(what) => write!(f, "database row: {what}"),
            StoreError::Runtime(what) => write!(f, "database thread: {what}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Database(e) => Some(e),
            StoreError::Migrate(e) => Some(e),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e)
    }
}

/// How many times opening retries the migrations after a failure (see [`Store::open`]).
const MIGRATE_TRIES: u64 = 3;

impl Store {
    /// Connects to `url` (`sqlite://FILE`, created when missing, or `postgres://...`) and applies
    /// the migrations that are not applied yet.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let (kind, url) = connect_url(url)?;
        let (runtime, alive) = crate::util::runtime::own_thread("llm-proxy-store")
            .map_err(|e| StoreError::Runtime(e.to_string()))?;
        let pool = runtime
            .spawn(async move {
                sqlx::any::install_default_drivers();
                let pool = AnyPoolOptions::new()
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect(&url)
                    .await?;
                if kind == "sqlite" {
                    // Readers (the dashboard, the CLI beside a running proxy) then never wait
                    // for the usage writer. The mode is kept in the file, so once is enough.
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&pool)
                        .await?;
                }
                // Two processes may open a new database at once (instances starting together,
                // the `keys` command beside a starting proxy): Postgres serializes them with an
                // advisory lock, SQLite does not, and the loser finds the tables made. Its second
                // try sees the migrations applied and does nothing.
                let mut tries = 0;
                loop {
                    match sqlx::migrate!().run(&pool).await {
                        Ok(()) => break,
                        Err(_) if tries < MIGRATE_TRIES => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                        }
                        Err(e) => return Err(StoreError::Migrate(e)),
                    }
                }
                Ok::<_, StoreError>(pool)
            })
            .await
            .map_err(|e| StoreError::Runtime(e.to_string()))??;
        Ok(Store {
            inner: Arc::new(Inner {
                pool,
                kind,
                runtime,
                alive,
            }),
        })
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn kind(&self) -> &'static str {
        self.inner.kind
    }

    /// A secret made once (32 random bytes) and kept in the database under `name`, so every
    /// instance and every restart gets the same one (for keyed fingerprints).
    pub async fn secret(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|e| StoreError::Runtime(e.to_string()))?;
        let name = name.to_owned();
        self.run(move |pool| async move {
            // Insert-if-absent, then read: when two instances race, both read the winner's.
            sqlx::query(
                "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            )
            .bind(&name)
            .bind(crate::util::hex::encode(&fresh))
            .execute(&pool)
            .await?;
            let row = sqlx::query("SELECT value FROM secrets WHERE name = $1")
                .bind(&name)
                .fetch_one(&pool)
                .await?;
            let hex: String = row.try_get("value")?;
            from_hex(&hex).ok_or_else(|| StoreError::Data(format!("secret {name:?} is not hex")))
        })
        .await
    }

    /// Runs a query on the store's runtime and awaits it from whichever runtime calls.
    async fn run<T, F>(&self, query: impl FnOnce(AnyPool) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        let task = self.inner.runtime.spawn(query(self.inner.pool.clone()));
        task.await.map_err(|e| StoreError::Runtime(e.to_string()))?
    }

    /// Closes the pool, so every later query fails: a database that went away.
    #[cfg(test)]
    async fn close(&self) {
        let pool = self.inner.pool.clone();
        let _ = self
            .inner
            .runtime
            .spawn(async move { pool.close().await })
            .await;
    }
}

/// Which database `url` names, and the URL to connect with: a SQLite file is created when
/// missing unless the URL sets its own `mode`.
fn connect_url(url: &str) -> Result<(&'static str, String), StoreError> {
    let scheme = url.split(':').next().unwrap_or_default();
    match scheme {
        "sqlite" if url.contains("mode=") || url.contains(":memory:") => Ok(("sqlite", url.into())),
        "sqlite" => {
            let separator = if url.contains('?') { '&' } else { '?' };
            Ok(("sqlite", format!("{url}{separator}mode=rwc")))
        }
        "postgres" | "postgresql" => Ok(("postgres", url.into())),
        other => Err(StoreError::Unsupported(other.into())),
    }
}

/// Binds a nullable double. sqlx 0.8's Any driver sends a NULL `f64` as a Postgres float4 (its
/// Real and Double NULLs are swapped, sqlx#4284), and a statement prepared with that type then
/// refuses the next row's double; a NULL `f32` goes out as the float8 the column is.
fn bind_double<'q>(
    query: Query<'q, Any, AnyArguments<'q>>,
    value: Option<f64>,
) -> Query<'q, Any, AnyArguments<'q>> {
    match value {
        Some(value) => query.bind(value),
        None => query.bind(None::<f32>),
    }
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_create_the_file_unless_they_say_otherwise() {
        let (kind, url) = connect_url("sqlite://llm-proxy.db").unwrap();
        assert_eq!(
            (kind, url.as_str()),
            ("sqlite", "sqlite://llm-proxy.db?mode=rwc")
        );
        let (_, url) = connect_url("sqlite:///data/a.db?cache=shared").unwrap();
        assert_eq!(url, "sqlite:///data/a.db?cache=shared&mode=rwc");
        let (_, url) = connect_url("sqlite://a.db?mode=ro").unwrap();
        assert_eq!(url, "sqlite://a.db?mode=ro");
    }

    #[test]
    fn postgres_urls_pass_as_they_are_and_others_are_refused() {
        let (kind, url) = connect_url("postgres://u:p@db/llm").unwrap();
        assert_eq!((kind, url.as_str()), ("postgres", "postgres://u:p@db/llm"));
        assert_eq!(connect_url("postgresql://db").unwrap().0, "postgres");
        let error = connect_url("mysql://u:secret@db").unwrap_err().to_string();
        assert!(
            error.contains("\"mysql\"") && !error.contains("secret"),
            "{error}"
        );
    }

    #[test]
    fn hex_round_trips_and_refuses_what_is_not_hex() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(from_hex(&crate::util::hex::encode(&bytes)).unwrap(), bytes);
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex("é0"), None);
    }

    proptest::proptest! {
        #[test]
        fn any_database_url_is_taken_or_refused_without_echoing_it(url in ".{0,40}", secret in "[a-z]{8}") {
            let url = format!("{url}:{secret}@host");
            if let Err(error) = connect_url(&url) {
                let needle = format!("{secret}@");
                proptest::prop_assert!(!error.to_string().contains(&needle));
            }
        }

        #[test]
        fn hex_round_trips_any_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            proptest::prop_assert_eq!(from_hex(&crate::util::hex::encode(&bytes)), Some(bytes));
        }

        #[test]
        fn from_hex_takes_any_text_without_panicking(text in ".{0,16}") {
            let _ = from_hex(&text);
        }
    }

    #[test]
    fn a_store_opened_on_one_runtime_serves_others_after_it_ends() {
        fn shareable<T: Clone + Send + Sync + 'static>(_: &T) {}
        let current_thread = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        // Opened on a runtime that then goes away, as a main thread's might.
        let db = current_thread().block_on(test_db::sqlite());
        shareable(&db.store);
        shareable(&db.store.usage_sink(10, Default::default()));
        // Used from two others, each a current-thread runtime on its own thread like an actix
        // worker's.
        let workers: Vec<_> = ["key_a", "key_b"]
            .into_iter()
            .map(|id| {
                let store = db.store.clone();
                std::thread::spawn(move || {
                    current_thread().block_on(async {
                        store.insert_key(&keys::tests::key(id, 1)).await.unwrap();
                        store.list_keys().await.unwrap().len()
                    })
                })
            })
            .collect();
        for worker in workers {
            assert!(worker.join().unwrap() >= 1);
        }
        let found = current_thread().block_on(db.store.list_keys()).unwrap();
        assert_eq!(found.len(), 2);
    }

    async fn secrets_are_made_once(store: &Store) {
        let first = store.secret("fingerprint").await.unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(store.secret("fingerprint").await.unwrap(), first);
        assert_ne!(store.secret("other").await.unwrap(), first);
    }

    #[tokio::test]
    async fn secrets_are_made_once_sqlite() {
        let db = test_db::sqlite().await;
        secrets_are_made_once(&db.store).await;
        // Kept in the file: opened again, the same secret.
        let first = db.store.secret("fingerprint").await.unwrap();
        let again = Store::open(&db.url).await.unwrap();
        assert_eq!(again.secret("fingerprint").await.unwrap(), first);
    }

    #[tokio::test]
    #[ignore = "starts a Postgres server"]
    async fn secrets_are_made_once_postgres() {
        let db = test_db::postgres().await;
        secrets_are_made_once(&db.store).await;
    }

    #[tokio::test]
    async fn opening_a_migrated_database_again_keeps_it() {
        let db = test_db::sqlite().await;
        assert_eq!(db.store.kind(), "sqlite");
        let again = Store::open(&db.url).await.unwrap();
        assert_eq!(again.keys_version().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_closed_pool_answers_errors_not_hangs() {
        let db = test_db::sqlite().await;
        db.store.close().await;
        assert!(matches!(
            db.store.list_keys().await,
            Err(StoreError::Database(_))
        ));
    }
}
