//! Topics, as DTM serves them: `subscribe`, `unsubscribe`, `DELETE topic/{name}`, and the
//! key-value reads `scanKV` and `queryKV`, with DTM's texts for what is refused. A msg step
//! `topic://NAME` goes to every subscriber the store holds when the msg is saved.
//!
//! Where DTM answers every refusal with 500, Settle answers what the refusal is: 400 for a
//! missing or bad topic or URL, 409 for a URL that subscribes already or a topic without
//! subscribers, 404 for what does not exist; the message is DTM's text. A subscriber URL is
//! checked like every URL the coordinator calls (scheme, length, the destinations
//! allowlist) when it subscribes, not when a message first goes to it.

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use settle_protocol::DtmResult;
use tracing::info;

use super::body::QueryParams;
use super::error::ApiError;
use super::{validate, AppState};
use crate::store::kv::{KvEntry, TopicChangeError};
use crate::txn::topic::{self, TopicError};

impl From<TopicError> for ApiError {
    fn from(e: TopicError) -> Self {
        let message = e.to_string();
        match e {
            TopicError::EmptyTopic | TopicError::EmptyUrl | TopicError::BadName(_) => {
                Self::bad("invalid_topic", message)
            }
            TopicError::Exists | TopicError::Empty => Self::Refused(message),
            TopicError::NoTopic | TopicError::NoUrl => Self::NotFound(message),
        }
    }
}

impl From<TopicChangeError> for ApiError {
    fn from(e: TopicChangeError) -> Self {
        match e {
            TopicChangeError::Refused(r) => r.into(),
            TopicChangeError::Store(s) => s.into(),
        }
    }
}

/// Query of `subscribe` and `unsubscribe`.
#[derive(Debug, Deserialize)]
pub struct SubscribeParams {
    #[serde(default)]
    topic: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    remark: String,
}

/// `GET subscribe?topic=&url=&remark=`: adds a subscriber to a topic, creating the topic.
///
/// # Errors
/// 400 for an empty or bad topic or URL, 403 for a URL the allowlist refuses, 409 if the URL
/// subscribes already.
pub async fn subscribe(
    State(state): State<AppState>,
    QueryParams(p): QueryParams<SubscribeParams>,
) -> Result<Json<DtmResult>, ApiError> {
    topic::check_name(&p.topic)?;
    if p.url.is_empty() {
        return Err(TopicError::EmptyUrl.into());
    }
    validate::url("url", &p.url)?;
    state.allowlist.check_url(&p.url)?;
    validate::text("remark", &p.remark, validate::MAX_REASON_LEN)?;
    let now = state.apply.clock().now_ms();
    state
        .store
        .change_topic(&p.topic, now, |list| {
            topic::subscribe(&p.topic, list, &p.url, &p.remark)
        })
        .await?;
    info!(topic = %p.topic, url = %p.url, "subscribed");
    Ok(Json(DtmResult::success()))
}

/// `GET unsubscribe?topic=&url=`: removes a subscriber from a topic.
///
/// # Errors
/// 400 for an empty topic or URL, 404 for an unknown topic or URL, 409 for a topic without
/// subscribers.
pub async fn unsubscribe(
    State(state): State<AppState>,
    QueryParams(p): QueryParams<SubscribeParams>,
) -> Result<Json<DtmResult>, ApiError> {
    if p.topic.is_empty() {
        return Err(TopicError::EmptyTopic.into());
    }
    if p.url.is_empty() {
        return Err(TopicError::EmptyUrl.into());
    }
    if state
        .store
        .kv_find(topic::CATEGORY, &p.topic)
        .await?
        .is_empty()
    {
        return Err(TopicError::NoTopic.into());
    }
    let now = state.apply.clock().now_ms();
    state
        .store
        .change_topic(&p.topic, now, |list| {
            topic::unsubscribe(&p.topic, list, &p.url)
        })
        .await?;
    info!(topic = %p.topic, url = %p.url, "unsubscribed");
    Ok(Json(DtmResult::success()))
}

/// `DELETE topic/{name}`: deletes a topic and its subscribers.
///
/// # Errors
/// 404 for an unknown topic.
pub async fn delete_topic(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<DtmResult>, ApiError> {
    if name.is_empty() {
        return Err(TopicError::EmptyTopic.into());
    }
    if !state.store.kv_delete(topic::CATEGORY, &name).await? {
        return Err(TopicError::NoTopic.into());
    }
    info!(topic = %name, "topic deleted");
    Ok(Json(DtmResult::success()))
}

/// Query of `scanKV`.
#[derive(Debug, Deserialize)]
pub struct ScanParams {
    #[serde(default)]
    cat: String,
    #[serde(default)]
    position: String,
    #[serde(default)]
    limit: Option<i64>,
}

/// Answer of `scanKV`.
#[derive(Debug, Serialize)]
pub struct ScanAnswer {
    kv: Vec<KvEntry>,
    next_position: String,
}

/// `GET scanKV?cat=&position=&limit=`: one page of a category's entries, newest first.
///
/// # Errors
/// 400 for a position this server did not return or a limit outside 1 to 1,000.
pub async fn scan_kv(
    State(state): State<AppState>,
    QueryParams(p): QueryParams<ScanParams>,
) -> Result<Json<ScanAnswer>, ApiError> {
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad(
            "invalid_query",
            format!("limit must be between 1 and 1000, got {limit}"),
        ));
    }
    let position = if p.position.is_empty() {
        None
    } else {
        Some(p.position.parse::<i64>().map_err(|_| {
            ApiError::bad(
                "invalid_query",
                format!(
                    "position '{}' is not one this server returned",
                    p.position.escape_default()
                ),
            )
        })?)
    };
    let (kv, next_position) = state.store.kv_scan(&p.cat, position, limit).await?;
    Ok(Json(ScanAnswer { kv, next_position }))
}

/// Query of `queryKV`.
#[derive(Debug, Deserialize)]
pub struct QueryKvParams {
    #[serde(default)]
    cat: String,
    #[serde(default)]
    key: String,
}

/// Answer of `queryKV`.
#[derive(Debug, Serialize)]
pub struct QueryKvAnswer {
    kv: Vec<KvEntry>,
}

/// `GET queryKV?cat=&key=`: the entries of a category (every one when empty) under a key
/// (every one when empty).
///
/// # Errors
/// A store failure.
pub async fn query_kv(
    State(state): State<AppState>,
    QueryParams(p): QueryParams<QueryKvParams>,
) -> Result<Json<QueryKvAnswer>, ApiError> {
    Ok(Json(QueryKvAnswer {
        kv: state.store.kv_find(&p.cat, &p.key).await?,
    }))
}
