//! A Redis cache kept consistent with a database by versioned writes.
//!
//! Each entry is a Redis hash holding a version (`v`, e.g. an `updated_at` in ms or a row
//! version) and a value (`d`). Every write goes through one Lua script that stores the value
//! only if its version is newer than the cached one (compared exactly, as integers), so late,
//! duplicated or reordered updates can never roll an entry back. An entry that expires
//! (`entry_ttl`) or is removed leaves its version behind as a floor, so an older update
//! arriving later does not bring it back. Every key a script touches is on the entry's Redis
//! Cluster slot. Updates coming from messages also record the message id
//! (in the same script), so a redelivered message is recognised and skipped.
//!
//! Reads that miss take a lock per key (`SET NX PX` with a random token, released only by
//! its holder) so that one reader, not all of them, goes to the database; the others wait
//! briefly for the entry to appear, then read through. A holder that dies blocks its key for
//! at most the lock's expiry.
//!
//! Redis reports one broken-pipe error after it restarts; every command here is idempotent
//! and retried a few times with backoff.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

/// Errors of the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The loader failed.
    #[error("loading {key} from the database failed: {message}")]
    Load {
        /// The key.
        key: String,
        /// Why.
        message: String,
    },
}

/// What a versioned write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The entry now holds this version.
    Written,
    /// The cache already held this version or a newer one: nothing changed.
    Stale,
    /// This message id was applied before: nothing changed.
    Duplicate,
}

/// A cached entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its version.
    pub version: i64,
    /// Its value.
    pub value: String,
}

const APPLY: &str = r"
-- KEYS[1] entry, KEYS[2] its version floor, KEYS[3] dedupe marker (only for a message);
-- ARGV[1] version, ARGV[2] value, ARGV[3] seconds to remember the marker, ARGV[4] seconds the
-- entry lives (0: forever). Versions are decimal i64s, compared exactly (a Lua number is a
-- double, which cannot tell 2^53 from 2^53 + 1).
local function newer(a, b)
  local na, nb = a:sub(1, 1) == '-', b:sub(1, 1) == '-'
  if na ~= nb then return nb end
  local da, db = na and a:sub(2) or a, nb and b:sub(2) or b
  if da == db then return false end
  local bigger = (#da > #db) or (#da == #db and da > db)
  if na then return not bigger end
  return bigger
end
if #KEYS >= 3 and redis.call('EXISTS', KEYS[3]) == 1 then return 2 end
local cur = redis.call('HGET', KEYS[1], 'v')
local floor = redis.call('GET', KEYS[2])
local written = 0
if ((not cur) or newer(ARGV[1], cur)) and ((not floor) or newer(ARGV[1], floor)) then
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2])
  if tonumber(ARGV[4]) > 0 then
    redis.call('EXPIRE', KEYS[1], ARGV[4])
    redis.call('SET', KEYS[2], ARGV[1])
  end
  written = 1
end
if #KEYS >= 3 then redis.call('SET', KEYS[3], '1', 'EX', ARGV[3]) end
return written
";

const REMOVE: &str = r"
-- KEYS[1] entry, KEYS[2] its version floor: the entry goes, its version stays as the floor.
local cur = redis.call('HGET', KEYS[1], 'v')
if cur then redis.call('SET', KEYS[2], cur) end
return redis.call('DEL', KEYS[1])
";

/// The hash tag that places `key` on a Redis Cluster slot: its first non-empty `{...}`, or
/// the whole key.
fn slot_tag(key: &str) -> &str {
    key.find('{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.find('}')
                .filter(|close| *close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key)
}

/// The key holding `key`'s version floor, on the same cluster slot.
fn floor_key(key: &str) -> String {
    format!("{{{}}}:settle-floor:{key}", slot_tag(key))
}

