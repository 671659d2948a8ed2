//! Errors the API answers with.
//!
//! Each variant maps to one HTTP status and carries a stable code string. A conflict with the
//! transaction's state is DTM's FAILURE (409, `"dtm_result":"FAILURE"`), which DTM's clients
//! understand; store failures are logged with their cause and shown only as "an internal
//! database error occurred".

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tracing::error;

use crate::access::{Denied, Refused};
use crate::store::StoreError;
use crate::txn::TxnError;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or breaks a rule; nothing was written.
    #[error("{message}")]
    BadRequest {
        /// Stable code, e.g. `invalid_gid`.
        code: &'static str,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The caller sent no valid token for the route's scope.
    #[error(transparent)]
    Unauthorized(#[from] Denied),
    /// The request names a destination the allowlist does not let the coordinator call.
    #[error(transparent)]
    Forbidden(#[from] Refused),
    /// The body is larger than the configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// The state machine refused the operation.
    #[error(transparent)]
    Txn(#[from] TxnError),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what is stored (a topic's subscribers): DTM's FAILURE.
    #[error("{0}")]
    Refused(String),
    /// A submitted transaction will not succeed (`wait_result`): DTM's FAILURE, with its
    /// rollback reason.
    #[error("{0}")]
    Failure(String),
    /// The operation was accepted but has not finished within the wait (`wait_result`).
    #[error("{0}")]
    Ongoing(String),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Txn(t) => Self::Txn(t),
            other => Self::Store(other),
        }
    }
}

impl ApiError {
    /// A bad request with its code and message.
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status and stable code of this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "destination_not_allowed"),
            Self::Txn(TxnError::NotFound { .. }) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Txn(TxnError::Conflict { .. }) => (StatusCode::CONFLICT, "wrong_status"),
            Self::Txn(TxnError::TypeMismatch { .. }) => (StatusCode::CONFLICT, "wrong_trans_type"),
            Self::Txn(TxnError::Unsupported { .. }) => (StatusCode::CONFLICT, "unsupported"),
            Self::Txn(TxnError::UnknownCode { .. }) => (StatusCode::BAD_REQUEST, "unknown_code"),
            Self::Txn(TxnError::LeaseLost { .. }) => (StatusCode::CONFLICT, "lease_lost"),
            Self::Txn(TxnError::TooMany { .. }) => (StatusCode::BAD_REQUEST, "too_many"),
            Self::Failure(_) => (StatusCode::CONFLICT, "rolled_back"),
            Self::Refused(_) => (StatusCode::CONFLICT, "conflict"),
            Self::Ongoing(_) => (StatusCode::TOO_EARLY, "ongoing"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            Self::Store(e) => {
                error!(error = %crate::telemetry::error_chain(e), "store failed while answering a request");
                let body = json!({"message": "an internal database error occurred", "code": code});
                (status, Json(body)).into_response()
            }
            Self::Ongoing(_) => (status, "ONGOING").into_response(),
            Self::Unauthorized(_) => {
                let body = json!({"message": self.to_string(), "code": code});
                let challenge = [(axum::http::header::WWW_AUTHENTICATE, "Bearer")];
                (status, challenge, Json(body)).into_response()
            }
            _ if status == StatusCode::CONFLICT => {
                let body =
                    json!({"dtm_result": "FAILURE", "message": self.to_string(), "code": code});
                (status, Json(body)).into_response()
            }
            _ => {
                let body = json!({"message": self.to_string(), "code": code});
                (status, Json(body)).into_response()
            }
        }
    }
}
