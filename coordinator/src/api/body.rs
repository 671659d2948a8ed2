//! Extracting JSON bodies and query strings with errors that name what is wrong, and
//! closing connections whose request body was left unread.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Frame, SizeHint};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON body; malformed JSON or a field of the wrong type is a 400 naming the problem, and
/// a body over the limit a 413.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge(format!("request body is too large: {}", e.body_text()))
                } else {
                    ApiError::bad(
                        "invalid_body",
                        format!("cannot read request body: {}", e.body_text()),
                    )
                }
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad(
                "invalid_json",
                "request body is empty: a JSON object is expected",
            ));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad("invalid_json", format!("invalid JSON body: {e}")))
    }
}

/// A query string; a missing or mistyped parameter is a 400 naming it.
pub struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded_from_str(query)
            .map(QueryParams)
            .map_err(|e| ApiError::bad("invalid_query", format!("invalid query string: {e}")))
    }
}

fn serde_urlencoded_from_str<T: DeserializeOwned>(query: &str) -> Result<T, String> {
    axum::extract::Query::<T>::try_from_uri(
        &format!("/?{query}")
            .parse()
            .map_err(|e: axum::http::uri::InvalidUri| e.to_string())?,
    )
    .map(|q| q.0)
    .map_err(|e| e.body_text())
}

/// Answers a request whose body was left unread (refused before it was read: too large,
/// unauthorized, a route that takes none) with `Connection: close`.
///
/// The server cannot keep such a connection: the unread bytes are still in it. Without the
/// header a keep-alive client would put the connection back in its pool and send its next
/// request into a socket the server is closing, and see a broken pipe instead of an answer.
pub async fn close_when_unread(request: Request, next: Next) -> Response {
    if request.body().is_end_stream() {
        // Nothing to read (a GET, an empty body): nothing can be left unread.
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let read = Arc::new(AtomicBool::new(false));
    let tracked = Tracked {
        inner: body,
        read: read.clone(),
    };
    let mut response = next
        .run(Request::from_parts(parts, Body::new(tracked)))
        .await;
    if !read.load(Ordering::Acquire) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A request body that notes when it has been read to its end.
struct Tracked {
    inner: Body,
    read: Arc<AtomicBool>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
