//! The rows of issued keys, and the counter that changes with every one of them.

use serde_json::{Map, Value};
use sqlx::{
    any::{AnyArguments, AnyRow},
    query::Query,
    Any, AnyConnection, Row,
};

use super::{bind_double, Store, StoreError};

/// One issued key as stored. Generating and hashing the secret is `keys/`'s business; the
/// secret itself is never here, only its hash.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyRow {
    /// `key_` and 16 base62 characters, made by `keys/`.
    pub id: String,
    /// Hex SHA-256 of the secret; unique.
    pub hash: String,
    /// The secret's first 8 characters (`lp-AbCdE`), to recognise it in a list.
    pub prefix: String,
    pub name: String,
    pub owner: Option<String>,
    /// Globs of the models or groups it may call; empty: any.
    pub models: Vec<String>,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub max_concurrent: Option<i64>,
    pub budget_usd: Option<f64>,
    /// `"day"`, `"week"`, `"month"` or `"total"`.
    pub budget_period: Option<String>,
    /// Unix milliseconds.
    pub expires_at: Option<i64>,
    pub metadata: Map<String, Value>,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub revoked_at: Option<i64>,
}

const COLUMNS: &str = "id, hash, prefix, created_at, name, owner, models, rpm, tpm, \
    max_concurrent, budget_usd, budget_period, expires_at, metadata, enabled, updated_at, revoked_at";

/// The columns after `created_at` are the ones an update may change; both statements bind them
/// in this order through [`bind_changeable`].
const INSERT: &str = "INSERT INTO api_keys (id, hash, prefix, created_at, name, owner, models, \
    rpm, tpm, max_concurrent, budget_usd, budget_period, expires_at, metadata, enabled, \
    updated_at, revoked_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)";

const UPDATE: &str = "UPDATE api_keys SET name = $2, owner = $3, models = $4, rpm = $5, \
    tpm = $6, max_concurrent = $7, budget_usd = $8, budget_period = $9, expires_at = $10, \
    metadata = $11, enabled = $12, updated_at = $13, revoked_at = $14 WHERE id = $1";

impl KeyRow {
    /// A key without limits, budget, expiry or metadata, enabled, made at `now`.
    pub fn new(id: String, hash: String, prefix: String, name: String, now: i64) -> Self {
        Self {
            id,
            hash,
            prefix,
            name,
            owner: None,
            models: Vec::new(),
            rpm: None,
            tpm: None,
            max_concurrent: None,
            budget_usd: None,
            budget_period: None,
            expires_at: None,
            metadata: Map::new(),
            enabled: true,
            created_at: now,
            updated_at: now,
            revoked_at: None,
        }
    }
}

