//! Usage records: one per request, written in batches, read back as sums and bounded lists.

use sqlx::{any::AnyRow, AnyPool, Row};

use super::{bind_double, Store, StoreError};

/// What one request used. Never content, never a key: an issued key by its id, a caller's own
/// key by its keyed fingerprint.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageRecord {
    /// Unix milliseconds.
    pub time_ms: i64,
    /// The id of the issued key the request came with.
    pub key_id: Option<String>,
    /// Else the keyed fingerprint (12 hex) of the caller's own key.
    pub caller: Option<String>,
    /// `"chat"` (the path route), `"chat_completions"`, `"messages"`, `"count_tokens"`.
    pub route: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    /// The group the request named, if any.
    pub group: Option<String>,
    /// `provider/model` that answered.
    pub deployment: Option<String>,
    pub status: u16,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    /// `None` when the price is unknown.
    pub cost_usd: Option<f64>,
    pub latency_ms: f64,
    pub ttfb_ms: Option<f64>,
    pub request_id: String,
    /// Answered from the cache (issue 13).
    pub cached: bool,
}

const COLUMNS: &str = "time_ms, key_id, caller, route, provider, model, model_group, deployment, \
    status, input_tokens, output_tokens, cached_tokens, cost_usd, latency_ms, ttfb_ms, \
    request_id, cached";

impl Store {
    /// What one key spent (the sum of its records' `cost_usd`) since `since_ms`, for budgets
    /// at start. Records of unknown price count as nothing.
    pub async fn spend_since(&self, key_id: &str, since_ms: i64) -> Result<f64, StoreError> {
        let key_id = key_id.to_owned();
        self.run(move |pool| async move {
            // The cast makes both databases answer a double, also for no rows at all.
            let row = sqlx::query(
                "SELECT CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION) AS spend \
                 FROM usage_records WHERE key_id = $1 AND time_ms >= $2",
            )
            .bind(key_id)
            .bind(since_ms)
            .fetch_one(&pool)
            .await?;
            Ok(row.try_get("spend")?)
        })
        .await
    }

    /// The records with `since_ms <= time_ms < until_ms`, newest first, at most `limit` of them
    /// (the newest), so a reader's memory stays bounded however busy the range was.
    pub async fn usage_since(
        &self,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |pool| async move {
            let sql = format!(
                "SELECT {COLUMNS} FROM usage_records WHERE time_ms >= $1 AND time_ms < $2 \
                 ORDER BY time_ms DESC LIMIT $3"
            );
            let rows = sqlx::query(&sql)
                .bind(since_ms)
                .bind(until_ms)
                .bind(limit)
                .fetch_all(&pool)
                .await?;
            rows.iter().map(record_from_row).collect()
        })
        .await
    }
}

