//! The sequence checker: consumes order events orderly and records every order whose
//! events arrive out of sequence.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use settle_rocketmq::{Client, Delivery, Handler, OrderlyConsumer};

use crate::OrderEvent;

/// What the checker saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Distinct events applied.
    pub events: u64,
    /// Redeliveries dropped by message id.
    pub duplicates: u64,
    /// Orders whose events arrived out of sequence, with what was expected and what came.
    pub violations: Vec<(i64, usize, usize)>,
    /// Next expected step per order.
    next: HashMap<i64, usize>,
    ids: HashSet<String>,
}

impl Seen {
    fn apply(&mut self, message_id: &str, event: &OrderEvent) {
        if !self.ids.insert(message_id.to_owned()) {
            self.duplicates += 1;
            return;
        }
        self.events += 1;
        let expected = self.next.entry(event.order).or_insert(0);
        if event.step != *expected {
            self.violations.push((event.order, *expected, event.step));
        }
        *expected = event.step + 1;
    }
}

/// A running checker.
pub struct Checker {
    seen: Arc<Mutex<Seen>>,
    consumer: OrderlyConsumer,
}

impl Checker {
    /// Starts checking `topic` as consumer group `group`.
    ///
    /// # Errors
    /// The consumer cannot start.
    pub async fn start(
        client: &Client,
        namesrv: &str,
        group: &str,
        topic: &str,
    ) -> Result<Self, settle_rocketmq::Error> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let state = seen.clone();
        let handler: Handler = Arc::new(move |d: Delivery| {
            let state = state.clone();
            async move {
                let event: OrderEvent = serde_json::from_slice(&d.body)
                    .map_err(|e| format!("bad event {}: {e}", d.message_id))?;
                state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .apply(&d.message_id, &event);
                Ok(())
            }
            .boxed()
        });
        let consumer = OrderlyConsumer::start(client, namesrv, group, topic, handler).await?;
        Ok(Self { seen, consumer })
    }

    /// What it saw so far.
    pub fn seen(&self) -> Seen {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Stops it.
    pub async fn shutdown(self) {
        self.consumer.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(order: i64, step: usize) -> OrderEvent {
        OrderEvent {
            order,
            state: String::new(),
            step,
            version: 0,
        }
    }

    #[test]
    fn duplicates_are_dropped_and_gaps_are_violations() {
        let mut s = Seen::default();
        s.apply("a", &ev(1, 0));
        s.apply("a", &ev(1, 0));
        s.apply("b", &ev(1, 1));
        s.apply("d", &ev(1, 3));
        assert_eq!((s.events, s.duplicates), (3, 1));
        assert_eq!(s.violations, vec![(1, 2, 3)]);
    }
}
