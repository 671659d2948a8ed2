//! What only a transactional message (msg) knows.
//!
//! Its steps are given at prepare (or at a submit that was never prepared) and go out once it
//! commits, with no confirm to wait for. A msg still prepared after `timeout_to_fail` is not
//! rolled back but checked back: its initiator says whether the local transaction committed.
//! A rolled-back msg has nothing to undo.

use settle_protocol::GlobalRequest;

use super::outbox::OutboxState;
use super::policy::{
    actions, due_by_timeout, staged, Due, Moment, Next, Order, Policy, Refusal, Stage, Subscribers,
};
use super::topic::topic_name;
use super::{BranchOp, BranchStatus, GlobalStatus, GlobalTxn, NewBranch, Op, TransType};

/// The delay a msg's `custom_data` asks for, in seconds: `{"delay": N}` with N a positive
/// integer. `None` when it asks for none (a delay that is not such a number is refused at the
/// API, see [`delay_problem`]).
pub fn delay_s(custom_data: &str) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_str(custom_data).ok()?;
    v.get("delay")?.as_i64().filter(|d| *d > 0)
}

/// What is wrong with the delay a msg's `custom_data` asks for, if anything.
pub fn delay_problem(custom_data: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(custom_data).ok()?;
    let d = v.get("delay")?;
    match d.as_i64() {
        Some(n) if (0..=MAX_DELAY_S).contains(&n) => None,
        _ => Some(format!(
            "custom_data delay must be a whole number of seconds from 0 to {MAX_DELAY_S}, got {d}"
        )),
    }
}

/// Longest delay of a msg, in seconds (30 days).
pub const MAX_DELAY_S: i64 = 30 * 86_400;

/// The msg policy.
#[derive(Debug, Clone, Copy)]
pub struct Msg;

const DELIVER: &[Stage] = &[Stage {
    op: Op::Action,
    order: Order::Given,
    releases_held: false,
}];

impl Policy for Msg {
    fn trans_type(&self) -> TransType {
        TransType::Msg
    }

    fn can_abort(&self) -> bool {
        true
    }

    fn check(&self, req: &GlobalRequest, at: Moment) -> Result<(), Refusal> {
        if let Some(problem) = delay_problem(&req.custom_data) {
            return Err(Refusal::new("invalid_option", problem));
        }
        if at == Moment::Prepare && req.query_prepared.is_empty() {
            return Err(Refusal::new(
                "invalid_url",
                "query_prepared is missing: a prepared msg must say where to check it back",
            ));
        }
        Ok(())
    }

    /// A msg's steps, step `i` as branch `0i` (op `action`); a step to `topic://NAME` becomes
    /// one branch per subscriber of the topic, `0i-01`, `0i-02`, ... (one subscriber keeps
    /// `0i`), each with the step's payload, as DTM expands it.
    fn steps(
        &self,
        req: &GlobalRequest,
        _at: Moment,
        subscribers: &Subscribers,
    ) -> Result<Vec<NewBranch>, Refusal> {
        if req.steps.is_empty() {
            return Err(Refusal::new(
                "invalid_steps",
                "a msg needs at least one step",
            ));
        }
        let mut out = Vec::with_capacity(req.steps.len());
        for step in actions("a msg", &req.steps, &req.payloads, "")? {
            let Some(topic) = topic_name(&step.url) else {
                out.push(step);
                continue;
            };
            let urls = subscribers.get(topic).map_or(&[][..], Vec::as_slice);
            if urls.is_empty() {
                return Err(Refusal::new(
                    "topic_not_found",
                    format!(
                        "topic not found: step {} goes to topic '{}', which has no subscriber",
                        step.branch_id,
                        topic.escape_default()
                    ),
                ));
            }
            for (j, url) in urls.iter().enumerate() {
                out.push(NewBranch {
                    branch_id: if urls.len() == 1 {
                        step.branch_id.clone()
                    } else {
                        format!("{}-{:02}", step.branch_id, j + 1)
                    },
                    op: Op::Action,
                    url: url.clone(),
                    data: step.data.clone(),
                });
            }
        }
        Ok(out)
    }

    fn steps_at_submit(&self) -> bool {
        false
    }

    fn outbox_at_commit(&self) -> OutboxState {
        OutboxState::Pending
    }

    /// DTM's delayed message: `custom_data` `{"delay": N}` defers its steps by N seconds.
    fn delay_ms(&self, txn: &GlobalTxn) -> i64 {
        delay_s(&txn.custom_data).map_or(0, |s| s.saturating_mul(1000))
    }

    fn on_timeout(&self, _txn: &GlobalTxn) -> Due {
        Due::CheckBack
    }

    /// A committed delayed msg waits for its delay, counted from its commit, however it
    /// was committed (its submit, or its check-back).
    fn on_due(&self, txn: &GlobalTxn, now: i64) -> Due {
        let delay = self.delay_ms(txn);
        if let (GlobalStatus::Submitted, Some(committed), true) =
            (txn.status, txn.submit_time, delay > 0)
        {
            let from = committed.saturating_add(delay);
            if now < from {
                return Due::NotYet(from);
            }
        }
        due_by_timeout(self, txn, now)
    }

