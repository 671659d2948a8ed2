//! Connecting: the pools of each database, the SQL dialect, migrations, and retrying
//! statements the database aborted for a deadlock or a lock timeout.
//!
//! MySQL has one pool for reads and for the few writes outside the batched writer; the
//! batched writer holds connections of its own, so the hot path never pays the pool's
//! health checks. Connections run in READ COMMITTED with a strict SQL mode (a value too long
//! for its column is an error, never silently cut).
//!
//! SQLite has one writer connection (every write is serialized there, in `BEGIN IMMEDIATE`
//! transactions) and a few reader connections beside it (WAL mode lets them read while the
//! writer writes). `synchronous=FULL`: a commit is on disk before it is answered.

use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::clock::Clock;

use super::{batch, migrate, redact_url, Result, Store, StoreError};

/// Options for connecting to the store.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `mysql://user:password@host:port/database` or `sqlite:path` (`sqlite::memory:` for a
    /// throwaway store).
    pub url: String,
    /// Most pooled connections (MySQL reads and claims; SQLite readers use at most 4).
    pub max_connections: u32,
    /// How long to wait for a connection.
    pub acquire_timeout: Duration,
    /// Batched writers running at once, each with its own connection (MySQL; SQLite has
    /// one). A batch starts as soon as a writer is free.
    pub writers: usize,
    /// Most commands in one batch.
    pub max_batch: usize,
    /// The clock batches take their time from.
    pub clock: Clock,
    /// Where batch sizes and times are recorded; `None`: nowhere.
    pub metrics: Option<std::sync::Arc<crate::telemetry::Metrics>>,
}

impl ConnectOptions {
    /// Options for `url` with the defaults: 16 pooled connections, 1 writer, batches of up
    /// to 256 commands.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
            writers: 1,
            max_batch: 256,
            clock: Clock::system(),
            metrics: None,
        }
    }
}

/// The SQL dialect of the backing database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// MySQL or MariaDB.
    MySql,
    /// SQLite.
    Sqlite,
}

impl Dialect {
    /// Suffix that locks the selected rows for the rest of the transaction (SQLite has one
    /// writer at a time, so it needs none).
    pub(crate) fn for_update(self) -> &'static str {
        match self {
            Self::MySql => " FOR UPDATE",
            Self::Sqlite => "",
        }
    }

    /// A hint after a table name to read it through `index`. MySQL and MariaDB estimate an
    /// `IN` list of more than `eq_range_index_dive_limit` (200) values from index statistics,
    /// which lag behind a table that grows fast, and were seen to scan the whole outbox for
    /// a claim of 256 keys. A locking read (`FOR UPDATE`) names its index too: one that
    /// scans locks every row it passes, and MariaDB scans a small table (the transactions of
    /// a fresh database) when a list names a good part of it. Plain reads of small tables
    /// are left to the optimizer: forcing the sharding keys' primary key and due index made
    /// messages 1 to 19% slower than the scans it chose over a thousand keys. SQLite plans
    /// `IN` lists by the index without help.
    pub(crate) fn use_index(self, index: &str) -> String {
        match self {
            Self::MySql => format!(" FORCE INDEX ({index})"),
            Self::Sqlite => String::new(),
        }
    }

    /// The function giving the smaller of two values (MySQL `LEAST`, SQLite's two-argument
    /// `MIN`).
    pub(crate) fn least(self) -> &'static str {
        match self {
            Self::MySql => "LEAST",
            Self::Sqlite => "MIN",
        }
    }

    /// `a` followed by `b`, as SQL text (MySQL `CONCAT`, SQLite `||`).
    pub(crate) fn concat(self, a: &str, b: &str) -> String {
        match self {
            Self::MySql => format!("CONCAT({a}, {b})"),
            Self::Sqlite => format!("({a} || {b})"),
        }
    }
}

/// The pools behind a store.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    MySql(MySqlPool),
    Sqlite { read: SqlitePool, write: SqlitePool },
}

/// How many times an operation is run again after a deadlock or lock timeout.
pub(crate) const TRANSIENT_RETRIES: u32 = 8;

/// Gives an operation's block its result type.
pub(crate) async fn typed<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    f.await
}

/// Whether the database aborted the statement for a deadlock or a lock timeout (MySQL 1213
/// and 1205, SQLite BUSY and LOCKED): nothing was written, and running it again is safe.
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return matches!(my.number(), 1213 | 1205);
    }
    matches!(db.code().as_deref(), Some("5" | "6" | "517" | "262"))
}

