//! DTM's key-value table, which holds topics: category `topics`, key the topic's name, value
//! its subscribers as JSON. Every read goes to the store (no instance keeps a copy), so
//! every instance expands a `topic://` step with the subscribers the store holds at that
//! moment. Changes are optimistic: a row is updated only at the version it was read at, and
//! a change that lost a race is decided again on what won.

use sqlx::Row;

use super::{Result, Store, StoreError};
use crate::txn::policy::Subscribers;
use crate::txn::topic::{self, Subscriber, TopicError};

/// One entry of the key-value table, as DTM's `scanKV` and `queryKV` show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KvEntry {
    /// Row id (the position `scanKV` pages by).
    pub id: i64,
    /// Category (`topics`).
    pub cat: String,
    /// Key (the topic's name).
    pub k: String,
    /// Value (the subscribers, as a JSON array of `{"url","remark"}`).
    pub v: String,
    /// Changes so far, from 1.
    pub version: i64,
    /// When it was created (RFC 3339).
    pub create_time: String,
    /// When it last changed (RFC 3339).
    pub update_time: String,
}

const COLUMNS: &str = "id, cat, k, v, version, create_time, update_time";

fn entry<R: Row>(r: &R) -> Result<KvEntry>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    usize: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(KvEntry {
        id: r.try_get(0)?,
        cat: r.try_get_unchecked(1)?,
        k: r.try_get_unchecked(2)?,
        v: r.try_get_unchecked(3)?,
        version: r.try_get(4)?,
        create_time: super::format_time(r.try_get(5)?),
        update_time: super::format_time(r.try_get(6)?),
    })
}

/// How many times a change that lost a race is decided again.
const RACES: usize = 8;

/// Why a topic could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum TopicChangeError {
    /// The change is refused (DTM's texts).
    #[error(transparent)]
    Refused(#[from] TopicError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for TopicChangeError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::Database(e))
    }
}

impl Store {
    /// The entries of `cat` (every category when empty) under `key` (every key when empty),
    /// as DTM's `queryKV` reads them.
    ///
    /// # Errors
    /// A database error.
    pub async fn kv_find(&self, cat: &str, key: &str) -> Result<Vec<KvEntry>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM kv WHERE (? = '' OR cat = ?) AND (? = '' OR k = ?) ORDER BY id"
        );
        on_pool!(self, pool => {
            let rows = sqlx::query(&sql)
                .bind(cat)
                .bind(cat)
                .bind(key)
                .bind(key)
                .fetch_all(pool)
                .await?;
            rows.iter().map(entry).collect()
        })
    }

    /// At most `limit` entries of `cat` before `position` (a row id; empty: from the
    /// newest), newest first, and the position of the next page (empty when this was the
    /// last), as DTM's `scanKV` pages them.
    ///
    /// # Errors
    /// A database error.
    pub async fn kv_scan(
        &self,
        cat: &str,
        position: Option<i64>,
        limit: i64,
    ) -> Result<(Vec<KvEntry>, String)> {
        let sql =
            format!("SELECT {COLUMNS} FROM kv WHERE cat = ? AND id < ? ORDER BY id DESC LIMIT ?");
        let before = position.unwrap_or(i64::MAX);
        let entries: Vec<KvEntry> = on_pool!(self, pool => {
            let rows = sqlx::query(&sql)
                .bind(cat)
                .bind(before)
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.iter().map(entry).collect::<Result<Vec<_>>>()
        })?;
        let next = match entries.last() {
            Some(last) if i64::try_from(entries.len()).is_ok_and(|n| n >= limit) => {
                last.id.to_string()
            }
            _ => String::new(),
        };
        Ok((entries, next))
    }

    /// The subscribers of `topics`, as the store holds them now (a topic without any is
    /// left out).
    ///
    /// # Errors
    /// A database error; a stored list that is not JSON.
    pub async fn topic_subscribers(&self, topics: &[&str]) -> Result<Subscribers> {
        let mut out = Subscribers::new();
        for t in topics {
            if out.contains_key(*t) {
                continue;
            }
            if let Some(entry) = self.kv_find(topic::CATEGORY, t).await?.pop() {
                let list = subscribers_of(&entry)?;
                out.insert((*t).to_owned(), list.into_iter().map(|s| s.url).collect());
            }
        }
        Ok(out)
    }

    /// Changes the subscribers of `name` at `now` (ms) as `change` decides from the current
    /// list (`None`: no such topic), creating the topic when it does not exist.
    ///
    /// # Errors
    /// What `change` refuses; a database error.
    pub async fn change_topic<F>(
        &self,
        name: &str,
        now: i64,
        change: F,
    ) -> Result<(), TopicChangeError>
    where
        F: Fn(Option<Vec<Subscriber>>) -> Result<Vec<Subscriber>, TopicError>,
    {
        for _ in 0..RACES {
            let current = self.kv_find(topic::CATEGORY, name).await?.pop();
            let list = current.as_ref().map(subscribers_of).transpose()?;
            let value = serde_json::to_string(&change(list)?)
                .map_err(|e| StoreError::Database(sqlx::Error::Protocol(e.to_string())))?;
            let won: bool = match &current {
                None => {
                    let sql = "INSERT INTO kv (cat, k, v, version, create_time, update_time) \
                               VALUES (?, ?, ?, 1, ?, ?)";
                    on_writer!(self, pool => {
                        match sqlx::query(sql)
                            .bind(topic::CATEGORY)
                            .bind(name)
                            .bind(&value)
                            .bind(now)
                            .bind(now)
                            .execute(pool)
                            .await
                        {
                            Ok(_) => Ok(true),
                            Err(e) if super::batch::is_duplicate_key(&e) => Ok(false),
                            Err(e) => Err(StoreError::Database(e)),
                        }
                    })?
                }
                Some(entry) => {
                    let sql = "UPDATE kv SET v = ?, version = version + 1, update_time = ? \
                               WHERE id = ? AND version = ?";
                    on_writer!(self, pool => {
                        let n = sqlx::query(sql)
                            .bind(&value)
                            .bind(now)
                            .bind(entry.id)
                            .bind(entry.version)
                            .execute(pool)
                            .await?;
                        Ok::<_, StoreError>(n.rows_affected() == 1)
                    })?
                }
            };
            if won {
                return Ok(());
            }
        }
        Err(StoreError::Database(sqlx::Error::Protocol(format!(
            "topic '{name}' kept changing under {RACES} attempts to change it"
        )))
        .into())
    }

    /// Deletes the entry `key` of `cat`. `false`: there was none.
    ///
    /// # Errors
    /// A database error.
    pub async fn kv_delete(&self, cat: &str, key: &str) -> Result<bool> {
        on_writer!(self, pool => {
            let n = sqlx::query("DELETE FROM kv WHERE cat = ? AND k = ?")
                .bind(cat)
                .bind(key)
                .execute(pool)
                .await?;
            Ok(n.rows_affected() > 0)
        })
    }
}

/// The subscribers a topic's entry holds.
fn subscribers_of(entry: &KvEntry) -> Result<Vec<Subscriber>> {
    serde_json::from_str(&entry.v).map_err(|e| StoreError::Corrupt {
        gid: format!("topic {}", entry.k),
        reason: format!("its subscribers are not a JSON list of {{\"url\",\"remark\"}}: {e}"),
    })
}