const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Settings of a [`VersionedCache`].
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Prefix of dedupe markers.
    pub dedupe_prefix: String,
    /// How long a message id is remembered.
    pub dedupe_ttl: Duration,
    /// How long an entry lives (`None`: forever).
    pub entry_ttl: Option<Duration>,
    /// How long a reload lock lives if its holder dies.
    pub lock_ttl: Duration,
    /// How long a reader waits for another reader's reload before reading through.
    pub lock_wait: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            dedupe_prefix: "settle:seen:".to_owned(),
            dedupe_ttl: Duration::from_secs(7 * 86_400),
            entry_ttl: None,
            lock_ttl: Duration::from_secs(3),
            lock_wait: Duration::from_millis(500),
        }
    }
}

/// How a read was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadSource {
    /// From the cache.
    Cache,
    /// This reader held the lock, loaded from the database and filled the cache.
    Loaded,
    /// Another reader held the lock; this one waited and found the entry filled.
    Waited,
    /// Another reader held the lock too long; this one read the database directly.
    ReadThrough,
}

/// A versioned Redis cache.
#[derive(Clone)]
pub struct VersionedCache {
    conn: ConnectionManager,
    settings: CacheSettings,
    apply: Script,
    remove: Script,
    unlock: Script,
}

fn retry_policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_millis(500))
        .with_max_times(5)
        .with_jitter()
}

impl VersionedCache {
    /// Connects to Redis at `url` (`redis://127.0.0.1:6379`).
    ///
    /// # Errors
    /// Redis cannot be reached.
    pub async fn connect(url: &str, settings: CacheSettings) -> Result<Self, CacheError> {
        let client = redis::Client::open(url)?;
        let conn = ConnectionManager::new(client).await?;
        Ok(Self {
            conn,
            settings,
            apply: Script::new(APPLY),
            remove: Script::new(REMOVE),
            unlock: Script::new(UNLOCK),
        })
    }

    async fn run_apply(
        &self,
        key: &str,
        marker: &str,
        version: i64,
        value: &str,
    ) -> Result<i64, CacheError> {
        let entry_ttl = self.settings.entry_ttl.map_or(0, |d| d.as_secs().max(1));
        let dedupe_ttl = self.settings.dedupe_ttl.as_secs().max(1);
        let floor = floor_key(key);
        let call = || async {
            let mut conn = self.conn.clone();
            let mut invocation = self.apply.key(key);
            invocation.key(&floor);
            if !marker.is_empty() {
                invocation.key(marker);
            }
            invocation
                .arg(version)
                .arg(value)
                .arg(dedupe_ttl)
                .arg(entry_ttl)
                .invoke_async::<i64>(&mut conn)
                .await
        };
        Ok(call.retry(retry_policy()).await?)
    }

    /// Writes `value` at `version` unless the cache holds this version or a newer one.
    ///
    /// # Errors
    /// Redis failed (after retries).
    pub async fn apply(&self, key: &str, version: i64, value: &str) -> Result<Applied, CacheError> {
        Ok(match self.run_apply(key, "", version, value).await? {
            1 => Applied::Written,
            _ => Applied::Stale,
        })
    }

    /// [`VersionedCache::apply`] for an update carried by message `message_id`: a message
    /// applied before is skipped as [`Applied::Duplicate`].
    ///
    /// # Errors
    /// Redis failed (after retries).
    pub async fn apply_message(
        &self,
        message_id: &str,
        key: &str,
        version: i64,
        value: &str,
    ) -> Result<Applied, CacheError> {
        // On the entry's cluster slot, as the script needs every key it touches to be.
        let marker = format!(
            "{{{}}}{}{message_id}",
            slot_tag(key),
            self.settings.dedupe_prefix
        );
        Ok(match self.run_apply(key, &marker, version, value).await? {
            1 => Applied::Written,
            2 => Applied::Duplicate,
            _ => Applied::Stale,
        })
    }

