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

/// Topics the broker keeps for itself (RocketMQ's `TopicValidator`): publishing there is
/// refused or misdirected.
const SYSTEM_TOPICS: [&str; 12] = [
    "TBW102",
    "SCHEDULE_TOPIC_XXXX",
    "BenchmarkTest",
    "RMQ_SYS_TRANS_HALF_TOPIC",
    "RMQ_SYS_ROCKSDB_TRANS_HALF_TOPIC",
    "RMQ_SYS_TRACE_TOPIC",
    "RMQ_SYS_TRANS_OP_HALF_TOPIC",
    "RMQ_SYS_ROCKSDB_TRANS_OP_HALF_TOPIC",
    "TRANS_CHECK_MAX_TIME_TOPIC",
    "SELF_TEST_TOPIC",
    "OFFSET_MOVED_EVENT",
    "CHECKPOINT_TOPIC",
];
/// Prefixes of topics the broker makes for itself (system, retry and dead-letter topics),
/// refused whatever their case.
const SYSTEM_PREFIXES: [&str; 3] = ["rmq_sys_", "%retry%", "%dlq%"];

/// Why the broker would refuse or misdirect `topic`, if it would.
fn topic_problem(topic: &str) -> Option<String> {
    let lower = topic.to_ascii_lowercase();
    if let Some(prefix) = SYSTEM_PREFIXES.iter().find(|p| lower.starts_with(**p)) {
        return Some(format!(
            "topic '{}' starts with '{prefix}', which the broker keeps for its own topics",
            topic.escape_default()
        ));
    }
    if SYSTEM_TOPICS.contains(&topic) {
        return Some(format!(
            "topic '{}' is one of the broker's own topics",
            topic.escape_default()
        ));
    }
    None
}

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
                if !parsed.username().is_empty() || parsed.password().is_some() {
                    return Err(TargetError(format!(
                        "'{}' has a user name or password; a RocketMQ target is rocketmq://TOPIC?key=KEY&tag=TAG",
                        url.escape_default()
                    )));
                }
                if parsed.port().is_some() {
                    return Err(TargetError(format!(
                        "'{}' has a port; a RocketMQ target names a topic, not a broker (the name server is set with --rocketmq-namesrv)",
                        url.escape_default()
                    )));
                }
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
                    if v.ends_with(' ') || v.chars().any(char::is_control) {
                        return Err(TargetError(format!(
                            "{k} of '{}' ends with a space or holds a control character; MySQL compares keys ignoring trailing spaces, so such a key would not mean the same thing on every store",
                            url.escape_default()
                        )));
                    }
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
                // RocketMQ keeps the topic's case; the URL parser lowers hosts. What is
                // published is what was checked, in its original case.
                let topic = match original_topic(url) {
                    Some(written) if written.eq_ignore_ascii_case(&topic) => written,
                    _ => {
                        return Err(TargetError(format!(
                            "'{}' does not name its topic plainly: use rocketmq://TOPIC?key=KEY&tag=TAG",
                            url.escape_default()
                        )))
                    }
                };
                if let Some(problem) = topic_problem(&topic) {
                    return Err(TargetError(problem));
                }
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
    fn the_scheme_is_read_whatever_its_case_and_the_topic_keeps_its_own() {
        let url = "RocketMQ://OrderEvents?key=k1";
        assert!(is_broker(url));
        assert_eq!(
            Target::parse(url).unwrap(),
            Target::RocketMq(RocketMqTarget {
                topic: "OrderEvents".into(),
                key: "k1".into(),
                tag: String::new()
            })
        );
        let step = crate::txn::BranchOp::new(
            "g",
            crate::txn::NewBranch {
                branch_id: "01".into(),
                op: crate::txn::Op::Action,
                url: url.into(),
                data: "{}".into(),
            },
            1,
        );
        let out = crate::txn::OutboxMessage::from_branches(&[step]);
        assert_eq!(out.len(), 1, "one parser decides for routing too");
        assert_eq!(out[0].topic, "OrderEvents");
    }

    #[test]
    fn bad_step_urls_are_named() {
        assert!(err("rocketmq://?key=k").contains("names no topic"));
        assert!(err("rocketmq:///x").contains("names no topic"));
        assert!(err("ftp://h/x").contains("scheme 'ftp'"));
        assert!(err("kafka://t").contains("scheme 'kafka'"));
        assert!(err("rocketmq://t?partition=1").contains("unknown parameter 'partition'"));
        assert!(err("rocketmq://t/sub").contains("has a path"));
        assert!(err("rocketmq://user@t?key=k").contains("user name or password"));
        assert!(err("rocketmq://u:p@t?key=k").contains("user name or password"));
        assert!(err("rocketmq://t:9876?key=k").contains("has a port"));
        assert!(err("rocketmq://RMQ_SYS_TRANS_HALF_TOPIC?key=k").contains("keeps for its own"));
        assert!(err("rocketmq://rmq_sys_x?key=k").contains("keeps for its own"));
        assert!(err("rocketmq://%RETRY%group?key=k").contains("'%retry%'"));
        assert!(err("rocketmq://%DLQ%group?key=k").contains("'%dlq%'"));
        assert!(err("rocketmq://TBW102?key=k").contains("broker's own topics"));
        assert!(err("nonsense").contains("is not a URL"));
        assert!(err("rocketmq://t?key=order-1%20").contains("ends with a space"));
        assert!(err("rocketmq://t?key=a%09b").contains("control character"));
        assert!(err("rocketmq://t?key=k&tag=paid%20").contains("tag of"));
        assert!(
            Target::parse("rocketmq://t?key=a%20b").is_ok(),
            "a space inside is kept"
        );
    }
}