/// Writes the records in one transaction: all of them or none.
pub(crate) async fn insert_batch(
    pool: &AnyPool,
    records: &[UsageRecord],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // SQLite binds `?` by position; a `$N` is a named parameter to it, looked up by name on
    // every bind. Postgres takes only `$N`.
    let positional = tx.backend_name() == SQLITE_BACKEND;
    let mut rest = records;
    while !rest.is_empty() {
        // Many rows per statement (one per row spent most of a record's cost in stepping a
        // statement), in a few fixed sizes so that each size's statement is prepared once.
        let rows = ROWS_PER_INSERT
            .iter()
            .copied()
            .find(|&rows| rows <= rest.len())
            .unwrap_or(1);
        let (chunk, after) = rest.split_at(rows);
        rest = after;
        let sql = insert_sql(rows, positional);
        let mut query = sqlx::query(&sql);
        for r in chunk {
            query = query
                .bind(r.time_ms)
                .bind(r.key_id.as_deref())
                .bind(r.caller.as_deref())
                .bind(r.route.as_str())
                .bind(r.provider.as_deref())
                .bind(r.model.as_deref())
                .bind(r.group.as_deref())
                .bind(r.deployment.as_deref())
                .bind(i64::from(r.status))
                .bind(r.input_tokens)
                .bind(r.output_tokens)
                .bind(r.cached_tokens);
            query = bind_double(query, r.cost_usd).bind(r.latency_ms);
            query = bind_double(query, r.ttfb_ms)
                .bind(r.request_id.as_str())
                .bind(i64::from(r.cached));
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// Rows in one INSERT, largest first: 100 rows of 17 values stay far below SQLite's and
/// Postgres's limits on bound parameters (32,766 and 65,535).
const ROWS_PER_INSERT: [usize; 3] = [100, 10, 1];
const COLUMN_COUNT: usize = 17;
/// What sqlx's SQLite driver calls itself (`AnyConnection::backend_name`).
const SQLITE_BACKEND: &str = "SQLite";

/// `INSERT INTO usage_records (...) VALUES ($1, ..., $17), ($18, ...)` for `rows` rows, with
/// `?` for each value instead when `positional`.
fn insert_sql(rows: usize, positional: bool) -> String {
    let mut sql = format!("INSERT INTO usage_records ({COLUMNS}) VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..COLUMN_COUNT {
            if column > 0 {
                sql.push_str(", ");
            }
            if positional {
                sql.push('?');
            } else {
                sql.push('$');
                sql.push_str(&(row * COLUMN_COUNT + column + 1).to_string());
            }
        }
        sql.push(')');
    }
    sql
}

fn record_from_row(row: &AnyRow) -> Result<UsageRecord, StoreError> {
    let status: i64 = row.try_get("status")?;
    Ok(UsageRecord {
        time_ms: row.try_get("time_ms")?,
        key_id: row.try_get("key_id")?,
        caller: row.try_get("caller")?,
        route: row.try_get("route")?,
        provider: row.try_get("provider")?,
        model: row.try_get("model")?,
        group: row.try_get("model_group")?,
        deployment: row.try_get("deployment")?,
        status: u16::try_from(status).map_err(|_| {
            StoreError::Data(format!("usage status {status} is not an HTTP status"))
        })?,
        input_tokens: row.try_get("input_tokens")?,
        output_tokens: row.try_get("output_tokens")?,
        cached_tokens: row.try_get("cached_tokens")?,
        cost_usd: row.try_get("cost_usd")?,
        latency_ms: row.try_get("latency_ms")?,
        ttfb_ms: row.try_get("ttfb_ms")?,
        request_id: row.try_get("request_id")?,
        cached: row.try_get::<i64, _>("cached")? != 0,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    #[test]
    fn an_insert_numbers_its_values_for_postgres_and_places_them_for_sqlite() {
        let postgres = super::insert_sql(2, false);
        assert!(postgres.ends_with("($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17), ($18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34)"), "{postgres}");
        let sqlite = super::insert_sql(1, true);
        assert!(
            sqlite.ends_with(&format!("({})", ["?"; 17].join(", "))),
            "{sqlite}"
        );
    }

    use super::*;
    use crate::store::test_db;

    pub(crate) fn record(time_ms: i64, key_id: Option<&str>, cost_usd: Option<f64>) -> UsageRecord {
        UsageRecord {
            time_ms,
            key_id: key_id.map(Into::into),
            caller: None,
            route: "chat_completions".into(),
            provider: Some("openai".into()),
            model: Some("gpt-4o-mini".into()),
            group: None,
            deployment: Some("openai/gpt-4o-mini".into()),
            status: 200,
            input_tokens: 10,
            output_tokens: 5,
            cached_tokens: 0,
            cost_usd,
            latency_ms: 12.5,
            ttfb_ms: Some(3.25),
            request_id: format!("req-{time_ms}"),
            cached: false,
        }
    }

    /// Writes on the store's runtime, where the pool's connections live.
    pub(crate) async fn write(store: &Store, records: &[UsageRecord]) {
        let records = records.to_vec();
        store
            .run(|pool| async move { Ok(insert_batch(&pool, &records).await?) })
            .await
            .unwrap();
    }

    async fn records_read_back_as_written(store: &Store) {
        let mut full = record(1_000, None, None);
        full.caller = Some("0123456789ab".into());
        full.route = "messages".into();
        full.group = Some("fast".into());
        full.status = 529;
        full.input_tokens = i64::from(u32::MAX) + 1;
        full.cached_tokens = 7;
        full.ttfb_ms = None;
        full.cached = true;
        let bare = UsageRecord {
            key_id: None,
            provider: None,
            model: None,
            deployment: None,
            ..record(2_000, Some("key_a"), Some(0.125))
        };
        write(store, &[full.clone(), bare.clone()]).await;
        assert_eq!(
            store.usage_since(0, i64::MAX, 10).await.unwrap(),
            vec![bare, full]
        );
    }

    async fn usage_since_keeps_to_its_bounds_and_limit(store: &Store) {
        let records: Vec<_> = (1..=5).map(|t| record(t * 100, None, None)).collect();
        write(store, &records).await;
        let times = |found: Vec<UsageRecord>| found.iter().map(|r| r.time_ms).collect::<Vec<_>>();
        // From inclusive, until exclusive.
        assert_eq!(
            times(store.usage_since(200, 400, 10).await.unwrap()),
            [300, 200]
        );
        assert_eq!(
            times(store.usage_since(0, 1_000, 10).await.unwrap()),
            [500, 400, 300, 200, 100]
        );
        // The limit keeps the newest.
        assert_eq!(
            times(store.usage_since(0, 1_000, 2).await.unwrap()),
            [500, 400]
        );
        assert_eq!(
            times(store.usage_since(0, 1_000, 0).await.unwrap()),
            Vec::<i64>::new()
        );
        assert_eq!(
            times(store.usage_since(600, 1_000, 10).await.unwrap()),
            Vec::<i64>::new()
        );
        assert_eq!(
            store.usage_since(0, 1_000, usize::MAX).await.unwrap().len(),
            5
        );
    }

    async fn spend_since_sums_one_keys_costs_from_a_time(store: &Store) {
        assert_eq!(store.spend_since("key_a", 0).await.unwrap(), 0.0);
        let records = [
            record(100, Some("key_a"), Some(1.5)),
            record(200, Some("key_a"), Some(0.25)),
            record(300, Some("key_a"), None),
            record(300, Some("key_b"), Some(7.0)),
            record(300, None, Some(9.0)),
            record(400, Some("key_a"), Some(2.0)),
        ];
        write(store, &records).await;
        assert_eq!(store.spend_since("key_a", 0).await.unwrap(), 3.75);
        assert_eq!(store.spend_since("key_a", 200).await.unwrap(), 2.25);
        assert_eq!(store.spend_since("key_a", 401).await.unwrap(), 0.0);
        assert_eq!(store.spend_since("key_b", 0).await.unwrap(), 7.0);
        assert_eq!(store.spend_since("key_c", 0).await.unwrap(), 0.0);
    }

    #[tokio::test]
    async fn records_read_back_as_written_sqlite() {
        let db = test_db::sqlite().await;
        records_read_back_as_written(&db.store).await;
    }

    #[tokio::test]
    async fn usage_since_keeps_to_its_bounds_and_limit_sqlite() {
        let db = test_db::sqlite().await;
        usage_since_keeps_to_its_bounds_and_limit(&db.store).await;
    }

    #[tokio::test]
    async fn spend_since_sums_one_keys_costs_from_a_time_sqlite() {
        let db = test_db::sqlite().await;
        spend_since_sums_one_keys_costs_from_a_time(&db.store).await;
    }

    #[tokio::test]
    #[ignore = "starts a Postgres server"]
    async fn records_read_back_as_written_postgres() {
        let db = test_db::postgres().await;
        records_read_back_as_written(&db.store).await;
    }

    #[tokio::test]
    #[ignore = "starts a Postgres server"]
    async fn usage_since_keeps_to_its_bounds_and_limit_postgres() {
        let db = test_db::postgres().await;
        usage_since_keeps_to_its_bounds_and_limit(&db.store).await;
    }

    #[tokio::test]
    #[ignore = "starts a Postgres server"]
    async fn spend_since_sums_one_keys_costs_from_a_time_postgres() {
        let db = test_db::postgres().await;
        spend_since_sums_one_keys_costs_from_a_time(&db.store).await;
    }
}
