//! What the coordinator answers.
//!
//! A success is `200 {"dtm_result":"SUCCESS"}`, a failure `409
//! {"dtm_result":"FAILURE","message":...}`, an operation still under way `425 ONGOING`, and any
//! other error a 4xx or 500 with `{"message": ...}`. `query` and `all` answer the views below,
//! whose field names are DTM's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Body of a success or failure answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DtmResult {
    /// `SUCCESS` or `FAILURE`.
    pub dtm_result: String,
    /// What went wrong, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Stable machine-readable code of the failure (a Settle extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl DtmResult {
    /// The success answer.
    pub fn success() -> Self {
        Self {
            dtm_result: crate::names::RESULT_SUCCESS.to_owned(),
            message: None,
            code: None,
        }
    }

    /// A failure answer with its code and message.
    pub fn failure(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            dtm_result: crate::names::RESULT_FAILURE.to_owned(),
            message: Some(message.into()),
            code: Some(code.into()),
        }
    }
}

/// Answer of `newGid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewGidAnswer {
    /// The new global transaction id.
    pub gid: String,
    /// Always `SUCCESS`.
    pub dtm_result: String,
}

/// A global transaction as `query` and `all` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransGlobalView {
    /// Global transaction id.
    pub gid: String,
    /// `tcc`, `msg`, ...
    pub trans_type: String,
    /// `prepared`, `submitted`, `aborting`, `succeed` or `failed`.
    pub status: String,
    /// Steps of a msg or saga.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<BTreeMap<String, String>>,
    /// Bodies of the steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub payloads: Vec<String>,
    /// Check-back URL of a msg.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub query_prepared: String,
    /// `http`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// When the transaction was created (RFC 3339).
    pub create_time: String,
    /// When it last changed (RFC 3339).
    pub update_time: String,
    /// When it finished, if it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<String>,
    /// When it turned to rolling back, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_time: Option<String>,
    /// The options as JSON (`timeout_to_fail`, `request_timeout`, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub options: String,
    /// Opaque data of the transaction type.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub custom_data: String,
    /// Seconds until the next retry after the next failure.
    #[serde(default)]
    pub next_cron_interval: i64,
    /// When the transaction is next due for work (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cron_time: Option<String>,
    /// Coordinator instance holding the transaction's lease, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// Why the transaction rolled back.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rollback_reason: String,
    /// Retries made so far.
    #[serde(default)]
    pub retry_count: i64,
    /// The last error met while driving the transaction (a Settle extension).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
}

/// A branch operation as `query` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransBranchView {
    /// Global transaction id.
    pub gid: String,
    /// URL the coordinator calls.
    pub url: String,
    /// The body sent with the call.
    #[serde(default)]
    pub data: String,
    /// Branch id, unique within the transaction.
    pub branch_id: String,
    /// `confirm`, `cancel`, `action`, ...
    pub op: String,
    /// `prepared`, `succeed` or `failed`.
    pub status: String,
    /// When the branch was registered (RFC 3339).
    pub create_time: String,
    /// When it last changed (RFC 3339).
    pub update_time: String,
    /// When it finished, if it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<String>,
}

/// Answer of `query`. `transaction` is `null` when no transaction has the gid, as in DTM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryAnswer {
    /// The transaction, if it exists.
    pub transaction: Option<TransGlobalView>,
    /// Its branch operations, in registration order.
    pub branches: Vec<TransBranchView>,
}

/// Answer of `all`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllAnswer {
    /// One page of transactions, newest first.
    pub transactions: Vec<TransGlobalView>,
    /// Position to pass to get the next page; empty on the last page.
    pub next_position: String,
}
