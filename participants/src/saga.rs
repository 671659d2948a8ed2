//! The initiator side of a saga.
//!
//! A saga is a list of steps, each an action and the compensation that undoes it. It is
//! submitted in one request; the coordinator then runs the actions one after the other (or,
//! [`Saga::concurrent`], each once the steps [`Saga::after`] names have succeeded), and if an
//! action answers FAILURE it compensates every step that ran, in reverse. Participants
//! guard their actions and compensations with the barrier ([`crate::BranchBarrier`]), which
//! turns a compensation that arrives before its action into an empty one.
//!
//! ```no_run
//! # async fn f() -> Result<(), settle_sdk::SdkError> {
//! use settle_sdk::{Saga, SettleClient};
//! let client = SettleClient::new("http://127.0.0.1:36789/api/dtmsvr");
//! let gid = client.new_gid().await?;
//! let body = serde_json::json!({"from": 1, "to": 2, "amount": 30});
//! Saga::new(&client, &gid)
//!     .add("http://bank-a/trans-out", "http://bank-a/trans-out-revert", &body)?
//!     .add("http://bank-b/trans-in", "http://bank-b/trans-in-revert", &body)?
//!     .submit()
//!     .await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use serde::Serialize;
use settle_protocol::{names, GlobalRequest};

use crate::client::{SdkError, SettleClient};

/// A saga being built, then submitted.
#[derive(Debug, Clone)]
pub struct Saga {
    client: SettleClient,
    request: GlobalRequest,
    orders: BTreeMap<usize, Vec<usize>>,
}

fn encode<P: Serialize + ?Sized>(payload: &P) -> Result<String, SdkError> {
    serde_json::to_string(payload)
        .map_err(|e| SdkError::Business(format!("payload cannot be encoded: {e}")))
}

impl Saga {
    /// A saga with this gid and no steps yet.
    pub fn new(client: &SettleClient, gid: &str) -> Self {
        Self::with_options(client, GlobalRequest::new(gid, names::SAGA))
    }

    /// A saga with the options of `request` (`timeout_to_fail`, `request_timeout`,
    /// `retry_interval`, `retry_limit`, `wait_result`, `branch_headers`, `callback_url`); its
    /// `gid` names it.
    pub fn with_options(client: &SettleClient, mut request: GlobalRequest) -> Self {
        request.trans_type = names::SAGA.to_owned();
        Self {
            client: client.clone(),
            request,
            orders: BTreeMap::new(),
        }
    }

    /// The gid.
    pub fn gid(&self) -> &str {
        &self.request.gid
    }

    /// Adds a step: `action` runs it, `compensation` undoes it; both receive `payload` as
    /// JSON. Steps are numbered from 0 in the order they are added.
    ///
    /// # Errors
    /// The payload cannot be encoded.
    pub fn add<P: Serialize + ?Sized>(
        mut self,
        action: &str,
        compensation: &str,
        payload: &P,
    ) -> Result<Self, SdkError> {
        let body = encode(payload)?;
        self.request.steps.push(BTreeMap::from([
            ("action".to_owned(), action.to_owned()),
            ("compensate".to_owned(), compensation.to_owned()),
        ]));
        self.request.payloads.push(body);
        Ok(self)
    }

    /// Runs the steps concurrently: each as soon as the steps [`Saga::after`] names for it
    /// have succeeded (all at once when none are named).
    #[must_use]
    pub fn concurrent(mut self) -> Self {
        self.request.concurrent = true;
        self
    }

    /// Step `step` runs only after the steps `before` (each numbered lower) succeeded; if the
    /// saga rolls back, `step` is compensated before them. Makes the saga concurrent.
    #[must_use]
    pub fn after(mut self, step: usize, before: &[usize]) -> Self {
        self.orders.entry(step).or_default().extend(before);
        self.concurrent()
    }

    /// Adds a message (a Settle extension): `target` (`http(s)://` or
    /// `rocketmq://TOPIC?key=KEY`) receives `payload` once every action succeeded, and
    /// never if the saga rolls back.
    ///
    /// # Errors
    /// The payload cannot be encoded.
    pub fn message<P: Serialize + ?Sized>(
        mut self,
        target: &str,
        payload: &P,
    ) -> Result<Self, SdkError> {
        let body = encode(payload)?;
        self.request
            .messages
            .push(BTreeMap::from([("action".to_owned(), target.to_owned())]));
        self.request.message_payloads.push(body);
        Ok(self)
    }

    /// Makes [`Saga::submit`] wait for the first round of the saga: it then answers
    /// [`SdkError::Failure`] (with the rollback reason) if the saga turned to compensation.
    #[must_use]
    pub fn wait_result(mut self) -> Self {
        self.request.wait_result = true;
        self
    }

    /// The request [`Saga::submit`] sends, as DTM's clients write it (`custom_data` carries
    /// the order of a concurrent saga).
    pub fn request(&self) -> GlobalRequest {
        let mut request = self.request.clone();
        if request.concurrent {
            let orders: BTreeMap<String, &Vec<usize>> = self
                .orders
                .iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            request.custom_data =
                serde_json::json!({"orders": orders, "concurrent": true}).to_string();
        }
        request
    }

    /// Submits the saga: the coordinator runs it from here. An answer that does not tell
    /// (lost, ONGOING, 5xx) is checked with the coordinator (see
    /// [`SettleClient::submit_truthfully`]).
    ///
    /// # Errors
    /// The coordinator refuses the saga (with the reason: a bad step, a wrong order), or,
    /// with [`Saga::wait_result`], [`SdkError::Failure`] when it rolled back; or
    /// [`SdkError::OutcomeUnknown`] when the coordinator cannot tell in time.
    pub async fn submit(&self) -> Result<(), SdkError> {
        self.client.submit_truthfully(&self.request()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_concurrent_saga_writes_its_order_in_custom_data_as_dtm_does() {
        let client = SettleClient::new("http://127.0.0.1:1/api/dtmsvr");
        let saga = Saga::new(&client, "g")
            .add("http://a/1", "http://a/1r", &1)
            .and_then(|s| s.add("http://a/2", "http://a/2r", &2))
            .and_then(|s| s.add("http://a/3", "http://a/3r", &3))
            .map(|s| s.after(2, &[0, 1]));
        let request = saga.map(|s| s.request()).unwrap_or_default();
        assert_eq!(request.trans_type, "saga");
        assert_eq!(request.steps.len(), 3);
        assert_eq!(request.payloads, ["1", "2", "3"]);
        let custom: serde_json::Value =
            serde_json::from_str(&request.custom_data).unwrap_or_default();
        assert_eq!(
            custom,
            serde_json::json!({"orders": {"2": [0, 1]}, "concurrent": true})
        );
    }

    #[test]
    fn a_plain_saga_sends_no_custom_data() {
        let client = SettleClient::new("http://127.0.0.1:1/api/dtmsvr");
        let request = Saga::new(&client, "g")
            .add("http://a/1", "http://a/1r", &1)
            .map(|s| s.request())
            .unwrap_or_default();
        assert!(request.custom_data.is_empty());
        assert!(!request.concurrent);
    }
}
