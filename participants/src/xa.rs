//! XA transactions on MySQL: each participant's local transaction is an XA branch of its own
//! database, prepared (`XA PREPARE`) before the branch registers with the coordinator, which
//! then commits or rolls back every branch by its xid.
//!
//! The initiator ([`SettleClient::xa_global`]) prepares the global transaction, calls each
//! participant's action ([`Xa::call_branch`]), and submits, or aborts on any error. A
//! participant runs its part with [`xa_local`] and answers the coordinator's phase 2 with
//! [`xa_phase_two`]:
//!
//! ```no_run
//! # async fn f(pool: sqlx::MySqlPool, client: settle_sdk::SettleClient, call: settle_sdk::protocol::BranchParams) -> Result<(), Box<dyn std::error::Error>> {
//! use settle_sdk::xa::xa_local;
//! // In the participant's action endpoint:
//! xa_local(&client, &pool, &call, "http://127.0.0.1:8081/xa", |conn| {
//!     Box::pin(async move {
//!         sqlx::query("UPDATE account SET balance = balance - 30 WHERE id = 1")
//!             .execute(&mut *conn)
//!             .await?;
//!         Ok::<_, sqlx::Error>(())
//!     })
//! })
//! .await?;
//! // In its phase-2 endpoint (`http://127.0.0.1:8081/xa`), called with op=commit or op=rollback:
//! settle_sdk::xa::xa_phase_two(&pool, &call).await?;
//! # Ok(()) }
//! ```
//!
//! The database must keep a prepared branch when its session ends (MySQL 5.7.7 and later,
//! MariaDB 10.5 and later). The branch registers only once it is prepared, so whatever the
//! coordinator commits or rolls back exists; a branch whose registration is refused (the
//! global transaction was aborted or timed out meanwhile) is rolled back at once. A phase-2 call for an xid the
//! database no longer knows (`XAER_NOTA`: committed or rolled back by an earlier call) is
//! a success, so the calls are idempotent.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use settle_protocol::{names, BranchParams, GlobalRequest};
use sqlx::{Connection, Executor, MySqlConnection, MySqlPool};
use tracing::warn;

use futures_util::future::BoxFuture;

use crate::barrier::BusinessFn;
use crate::client::{SdkError, SettleClient};

/// An XA global transaction opened by this service.
#[derive(Debug, Clone)]
pub struct Xa {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: SettleClient,
    request: GlobalRequest,
    next_branch: AtomicU32,
}

impl Xa {
    /// An XA transaction with the options of `request` (`timeout_to_fail`,
    /// `request_timeout`, `retry_interval`, `branch_headers`, `callback_url`); its `gid` names
    /// it.
    pub fn with_options(client: &SettleClient, mut request: GlobalRequest) -> Self {
        request.trans_type = names::XA.to_owned();
        Self {
            inner: Arc::new(Inner {
                client: client.clone(),
                request,
                next_branch: AtomicU32::new(0),
            }),
        }
    }

    /// The gid.
    pub fn gid(&self) -> &str {
        &self.inner.request.gid
    }

    /// Calls a participant's action at `url` with `body` as branch `01`, `02`, ... (query
    /// `gid`, `trans_type=xa`, `branch_id`, `op=action`): the participant prepares its XA
    /// branch and registers it. Returns the answer's body.
    ///
    /// # Errors
    /// [`SdkError::Failure`] if the participant answered FAILURE; any other error of the call.
    pub async fn call_branch<B: Serialize + ?Sized>(
        &self,
        body: &B,
        url: &str,
    ) -> Result<String, SdkError> {
        let data = serde_json::to_string(body)
            .map_err(|e| SdkError::Business(format!("branch body cannot be encoded: {e}")))?;
        let branch_id = format!(
            "{:02}",
            self.inner.next_branch.fetch_add(1, Ordering::Relaxed) + 1
        );
        self.inner
            .client
            .call_participant(
                url,
                [
                    ("gid", self.gid()),
                    ("trans_type", names::XA),
                    ("branch_id", branch_id.as_str()),
                    ("op", names::OP_ACTION),
                ],
                data,
            )
            .await
    }
}

impl SettleClient {
    /// Runs an XA global transaction with default options: prepare, run `body` (which calls
    /// branches), then submit (every branch commits); abort (every registered branch rolls
    /// back) if `body` or the submit fails. Returns `body`'s value.
    ///
    /// # Errors
    /// The error of `body`, of the prepare or of the submit (after aborting).
    pub async fn xa_global<F, Fut, T>(&self, gid: &str, body: F) -> Result<T, SdkError>
    where
        F: FnOnce(Xa) -> Fut,
        Fut: Future<Output = Result<T, SdkError>>,
    {
        self.xa_global_with(GlobalRequest::new(gid, names::XA), body)
            .await
    }

    /// [`SettleClient::xa_global`] with the options of `request`.
    ///
    /// # Errors
    /// As [`SettleClient::xa_global`].
    pub async fn xa_global_with<F, Fut, T>(
        &self,
        request: GlobalRequest,
        body: F,
    ) -> Result<T, SdkError>
    where
        F: FnOnce(Xa) -> Fut,
        Fut: Future<Output = Result<T, SdkError>>,
    {
        let xa = Xa::with_options(self, request);
        self.drive_global(&xa.inner.request, &xa.inner.request, body(xa.clone()))
            .await
    }
}

