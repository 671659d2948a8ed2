//! The dispatcher: delivers the outbox to brokers, in order per sharding key.
//!
//! Each pass claims, for every key it has room for, the key's run of deliverable messages
//! from its lowest not yet sent, plus due messages without a key, and hands them all to the
//! sink at once (which sends them in batches, one per queue). The broker's acknowledgements
//! are recorded through the orchestrator, all in one batched write: the messages are sent,
//! their steps done, and a transaction that waited only for them finishes. Then the pass
//! gives its keys back. Passes overlap: a new one starts while earlier ones publish, and never
//! takes a key that is out (the key is leased).
//!
//! A failed publish gives the key's first failed message back with a capped exponential
//! backoff and the key's later ones untouched; the key waits, other keys do not. A message
//! the broker refuses as such (empty, too large, malformed) `dead_letter_after` times is
//! dead-lettered: kept in the outbox as `dead`, shown on its transaction, counted, and out of
//! its key's way, until an operator redrives it. This is the one exception to per-key order. A claim is a
//! lease: if this instance dies, another one takes the key over when it runs out (the message
//! may then be published twice; consumers dedupe by its id, and order is kept).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::apply::{new_token, Orchestrator};
use crate::clock::Clock;
use crate::otlp::{new_span_id, Kind, Span};
use crate::store::{Failed, KeyRelease, OutboxClaim, OutboxRow, StoreError};
use crate::txn::outbox::after_publish_failure;
use crate::txn::retry::jitter;
use crate::txn::{SentMessage, NEVER};

/// Most messages of one key claimed in one pass.
const RUN_PER_KEY: i64 = 64;

/// Why a message was not published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What the broker or client said.
    pub error: String,
    /// The message itself was refused (empty, too large, malformed): publishing it again
    /// will fail again. Otherwise the failure is the moment's (broker down, timed out).
    pub permanent: bool,
}

impl Failure {
    /// What a fail point makes of a publish of `n` messages: each failed for the moment.
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    fn injected(point: &str, n: usize) -> Vec<Result<(), Failure>> {
        let failure = Self {
            error: format!("fail point {point}"),
            permanent: false,
        };
        vec![Err(failure); n]
    }
}

/// Where messages are published.
pub trait Sink: Send + Sync + 'static {
    /// Publishes `messages` (each key's in sequence order) and resolves with each one's
    /// result, once the broker answered. For every key, the messages acknowledged must be a
    /// prefix of its messages given: once one fails, the key's later ones are not published.
    fn publish<'a>(&'a self, messages: &'a [OutboxRow]) -> BoxFuture<'a, Vec<Result<(), Failure>>>;
}

/// Settings of the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// This instance's id.
    pub instance_id: String,
    /// How often to look for work when nothing wakes it.
    pub poll_interval: Duration,
    /// Lease on a claimed message; longer than a publish can take.
    pub lease: Duration,
    /// Most keys (and messages without a key) out at once.
    pub max_inflight: usize,
    /// Longest pause between attempts at one message, in seconds.
    pub retry_cap_s: i64,
    /// Permanent refusals after which a message is dead-lettered: kept aside, and its key
    /// moves on.
    pub dead_letter_after: i64,
    /// The clock.
    pub clock: Clock,
}

/// Delivers the outbox.
pub struct Dispatcher {
    apply: Orchestrator,
    sink: Arc<dyn Sink>,
    settings: DispatchSettings,
    wake: Arc<Notify>,
    slots: Arc<Semaphore>,
}

