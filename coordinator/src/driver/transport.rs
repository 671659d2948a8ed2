//! How the driver reaches participants: one request, one answer. [`HttpTransport`] is what
//! the coordinator uses; a simulation can hand the driver participants that live in the
//! same process instead.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::telemetry::error_chain;

/// One call to a participant.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Where.
    pub url: &'a str,
    /// Query parameters added to the URL.
    pub query: [(&'a str, &'a str); 4],
    /// The body (a POST); `None`: a GET.
    pub body: Option<&'a str>,
    /// Headers, besides `Content-Type: application/json`.
    pub headers: Vec<(&'a str, String)>,
    /// How long the answer may take.
    pub timeout: Duration,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The participant answered this status and body (the body's beginning, up to the
    /// transport's limit).
    Status(u16, String),
    /// No answer within the timeout.
    TimedOut,
    /// No answer: why (refused, reset, unreachable).
    Failed(String),
}

/// Sends requests to participants.
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` and resolves with its answer.
    fn send<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, Answer>;
}

/// Participants over HTTP, reading at most `max_answer_bytes` of an answer.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    http: reqwest::Client,
    max_answer_bytes: usize,
}

impl HttpTransport {
    /// Calls with `http`, reading at most `max_answer_bytes` of each answer.
    pub fn new(http: reqwest::Client, max_answer_bytes: usize) -> Self {
        Self {
            http,
            max_answer_bytes,
        }
    }

    /// Reads at most `max_answer_bytes` of an answer's body (an endless or huge answer must
    /// not exhaust the coordinator's memory), as text; what does not fit is left unread.
    async fn read_answer(&self, mut response: reqwest::Response) -> String {
        let max = self.max_answer_bytes;
        let mut body: Vec<u8> = Vec::new();
        while body.len() < max {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = max - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        String::from_utf8_lossy(&body).into_owned()
    }
}

impl Transport for HttpTransport {
    fn send<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, Answer> {
        async move {
            let mut builder = match request.body {
                Some(body) => self.http.post(request.url).body(body.to_owned()),
                None => self.http.get(request.url),
            };
            builder = builder
                .query(&request.query)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .timeout(request.timeout);
            for (name, value) in &request.headers {
                builder = builder.header(*name, value.as_str());
            }
            match builder.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    Answer::Status(status, self.read_answer(response).await)
                }
                Err(e) if e.is_timeout() => Answer::TimedOut,
                Err(e) => Answer::Failed(error_chain(&e)),
            }
        }
        .boxed()
    }
}
