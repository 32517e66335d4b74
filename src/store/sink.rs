//! The usage writer: a bounded queue that never blocks a request, drained in batches.
//!
//! A writer task on the store's runtime takes what is queued (what came within [`FLUSH_EVERY`]
//! of the first, in transactions of up to [`BATCH`] records) and inserts it. When the
//! database fails it keeps the batch and retries with backoff while new records queue up to the
//! bound; past the bound they are dropped and counted, so a slow or dead database never slows
//! a request and never grows memory. Rows the database refuses are dropped and counted too,
//! one by one, never their whole batch.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use sqlx::{error::ErrorKind, postgres::PgDatabaseError, AnyPool};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Notify};

use super::{usage::insert_batch, Store, UsageRecord};

/// Records written in one transaction at most.
pub const BATCH: usize = 500;
/// How long the first record of a batch waits for others before the batch is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// The first retry's delay after a failed batch; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Attempts at the last batch once every sink is gone: shutdown does not wait on a dead
/// database forever.
const ATTEMPTS_WHEN_CLOSING: u32 = 3;

/// Where requests leave their usage records: cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct UsageSink {
    queue: mpsc::Sender<Message>,
    dropped: Counter,
    /// Wakes the writer before its timer once a batch's worth is queued.
    full: Arc<Notify>,
}

// Nearly every message is a record: boxing it to shrink the rare flush would cost every request
// an allocation.
#[allow(clippy::large_enum_variant)]
enum Message {
    Record(UsageRecord),
    /// Answered once everything queued before it is written (or given up).
    Flush(oneshot::Sender<()>),
}

impl Store {
    /// A sink holding up to `capacity` records (at least 1) on top of the batch being written,
    /// and counting in `dropped` every record it could not keep. Each sink has its own writer;
    /// a process makes one and clones it.
    pub fn usage_sink(&self, capacity: usize, dropped: Counter) -> UsageSink {
        let (sink, queue) = UsageSink::new(capacity, dropped.clone());
        self.spawn_writer(queue, dropped, Arc::clone(&sink.full));
        sink
    }

    fn spawn_writer(&self, queue: mpsc::Receiver<Message>, dropped: Counter, full: Arc<Notify>) {
        let writer = write(self.inner.pool.clone(), queue, dropped, full);
        let alive = self.inner.alive.clone();
        self.inner.runtime.spawn(async move {
            writer.await;
            drop(alive);
        });
    }
}

impl UsageSink {
    fn new(capacity: usize, dropped: Counter) -> (UsageSink, mpsc::Receiver<Message>) {
        let (queue, receiver) = mpsc::channel(capacity.max(1));
        let full = Arc::new(Notify::new());
        (
            UsageSink {
                queue,
                dropped,
                full,
            },
            receiver,
        )
    }

    /// Queues the record, or drops and counts it when the queue is full. Never blocks, never
    /// fails.
    pub fn record(&self, record: UsageRecord) {
        if self.queue.try_send(Message::Record(record)).is_err() {
            self.dropped.inc();
        }
        if self.queue.max_capacity() - self.queue.capacity() >= BATCH {
            self.full.notify_one();
        }
    }

    /// Waits until every record queued before this call is written (or given up as dropped):
    /// for a graceful shutdown. While the database is down this waits for it.
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }
}