    /// Steps in order, one at a time (all at once when `concurrent`); the subscribers of a
    /// topic step are called at once, so that one that is down does not keep the message
    /// from the others (DTM calls them one after the other and stops at the first error).
    fn next(&self, txn: &GlobalTxn, branches: &[BranchOp]) -> Next {
        if txn.status != GlobalStatus::Submitted {
            return Next::Finish;
        }
        match staged(txn, branches, DELIVER, |_| true) {
            Next::Call {
                ops,
                release_held,
                checkpoint,
            } if ops.len() == 1 => {
                let step = |b: &BranchOp| {
                    b.branch_id
                        .split_once('-')
                        .map_or(b.branch_id.clone(), |(s, _)| s.to_owned())
                };
                let first = step(&branches[ops[0]]);
                let fan_out: Vec<usize> = branches
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| {
                        b.op == Op::Action
                            && b.status == BranchStatus::Prepared
                            && b.branch_id.contains('-')
                            && step(b) == first
                    })
                    .map(|(i, _)| i)
                    .collect();
                Next::Call {
                    ops: if fan_out.is_empty() { ops } else { fan_out },
                    release_held,
                    checkpoint,
                }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::model::sample;

    #[test]
    fn a_msg_that_timed_out_is_checked_back() {
        let t = sample(TransType::Msg, GlobalStatus::Prepared);
        assert_eq!(Msg.on_due(&t, 2_000_000), Due::CheckBack);
    }

    #[test]
    fn a_committed_msg_delivers_its_steps_and_a_rolled_back_one_does_nothing() {
        let step = BranchOp::new(
            "g",
            NewBranch {
                branch_id: "01".into(),
                op: Op::Action,
                url: "rocketmq://T?key=k".into(),
                data: "{}".into(),
            },
            1,
        );
        let submitted = sample(TransType::Msg, GlobalStatus::Submitted);
        assert_eq!(
            Msg.next(&submitted, std::slice::from_ref(&step)),
            Next::Wait {
                release_held: false
            }
        );
        let aborting = sample(TransType::Msg, GlobalStatus::Aborting);
        assert_eq!(Msg.next(&aborting, &[step]), Next::Finish);
        assert_eq!(Msg.outbox_at_commit(), OutboxState::Pending);
    }

    fn request(actions: &[&str]) -> GlobalRequest {
        GlobalRequest {
            steps: actions
                .iter()
                .map(|a| [("action".to_owned(), (*a).to_owned())].into())
                .collect(),
            payloads: actions.iter().map(|_| "{}".to_owned()).collect(),
            ..GlobalRequest::new("g", "msg")
        }
    }

    #[test]
    fn a_topic_step_fans_out_to_every_subscriber() {
        let subscribers = Subscribers::from([
            (
                "two".to_owned(),
                vec!["http://a/1".to_owned(), "http://b/2".to_owned()],
            ),
            ("one".to_owned(), vec!["http://c/3".to_owned()]),
        ]);
        let ops = Msg
            .steps(
                &request(&["topic://two", "topic://one", "http://d/4"]),
                Moment::Prepare,
                &subscribers,
            )
            .unwrap();
        let ids: Vec<(&str, &str)> = ops
            .iter()
            .map(|o| (o.branch_id.as_str(), o.url.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                ("01-01", "http://a/1"),
                ("01-02", "http://b/2"),
                ("02", "http://c/3"),
                ("03", "http://d/4")
            ]
        );
        let why = Msg
            .steps(&request(&["topic://none"]), Moment::Prepare, &subscribers)
            .unwrap_err();
        assert!(why.message.starts_with("topic not found"), "{why:?}");
    }

    #[test]
    fn a_topics_subscribers_are_called_at_once_and_the_next_step_after_them() {
        let subscribers = Subscribers::from([(
            "two".to_owned(),
            vec!["http://a/1".to_owned(), "http://b/2".to_owned()],
        )]);
        let mut branches: Vec<BranchOp> = Msg
            .steps(
                &request(&["topic://two", "http://d/4"]),
                Moment::Submit,
                &subscribers,
            )
            .unwrap()
            .into_iter()
            .map(|b| BranchOp::new("g", b, 1))
            .collect();
        let t = sample(TransType::Msg, GlobalStatus::Submitted);
        let called = |b: &[BranchOp]| match Msg.next(&t, b) {
            Next::Call { ops, .. } => ops.iter().map(|i| b[*i].branch_id.clone()).collect(),
            other => vec![format!("{other:?}")],
        };
        assert_eq!(called(&branches), ["01-01", "01-02"]);
        branches[1].status = BranchStatus::Succeeded;
        assert_eq!(called(&branches), ["01-01"], "the one still down, alone");
        branches[0].status = BranchStatus::Succeeded;
        assert_eq!(called(&branches), ["02"]);
    }

    #[test]
    fn a_prepared_msg_says_where_to_check_it_back() {
        let req = request(&["http://a/1"]);
        assert!(Msg.check(&req, Moment::Prepare).is_err());
        assert!(Msg.check(&req, Moment::Submit).is_ok());
    }

    #[test]
    fn a_delay_is_read_from_custom_data_and_a_bad_one_is_named() {
        assert_eq!(delay_s(r#"{"delay": 5}"#), Some(5));
        assert_eq!(delay_s(r#"{"delay": 0}"#), None);
        assert_eq!(delay_s("not json"), None);
        assert_eq!(delay_s(r#"{"other": 1}"#), None);
        assert_eq!(delay_problem(r#"{"delay": 5}"#), None);
        assert!(delay_problem(r#"{"delay": -1}"#).is_some_and(|p| p.contains("got -1")));
        assert!(delay_problem(r#"{"delay": "5"}"#).is_some());
        assert!(delay_problem(r#"{"delay": 99999999}"#).is_some());
    }
}