    /// The cached entry, if any.
    ///
    /// # Errors
    /// Redis failed (after retries).
    pub async fn get(&self, key: &str) -> Result<Option<Entry>, CacheError> {
        let call = || async {
            let mut conn = self.conn.clone();
            let (v, d): (Option<i64>, Option<String>) = redis::cmd("HMGET")
                .arg(key)
                .arg("v")
                .arg("d")
                .query_async(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>(v.zip(d).map(|(version, value)| Entry { version, value }))
        };
        Ok(call.retry(retry_policy()).await?)
    }

    /// Takes the reload lock of `key` for `ttl`; returns its token if taken.
    ///
    /// # Errors
    /// Redis failed (after retries).
    pub async fn try_lock(&self, key: &str, ttl: Duration) -> Result<Option<String>, CacheError> {
        let token = format!("{:016x}{:016x}", rand_u64(), rand_u64());
        let lock = format!("{key}:lock");
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(3_000).max(1);
        let call = || async {
            let mut conn = self.conn.clone();
            let set: Option<String> = redis::cmd("SET")
                .arg(&lock)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .query_async(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>(set.is_some())
        };
        Ok(call.retry(retry_policy()).await?.then_some(token))
    }

    /// Releases the reload lock of `key` if `token` still holds it.
    ///
    /// # Errors
    /// Redis failed (after retries).
    pub async fn unlock(&self, key: &str, token: &str) -> Result<bool, CacheError> {
        let lock = format!("{key}:lock");
        let call = || async {
            let mut conn = self.conn.clone();
            self.unlock
                .key(&lock)
                .arg(token)
                .invoke_async::<i64>(&mut conn)
                .await
        };
        Ok(call.retry(retry_policy()).await? == 1)
    }

    /// Reads `key`; on a miss, one reader loads it with `load` (which returns the row's
    /// version and value) and fills the cache, while the others wait up to the configured
    /// time and then read through with `load`.
    ///
    /// # Errors
    /// Redis failed, or the loader did.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        key: &str,
        load: F,
    ) -> Result<(Entry, ReadSource), CacheError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Entry, E>>,
        E: std::fmt::Display,
    {
        if let Some(e) = self.get(key).await? {
            return Ok((e, ReadSource::Cache));
        }
        let load_err = |e: E| CacheError::Load {
            key: key.to_owned(),
            message: e.to_string(),
        };
        if let Some(token) = self.try_lock(key, self.settings.lock_ttl).await? {
            let result = async {
                let entry = load().await.map_err(load_err)?;
                self.apply(key, entry.version, &entry.value).await?;
                Ok::<_, CacheError>(entry)
            }
            .await;
            let _ = self.unlock(key, &token).await;
            return result.map(|e| (e, ReadSource::Loaded));
        }
        let deadline = tokio::time::Instant::now() + self.settings.lock_wait;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if let Some(e) = self.get(key).await? {
                return Ok((e, ReadSource::Waited));
            }
        }
        let entry = load().await.map_err(load_err)?;
        Ok((entry, ReadSource::ReadThrough))
    }

    /// Deletes an entry, keeping its version as a floor: an update older than what was
    /// removed does not bring it back.
    ///
    /// # Errors
    /// Redis failed (after retries).
    pub async fn remove(&self, key: &str) -> Result<(), CacheError> {
        let floor = floor_key(key);
        let call = || async {
            let mut conn = self.conn.clone();
            self.remove
                .key(key)
                .key(&floor)
                .invoke_async::<i64>(&mut conn)
                .await
        };
        call.retry(retry_policy()).await?;
        Ok(())
    }

    /// Deletes an entry and its version floor: the key starts afresh, as if never cached
    /// (for tests, and for a database whose versions start again).
    ///
    /// # Errors
    /// Redis failed (after retries).
    pub async fn purge(&self, key: &str) -> Result<(), CacheError> {
        let floor = floor_key(key);
        let call = || async {
            let mut conn = self.conn.clone();
            conn.del::<_, ()>(&[key, floor.as_str()]).await
        };
        Ok(call.retry(retry_policy()).await?)
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_an_entry_is_on_its_cluster_slot() {
        assert_eq!(slot_tag("balance:a:1"), "balance:a:1");
        assert_eq!(slot_tag("{user1}:orders"), "user1");
        assert_eq!(slot_tag("a{}b"), "a{}b", "an empty tag is no tag");
        assert_eq!(
            floor_key("balance:a:1"),
            "{balance:a:1}:settle-floor:balance:a:1"
        );
        assert_eq!(slot_tag(&floor_key("{user1}:orders")), "user1");
    }
}