/// The writer: runs until every sender of `queue` is dropped and what they queued is written.
///
/// It waits for a batch's first record, then sleeps [`FLUSH_EVERY`] (or until [`BATCH`] are
/// queued) and takes what came meanwhile without polling the queue: a writer waiting on the
/// queue would be woken by every record, a cross-thread wake-up on every request. A flush is
/// written without the wait.
async fn write(
    pool: AnyPool,
    mut queue: mpsc::Receiver<Message>,
    dropped: Counter,
    full: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    let mut open = true;
    while open {
        let Some(first) = queue.recv().await else {
            break;
        };
        take(first, &mut batch, &mut flushes);
        if flushes.is_empty() {
            // Cut short once a batch's worth is queued, so a fast stream of requests never
            // fills the queue while the writer sleeps.
            let _ = tokio::time::timeout(FLUSH_EVERY, full.notified()).await;
        }
        loop {
            while batch.len() < BATCH {
                match queue.try_recv() {
                    Ok(message) => take(message, &mut batch, &mut flushes),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if batch.is_empty() {
                break;
            }
            let full = batch.len() == BATCH;
            write_batch(&pool, &batch, &queue, &dropped).await;
            batch.clear();
            if !full {
                break;
            }
        }
        for flush in flushes.drain(..) {
            let _ = flush.send(());
        }
    }
}

fn take(message: Message, batch: &mut Vec<UsageRecord>, flushes: &mut Vec<oneshot::Sender<()>>) {
    match message {
        Message::Record(record) => batch.push(record),
        Message::Flush(done) => flushes.push(done),
    }
}

/// Writes the batch, or counts what it could not write. When the database refuses it, one row
/// is enough to refuse the transaction: the rows are then written one by one, so a caller who
/// sends a model name Postgres cannot store (a NUL) loses only its own records, never the
/// others' (whose spend the budgets are seeded from).
async fn write_batch(
    pool: &AnyPool,
    batch: &[UsageRecord],
    queue: &mpsc::Receiver<Message>,
    dropped: &Counter,
) {
    match write_with_retry(pool, batch, queue).await {
        Ok(()) => {}
        Err(error) if batch.len() > 1 && refused(&error) => {
            for record in batch {
                if let Err(error) =
                    write_with_retry(pool, std::slice::from_ref(record), queue).await
                {
                    log::error!("usage records: dropped a record the database refused: {error}");
                    dropped.inc();
                }
            }
        }
        Err(error) => {
            log::error!("usage records: dropped {} records: {error}", batch.len());
            dropped.inc_by(batch.len() as u64);
        }
    }
}

/// Writes the records, retrying with backoff until they are written, they can never be (the
/// database refused them, or the pool was closed), or every sink is gone and a few attempts
/// failed.
async fn write_with_retry(
    pool: &AnyPool,
    records: &[UsageRecord],
    queue: &mpsc::Receiver<Message>,
) -> Result<(), sqlx::Error> {
    let mut backoff = FIRST_BACKOFF;
    let mut failures = 0u32;
    loop {
        let error = match insert_batch(pool, records).await {
            Ok(()) => {
                if failures > 0 {
                    log::info!("usage records: written again after {failures} failed attempts");
                }
                return Ok(());
            }
            Err(error) => error,
        };
        failures += 1;
        let closing = queue.is_closed() && failures >= ATTEMPTS_WHEN_CLOSING;
        if refused(&error) || matches!(error, sqlx::Error::PoolClosed) || closing {
            return Err(error);
        }
        if failures == 1 {
            // Once per outage, not once per attempt.
            log::warn!("usage records: writing failed, retrying with backoff: {error}");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Whether the database refused the rows themselves, so the same rows would fail again: a
/// constraint (either database), or a Postgres data exception (SQLSTATE class 22, e.g. a NUL
/// in a text). Anything else (a lost connection, a missing table) may pass on a later try.
fn refused(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(e) = error else {
        return false;
    };
    let data_exception = e
        .try_downcast_ref::<PgDatabaseError>()
        .is_some_and(|e| e.code().starts_with("22"));
    !matches!(e.kind(), ErrorKind::Other) || data_exception
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{test_db, usage::tests::record};

    fn written_times(found: Vec<UsageRecord>) -> Vec<i64> {
        let mut times: Vec<_> = found.iter().map(|r| r.time_ms).collect();
        times.sort();
        times
    }

    async fn the_sink_writes_what_it_is_given(store: &Store) {
        let dropped = Counter::default();
        let sink = store.usage_sink(2 * BATCH, dropped.clone());
        // More than one batch, from a clone on another thread too.
        let other = sink.clone();
        std::thread::spawn(move || {
            (0..BATCH as i64).for_each(|t| other.record(record(t, None, None)))
        })
        .join()
        .unwrap();
        (BATCH as i64..BATCH as i64 + 10).for_each(|t| sink.record(record(t, None, None)));
        sink.flush().await;
        let found = store.usage_since(0, i64::MAX, 2 * BATCH).await.unwrap();
        assert_eq!(
            written_times(found),
            (0..BATCH as i64 + 10).collect::<Vec<_>>()
        );
        assert_eq!(dropped.get(), 0);
    }

    async fn a_full_sink_drops_and_counts(store: &Store) {
        let dropped = Counter::default();
        // No writer yet, so nothing leaves the queue.
        let (sink, queue) = UsageSink::new(3, dropped.clone());
        (0..5).for_each(|t| sink.record(record(t, None, None)));
        assert_eq!(dropped.get(), 2);
        store.spawn_writer(queue, dropped.clone(), Arc::clone(&sink.full));
        sink.flush().await;
        let found = store.usage_since(0, i64::MAX, 10).await.unwrap();
        assert_eq!(written_times(found), [0, 1, 2]);
    }

    async fn a_failed_batch_is_kept_and_written_when_the_database_is_back(store: &Store) {
        let dropped = Counter::default();
        let sink = store.usage_sink(10, dropped.clone());
        execute(
            store,
            "ALTER TABLE usage_records RENAME TO usage_records_away",
        )
        .await;
        sink.record(record(1, None, None));
        sink.record(record(2, None, None));
        let waited = tokio::time::timeout(Duration::from_millis(500), sink.flush()).await;
        assert!(waited.is_err(), "written while the table was away");
        execute(
            store,
            "ALTER TABLE usage_records_away RENAME TO usage_records",
        )
        .await;
        sink.record(record(3, None, None));
        sink.flush().await;
        let found = store.usage_since(0, i64::MAX, 10).await.unwrap();
        assert_eq!(written_times(found), [1, 2, 3]);
        assert_eq!(dropped.get(), 0);
    }

    async fn a_record_the_database_refuses_loses_only_itself(store: &Store) {
        let dropped = Counter::default();
        let sink = store.usage_sink(10, dropped.clone());
        let mut refused = record(2, None, None);
        // Postgres stores no NUL in a text; SQLite does.
        refused.model = Some("gpt\0".into());
        sink.record(record(1, None, None));
        sink.record(refused);
        sink.record(record(3, None, None));
        sink.flush().await;
        let written = written_times(store.usage_since(0, i64::MAX, 10).await.unwrap());
        match store.kind() {
            "postgres" => assert_eq!((written, dropped.get()), (vec![1, 3], 1)),
            _ => assert_eq!((written, dropped.get()), (vec![1, 2, 3], 0)),
        }
    }

    async fn a_database_that_fails_does_not_block_record(store: &Store) {
        let dropped = Counter::default();
        let capacity = 10;
        let sink = store.usage_sink(capacity, dropped.clone());
        store.close().await;
        let sent = 2 * (capacity + BATCH) as u64;
        (0..sent as i64).for_each(|t| sink.record(record(t, None, None)));
        // The writer may hold one batch; the queue holds `capacity`; the rest is counted.
        let kept = sent - dropped.get();
        assert!(kept <= (capacity + BATCH) as u64, "kept {kept}");
        // A closed pool never comes back, so the writer gives its batch up and counts it too.
        sink.flush().await;
        assert_eq!(dropped.get(), sent);
    }

    async fn execute(store: &Store, sql: &'static str) {
        store
            .run(move |pool| async move {
                sqlx::query(sql).execute(&pool).await?;
                Ok(())
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_sink_writes_what_it_is_given_sqlite() {
        the_sink_writes_what_it_is_given(&test_db::sqlite().await.store).await;
    }

    #[tokio::test]
    async fn a_full_sink_drops_and_counts_sqlite() {
        a_full_sink_drops_and_counts(&test_db::sqlite().await.store).await;
    }

    #[tokio::test]
    async fn a_failed_batch_is_kept_and_written_when_the_database_is_back_sqlite() {
        let db = test_db::sqlite().await;
        a_failed_batch_is_kept_and_written_when_the_database_is_back(&db.store).await;
    }

    #[tokio::test]
    async fn a_record_the_database_refuses_loses_only_itself_sqlite() {
        a_record_the_database_refuses_loses_only_itself(&test_db::sqlite().await.store).await;
    }

    #[tokio::test]
    async fn a_database_that_fails_does_not_block_record_sqlite() {
        a_database_that_fails_does_not_block_record(&test_db::sqlite().await.store).await;
    }

    #[tokio::test]
    #[ignore = "starts a Postgres server"]
    async fn records_wait_out_a_postgres_outage() {
        let db = test_db::postgres().await;
        let dropped = Counter::default();
        let sink = db.store.usage_sink(10, dropped.clone());
        db.stop();
        (0..25).for_each(|t| sink.record(record(t, None, None)));
        let waited = tokio::time::timeout(Duration::from_millis(500), sink.flush()).await;
        assert!(waited.is_err(), "written while the server was down");
        db.start();
        sink.flush().await;
        let written = db.store.usage_since(0, i64::MAX, 100).await.unwrap().len() as u64;
        // The queue's 10 at least (the writer may have taken more before it filled), and every
        // record either written or counted.
        assert!(written >= 10, "{written} written");
        assert_eq!(written + dropped.get(), 25);
    }

    #[tokio::test]
    #[ignore = "starts a Postgres server"]
    async fn the_sink_writes_what_it_is_given_postgres() {
        the_sink_writes_what_it_is_given(&test_db::postgres().await.store).await;
    }

    #[tokio::test]
    #[ignore = "starts a Postgres server"]
    async fn a_full_sink_drops_and_counts_postgres() {
        a_full_sink_drops_and_counts(&test_db::postgres().await.store).await;
    }

    #[tokio::test]
    #[ignore = "starts a Postgres server"]
    async fn a_failed_batch_is_kept_and_written_when_the_database_is_back_postgres() {
        let db = test_db::postgres().await;
        a_failed_batch_is_kept_and_written_when_the_database_is_back(&db.store).await;
    }

    #[tokio::test]
    #[ignore = "starts a Postgres server"]
    async fn a_record_the_database_refuses_loses_only_itself_postgres() {
        a_record_the_database_refuses_loses_only_itself(&test_db::postgres().await.store).await;
    }

    #[tokio::test]
    #[ignore = "starts a Postgres server"]
    async fn a_database_that_fails_does_not_block_record_postgres() {
        a_database_that_fails_does_not_block_record(&test_db::postgres().await.store).await;
    }
}
