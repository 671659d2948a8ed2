//! Step URLs: `http(s)://...` or `rocketmq://TOPIC?key=SHARDING_KEY&tag=TAG`.

use std::fmt;

/// Where a step is delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An HTTP endpoint, called with the step's payload.
    Http(String),
    /// A RocketMQ topic.
    RocketMq(RocketMqTarget),
}

/// A RocketMQ destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RocketMqTarget {
    /// Topic.
    pub topic: String,
    /// Sharding key: messages with the same key reach the broker in commit order, on one
    /// queue. Empty: no ordering promise.
    pub key: String,
    /// Tag, empty for none.
    pub tag: String,
}

/// Why a step URL is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetError(pub String);

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TargetError {}

/// Longest topic, as RocketMQ allows.
const MAX_TOPIC_LEN: usize = 127;
/// Longest sharding key or tag.
const MAX_KEY_LEN: usize = 128;

fn plain(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '%' | '|'))
}

impl Target {
    /// Parses a step URL.
    ///
    /// # Errors
    /// [`TargetError`] naming what is wrong: an unknown scheme, a RocketMQ URL without a
    /// topic or with an unknown parameter, a bad host.
    pub fn parse(url: &str) -> Result<Self, TargetError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| TargetError(format!("'{}' is not a URL: {e}", url.escape_default())))?;
        match parsed.scheme() {
            "http" | "https" => {
                if parsed.host_str().is_none_or(str::is_empty) {
                    return Err(TargetError(format!(
                        "'{}' has no host",
                        url.escape_default()
                    )));
                }
                Ok(Self::Http(url.to_owned()))
            }
            "rocketmq" => {
                let topic = parsed.host_str().unwrap_or_default().to_owned();
                if topic.is_empty() {
                    return Err(TargetError(format!(
                        "'{}' names no topic: use rocketmq://TOPIC?key=KEY&tag=TAG",
                        url.escape_default()
                    )));
                }
                if topic.len() > MAX_TOPIC_LEN || !plain(&topic) {
                    return Err(TargetError(format!(
                        "topic '{}' must be at most {MAX_TOPIC_LEN} characters of A-Z a-z 0-9 _ - % |",
                        topic.escape_default()
                    )));
                }
                if !matches!(parsed.path(), "" | "/") {
                    return Err(TargetError(format!(
                        "'{}' has a path; a RocketMQ target is rocketmq://TOPIC?key=KEY&tag=TAG",
                        url.escape_default()
                    )));
                }
                let (mut key, mut tag) = (String::new(), String::new());
                for (k, v) in parsed.query_pairs() {
                    let slot = match k.as_ref() {
                        "key" => &mut key,
                        "tag" => &mut tag,
                        other => {
                            return Err(TargetError(format!(
                                "'{}' has unknown parameter '{}': use key and tag",
                                url.escape_default(),
                                other.escape_default()
                            )));
                        }
                    };
                    if v.len() > MAX_KEY_LEN {
                        return Err(TargetError(format!(
                            "{k} of '{}' is longer than {MAX_KEY_LEN} bytes",
                            url.escape_default()
                        )));
                    }
                    *slot = v.into_owned();
                }
                if tag.contains("||") {
                    return Err(TargetError(format!(
                        "tag '{}' may not contain ||",
                        tag.escape_default()
                    )));
                }
                // RocketMQ keeps the topic's case; the URL parser lowers hosts.
                let topic = original_topic(url).unwrap_or(topic);
                Ok(Self::RocketMq(RocketMqTarget { topic, key, tag }))
            }
            other => Err(TargetError(format!(
                "'{}' has scheme '{other}'; steps go to http://, https:// or rocketmq://TOPIC",
                url.escape_default()
            ))),
        }
    }
}

/// Whether a step URL goes to a broker (through the outbox) rather than over HTTP. The
/// scheme is matched without regard to case, as URL schemes are.
pub fn is_broker(url: &str) -> bool {
    url.get(..ROCKETMQ_SCHEME.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(ROCKETMQ_SCHEME))
}

const ROCKETMQ_SCHEME: &str = "rocketmq://";

/// The topic as written in the URL (URL parsing lowercases host names).
fn original_topic(url: &str) -> Option<String> {
    let rest = url
        .get(ROCKETMQ_SCHEME.len()..)
        .filter(|_| is_broker(url))?;
    let end = rest.find(['?', '/', '#']).unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        Target::parse(url).unwrap_err().to_string()
    }

    #[test]
    fn http_urls_are_http_targets() {
        assert_eq!(
            Target::parse("http://127.0.0.1:8080/x").unwrap(),
            Target::Http("http://127.0.0.1:8080/x".into())
        );
        assert!(matches!(
            Target::parse("https://svc/x?a=1"),
            Ok(Target::Http(_))
        ));
    }

    #[test]
    fn rocketmq_urls_carry_topic_key_and_tag() {
        assert_eq!(
            Target::parse("rocketmq://OrderEvents?key=order-42&tag=paid").unwrap(),
            Target::RocketMq(RocketMqTarget {
                topic: "OrderEvents".into(),
                key: "order-42".into(),
                tag: "paid".into()
            })
        );
        assert_eq!(
            Target::parse("rocketmq://t").unwrap(),
            Target::RocketMq(RocketMqTarget {
                topic: "t".into(),
                key: String::new(),
                tag: String::new()
            })
        );
    }

    #[test]
    fn bad_step_urls_are_named() {
        assert!(err("rocketmq://?key=k").contains("names no topic"));
        assert!(err("rocketmq:///x").contains("names no topic"));
        assert!(err("ftp://h/x").contains("scheme 'ftp'"));
        assert!(err("kafka://t").contains("scheme 'kafka'"));
        assert!(err("rocketmq://t?partition=1").contains("unknown parameter 'partition'"));
        assert!(err("rocketmq://t/sub").contains("has a path"));
        assert!(err("nonsense").contains("is not a URL"));
    }
}