pub(crate) async fn pause_before_retry(attempt: u32) {
    let base = 2_u64.saturating_pow(attempt.min(8));
    let jitter = rand::random::<u64>() % (base + 1);
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}

const MYSQL_SESSION: [&str; 2] = [
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "SET SESSION sql_mode = CONCAT_WS(',', @@SESSION.sql_mode, 'STRICT_ALL_TABLES')",
];

impl Store {
    /// Connects to the database named by the URL, migrates it and starts the batched
    /// writer.
    ///
    /// # Errors
    /// An unsupported URL, an unreachable database, or a failed migration.
    pub async fn connect(options: &ConnectOptions) -> Result<Self> {
        let url = options.url.as_str();
        let (backend, writers) = if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            let url = url.replacen("mariadb://", "mysql://", 1);
            let connect = MySqlConnectOptions::from_str(&url)?.statement_cache_capacity(512);
            let pool_options = || {
                MySqlPoolOptions::new()
                    .acquire_timeout(options.acquire_timeout)
                    .test_before_acquire(false)
                    // Read committed: an UPDATE locks only the rows it changes, not every
                    // row its scan passes, so claims and status changes do not block each
                    // other.
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            for sql in MYSQL_SESSION {
                                sqlx::query(sql).execute(&mut *conn).await?;
                            }
                            Ok(())
                        })
                    })
            };
            let pool = pool_options()
                .max_connections(options.max_connections.max(1))
                .connect_with(connect.clone())
                .await?;
            migrate::mysql().run(&pool).await?;
            // The writers' own connections, taken out of a pool of their own so that they
            // get the same session settings.
            let writer_pool = pool_options()
                .max_connections(u32::try_from(options.writers.max(1)).unwrap_or(1))
                .connect_with(connect)
                .await?;
            let mut conns = Vec::new();
            for _ in 0..options.writers.max(1) {
                conns.push(batch::Conn::mysql(
                    writer_pool.clone(),
                    writer_pool.acquire().await?.detach(),
                ));
            }
            (Backend::MySql(pool), conns)
        } else if url.starts_with("sqlite:") {
            let memory = url.contains(":memory:") || url.contains("mode=memory");
            let connect = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            // No health check on checkout: the database is in this process.
            let write = SqlitePoolOptions::new()
                .test_before_acquire(false)
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect.clone())
                .await?;
            migrate::sqlite().run(&write).await?;
            // An in-memory database lives in its one connection: it reads there too.
            let read = if memory {
                write.clone()
            } else {
                SqlitePoolOptions::new()
                    .test_before_acquire(false)
                    .max_connections(options.max_connections.clamp(1, 4))
                    .acquire_timeout(options.acquire_timeout)
                    .connect_with(connect.read_only(true))
                    .await?
            };
            (
                Backend::Sqlite {
                    read,
                    write: write.clone(),
                },
                vec![batch::Conn::SqlitePool(write)],
            )
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        let writer = batch::Writer::start(
            writers,
            options.max_batch.max(1),
            options.clock.clone(),
            options.metrics.clone(),
        );
        Ok(Self {
            backend,
            writer,
            set_aside: std::sync::Arc::default(),
        })
    }

    /// The database server's clock, in ms since the Unix epoch.
    ///
    /// # Errors
    /// A database error.
    pub async fn database_now_ms(&self) -> Result<i64> {
        let sql = match self.dialect() {
            Dialect::MySql => "SELECT CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
            Dialect::Sqlite => {
                "SELECT CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)"
            }
        };
        on_pool!(self, pool => {
            let row = sqlx::query(sql).fetch_one(pool).await?;
            Ok(sqlx::Row::try_get::<i64, _>(&row, 0)?)
        })
    }

    /// The SQL dialect of the database.
    pub fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::MySql(_) => Dialect::MySql,
            Backend::Sqlite { .. } => Dialect::Sqlite,
        }
    }

    /// Stops the batched writer (commands already queued are written first) and closes
    /// every connection.
    pub async fn close(&self) {
        self.writer.close().await;
        match &self.backend {
            Backend::MySql(pool) => pool.close().await,
            Backend::Sqlite { read, write } => {
                read.close().await;
                write.close().await;
            }
        }
    }
}