impl Store {
    /// Adds a key; fails on an id or hash that is already there.
    pub async fn insert_key(&self, key: &KeyRow) -> Result<(), StoreError> {
        let key = key.clone();
        self.run(move |pool| async move {
            let mut tx = pool.begin().await?;
            let query = sqlx::query(INSERT)
                .bind(key.id.clone())
                .bind(key.hash.clone())
                .bind(key.prefix.clone())
                .bind(key.created_at);
            bind_changeable(query, &key)?.execute(&mut *tx).await?;
            bump_version(&mut tx).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Writes every field of the key with this id except `hash`, `prefix` and `created_at`,
    /// which never change. `false`: there is no such key.
    pub async fn update_key(&self, key: &KeyRow) -> Result<bool, StoreError> {
        let key = key.clone();
        self.run(move |pool| async move {
            let mut tx = pool.begin().await?;
            let query = sqlx::query(UPDATE).bind(key.id.clone());
            let done = bind_changeable(query, &key)?.execute(&mut *tx).await?;
            if done.rows_affected() == 0 {
                return Ok(false);
            }
            bump_version(&mut tx).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    pub async fn get_key(&self, id: &str) -> Result<Option<KeyRow>, StoreError> {
        let id = id.to_owned();
        self.run(move |pool| async move {
            let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1");
            let row = sqlx::query(&sql).bind(id).fetch_optional(&pool).await?;
            row.as_ref().map(key_from_row).transpose()
        })
        .await
    }

    /// Every key, revoked and disabled ones included, oldest first.
    pub async fn list_keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        self.run(move |pool| async move {
            let sql = format!("SELECT {COLUMNS} FROM api_keys ORDER BY created_at, id");
            let rows = sqlx::query(&sql).fetch_all(&pool).await?;
            rows.iter().map(key_from_row).collect()
        })
        .await
    }

    /// A counter bumped in the same transaction as every insert and update of a key, so a
    /// poller sees every change (several instances, or the CLI beside a running proxy).
    pub async fn keys_version(&self) -> Result<i64, StoreError> {
        self.run(move |pool| async move {
            let row = sqlx::query("SELECT version FROM keys_version WHERE id = 1")
                .fetch_one(&pool)
                .await?;
            Ok(row.try_get("version")?)
        })
        .await
    }
}

fn bind_changeable<'q>(
    query: Query<'q, Any, AnyArguments<'q>>,
    key: &KeyRow,
) -> Result<Query<'q, Any, AnyArguments<'q>>, StoreError> {
    let models = serde_json::to_string(&key.models).map_err(|e| StoreError::Data(e.to_string()))?;
    let metadata =
        serde_json::to_string(&key.metadata).map_err(|e| StoreError::Data(e.to_string()))?;
    let query = query
        .bind(key.name.clone())
        .bind(key.owner.clone())
        .bind(models)
        .bind(key.rpm)
        .bind(key.tpm)
        .bind(key.max_concurrent);
    Ok(bind_double(query, key.budget_usd)
        .bind(key.budget_period.clone())
        .bind(key.expires_at)
        .bind(metadata)
        .bind(i64::from(key.enabled))
        .bind(key.updated_at)
        .bind(key.revoked_at))
}

async fn bump_version(tx: &mut AnyConnection) -> Result<(), StoreError> {
    sqlx::query("UPDATE keys_version SET version = version + 1 WHERE id = 1")
        .execute(tx)
        .await?;
    Ok(())
}

fn key_from_row(row: &AnyRow) -> Result<KeyRow, StoreError> {
    let id: String = row.try_get("id")?;
    let json_error = |column: &str, e: serde_json::Error| {
        StoreError::Data(format!("key {id}: {column} is not the JSON expected: {e}"))
    };
    let models: String = row.try_get("models")?;
    let metadata: String = row.try_get("metadata")?;
    Ok(KeyRow {
        models: serde_json::from_str(&models).map_err(|e| json_error("models", e))?,
        metadata: serde_json::from_str(&metadata).map_err(|e| json_error("metadata", e))?,
        hash: row.try_get("hash")?,
        prefix: row.try_get("prefix")?,
        name: row.try_get("name")?,
        owner: row.try_get("owner")?,
        rpm: row.try_get("rpm")?,
        tpm: row.try_get("tpm")?,
        max_concurrent: row.try_get("max_concurrent")?,
        budget_usd: row.try_get("budget_usd")?,
        budget_period: row.try_get("budget_period")?,
        expires_at: row.try_get("expires_at")?,
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        revoked_at: row.try_get("revoked_at")?,
        id,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::test_db;

    pub(crate) fn key(id: &str, created_at: i64) -> KeyRow {
        KeyRow::new(
            id.into(),
            format!("hash-of-{id}"),
            "lp-AbCdE".into(),
            format!("name of {id}"),
            created_at,
        )
    }

    async fn keys_are_stored_read_and_updated(store: &Store) {
        assert_eq!(store.list_keys().await.unwrap(), vec![]);
        assert_eq!(store.get_key("key_a").await.unwrap(), None);

        let mut full = key("key_b", 2_000);
        full.owner = Some("team ä".into());
        full.models = vec!["openai/*".into(), "fast".into()];
        full.rpm = Some(60);
        full.tpm = Some(100_000);
        full.max_concurrent = Some(4);
        full.budget_usd = Some(20.5);
        full.budget_period = Some("month".into());
        full.expires_at = Some(1_900_000_000_000);
        full.metadata.insert("env".into(), Value::from("ci"));
        full.metadata.insert("n".into(), Value::from(3));
        let bare = key("key_a", 1_000);
        store.insert_key(&full).await.unwrap();
        store.insert_key(&bare).await.unwrap();

        assert_eq!(store.get_key("key_b").await.unwrap().as_ref(), Some(&full));
        assert_eq!(
            store.list_keys().await.unwrap(),
            vec![bare.clone(), full.clone()]
        );

        let mut revoked = full.clone();
        revoked.enabled = false;
        revoked.revoked_at = Some(3_000);
        revoked.updated_at = 3_000;
        revoked.rpm = None;
        revoked.models = vec![];
        // Fields that never change are left as they were.
        revoked.hash = "another hash".into();
        revoked.created_at = 9;
        assert!(store.update_key(&revoked).await.unwrap());
        let read = store.get_key("key_b").await.unwrap().unwrap();
        assert_eq!(
            (read.hash.as_str(), read.created_at),
            (full.hash.as_str(), 2_000)
        );
        assert_eq!(
            read,
            KeyRow {
                hash: full.hash.clone(),
                created_at: 2_000,
                ..revoked
            }
        );

        assert!(!store.update_key(&key("key_missing", 1)).await.unwrap());
    }

    async fn a_duplicate_id_or_hash_is_refused(store: &Store) {
        store.insert_key(&key("key_a", 1)).await.unwrap();
        let same_id = KeyRow {
            hash: "other".into(),
            ..key("key_a", 2)
        };
        assert!(matches!(
            store.insert_key(&same_id).await,
            Err(StoreError::Database(_))
        ));
        let same_hash = KeyRow {
            hash: "hash-of-key_a".into(),
            ..key("key_b", 2)
        };
        assert!(matches!(
            store.insert_key(&same_hash).await,
            Err(StoreError::Database(_))
        ));
        assert_eq!(store.list_keys().await.unwrap().len(), 1);
        // A refused insert changes nothing, so the version stays.
        assert_eq!(store.keys_version().await.unwrap(), 1);
    }

    async fn every_change_to_a_key_bumps_the_version(store: &Store) {
        assert_eq!(store.keys_version().await.unwrap(), 0);
        store.insert_key(&key("key_a", 1)).await.unwrap();
        assert_eq!(store.keys_version().await.unwrap(), 1);
        store.insert_key(&key("key_b", 1)).await.unwrap();
        assert_eq!(store.keys_version().await.unwrap(), 2);
        // Even an update that writes the same values: the poller rereads, no harm done.
        store.update_key(&key("key_a", 1)).await.unwrap();
        assert_eq!(store.keys_version().await.unwrap(), 3);
        store.update_key(&key("key_missing", 1)).await.unwrap();
        assert_eq!(store.keys_version().await.unwrap(), 3);
        store.get_key("key_a").await.unwrap();
        store.list_keys().await.unwrap();
        assert_eq!(store.keys_version().await.unwrap(), 3);
    }

    #[tokio::test]
    async fn keys_are_stored_read_and_updated_sqlite() {
        keys_are_stored_read_and_updated(&test_db::sqlite().await.store).await;
    }

    #[tokio::test]
    async fn a_duplicate_id_or_hash_is_refused_sqlite() {
        a_duplicate_id_or_hash_is_refused(&test_db::sqlite().await.store).await;
    }

    #[tokio::test]
    async fn every_change_to_a_key_bumps_the_version_sqlite() {
        every_change_to_a_key_bumps_the_version(&test_db::sqlite().await.store).await;
    }

    #[tokio::test]
    async fn a_change_by_another_store_on_the_same_file_shows_in_the_version() {
        let db = test_db::sqlite().await;
        let other = Store::open(&db.url).await.unwrap();
        other.insert_key(&key("key_a", 1)).await.unwrap();
        assert_eq!(db.store.keys_version().await.unwrap(), 1);
        assert_eq!(db.store.list_keys().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn several_stores_opening_a_new_file_at_once_all_open_it() {
        let dir = test_db::TempDir::new("race");
        let url = format!("sqlite://{}", dir.0.join("llm-proxy.db").display());
        let opened = futures_util::future::join_all((0..4).map(|_| Store::open(&url))).await;
        for store in opened {
            let store = store.expect("every store opens");
            assert_eq!(store.keys_version().await.unwrap(), 0);
        }
    }

    #[tokio::test]
    #[ignore = "starts a Postgres server"]
    async fn keys_are_stored_read_and_updated_postgres() {
        keys_are_stored_read_and_updated(&test_db::postgres().await.store).await;
    }

    #[tokio::test]
    #[ignore = "starts a Postgres server"]
    async fn a_duplicate_id_or_hash_is_refused_postgres() {
        a_duplicate_id_or_hash_is_refused(&test_db::postgres().await.store).await;
    }

    #[tokio::test]
    #[ignore = "starts a Postgres server"]
    async fn every_change_to_a_key_bumps_the_version_postgres() {
        every_change_to_a_key_bumps_the_version(&test_db::postgres().await.store).await;
    }
}
