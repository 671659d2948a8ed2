//! A client of the coordinator's DTM API.

use std::time::Duration;

use serde::Serialize;
use settle_protocol::answer::NewGidAnswer;
use settle_protocol::{names, GlobalRequest, QueryAnswer};

/// Errors of SDK calls.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// The other side answered FAILURE (HTTP 409 or a `FAILURE` body): the operation will not
    /// succeed if retried.
    #[error("{what} failed: {message}")]
    Failure {
        /// Which call.
        what: String,
        /// The answer's message.
        message: String,
    },
    /// The other side answered ONGOING (HTTP 425): ask again later.
    #[error("{what} is still in progress")]
    Ongoing {
        /// Which call.
        what: String,
    },
    /// Any other unsuccessful HTTP answer.
    #[error("{what} answered HTTP {status}: {body}")]
    Http {
        /// Which call.
        what: String,
        /// The status.
        status: u16,
        /// The body.
        body: String,
    },
    /// The request could not be made or its answer read.
    #[error("{what}: {source}")]
    Transport {
        /// Which call.
        what: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The answer could not be understood.
    #[error("{what}: unexpected answer: {message}")]
    Protocol {
        /// Which call.
        what: String,
        /// What is wrong.
        message: String,
    },
    /// The caller's own code failed (for example inside a TCC closure).
    #[error("{0}")]
    Business(String),
    /// A `submit` got no telling answer and the coordinator could not be asked what became of
    /// the transaction in time: it may have committed. Do not redo the business; query the
    /// gid later.
    #[error("the outcome of {what} is unknown (asked until the wait ran out): {last}; query its gid later, and do not redo the business before knowing it")]
    OutcomeUnknown {
        /// Which call.
        what: String,
        /// The last error seen.
        last: String,
    },
}

impl SdkError {
    /// Whether this is a FAILURE answer.
    pub fn is_failure(&self) -> bool {
        matches!(self, Self::Failure { .. })
    }

    /// Whether a write that failed this way may still have happened: no answer, an answer
    /// cut short or not understood, ONGOING, or a server-side error.
    pub fn leaves_outcome_open(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::Ongoing { .. } | Self::Protocol { .. } => true,
            Self::Http { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            Self::Failure { .. } | Self::Business(_) | Self::OutcomeUnknown { .. } => false,
        }
    }
}

/// Reads an answer the DTM way: 425 or `ONGOING` is ongoing, 409 or `FAILURE` a failure, any
/// other non-2xx an error. Returns the body of a success.
///
/// # Errors
/// The matching [`SdkError`].
pub async fn check_answer(what: &str, response: reqwest::Response) -> Result<String, SdkError> {
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .map_err(|source| SdkError::Transport {
            what: what.to_owned(),
            source,
        })?;
    classify(what, status, body)
}

/// [`check_answer`] on an answer already read.
fn classify(what: &str, status: u16, body: String) -> Result<String, SdkError> {
    let outcome = settle_protocol::classify_answer(
        if (200..300).contains(&status) {
            200
        } else {
            status
        },
        &body,
    );
    match outcome {
        settle_protocol::BranchOutcome::Success => Ok(body),
        settle_protocol::BranchOutcome::Ongoing => Err(SdkError::Ongoing {
            what: what.to_owned(),
        }),
        settle_protocol::BranchOutcome::Failure => Err(SdkError::Failure {
            what: what.to_owned(),
            message: serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
                .unwrap_or(body),
        }),
        settle_protocol::BranchOutcome::Error => Err(SdkError::Http {
            what: what.to_owned(),
            status,
            body,
        }),
    }
}

/// A client of one coordinator.
#[derive(Clone)]
pub struct SettleClient {
    api: String,
    http: reqwest::Client,
    token: Option<String>,
    traceparent: Option<String>,
    outcome_wait: Duration,
}

impl std::fmt::Debug for SettleClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SettleClient")
            .field("api", &self.api)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("outcome_wait", &self.outcome_wait)
            .finish_non_exhaustive()
    }
}

impl SettleClient {
    /// A client of the DTM API at `api_url` (e.g. `http://127.0.0.1:36789/api/dtmsvr`), with
    /// a 10 s request timeout.
    pub fn new(api_url: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        Self::with_http(api_url, http)
    }