/// Why a participant's XA branch did not prepare and register.
#[derive(Debug, thiserror::Error)]
pub enum XaError<E> {
    /// The branch call lacks `gid` or `branch_id`, or they hold characters an xid may not.
    #[error("invalid XA branch: {0}")]
    Invalid(String),
    /// The business code failed; the branch was rolled back.
    #[error("business error: {0}")]
    Business(E),
    /// The database failed; the branch was rolled back if it had started.
    #[error("XA database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The coordinator refused the branch (the global transaction no longer takes branches):
    /// it was rolled back.
    #[error("the coordinator refused the branch, which was rolled back: {0}")]
    Refused(SdkError),
    /// The registration's outcome is unknown: the branch stays prepared. If it registered,
    /// the coordinator commits or rolls it back; if not, `XA RECOVER` lists it for an
    /// operator.
    #[error("the branch is prepared but its registration's outcome is unknown: {0}")]
    Unregistered(SdkError),
}

/// The xid of a branch: `GID-BRANCH_ID`, as DTM names it.
///
/// # Errors
/// [`XaError::Invalid`] for an empty part or one with characters other than
/// `A-Z a-z 0-9 _ . : -`.
pub fn xid<E>(branch: &BranchParams) -> Result<String, XaError<E>> {
    for (name, value) in [("gid", &branch.gid), ("branch_id", &branch.branch_id)] {
        let plain = value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'));
        if value.is_empty() || !plain {
            return Err(XaError::Invalid(format!(
                "{name} '{}' cannot be part of an xid",
                value.escape_default()
            )));
        }
    }
    Ok(format!("{}-{}", branch.gid, branch.branch_id))
}

/// How many times a registration whose answer was lost is sent again.
const REGISTER_TRIES: u32 = 5;

/// Runs `business` as the XA branch of `branch` (the action call the initiator made) on one
/// connection of `pool`: `XA START`, `business`, `XA END`, `XA PREPARE`; then registers the
/// branch with the coordinator of `client`, with `phase_two_url` to be called with
/// `op=commit` or `op=rollback`. If `business` or the prepare fails, the branch is rolled
/// back.
///
/// # Errors
/// See [`XaError`].
pub async fn xa_local<T, E, F>(
    client: &SettleClient,
    pool: &MySqlPool,
    branch: &BranchParams,
    phase_two_url: &str,
    business: F,
) -> Result<T, XaError<E>>
where
    F: for<'c> FnOnce(&'c mut MySqlConnection) -> BusinessFn<'c, T, E>,
{
    let xid = xid(branch)?;
    let mut conn = pool.acquire().await?.detach();
    execute(&mut conn, format!("XA START '{xid}'")).await?;
    let value = match business(&mut conn).await {
        Ok(value) => value,
        Err(e) => {
            let _ = execute(&mut conn, format!("XA END '{xid}'; XA ROLLBACK '{xid}'")).await;
            let _ = conn.close().await;
            return Err(XaError::Business(e));
        }
    };
    if let Err(e) = execute(&mut conn, format!("XA END '{xid}'; XA PREPARE '{xid}'")).await {
        // A prepare that failed leaves nothing prepared; end whatever is left.
        let _ = execute(&mut conn, format!("XA ROLLBACK '{xid}'")).await;
        let _ = conn.close().await;
        return Err(XaError::Database(e));
    }
    // The prepared branch now belongs to the database, not to this session (MySQL 5.7.7 and
    // later, MariaDB 10.5 and later keep it across the disconnect). The session, taken out of
    // the pool for the branch, is closed.
    let _ = conn.close().await;
    let register = serde_json::json!({
        "gid": branch.gid,
        "trans_type": names::XA,
        "branch_id": branch.branch_id,
        "url": phase_two_url,
    });
    let mut tries = 0;
    loop {
        match client.post("registerBranch", &register).await {
            Ok(_) => return Ok(value),
            Err(e) if !e.leaves_outcome_open() => {
                rollback(pool, &xid).await?;
                return Err(XaError::Refused(e));
            }
            Err(e) if tries + 1 >= REGISTER_TRIES => return Err(XaError::Unregistered(e)),
            Err(e) => {
                tries += 1;
                warn!(xid = %xid, error = %e, "registering an XA branch got no answer; sending it again");
                tokio::time::sleep(Duration::from_millis(100 << tries)).await;
            }
        }
    }
}

/// Answers the coordinator's phase 2 of `branch`: `XA COMMIT` (op `commit`) or
/// `XA ROLLBACK` (op `rollback`) of its xid. An xid the database does not know was committed
/// or rolled back by an earlier call: a success.
///
/// # Errors
/// An op other than commit or rollback; a database error (the coordinator calls again).
pub async fn xa_phase_two(
    pool: &MySqlPool,
    branch: &BranchParams,
) -> Result<(), XaError<std::convert::Infallible>> {
    let xid = xid(branch)?;
    match branch.op.as_str() {
        names::OP_COMMIT => Ok(finish(pool, format!("XA COMMIT '{xid}'")).await?),
        names::OP_ROLLBACK => Ok(rollback(pool, &xid).await?),
        other => Err(XaError::Invalid(format!(
            "op '{}' is not an XA phase 2 (commit or rollback)",
            other.escape_default()
        ))),
    }
}

fn rollback<'a>(pool: &'a MySqlPool, xid: &str) -> BoxFuture<'a, Result<(), sqlx::Error>> {
    finish(pool, format!("XA ROLLBACK '{xid}'"))
}

/// Runs `sql` (XA statements, which MySQL does not prepare) on `conn`.
fn execute(conn: &mut MySqlConnection, sql: String) -> BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move { conn.execute(sql.as_str()).await.map(drop) })
}

/// MySQL's error number for an unknown xid (`XAER_NOTA`).
const XAER_NOTA: u16 = 1397;

/// Commits or rolls back a prepared branch (`sql`) from any session of `pool`; an xid the
/// database does not know was done already.
fn finish(pool: &MySqlPool, sql: String) -> BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        match pool.execute(sql.as_str()).await {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e))
                if e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                    .is_some_and(|m| m.number() == XAER_NOTA) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    })
}
