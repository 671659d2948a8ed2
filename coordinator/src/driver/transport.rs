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
    /// transport's limit), whole.
    Status(u16, String),
    /// No answer within the timeout.
    TimedOut,
    /// No usable answer: why (refused, reset, unreachable, cut short).
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
    ///
    /// # Errors
    /// Why the answer broke off before its end or the limit: a broken answer is no
    /// outcome, whatever its status said.
    async fn read_answer(&self, mut response: reqwest::Response) -> Result<String, String> {
        let max = self.max_answer_bytes;
        let mut body: Vec<u8> = Vec::new();
        while body.len() < max {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = max - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(format!(
                        "the answer was cut short after {} bytes: {}",
                        body.len(),
                        error_chain(&e)
                    ))
                }
            }
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
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
                    match self.read_answer(response).await {
                        Ok(body) => Answer::Status(status, body),
                        Err(why) => Answer::Failed(format!("HTTP {status}, then {why}")),
                    }
                }
                Err(e) if e.is_timeout() => Answer::TimedOut,
                Err(e) => Answer::Failed(error_chain(&e)),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on 127.0.0.1 that answers one request with `answer` and closes.
    async fn answering(answer: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("has an address");
        tokio::spawn(async move {
            if let Ok((mut tcp, _)) = listener.accept().await {
                let mut request = [0_u8; 4096];
                let _ = tcp.read(&mut request).await;
                let _ = tcp.write_all(answer.as_bytes()).await;
                let _ = tcp.shutdown().await;
            }
        });
        format!("http://{addr}/confirm")
    }

    async fn send(url: &str) -> Answer {
        let transport = HttpTransport::new(reqwest::Client::new(), 64 * 1024);
        transport
            .send(Request {
                url,
                query: [
                    ("gid", "g"),
                    ("trans_type", "tcc"),
                    ("branch_id", "01"),
                    ("op", "confirm"),
                ],
                body: None,
                headers: Vec::new(),
                timeout: Duration::from_secs(5),
            })
            .await
    }

    #[tokio::test]
    async fn an_answer_cut_short_is_a_failure_not_its_status() {
        let url =
            answering("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"dtm_result\":\"SUC").await;
        match send(&url).await {
            Answer::Failed(why) => assert!(why.contains("cut short"), "{why}"),
            other => panic!("a partial answer taken as {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_whole_answer_is_its_status_and_body() {
        let url =
            answering("HTTP/1.1 200 OK\r\nContent-Length: 24\r\n\r\n{\"dtm_result\":\"SUCCESS\"}")
                .await;
        assert_eq!(
            send(&url).await,
            Answer::Status(200, r#"{"dtm_result":"SUCCESS"}"#.into())
        );
    }
}
