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
