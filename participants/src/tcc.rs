//! The initiator side of TCC.
//!
//! ```no_run
//! # async fn f() -> Result<(), settle_sdk::SdkError> {
//! use settle_sdk::SettleClient;
//! let client = SettleClient::new("http://127.0.0.1:36789/api/dtmsvr");
//! let gid = client.new_gid().await?;
//! client
//!     .tcc_global(&gid, |tcc| async move {
//!         let body = serde_json::json!({"account": 1, "amount": 30});
//!         tcc.call_branch(&body, "http://a/try", "http://a/confirm", "http://a/cancel").await?;
//!         Ok(())
//!     })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! [`SettleClient::tcc_global`] prepares the transaction, runs the closure (which registers
//! and Tries branches), then submits; if the closure or the submit fails, it aborts, and the
//! coordinator cancels every registered branch.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use serde::Serialize;
use settle_protocol::{names, GlobalRequest};

use crate::client::{SdkError, SettleClient};

/// A TCC global transaction opened by this service.
#[derive(Debug, Clone)]
pub struct Tcc {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: SettleClient,
    request: GlobalRequest,
    next_branch: AtomicU32,
}

impl Tcc {
    /// A TCC transaction with this gid, not yet prepared.
    pub fn new(client: &SettleClient, gid: &str) -> Self {
        Self::with_options(client, GlobalRequest::new(gid, names::TCC))
    }

    /// A TCC transaction with the options of `request` (`timeout_to_fail`, `request_timeout`,
    /// `retry_interval`, `concurrent`, `wait_result`, `branch_headers`, `callback_url`); its `gid`
    /// names it.
    pub fn with_options(client: &SettleClient, mut request: GlobalRequest) -> Self {
        request.trans_type = names::TCC.to_owned();
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

    /// Opens the transaction at the coordinator.
    ///
    /// # Errors
    /// The coordinator refuses or cannot be reached.
    pub async fn prepare(&self) -> Result<(), SdkError> {
        // Messages the TCC carries go with its submit only.
        let request = GlobalRequest {
            steps: Vec::new(),
            payloads: Vec::new(),
            ..self.inner.request.clone()
        };
        self.inner.client.post("prepare", &request).await.map(drop)
    }

    /// Commits: the coordinator confirms every branch. An answer that does not tell (lost,
    /// ONGOING, 5xx) is checked with the coordinator (see
    /// [`SettleClient::submit_truthfully`]): `Ok` means committed.
    ///
    /// # Errors
    /// The coordinator refuses (e.g. the transaction already timed out), or
    /// [`SdkError::OutcomeUnknown`] when it cannot tell in time.
    pub async fn submit(&self) -> Result<(), SdkError> {
        self.inner
            .client
            .submit_truthfully(&self.inner.request)
            .await
    }

    /// Rolls back: the coordinator cancels every branch.
    ///
    /// # Errors
    /// The coordinator refuses (the transaction was submitted) or cannot be reached.
    pub async fn abort(&self) -> Result<(), SdkError> {
        self.inner
            .client
            .post("abort", &self.inner.request)
            .await
            .map(drop)
    }

    /// The next branch id: `01`, `02`, ...
    pub fn new_branch_id(&self) -> String {
        format!(
            "{:02}",
            self.inner.next_branch.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    /// Registers a branch (its confirm and cancel URLs, and `body`, which they will receive)
    /// and then calls its Try with the same body. Returns the Try's answer body.
    ///
    /// # Errors
    /// [`SdkError::Failure`] if the Try answered FAILURE; any other error of the register or
    /// the Try.
    pub async fn call_branch<B: Serialize + ?Sized>(
        &self,
        body: &B,
        try_url: &str,
        confirm_url: &str,
        cancel_url: &str,
    ) -> Result<String, SdkError> {
        let data = serde_json::to_string(body)
            .map_err(|e| SdkError::Business(format!("branch body cannot be encoded: {e}")))?;
        let branch_id = self.new_branch_id();
        let register = serde_json::json!({
            "gid": self.gid(),
            "trans_type": names::TCC,
            "branch_id": branch_id,
            "data": data,
            "confirm": confirm_url,
            "cancel": cancel_url,
        });
        self.inner.client.post("registerBranch", &register).await?;
        self.inner
            .client
            .call_participant(
                try_url,
                [
                    ("gid", self.gid()),
                    ("trans_type", names::TCC),
                    ("branch_id", branch_id.as_str()),
                    ("op", names::OP_TRY),
                ],
                data,
            )
            .await
    }
}

impl SettleClient {
    /// Runs a TCC global transaction with default options: prepare, run `body` (which calls
    /// branches), then submit; abort if `body` or the submit fails. Returns `body`'s value.
    ///
    /// # Errors
    /// The error of `body`, of the prepare or of the submit (after aborting).
    pub async fn tcc_global<F, Fut, T>(&self, gid: &str, body: F) -> Result<T, SdkError>
    where
        F: FnOnce(Tcc) -> Fut,
        Fut: Future<Output = Result<T, SdkError>>,
    {
        self.tcc_global_with(GlobalRequest::new(gid, names::TCC), body)
            .await
    }

    /// [`SettleClient::tcc_global`] with the options of `request`.
    ///
    /// # Errors
    /// As [`SettleClient::tcc_global`].
    pub async fn tcc_global_with<F, Fut, T>(
        &self,
        request: GlobalRequest,
        body: F,
    ) -> Result<T, SdkError>
    where
        F: FnOnce(Tcc) -> Fut,
        Fut: Future<Output = Result<T, SdkError>>,
    {
        let tcc = Tcc::with_options(self, request);
        let prepare = GlobalRequest {
            steps: Vec::new(),
            payloads: Vec::new(),
            ..tcc.inner.request.clone()
        };
        self.drive_global(&prepare, &tcc.inner.request, body(tcc.clone()))
            .await
    }
}
