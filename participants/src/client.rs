//! A client of the coordinator's DTM API.

use std::time::Duration;

use serde::Serialize;
use settle_protocol::answer::NewGidAnswer;
use settle_protocol::{names, QueryAnswer};

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
}

impl SdkError {
    /// Whether this is a FAILURE answer.
    pub fn is_failure(&self) -> bool {
        matches!(self, Self::Failure { .. })
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
#[derive(Debug, Clone)]
pub struct SettleClient {
    api: String,
    http: reqwest::Client,
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