impl Dispatcher {
    /// A dispatcher publishing through `sink`, recording through `apply`, woken early by
    /// `wake`.
    pub fn new(
        apply: Orchestrator,
        sink: Arc<dyn Sink>,
        settings: DispatchSettings,
        wake: Arc<Notify>,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(settings.max_inflight.max(1)));
        Self {
            apply,
            sink,
            settings,
            wake,
            slots,
        }
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.settings.lease.as_millis()).unwrap_or(30_000)
    }

    /// Runs passes until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            match self.clone().pass().await {
                // More may be waiting behind what was just claimed.
                Ok(n) if n > 0 => {
                    if *shutdown.borrow() {
                        return;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %crate::telemetry::error_chain(&e), "delivery pass failed");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Claims what can be delivered now and starts delivering it. Returns how many messages
    /// were claimed.
    ///
    /// # Errors
    /// A database error.
    pub async fn pass(self: Arc<Self>) -> Result<usize, StoreError> {
        let Some((claim, permit)) = self.claim().await? else {
            return Ok(0);
        };
        let n = claim.rows.len();
        tokio::spawn(async move {
            self.deliver(claim).await;
            drop(permit);
            // The keys delivered may have more, and room is free again.
            self.wake.notify_one();
        });
        Ok(n)
    }

    /// One pass run by hand: claims what can be delivered now, publishes it and records the
    /// outcome before it returns. Returns how many messages were claimed.
    ///
    /// # Errors
    /// A database error.
    pub async fn pass_by_hand(&self) -> Result<usize, StoreError> {
        let Some((claim, _permit)) = self.claim().await? else {
            return Ok(0);
        };
        let n = claim.rows.len();
        self.deliver(claim).await;
        Ok(n)
    }

    /// Claims what can be delivered now, with the room it takes; `None` when there is
    /// nothing, or no room.
    async fn claim(&self) -> Result<Option<(OutboxClaim, OwnedSemaphorePermit)>, StoreError> {
        let free = self.slots.available_permits();
        if free == 0 {
            return Ok(None);
        }
        let now = self.settings.clock.now_ms();
        let owner = format!("{}/{}", self.settings.instance_id, new_token());
        let max_keys = i64::try_from(free).unwrap_or(1);
        let claim = self
            .apply
            .store()
            .claim_outbox(&owner, now, now + self.lease_ms(), max_keys, RUN_PER_KEY)
            .await?;
        if claim.rows.is_empty() {
            return Ok(None);
        }
        // Claimed and leased; nothing published.
        fail::fail_point!("delivery::after_claim", |_| Err(StoreError::injected(
            "delivery::after_claim"
        )));
        let keys = claim.rows.iter().map(key_of).collect::<HashSet<_>>().len();
        let permits = u32::try_from(keys.min(free)).unwrap_or(1);
        let Ok(permit) = self.slots.clone().try_acquire_many_owned(permits) else {
            // Another pass took the room meanwhile: give these back for the next pass.
            let ids: Vec<i64> = claim.rows.iter().map(|r| r.id).collect();
            self.apply.store().outbox_release(&owner, &ids).await?;
            return Ok(None);
        };
        Ok(Some((claim, permit)))
    }

    /// Hands `claimed` to the sink; the fail points around it make every message fail as a
    /// broker that cannot be reached would (before), or lose the acknowledgements of what
    /// was published (after).
    async fn publish(&self, claimed: &[OutboxRow]) -> Vec<Result<(), Failure>> {
        fail::fail_point!("delivery::before_publish", |_| Failure::injected(
            "delivery::before_publish",
            claimed.len()
        ));
        let results = self.sink.publish(claimed).await;
        fail::fail_point!("delivery::after_publish", |_| Failure::injected(
            "delivery::after_publish",
            claimed.len()
        ));
        results
    }

    /// Publishes what one pass claimed, records the outcome and gives the keys back.
    async fn deliver(&self, claim: OutboxClaim) {
        let OutboxClaim {
            rows: mut claimed,
            keys,
        } = claim;
        // Each publish is a span of the initiator's trace: a message carries its own span's
        // id on, so that its consumer's work hangs under it.
        let tracer = self.apply.metrics().tracer();
        let mut spans = Vec::new();
        for row in &mut claimed {
            let span_id = new_span_id();
            if tracer.is_on() {
                spans.push(
                    Span::start(
                        format!("publish {}", row.topic),
                        Kind::Producer,
                        &row.traceparent,
                        span_id,
                    )
                    .with("settle.gid", row.gid.as_str())
                    .with("messaging.destination.name", row.topic.as_str())
                    .with("messaging.message.id", row.message_id.as_str()),
                );
            }
            row.traceparent =
                settle_protocol::trace::child(&row.traceparent, span_id).unwrap_or_default();
        }
        let results = self.publish(&claimed).await;
        for (span, result) in spans.into_iter().zip(&results) {
            tracer.record(span.end(result.is_err()));
        }
        let mut sent: BTreeMap<&str, Vec<SentMessage>> = BTreeMap::new();
        let mut failed_keys: HashSet<String> = HashSet::new();
        let mut retry: Vec<(&OutboxRow, Failure)> = Vec::new();
        let mut untouched: Vec<i64> = Vec::new();
        for (row, result) in claimed.iter().zip(results) {
            let key = key_of(row);
            match result {
                Ok(()) if !failed_keys.contains(&key) => {
                    debug!(message_id = %row.message_id, key = %row.sharding_key, seq = ?row.seq, "delivered");
                    sent.entry(&row.gid).or_default().push(SentMessage {
                        id: row.id,
                        branch_id: row.branch_id.clone(),
                        sharding_key: row.sharding_key.clone(),
                        owner: row.owner.clone(),
                    });
                }
                Ok(()) => {
                    // Published after one of its key failed: the sink broke its promise.
                    warn!(message_id = %row.message_id, key = %row.sharding_key, "published after an earlier message of its key failed");
                    untouched.push(row.id);
                }
                Err(error) => {
                    if failed_keys.insert(key) {
                        retry.push((row, error));
                    } else {
                        untouched.push(row.id);
                    }
                }
            }
        }
        // One command per transaction; those of a wave meet in one batch. A transaction's
        // acknowledgement is recorded only once those of the earlier messages of each of its
        // keys were: if one cannot be, the later ones of its keys are not either, so that a
        // key's run goes out again from its first unrecorded message (5 6 5 6, never 5 6 5).
        // A key whose acknowledgement was not recorded is looked at again at once.
        let order: Vec<(&str, &str)> = claimed
            .iter()
            .filter(|r| sent.contains_key(r.gid.as_str()))
            .map(|r| (r.gid.as_str(), r.sharding_key.as_str()))
            .collect();
        let after = ack_dependencies(&order);
        let mut unrecorded: HashSet<String> = HashSet::new();
        let mut settled: HashMap<&str, bool> = HashMap::new();
        while settled.len() < sent.len() {
            let settled_before = settled.len();
            let mut wave = Vec::new();
            for (gid, messages) in &sent {
                if settled.contains_key(gid) {
                    continue;
                }
                let before = after.get(gid).map(|b| b.iter().map(|g| settled.get(g)));
                let before: Vec<Option<&bool>> = before.into_iter().flatten().collect();
                if before.iter().any(Option::is_none) {
                    continue;
                }
                if before.iter().any(|ok| ok == &Some(&false)) {
                    // An earlier message of one of its keys was not recorded.
                    settled.insert(gid, false);
                    unrecorded.extend(messages.iter().map(|m| m.sharding_key.clone()));
                    continue;
                }
                wave.push((*gid, messages));
            }
            if wave.is_empty() && settled.len() == settled_before {
                // The rest wait on each other (a redriven message put a transaction after
                // another on one key and before it on another): record them together.
                wave = sent
                    .iter()
                    .filter(|(gid, _)| !settled.contains_key(*gid))
                    .map(|(gid, messages)| (*gid, messages))
                    .collect();
            }
            let outcomes = futures_util::future::join_all(wave.iter().map(|(gid, messages)| {
                let (gid, n) = (*gid, messages.len());
                async move {
                    match self.apply.delivered(gid, (*messages).clone()).await {
                        Ok(finished) => {
                            if finished {
                                debug!(gid, "every message delivered; transaction finished");
                            }
                            true
                        }
                        Err(e) if e.is_lease_lost() => {
                            info!(gid, messages = n, "a claim ran out before its delivery was recorded; it will be published again");
                            false
                        }
                        Err(e) => {
                            warn!(gid, error = %crate::telemetry::error_chain(&e), "could not record a delivery; it may be published again");
                            false
                        }
                    }
                }
            }))
            .await;
            for ((gid, messages), ok) in wave.into_iter().zip(outcomes) {
                settled.insert(gid, ok);
                if !ok {
                    unrecorded.extend(messages.iter().map(|m| m.sharding_key.clone()));
                }
            }
        }
        let now = self.settings.clock.now_ms();
        for (row, failure) in retry {
            let decided = after_publish_failure(
                row.attempts,
                row.refusals,
                failure.permanent,
                self.settings.dead_letter_after,
                self.settings.retry_cap_s,
                jitter(&(row.message_id.as_str(), row.attempts)),
                now,
            );
            let (error, dead) = (&failure.error, decided.dead);
            if dead {
                warn!(message_id = %row.message_id, gid = %row.gid, key = %row.sharding_key, refusals = row.refusals + 1, error = %error, "the broker refuses this message; dead-lettered, its key moves on");
            } else {
                info!(message_id = %row.message_id, key = %row.sharding_key, attempts = row.attempts + 1, permanent = failure.permanent, error = %error, "delivery failed; will retry");
            }
            let outcome = Failed {
                next_attempt_time: decided.next_attempt_time,
                error,
                refused: failure.permanent,
                dead,
            };
            match self.apply.store().outbox_retry(row, &outcome).await {
                Ok(true) if dead => self.apply.metrics().dead_lettered(),
                Ok(_) => {}
                Err(e) => {
                    warn!(message_id = %row.message_id, error = %e, "could not record a failed delivery");
                }
            }
        }
        let Some(owner) = claimed.first().map(|r| r.owner.as_str()) else {
            return;
        };
        if let Err(e) = self.apply.store().outbox_release(owner, &untouched).await {
            warn!(error = %e, "could not give back messages not tried; their claims run out");
        }
        // The keys whose runs went out are given back: asleep when their run was all they
        // had, due at once when more may wait. A failed key was given back with its retry.
        let done: Vec<KeyRelease<'_>> = keys
            .iter()
            .filter(|k| !failed_keys.contains(&k.sharding_key))
            .map(|k| KeyRelease {
                sharding_key: &k.sharding_key,
                wake: k.wake,
                next_due: if k.complete && !unrecorded.contains(&k.sharding_key) {
                    NEVER
                } else {
                    0
                },
            })
            .collect();
        if let Err(e) = self.apply.store().outbox_release_keys(owner, &done).await {
            warn!(error = %e, "could not give back the keys delivered; their claims run out");
        }
    }
}