    /// A client using the given HTTP client.
    pub fn with_http(api_url: impl Into<String>, http: reqwest::Client) -> Self {
        Self {
            api: api_url.into().trim_end_matches('/').to_owned(),
            http,
            token: None,
            traceparent: None,
            outcome_wait: Duration::from_secs(10),
        }
    }

    /// The same client asking for at most `wait` what became of a `submit` whose answer did
    /// not tell (default 10 s).
    #[must_use]
    pub fn with_outcome_wait(mut self, wait: Duration) -> Self {
        self.outcome_wait = wait;
        self
    }

    /// Submits `request` and reports what truly became of it. When the answer does not tell
    /// (lost, cut short, ONGOING, a 5xx), the coordinator is asked: `submitted` or `succeed`
    /// is success; `aborting` or `failed` a [`SdkError::Failure`]; still `prepared` (or
    /// unknown), the submit is sent again (it is idempotent). If the coordinator cannot tell
    /// within the outcome wait, [`SdkError::OutcomeUnknown`].
    ///
    /// # Errors
    /// As above, or the coordinator's refusal.
    pub async fn submit_truthfully(&self, request: &GlobalRequest) -> Result<(), SdkError> {
        let first = match self.post("submit", request).await {
            Ok(_) => return Ok(()),
            Err(e) if !e.leaves_outcome_open() => return Err(e),
            Err(e) => e,
        };
        let gid = request.gid.as_str();
        let deadline = tokio::time::Instant::now() + self.outcome_wait;
        let mut last;
        let mut pause = Duration::from_millis(50);
        loop {
            match self.status(gid).await {
                Ok(Some(s)) if s == names::STATUS_SUBMITTED || s == names::STATUS_SUCCEED => {
                    return Ok(())
                }
                Ok(Some(s)) if s == names::STATUS_ABORTING || s == names::STATUS_FAILED => {
                    return Err(SdkError::Failure {
                        what: format!("submit of {gid}"),
                        message: format!("the transaction was rolled back ({s})"),
                    });
                }
                Ok(_) => match self.post("submit", request).await {
                    Ok(_) => return Ok(()),
                    Err(e) if !e.leaves_outcome_open() => return Err(e),
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(SdkError::OutcomeUnknown {
                    what: format!("submit of {gid}"),
                    last: format!("{first}; then: {last}"),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// The same client sending `Authorization: Bearer TOKEN` with every request to the
    /// coordinator (not to participants).
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The same client sending this W3C `traceparent` (the caller's current span) with every
    /// request, to the coordinator and to the Tries it calls: the coordinator carries its trace
    /// id on to every branch call and published message of the transaction. An invalid value
    /// is not sent.
    #[must_use]
    pub fn with_traceparent(mut self, traceparent: impl Into<String>) -> Self {
        let tp = traceparent.into();
        self.traceparent = settle_protocol::trace::is_valid(&tp).then_some(tp);
        self
    }

    /// The `traceparent` this client sends, if any.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// `request` with this client's `traceparent`, if it has one.
    pub fn traced(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.traceparent {
            Some(tp) => request.header(settle_protocol::trace::HEADER, tp),
            None => request,
        }
    }

    /// The API URL.
    pub fn api_url(&self) -> &str {
        &self.api
    }

    /// The HTTP client, for calling participants.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends a request for `route` and returns its status and body.
    async fn exchange(
        &self,
        route: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, String), SdkError> {
        let transport = |source| SdkError::Transport {
            what: route.to_owned(),
            source,
        };
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let request = self.traced(request);
        let response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(transport)?;
        Ok((status, body))
    }

    /// POSTs a JSON body to a coordinator route and checks the answer.
    ///
    /// # Errors
    /// See [`check_answer`].
    pub async fn post<B: Serialize + ?Sized>(
        &self,
        route: &str,
        body: &B,
    ) -> Result<String, SdkError> {
        let request = self.http.post(format!("{}/{route}", self.api)).json(body);
        let (status, body) = self.exchange(route, request).await?;
        classify(route, status, body)
    }

    async fn get(&self, route: &str, query: &[(&str, &str)]) -> Result<String, SdkError> {
        let request = self.http.get(format!("{}/{route}", self.api)).query(query);
        let (status, body) = self.exchange(route, request).await?;
        // A read's body is data, which may well contain the words FAILURE or ONGOING: only
        // the status tells success.
        if status == 200 {
            Ok(body)
        } else {
            Err(SdkError::Http {
                what: route.to_owned(),
                status,
                body,
            })
        }
    }

    /// Drives a global transaction whose branches the initiator calls itself (TCC, XA): opens
    /// it with `prepare`, runs `body`, then submits `submit`; aborts if `body` or the submit
    /// fails, unless the submit's outcome is unknown. Returns `body`'s value.
    ///
    /// # Errors
    /// The error of `body`, of the prepare or of the submit (after aborting).
    pub(crate) async fn drive_global<T>(
        &self,
        prepare: &GlobalRequest,
        submit: &GlobalRequest,
        body: impl std::future::Future<Output = Result<T, SdkError>>,
    ) -> Result<T, SdkError> {
        self.post("prepare", prepare).await?;
        let result = match body.await {
            Ok(value) => self.submit_truthfully(submit).await.map(|()| value),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            if matches!(e, SdkError::OutcomeUnknown { .. }) {
                // It may have committed: an abort now could race its submit. The caller must
                // find out (query) before doing anything again.
                tracing::warn!(gid = %submit.gid, error = %e, "submit outcome unknown; not aborting");
                return result;
            }
            if let Err(abort_error) = self.post("abort", submit).await {
                tracing::warn!(gid = %submit.gid, error = %e, abort_error = %abort_error, "abort after a failed global transaction did not go through; the coordinator rolls it back after its timeout");
            }
        }
        result
    }

    /// Calls a participant's operation the initiator makes itself (a TCC's Try, an XA
    /// branch's action): POST `url` with the branch's query `params` (`gid`, `trans_type`,
    /// `branch_id`, `op`) and `data` as the JSON body. Returns the answer's body.
    ///
    /// # Errors
    /// [`SdkError::Failure`] if it answered FAILURE; any other error of the call.
    pub async fn call_participant(
        &self,
        url: &str,
        params: [(&str, &str); 4],
        data: String,
    ) -> Result<String, SdkError> {
        let what = format!("{} of branch {}", params[3].1, params[2].1);
        let response = self
            .traced(self.http.post(url))
            .query(&params)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(data)
            .send()
            .await
            .map_err(|source| SdkError::Transport {
                what: what.clone(),
                source,
            })?;
        check_answer(&what, response).await
    }

    /// A new gid from the coordinator.
    ///
    /// # Errors
    /// The coordinator cannot be reached or answers badly.
    pub async fn new_gid(&self) -> Result<String, SdkError> {
        let body = self.get("newGid", &[]).await?;
        let answer: NewGidAnswer = serde_json::from_str(&body).map_err(|e| SdkError::Protocol {
            what: "newGid".into(),
            message: e.to_string(),
        })?;
        Ok(answer.gid)
    }

    /// The transaction with this gid and its branches.
    ///
    /// # Errors
    /// The coordinator cannot be reached or answers badly.
    pub async fn query(&self, gid: &str) -> Result<QueryAnswer, SdkError> {
        let body = self.get("query", &[("gid", gid)]).await?;
        serde_json::from_str(&body).map_err(|e| SdkError::Protocol {
            what: "query".into(),
            message: e.to_string(),
        })
    }

    /// The status of the transaction with this gid, or `None` if there is none.
    ///
    /// # Errors
    /// The coordinator cannot be reached or answers badly.
    pub async fn status(&self, gid: &str) -> Result<Option<String>, SdkError> {
        Ok(self.query(gid).await?.transaction.map(|t| t.status))
    }

    /// Polls until the transaction reaches `succeed` or `failed`, and returns that status.
    ///
    /// # Errors
    /// [`SdkError::Ongoing`] if it has not finished within `timeout`; a query error.
    pub async fn wait_final(&self, gid: &str, timeout: Duration) -> Result<String, SdkError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            if let Some(s) = self.status(gid).await? {
                if s == names::STATUS_SUCCEED || s == names::STATUS_FAILED {
                    return Ok(s);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SdkError::Ongoing {
                    what: format!("transaction {gid}"),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}
