//! What a committed transaction sends to brokers: its outbox messages and their states.

use super::target::Target;
use super::{BranchOp, Op};

/// Status of an outbox message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxState {
    /// Waiting for its transaction's confirms; holds back later messages of its key.
    Held,
    /// To deliver.
    Pending,
    /// Acknowledged by the broker.
    Sent,
    /// Never to be delivered: its transaction failed or was stopped. Holds nothing back.
    Dropped,
    /// Refused by the broker too many times; kept for an operator to redrive. Holds nothing
    /// back.
    Dead,
}

impl std::str::FromStr for OutboxState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::Held,
            Self::Pending,
            Self::Sent,
            Self::Dropped,
            Self::Dead,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| {
            format!(
                "unknown outbox status '{}': held, pending, sent, dropped or dead",
                s.escape_default()
            )
        })
    }
}

impl OutboxState {
    /// The stored code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Dropped => "dropped",
            Self::Dead => "dead",
        }
    }
}

/// What a failed publish decides for its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishFailed {
    /// When it is tried again, ms.
    pub next_attempt_time: i64,
    /// It is set aside as a dead letter (out of its key's way) instead.
    pub dead: bool,
}

/// Decides what a failed publish at `now` does to a message tried `attempts` times before,
/// refused by the broker for what it is `refusals` times before: `permanent` says whether
/// this failure is such a refusal (not the broker being down or slow). The next try comes
/// after a backoff from 1 s, doubling per attempt up to `retry_cap_s`, less up to a fifth
/// (`jitter`, in `[0, 1)`); a message refused `dead_letter_after` times in all is
/// dead-lettered, so that its key's later messages go on.
pub fn after_publish_failure(
    attempts: i64,
    refusals: i64,
    permanent: bool,
    dead_letter_after: i64,
    retry_cap_s: i64,
    jitter: f64,
    now: i64,
) -> PublishFailed {
    let delay = super::retry::retry_delay_ms(1, retry_cap_s, attempts, jitter);
    PublishFailed {
        next_attempt_time: now.saturating_add(delay),
        dead: permanent && refusals + 1 >= dead_letter_after,
    }
}

/// A message a dispatcher claimed, as it presents it when the broker acknowledged it: the
/// outbox row and the claim (the row is still this claim's only if nobody took it over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    /// Outbox row id.
    pub id: i64,
    /// Its step.
    pub branch_id: String,
    /// Its sharding key (empty for none): the key's next message may go now.
    pub sharding_key: String,
    /// Who claimed it.
    pub owner: String,
}

/// A committed step bound for a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// Its step.
    pub branch_id: String,
    /// Topic.
    pub topic: String,
    /// Tag.
    pub tag: String,
    /// Sharding key.
    pub sharding_key: String,
    /// Body.
    pub body: String,
}

impl OutboxMessage {
    /// The broker-bound messages among a transaction's steps (its `action` operations whose
    /// URL is a RocketMQ target), in step order.
    pub fn from_branches(branches: &[BranchOp]) -> Vec<Self> {
        branches
            .iter()
            .filter(|b| b.op == Op::Action)
            .filter_map(|b| match Target::parse(&b.url) {
                Ok(Target::RocketMq(t)) => Some(Self {
                    branch_id: b.branch_id.clone(),
                    topic: t.topic,
                    tag: t.tag,
                    sharding_key: t.key,
                    body: b.data.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// The sharding keys of a transaction's broker-bound messages (empty keys left out).
    pub fn keys_of(branches: &[BranchOp]) -> Vec<String> {
        let mut keys: Vec<String> = Self::from_branches(branches)
            .into_iter()
            .map(|m| m.sharding_key)
            .filter(|k| !k.is_empty())
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_message_is_dead_lettered_on_its_last_allowed_refusal_only() {
        let decide =
            |refusals, permanent| after_publish_failure(0, refusals, permanent, 3, 60, 0.0, 1_000);
        assert!(!decide(0, true).dead);
        assert!(!decide(1, true).dead);
        assert!(decide(2, true).dead, "the third refusal");
        assert!(
            !decide(9, false).dead,
            "a broker that is down never dead-letters"
        );
    }

    #[test]
    fn a_failed_publish_backs_off_from_a_second_up_to_the_cap() {
        let next = |attempts| {
            after_publish_failure(attempts, 0, false, 3, 8, 0.0, 1_000).next_attempt_time
        };
        assert_eq!(next(0), 2_000);
        assert_eq!(next(2), 5_000);
        assert_eq!(next(10), 9_000);
    }
}