/// For each transaction among acknowledged messages, given as (transaction, sharding key)
/// in the order a claim delivered them (a key's messages in sequence order), the
/// transactions whose acknowledgements must be recorded before its own: those with an
/// earlier message of one of its keys.
fn ack_dependencies<'a>(order: &[(&'a str, &str)]) -> HashMap<&'a str, BTreeSet<&'a str>> {
    let mut last_of_key: HashMap<&str, &'a str> = HashMap::new();
    let mut after: HashMap<&'a str, BTreeSet<&'a str>> = HashMap::new();
    for (gid, key) in order {
        after.entry(gid).or_default();
        if key.is_empty() {
            continue;
        }
        if let Some(before) = last_of_key.insert(key, gid) {
            if before != *gid {
                after.entry(gid).or_default().insert(before);
            }
        }
    }
    after
}

/// What orders a message: its sharding key, or itself when it has none.
fn key_of(row: &OutboxRow) -> String {
    if row.sharding_key.is_empty() {
        format!("\u{0}{}", row.id)
    } else {
        row.sharding_key.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transactions_ack_waits_for_those_of_earlier_messages_of_its_keys() {
        // Key k: a then b then c; key j: b then d; e has no key; a again on k.
        let order = [
            ("a", "k"),
            ("b", "k"),
            ("b", "j"),
            ("c", "k"),
            ("d", "j"),
            ("e", ""),
        ];
        let after = ack_dependencies(&order);
        let of = |g: &str| after[g].iter().copied().collect::<Vec<_>>();
        assert!(of("a").is_empty());
        assert_eq!(of("b"), ["a"]);
        assert_eq!(of("c"), ["b"]);
        assert_eq!(of("d"), ["b"]);
        assert!(of("e").is_empty());
        let one = ack_dependencies(&[("a", "k"), ("a", "k")]);
        assert!(one["a"].is_empty(), "a transaction never waits for itself");
    }
}
