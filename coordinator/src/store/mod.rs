//! The store: durable state of global transactions, branch operations and the outbox.
//!
//! One type, two databases through sqlx: MySQL (production; MariaDB works) and SQLite (the
//! embedded default). Each operation is written once and runs on either database (the
//! [`on_pool!`] and [`on_writer!`] macros expand it for both); the few places where the SQL
//! dialects differ go through [`Dialect`]. Migrations ship inside the binary and run on
//! [`Store::connect`].
//!
//! The store decides nothing. Changes of a transaction come as commands carrying the
//! transition that decides them ([`Store::write`]); the batched writer ([`batch`]) gathers
//! the commands of many concurrent requests into one database transaction: it reads and locks
//! their rows, lets each transition decide against what it read, and writes the changes with
//! multi-row statements. A command is answered only once its batch committed.
//!
//! Times are milliseconds since the Unix epoch, passed in by the caller.
//!
//! # Layout
//! - [`connect`]: pools, dialect, migrations, and retrying transient failures.
//! - [`batch`]: the batched writer every state change goes through.
//! - [`globals`]: reading transactions (find, list, counts) and operator resets.
//! - [`branches`]: reading and writing branch operations.
//! - [`kv`]: DTM's key-value table, which holds topics.
//! - [`leases`]: claiming due transactions.
//! - [`outbox`]: the dispatcher's side of the outbox.
//! - [`retention`]: deleting what finished long ago.
//! - [`rows`]: decoding rows.

/// Runs the same block on whichever pool backs the store's `$which` side (`read` or
/// `write`; on MySQL both are one pool). The block is one database transaction (or one
/// statement); when the database aborts it for a deadlock or a lock timeout, which leaves
/// nothing written, it is run again after a short pause.
macro_rules! on_side {
    ($store:expr, $which:ident, $pool:ident => $body:expr) => {{
        let mut attempt = 0_u32;
        loop {
            let result = match &$store.backend {
                $crate::store::connect::Backend::MySql($pool) => {
                    $crate::store::connect::typed(async { $body }).await
                }
                $crate::store::connect::Backend::Sqlite { $which: $pool, .. } => {
                    $crate::store::connect::typed(async { $body }).await
                }
            };
            match result {
                Err($crate::store::StoreError::Database(ref e))
                    if $crate::store::connect::is_transient(e)
                        && attempt < $crate::store::connect::TRANSIENT_RETRIES =>
                {
                    attempt += 1;
                    $crate::store::connect::pause_before_retry(attempt).await;
                }
                other => break other,
            }
        }
    }};
}

/// Runs a read on either database (see [`on_side!`]).
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        on_side!($store, read, $pool => $body)
    };
}

/// Runs a write outside the batched writer (claims, the outbox, operator resets) on either
/// database (see [`on_side!`]). On SQLite it takes the one writer connection.
macro_rules! on_writer {
    ($store:expr, $pool:ident => $body:expr) => {
        on_side!($store, write, $pool => $body)
    };
}

pub mod alerts;
pub mod batch;
pub mod branches;
pub mod callbacks;
pub mod connect;
pub mod globals;
pub mod kv;
pub mod leases;
mod migrate;
pub mod operators;
pub mod outbox;
pub mod retention;
mod rows;
mod sql;

use crate::txn::TxnError;

/// A `LIKE ... ESCAPE '!'` pattern matching every text that starts with `prefix` (`!`, `%`
/// and `_` in it match themselves).
pub(crate) fn like_prefix(prefix: &str) -> String {
    let mut p = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '!' | '%' | '_') {
            p.push('!');
        }
        p.push(c);
    }
    p.push('%');
    p
}

pub use alerts::{AlertCandidate, PendingAlert, SettledAlert};
pub use batch::{Applied, Stamp};
pub use callbacks::{CallbackState, DueCallback, MessageCounts};
pub use connect::{ConnectOptions, Dialect};
pub use globals::ListFilter;
pub use leases::Claimed;
pub use operators::{AttemptRow, Heartbeat, Instance};
pub use outbox::{ClaimedKey, Failed, KeyBacklog, KeyRelease, OutboxClaim, OutboxEntry, OutboxRow};
pub use rows::{format_time, UNREADABLE};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrating the schema failed.
    #[error("migrating the database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database URL names no database Settle supports.
    #[error("unsupported database URL '{0}': use mysql://... or sqlite:...")]
    UnsupportedUrl(String),
    /// A stored value could not be read back.
    #[error("stored transaction '{gid}' is unreadable: {reason}")]
    Corrupt {
        /// The transaction.
        gid: String,
        /// What is wrong.
        reason: String,
    },
    /// The state machine refused the change (nothing was written).
    #[error(transparent)]
    Txn(#[from] TxnError),
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// The error a fail point injects: a connection lost at that point.
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    pub(crate) fn injected(point: &str) -> Self {
        Self::Database(sqlx::Error::Protocol(format!("fail point {point}")))
    }

    /// Whether this is a lost lease: another instance drives the transaction now.
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, Self::Txn(TxnError::LeaseLost { .. }))
    }
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Durable state of transactions, on MySQL or SQLite.
#[derive(Debug, Clone)]
pub struct Store {
    backend: connect::Backend,
    writer: batch::Writer,
    /// Transactions set aside as unreadable by this store's claims.
    set_aside: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Columns of `trans_global`, as [`rows::decode_global`] reads them.
pub(crate) const GLOBAL_COLUMNS: &str = "id, gid, trans_type, status, custom_data, steps, \
     payloads, query_prepared, protocol, options, rollback_reason, create_time, update_time, \
     finish_time, rollback_time, submit_time, callback_due, next_cron_time, next_cron_interval, \
     owner, lease_token, lease_expire, retry_count, last_error";

/// Columns of `trans_branch_op`, as [`rows::decode_branch`] reads them.
pub(crate) const BRANCH_COLUMNS: &str =
    "id, gid, branch_id, op, url, data, status, create_time, update_time, finish_time";

/// `?, ?, ?` with `n` marks.
pub(crate) fn marks(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        s.push_str(if i == 0 { "?" } else { ", ?" });
    }
    s
}

/// Cuts a string to at most `max` bytes on a character boundary.
pub fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// The URL without its password, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("mysql://root:secret@127.0.0.1:3306/settle"),
            "mysql://root:***@127.0.0.1:3306/settle"
        );
        assert_eq!(
            redact_url("mysql://root@127.0.0.1/settle"),
            "mysql://root@127.0.0.1/settle"
        );
        assert_eq!(redact_url("sqlite:settle.db"), "sqlite:settle.db");
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        let mut s = "ééé".to_owned();
        truncate_utf8(&mut s, 3);
        assert_eq!(s, "é");
    }

    #[test]
    fn like_prefixes_escape_wildcards_and_the_escape() {
        assert_eq!(like_prefix("order-"), "order-%");
        assert_eq!(like_prefix("a_b%c!"), "a!_b!%c!!%");
    }

    #[test]
    fn marks_are_comma_separated() {
        assert_eq!(marks(1), "?");
        assert_eq!(marks(3), "?, ?, ?");
    }
}
