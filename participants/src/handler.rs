//! axum glue for participant endpoints.
//!
//! [`BranchQuery`] extracts the branch call's query parameters (`gid`, `trans_type`,
//! `branch_id`, `op`); [`BranchResponse`] answers with the status codes the coordinator reads:
//! 200 success, 409 failure, 425 ongoing, 500 error (retried).
//!
//! ```no_run
//! use axum::{extract::State, Router, routing::post};
//! use settle_sdk::{BarrierTable, BranchQuery, BranchResponse};
//!
//! async fn confirm(State(pool): State<sqlx::MySqlPool>, branch: BranchQuery) -> BranchResponse {
//!     let barrier = match branch.barrier(BarrierTable::default()) {
//!         Ok(b) => b,
//!         Err(e) => return BranchResponse::failure(e.to_string()),
//!     };
//!     barrier
//!         .call(&pool, |tx| Box::pin(async move {
//!             sqlx::query("UPDATE account SET frozen = frozen - 30 WHERE id = 1").execute(&mut *tx).await?;
//!             Ok::<_, sqlx::Error>(())
//!         }))
//!         .await
//!         .into()
//! }
//! # fn app(pool: sqlx::MySqlPool) -> Router { Router::new().route("/confirm", post(confirm)).with_state(pool) }
//! ```

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use settle_protocol::{BranchParams, DtmResult};

use crate::barrier::{BarrierError, BarrierOutcome, BarrierTable, BranchBarrier};

/// The query parameters of a branch call.
#[derive(Debug, Clone)]
pub struct BranchQuery(pub BranchParams);

impl BranchQuery {
    /// The barrier of this call.
    ///
    /// # Errors
    /// A parameter is missing.
    pub fn barrier(
        self,
        table: BarrierTable,
    ) -> Result<BranchBarrier, BarrierError<std::convert::Infallible>> {
        BranchBarrier::new(self.0, table)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for BranchQuery {
    type Rejection = BranchResponse;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, BranchResponse> {
        Query::<BranchParams>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e| BranchResponse::Failure(format!("bad branch call: {}", e.body_text())))
    }
}

/// A participant's answer to a branch call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BranchResponse {
    /// 200 `SUCCESS`.
    Success,
    /// 409 `FAILURE`: will not succeed (a Try that fails makes the initiator abort).
    Failure(String),
    /// 425 `ONGOING`: ask again later.
    Ongoing,
    /// 500: a transient error; the coordinator retries.
    Error(String),
}

impl BranchResponse {
    /// A failure with its reason.
    pub fn failure(reason: impl Into<String>) -> Self {
        Self::Failure(reason.into())
    }
}

impl IntoResponse for BranchResponse {
    fn into_response(self) -> Response {
        match self {
            Self::Success => (StatusCode::OK, axum::Json(DtmResult::success())).into_response(),
            Self::Failure(m) => (
                StatusCode::CONFLICT,
                axum::Json(DtmResult::failure("failure", m)),
            )
                .into_response(),
            Self::Ongoing => (
                StatusCode::TOO_EARLY,
                settle_protocol::names::RESULT_ONGOING,
            )
                .into_response(),
            Self::Error(m) => (StatusCode::INTERNAL_SERVER_ERROR, m).into_response(),
        }
    }
}

/// Maps a barrier call to an answer: done, duplicate and empty rollback are successes; a Try
/// after its Cancel (an action after its compensation) is a failure; a database error is retried; a business error is a failure.
impl<T, E: std::fmt::Display> From<Result<BarrierOutcome<T>, BarrierError<E>>> for BranchResponse {
    fn from(r: Result<BarrierOutcome<T>, BarrierError<E>>) -> Self {
        match r {
            Ok(
                BarrierOutcome::Done(_) | BarrierOutcome::Duplicate | BarrierOutcome::EmptyRollback,
            ) => Self::Success,
            Ok(BarrierOutcome::RejectedAfterCancel) => {
                Self::Failure("arrived after its cancel or compensation: nothing was done".into())
            }
            Err(BarrierError::Database(e)) => Self::Error(format!("database error: {e}")),
            Err(BarrierError::Invalid(m)) => Self::Failure(m),
            Err(BarrierError::Business(e)) => Self::Failure(e.to_string()),
        }
    }
}
