//! Bodies that clients send to the coordinator.
//!
//! DTM's clients send `null` for fields they leave unset (Python's `None`) and `0` for options
//! that take the server's default, and they add fields of their own (`passthrough_headers`,
//! `status`); these types accept all of that. A field of the wrong type is an error that names
//! the field.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// Deserializes `null` as the type's default.
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Body of `prepare`, `submit` and `abort`: a global transaction and its options.
///
/// Numeric options are in seconds; `0` means "the server's default". `Debug` shows the names
/// of `branch_headers` but not their values, which often carry credentials.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalRequest {
    /// Global transaction id.
    #[serde(default, deserialize_with = "nullable")]
    pub gid: String,
    /// `tcc`, `msg`, `saga`, `xa` or `workflow`.
    #[serde(default, deserialize_with = "nullable")]
    pub trans_type: String,
    /// Opaque data of the transaction type (a delayed msg puts `{"delay": n}` here).
    #[serde(default, deserialize_with = "nullable")]
    pub custom_data: String,
    /// Steps of a msg or saga: objects of strings such as `{"action": url}`.
    #[serde(default, deserialize_with = "nullable")]
    pub steps: Vec<BTreeMap<String, String>>,
    /// One body per step.
    #[serde(default, deserialize_with = "nullable")]
    pub payloads: Vec<String>,
    /// URL a msg is checked back at when it stays prepared.
    #[serde(default, deserialize_with = "nullable")]
    pub query_prepared: String,
    /// `http` (the default) or `grpc`.
    #[serde(default, deserialize_with = "nullable")]
    pub protocol: String,
    /// Why the initiator rolls back (sent with `abort`).
    #[serde(default, deserialize_with = "nullable")]
    pub rollback_reason: String,
    /// Answer `submit` only once phase 2 has finished.
    #[serde(default, deserialize_with = "nullable")]
    pub wait_result: bool,
    /// Seconds a transaction may stay prepared before it is rolled back (TCC) or checked back
    /// (msg). `0`: the server's default.
    #[serde(default, deserialize_with = "nullable")]
    pub timeout_to_fail: i64,
    /// Seconds each branch call may take. `0`: the server's default.
    #[serde(default, deserialize_with = "nullable")]
    pub request_timeout: i64,
    /// Seconds before the first retry of a failed branch call; doubles on each failure.
    /// `0`: the server's default.
    #[serde(default, deserialize_with = "nullable")]
    pub retry_interval: i64,
    /// Headers added to every branch call.
    #[serde(default, deserialize_with = "nullable")]
    pub branch_headers: BTreeMap<String, String>,
    /// Call every branch of phase 2 at once instead of one at a time (a Settle extension for
    /// TCC; for a saga, as `"concurrent": true` in `custom_data`).
    #[serde(default, deserialize_with = "nullable")]
    pub concurrent: bool,
    /// Retries after which the transaction stops being retried automatically (`0`: never).
    #[serde(default, deserialize_with = "nullable")]
    pub retry_limit: i64,
    /// Retries made so far (sent back by DTM's clients; ignored on input).
    #[serde(default, deserialize_with = "nullable")]
    pub retry_count: i64,
    /// Where to post the outcome once the transaction has finished (a Settle extension):
    /// called once it succeeded or failed, retried until the endpoint takes it.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub callback_url: String,
    /// Messages a saga sends once every action succeeded (a Settle extension): each
    /// `{"action": URL}`, `rocketmq://TOPIC?key=KEY` or HTTP, with one body each in
    /// `message_payloads`.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub messages: Vec<BTreeMap<String, String>>,
    /// One body per entry of `messages`.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub message_payloads: Vec<String>,
}

/// Shows a header map's names with every value hidden, for `Debug` output.
pub struct HiddenValues<'a>(pub &'a BTreeMap<String, String>);

impl std::fmt::Debug for HiddenValues<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, format_args!("<hidden>"))))
            .finish()
    }
}

impl std::fmt::Debug for GlobalRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalRequest")
            .field("gid", &self.gid)
            .field("trans_type", &self.trans_type)
            .field("custom_data", &self.custom_data)
            .field("steps", &self.steps)
            .field("payloads", &self.payloads)
            .field("query_prepared", &self.query_prepared)
            .field("protocol", &self.protocol)
            .field("rollback_reason", &self.rollback_reason)
            .field("wait_result", &self.wait_result)
            .field("timeout_to_fail", &self.timeout_to_fail)
            .field("request_timeout", &self.request_timeout)
            .field("retry_interval", &self.retry_interval)
            .field("branch_headers", &HiddenValues(&self.branch_headers))
            .field("concurrent", &self.concurrent)
            .field("retry_limit", &self.retry_limit)
            .field("retry_count", &self.retry_count)
            .field("callback_url", &self.callback_url)
            .field("messages", &self.messages)
            .field("message_payloads", &self.message_payloads)
            .finish()
    }
}

impl GlobalRequest {
    /// A request that names only the transaction, as TCC clients send to `prepare`, `submit`
    /// and `abort`.
    pub fn new(gid: impl Into<String>, trans_type: impl Into<String>) -> Self {
        Self {
            gid: gid.into(),
            trans_type: trans_type.into(),
            ..Self::default()
        }
    }
}

/// Body of `registerBranch`: an object whose values are all strings.
///
/// TCC sends `gid`, `trans_type`, `branch_id`, `data` (the body later sent to confirm and
/// cancel), `confirm` and `cancel`; any other string field is accepted and ignored.
pub type RegisterBranchRequest = BTreeMap<String, String>;
