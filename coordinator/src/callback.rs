//! Completion callbacks (a Settle extension): a transaction created with a `callback_url` has
//! its outcome posted there once it has finished, so that its initiator need not poll.
//!
//! The write that finishes a transaction also marks its callback due, in the same database
//! transaction, so no outcome is forgotten by an instance that dies. Every instance looks
//! for due callbacks every `interval`, claims each before posting it (instances sharing a
//! database post each once between them) and records the answer. A delivery that fails is
//! retried with backoff (1 s, doubling, at most a minute apart) for a day after the
//! transaction finished, then given up (the error stays visible in the store). Delivery is at
//! least once: an instance that dies between posting and recording leaves the callback to be
//! posted again, so receivers key on `gid`. The destination is checked against the
//! allowlist, as every branch URL is. None of this runs on the driver's path.
//!
//! The body is JSON: `{"gid":..,"trans_type":"tcc"|"msg","status":"succeed"|"failed",
//! "rollback_reason":..,"finish_time":..,"messages":{"sent":..,"pending":..,"dropped":..,
//! "dead":..},"coordinator":..}` (time in ms since the epoch); any 2xx answer takes it.
//! `messages` counts the transaction's outbox messages by what became of them: a transaction
//! that ended failed sends nothing more (its released messages not already on their way are
//! withdrawn, counted as dropped), so `failed` with `sent` 0 and `pending` 0 means nothing
//! went out.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::access::Allowlist;
use crate::alert::backoff_ms;
use crate::clock::Clock;
use crate::driver::transport::{Answer, Request, Transport};
use crate::store::{DueCallback, Store, StoreError};
use crate::telemetry::{error_chain, Metrics};

/// Most callbacks posted in one pass.
const PER_PASS: i64 = 100;
/// How long a delivery may take; a claimed callback is due again after twice this.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after its transaction finished a callback is given up, ms.
const GIVE_UP_AFTER_MS: i64 = 86_400_000;

/// Who posts callbacks, and how.
pub struct Notifier {
    /// The store shared by every instance.
    pub store: Store,
    /// Time.
    pub clock: Clock,
    /// How to reach the destinations.
    pub transport: Arc<dyn Transport>,
    /// Which destinations may be called.
    pub allowlist: Arc<Allowlist>,
    /// Counts deliveries.
    pub metrics: Arc<Metrics>,
    /// How often to look for due callbacks.
    pub interval: Duration,
    /// This instance, named in bodies.
    pub instance_id: String,
}

/// The body posted for `c`.
fn body(c: &DueCallback, instance_id: &str) -> String {
    serde_json::json!({
        "gid": c.gid,
        "trans_type": c.trans_type,
        "status": c.status,
        "rollback_reason": c.rollback_reason,
        "finish_time": c.finish_time,
        "messages": c.messages,
        "coordinator": instance_id,
    })
    .to_string()
}

impl Notifier {
    /// Runs passes every `interval` until shutdown.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        loop {
            if let Err(e) = this.pass().await {
                warn!(error = %error_chain(&e), "callback pass failed; trying again at the next");
            }
            tokio::select! {
                () = tokio::time::sleep(this.interval) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// One pass: claims the callbacks due now, posts them at once and records each answer.
    ///
    /// # Errors
    /// A store error; deliveries that fail are recorded, not returned.
    pub async fn pass(self: &Arc<Self>) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let claim_until = now + 2 * i64::try_from(DELIVERY_TIMEOUT.as_millis()).unwrap_or(0);
        let mut sending = JoinSet::new();
        for callback in self.store.due_callbacks(now, PER_PASS).await? {
            if !self.store.claim_callback(&callback, claim_until).await? {
                continue;
            }
            let this = self.clone();
            sending.spawn(async move {
                let outcome = this.deliver(&callback).await;
                (callback, outcome)
            });
        }
        while let Some(joined) = sending.join_next().await {
            let Ok((callback, outcome)) = joined else {
                continue;
            };
            let now = self.clock.now_ms();
            let (error, next, outcome_label) = match outcome {
                Ok(()) => (String::new(), None, "delivered"),
                Err(Failure::Refused(error)) => (error, None, "abandoned"),
                Err(Failure::Failed(error)) => {
                    if now - callback.finish_time >= GIVE_UP_AFTER_MS {
                        (error, None, "abandoned")
                    } else {
                        (error, Some(now + backoff_ms(callback.attempts)), "failed")
                    }
                }
            };
            self.metrics.callback_tried(outcome_label);
            match outcome_label {
                "delivered" => {
                    info!(gid = %callback.gid, status = %callback.status, "outcome posted to the callback");
                }
                "abandoned" => {
                    warn!(gid = %callback.gid, attempts = callback.attempts + 1, %error, "callback given up");
                }
                _ => {
                    warn!(gid = %callback.gid, attempts = callback.attempts + 1, %error, "callback did not take the outcome; trying again later");
                }
            }
            self.store
                .callback_tried(&callback, claim_until, now, &error, next)
                .await?;
        }
        Ok(())
    }

    /// Posts one outcome.
    async fn deliver(&self, c: &DueCallback) -> Result<(), Failure> {
        if let Err(refused) = self.allowlist.check_url(&c.url) {
            return Err(Failure::Refused(refused.to_string()));
        }
        let body = body(c, &self.instance_id);
        let answer = self
            .transport
            .send(Request {
                url: &c.url,
                query: [
                    ("gid", c.gid.as_str()),
                    ("trans_type", c.trans_type.as_str()),
                    ("status", c.status.as_str()),
                    ("op", "callback"),
                ],
                body: Some(&body),
                headers: Vec::new(),
                timeout: DELIVERY_TIMEOUT,
            })
            .await;
        match answer {
            Answer::Status(code, _) if (200..300).contains(&code) => Ok(()),
            Answer::Status(code, text) => {
                let mut excerpt: String = text.chars().take(200).collect();
                if excerpt.len() < text.len() {
                    excerpt.push('…');
                }
                Err(Failure::Failed(format!(
                    "the callback answered {code}: {excerpt}"
                )))
            }
            Answer::TimedOut => Err(Failure::Failed(format!(
                "no answer within {} s",
                DELIVERY_TIMEOUT.as_secs()
            ))),
            Answer::Failed(why) => Err(Failure::Failed(why)),
        }
    }
}

/// Why a delivery did not happen.
enum Failure {
    /// The destination is not allowed (any more): never to be tried again.
    Refused(String),
    /// Worth trying again.
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_names_the_transaction_and_its_outcome() {
        let c = DueCallback {
            gid: "order-1".into(),
            trans_type: "tcc".into(),
            status: "failed".into(),
            url: "http://127.0.0.1:1/done".into(),
            rollback_reason: "out of stock".into(),
            finish_time: 1_700_000_000_000,
            attempts: 0,
            due: 1_700_000_000_000,
            messages: crate::store::MessageCounts {
                sent: 1,
                dropped: 2,
                ..Default::default()
            },
        };
        let v: serde_json::Value = serde_json::from_str(&body(&c, "settle-a")).unwrap();
        assert_eq!(v["gid"], "order-1");
        assert_eq!(v["status"], "failed");
        assert_eq!(v["rollback_reason"], "out of stock");
        assert_eq!(v["finish_time"], 1_700_000_000_000_i64);
        assert_eq!(v["coordinator"], "settle-a");
        assert_eq!(
            v["messages"],
            serde_json::json!({"sent": 1, "pending": 0, "dropped": 2, "dead": 0})
        );
    }
}
