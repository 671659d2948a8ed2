//! Topics: DTM's fan-out of a transactional message. A topic is a name with a list of
//! subscriber URLs, kept in the store's key-value table (category `topics`); a msg step whose
//! action is `topic://NAME` becomes one call per subscriber when the msg is saved.
//!
//! This file decides what a subscribe or unsubscribe does to a topic's list, with DTM's
//! error texts; the store keeps the list.

use serde::{Deserialize, Serialize};

/// The category of topics in the key-value table.
pub const CATEGORY: &str = "topics";

/// The scheme of a step that goes to a topic's subscribers.
pub const SCHEME: &str = "topic://";

/// Longest topic name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// One subscriber of a topic, as DTM stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscriber {
    /// Where the topic's messages are posted.
    pub url: String,
    /// What the subscriber is, for operators.
    #[serde(default)]
    pub remark: String,
}

/// Why a subscription change is refused (DTM's texts).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// No topic was named.
    #[error("empty topic")]
    EmptyTopic,
    /// No URL was given.
    #[error("empty url")]
    EmptyUrl,
    /// The topic name breaks the rules (a Settle check; DTM takes any name).
    #[error("topic '{0}' is not a topic name: at most 128 bytes of A-Z a-z 0-9 _ . : -")]
    BadName(String),
    /// The URL subscribes already.
    #[error("this url exists")]
    Exists,
    /// There is no such topic.
    #[error("no such a topic")]
    NoTopic,
    /// The topic has no subscriber.
    #[error("this topic is empty")]
    Empty,
    /// The URL does not subscribe to the topic.
    #[error("no such an url ")]
    NoUrl,
}

/// The topic a step URL names, if it is `topic://NAME`.
pub fn topic_name(url: &str) -> Option<&str> {
    url.strip_prefix(SCHEME)
}

/// Checks a topic name.
///
/// # Errors
/// [`TopicError::EmptyTopic`] or [`TopicError::BadName`].
pub fn check_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::EmptyTopic);
    }
    let plain = topic
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'));
    if topic.len() > MAX_NAME_LEN || !plain {
        return Err(TopicError::BadName(topic.escape_default().to_string()));
    }
    Ok(())
}

/// The list of `topic` (`None` when it does not exist) after subscribing `url`.
///
/// # Errors
/// An empty or bad topic or URL, or a URL that subscribes already.
pub fn subscribe(
    topic: &str,
    current: Option<Vec<Subscriber>>,
    url: &str,
    remark: &str,
) -> Result<Vec<Subscriber>, TopicError> {
    check_name(topic)?;
    if url.is_empty() {
        return Err(TopicError::EmptyUrl);
    }
    let mut list = current.unwrap_or_default();
    if list.iter().any(|s| s.url == url) {
        return Err(TopicError::Exists);
    }
    list.push(Subscriber {
        url: url.to_owned(),
        remark: remark.to_owned(),
    });
    Ok(list)
}

/// The list of `topic` (`None` when it does not exist) after unsubscribing `url`.
///
/// # Errors
/// An empty topic or URL, no such topic, an empty topic, or a URL that does not subscribe.
pub fn unsubscribe(
    topic: &str,
    current: Option<Vec<Subscriber>>,
    url: &str,
) -> Result<Vec<Subscriber>, TopicError> {
    if topic.is_empty() {
        return Err(TopicError::EmptyTopic);
    }
    if url.is_empty() {
        return Err(TopicError::EmptyUrl);
    }
    let mut list = current.ok_or(TopicError::NoTopic)?;
    if list.is_empty() {
        return Err(TopicError::Empty);
    }
    let before = list.len();
    list.retain(|s| s.url != url);
    if list.len() == before {
        return Err(TopicError::NoUrl);
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribing_adds_a_url_once() {
        let one = subscribe("orders", None, "http://a/1", "first").unwrap();
        assert_eq!(one.len(), 1);
        let two = subscribe("orders", Some(one.clone()), "http://b/2", "").unwrap();
        assert_eq!(two[1].url, "http://b/2");
        assert_eq!(
            subscribe("orders", Some(two), "http://a/1", ""),
            Err(TopicError::Exists)
        );
        assert_eq!(subscribe("", None, "u", ""), Err(TopicError::EmptyTopic));
        assert_eq!(subscribe("t", None, "", ""), Err(TopicError::EmptyUrl));
        assert!(matches!(
            subscribe("a/b", None, "u", ""),
            Err(TopicError::BadName(_))
        ));
    }

    #[test]
    fn unsubscribing_answers_dtms_errors() {
        let list = subscribe("t", None, "http://a/1", "").unwrap();
        assert_eq!(
            unsubscribe("t", None, "http://a/1"),
            Err(TopicError::NoTopic)
        );
        assert_eq!(
            unsubscribe("t", Some(list.clone()), "http://x"),
            Err(TopicError::NoUrl)
        );
        assert_eq!(TopicError::NoUrl.to_string(), "no such an url ");
        let empty = unsubscribe("t", Some(list), "http://a/1").unwrap();
        assert!(empty.is_empty());
        assert_eq!(
            unsubscribe("t", Some(empty), "http://a/1"),
            Err(TopicError::Empty)
        );
    }

    #[test]
    fn a_topic_step_names_its_topic() {
        assert_eq!(topic_name("topic://orders"), Some("orders"));
        assert_eq!(topic_name("http://a/b"), None);
    }
}
