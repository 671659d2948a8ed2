//! What only a saga knows.
//!
//! A saga is created by its `submit` alone, with its steps: each `{"action": URL,
//! "compensate": URL}` and one payload (or a `data` field in the step). Step `i` (0-based)
//! becomes branch `%02d` of `i + 1` with two operations, `compensate` then `action`, as DTM
//! stores them.
//!
//! **Forward.** Not concurrent, action `i` runs once action `i - 1` succeeded. Concurrent
//! (`custom_data` `{"orders": {"2": [0, 1]}, "concurrent": true}`, or the `concurrent`
//! option), every action runs once the steps `orders` lists for it succeeded, all at once
//! when several can. An action answering FAILURE (or 409) fails for good and the saga turns
//! to compensation; any other answer but success is retried. Before a later step is called,
//! what the round has done is made durable, so that the store always knows which actions
//! may have run.
//!
//! **Compensation.** When the saga rolls back (an action failed, `timeout_to_fail` passed,
//! or more than `retry_limit` rounds in a row failed), every action that may have run
//! without answering (one whose predecessors all succeeded) is marked failed, and a
//! compensate runs for every step whose action is not still `prepared`: last step first, a
//! step's compensate once the steps after it (or, with `orders`, the steps that depend on it)
//! are rolled back. A compensate is never failed for good: it is retried until it succeeds.
//!
//! **Messages.** A saga may carry messages (a Settle extension, `messages` and
//! `message_payloads`): committed held with the saga, let out once every action succeeded,
//! dropped if it fails.

use std::collections::BTreeMap;

use settle_protocol::{BranchOutcome, GlobalRequest};

use super::branch::BranchStep;
use super::outbox::OutboxState;
use super::policy::{
    held_messages, required_url, staged, Limit, Moment, Next, Policy, Refusal, Subscribers,
    DELIVER_HELD,
};
use super::{BranchOp, BranchStatus, Decision, GlobalStatus, GlobalTxn, NewBranch, Op, TransType};

/// The saga policy.
#[derive(Debug, Clone, Copy)]
pub struct Saga;

/// What a saga's `custom_data` says, as DTM's clients write it.
#[derive(Debug, Default, serde::Deserialize)]
struct Custom {
    #[serde(default)]
    orders: BTreeMap<String, Vec<i64>>,
    #[serde(default)]
    concurrent: bool,
}

/// The order of a saga's steps: which steps each one runs after.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    concurrent: bool,
    /// The steps each step runs after.
    after: Vec<Vec<usize>>,
}

impl Shape {
    /// The shape of a saga of `steps` steps with `custom_data` and the `concurrent` option.
    ///
    /// # Errors
    /// What is wrong with `custom_data`.
    fn read(steps: usize, custom_data: &str, concurrent: bool) -> Result<Self, String> {
        let custom: Custom = if custom_data.trim().is_empty() {
            Custom::default()
        } else {
            serde_json::from_str(custom_data).map_err(|e| {
                format!(
                    "custom_data of a saga must be JSON such as {{\"orders\": {{\"2\": [0, 1]}}, \"concurrent\": true}}: {e}"
                )
            })?
        };
        let concurrent = concurrent || custom.concurrent;
        let mut after: Vec<Vec<usize>> = (0..steps)
            .map(|i| {
                if concurrent || i == 0 {
                    vec![]
                } else {
                    vec![i - 1]
                }
            })
            .collect();
        for (step, before) in &custom.orders {
            let i = step
                .parse::<usize>()
                .ok()
                .filter(|i| *i < steps)
                .ok_or_else(|| {
                    format!(
                        "custom_data orders names step '{}'; steps are numbered 0 to {}",
                        step.escape_default(),
                        steps.saturating_sub(1)
                    )
                })?;
            for b in before {
                let b = usize::try_from(*b)
                    .ok()
                    .filter(|b| *b < i)
                    .ok_or_else(|| {
                        format!("custom_data orders: step {i} may only run after steps before it (0 to {}), not after {b}", i.saturating_sub(1))
                    })?;
                if !after[i].contains(&b) {
                    after[i].push(b);
                }
            }
        }
        Ok(Self { concurrent, after })
    }

    /// The shape of a stored saga (whose `custom_data` was checked when it was submitted).
    fn of(txn: &GlobalTxn) -> Self {
        Self::read(txn.steps.len(), &txn.custom_data, txn.options.concurrent).unwrap_or_else(|_| {
            Self {
                concurrent: false,
                after: (0..txn.steps.len())
                    .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
                    .collect(),
            }
        })
    }

    /// Whether step `j` runs after step `i`.
    fn depends(&self, j: usize, i: usize) -> bool {
        self.after.get(j).is_some_and(|a| a.contains(&i))
    }
}

/// Step `i`'s branch id.
fn branch_id(i: usize) -> String {
    format!("{:02}", i + 1)
}

/// The saga step an operation belongs to (`None` for a message the saga carries).
fn step_of(b: &BranchOp) -> Option<usize> {
    if !matches!(b.op, Op::Action | Op::Compensate) {
        return None;
    }
    b.branch_id
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_sub(1))
}

/// Where each step's action and compensate are among `branches`.
struct Ops {
    action: Vec<Option<usize>>,
    compensate: Vec<Option<usize>>,
}

impl Ops {
    fn of(steps: usize, branches: &[BranchOp]) -> Self {
        let mut ops = Self {
            action: vec![None; steps],
            compensate: vec![None; steps],
        };
        for (at, b) in branches.iter().enumerate() {
            let Some(i) = step_of(b).filter(|i| *i < steps) else {
                continue;
            };
            match b.op {
                Op::Action => ops.action[i] = Some(at),
                _ => ops.compensate[i] = Some(at),
            }
        }
        ops
    }
}

fn status(branches: &[BranchOp], at: Option<usize>) -> BranchStatus {
    at.map_or(BranchStatus::Succeeded, |at| branches[at].status)
}

/// The actions (indexes into `branches`) that may run now: prepared, after steps that all
/// succeeded.
fn runnable(shape: &Shape, ops: &Ops, branches: &[BranchOp]) -> Vec<usize> {
    (0..shape.after.len())
        .filter(|i| status(branches, ops.action[*i]) == BranchStatus::Prepared)
        .filter(|i| {
            shape.after[*i]
                .iter()
                .all(|b| status(branches, ops.action[*b]) == BranchStatus::Succeeded)
        })
        .filter_map(|i| ops.action[i])
        .collect()
}

impl Policy for Saga {
    fn trans_type(&self) -> TransType {
        TransType::Saga
    }

    fn can_prepare(&self) -> bool {
        false
    }

    fn can_abort(&self) -> bool {
        false
    }

    /// A saga has no timeout unless it sets one.
    fn default_timeout_s(&self, _server_default_s: i64) -> i64 {
        0
    }

    fn check(&self, req: &GlobalRequest, _at: Moment) -> Result<(), Refusal> {
        Shape::read(req.steps.len(), &req.custom_data, req.concurrent)
            .map(|_| ())
            .map_err(|e| Refusal::new("invalid_option", e))
    }

    fn steps(
        &self,
        req: &GlobalRequest,
        _at: Moment,
        _subscribers: &Subscribers,
    ) -> Result<Vec<NewBranch>, Refusal> {
        if req.steps.is_empty() {
            return Err(Refusal::new(
                "invalid_steps",
                "a saga needs at least one step",
            ));
        }
        if !req.payloads.is_empty() && req.payloads.len() != req.steps.len() {
            return Err(Refusal::new(
                "invalid_steps",
                format!(
                    "a saga needs one payload per step (or none, with each step's data): {} steps, {} payloads",
                    req.steps.len(),
                    req.payloads.len()
                ),
            ));
        }
        let mut out = Vec::with_capacity(req.steps.len() * 2 + req.messages.len());
        for (i, step) in req.steps.iter().enumerate() {
            if let Some(other) = step
                .keys()
                .find(|k| !matches!(k.as_str(), "action" | "compensate" | "data"))
            {
                return Err(Refusal::new(
                    "invalid_steps",
                    format!(
                        "step {} of a saga has '{}'; a saga step has an action, a compensate and maybe data",
                        i + 1,
                        other.escape_default()
                    ),
                ));
            }
            let data = match req.payloads.get(i) {
                Some(payload) => payload.clone(),
                None => step.get("data").cloned().unwrap_or_default(),
            };
            for (key, op) in [("compensate", Op::Compensate), ("action", Op::Action)] {
                let url = required_url(step, key, i, "a saga")?;
                if super::target::is_broker(&url) {
                    return Err(Refusal::new(
                        "invalid_steps",
                        format!(
                            "the {key} of step {} of a saga goes to a broker; saga steps are called over HTTP (a message the saga sends once it succeeds goes in messages)",
                            i + 1
                        ),
                    ));
                }
                out.push(NewBranch {
                    branch_id: branch_id(i),
                    op,
                    url,
                    data: data.clone(),
                });
            }
        }
        out.extend(held_messages(
            "a saga's messages",
            &req.messages,
            &req.message_payloads,
        )?);
        Ok(out)
    }

    fn steps_at_submit(&self) -> bool {
        false
    }

    fn outbox_at_commit(&self) -> OutboxState {
        OutboxState::Held
    }

    /// A running saga's `timeout_to_fail`, counted from its submit (its creation).
    fn deadline(&self, txn: &GlobalTxn) -> Option<i64> {
        (txn.status == GlobalStatus::Submitted && txn.options.timeout_to_fail > 0)
            .then(|| super::timeout::timeout_deadline(txn.create_time, txn.options.timeout_to_fail))
    }

    fn next(&self, txn: &GlobalTxn, branches: &[BranchOp]) -> Next {
        let shape = Shape::of(txn);
        let ops = Ops::of(shape.after.len(), branches);
        let steps = 0..shape.after.len();
        match txn.status {
            GlobalStatus::Submitted => {
                let actions = || steps.clone().map(|i| status(branches, ops.action[i]));
                if actions().any(|s| s == BranchStatus::Failed) {
                    return Next::RollBack;
                }
                let mut run = runnable(&shape, &ops, branches);
                if !run.is_empty() {
                    if !shape.concurrent {
                        run.truncate(1);
                    }
                    return Next::Call {
                        ops: run,
                        release_held: false,
                        checkpoint: true,
                    };
                }
                if actions().all(|s| s == BranchStatus::Succeeded) {
                    return staged(txn, branches, &[DELIVER_HELD], |b| step_of(b).is_none());
                }
                // Every prepared action waits for one that is neither done nor runnable,
                // which the order of steps rules out; nothing can complete the saga.
                Next::RollBack
            }
            GlobalStatus::Aborting => {
                let undone = |i: usize| {
                    status(branches, ops.compensate[i]) == BranchStatus::Succeeded
                        || status(branches, ops.action[i]) == BranchStatus::Prepared
                };
                let mut ready: Vec<usize> = steps
                    .clone()
                    .rev()
                    .filter(|i| !undone(*i))
                    .filter(|i| {
                        let later = |j: &usize| {
                            if shape.concurrent {
                                shape.depends(*j, *i)
                            } else {
                                *j == *i + 1
                            }
                        };
                        steps.clone().filter(later).all(undone)
                    })
                    .filter_map(|i| ops.compensate[i])
                    .collect();
                if ready.is_empty() {
                    return Next::Finish;
                }
                if !shape.concurrent {
                    ready.truncate(1);
                }
                Next::Call {
                    ops: ready,
                    release_held: false,
                    checkpoint: false,
                }
            }
            _ => Next::Finish,
        }
    }

    /// An action answering FAILURE fails for good (the saga compensates); a compensate or a
    /// message is retried until it succeeds.
    fn after_call(
        &self,
        _txn: &GlobalTxn,
        branch: &BranchOp,
        outcome: BranchOutcome,
    ) -> BranchStep {
        if branch.op == Op::Action
            && step_of(branch).is_some()
            && branch.status == BranchStatus::Prepared
            && outcome == BranchOutcome::Failure
        {
            return BranchStep::Done(Decision::Apply(BranchStatus::Failed));
        }
        super::branch::after_call(branch.status, outcome)
    }

    /// Actions that may have run without answering: prepared, after steps that all
    /// succeeded (a round calls a later step only once those successes are durable).
    fn on_roll_back(&self, txn: &GlobalTxn, branches: &[BranchOp]) -> Vec<usize> {
        let shape = Shape::of(txn);
        runnable(&shape, &Ops::of(shape.after.len(), branches), branches)
    }

    /// Past `retry_limit` failed rounds in a row (DTM's retries), a running saga compensates;
    /// a compensation never stops.
    fn after_failures(&self, txn: &GlobalTxn, failures: i64) -> Limit {
        let limit = txn.options.retry_limit;
        if txn.status == GlobalStatus::Submitted && limit > 0 && failures > limit {
            Limit::RollBack(format!(
                "RetryCount is greater than RetryLimit, RetryLimit: {limit}"
            ))
        } else {
            Limit::Retry
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::model::sample;

    fn request(steps: usize) -> GlobalRequest {
        GlobalRequest {
            steps: (0..steps)
                .map(|i| {
                    BTreeMap::from([
                        ("action".to_owned(), format!("http://s/a{i}")),
                        ("compensate".to_owned(), format!("http://s/c{i}")),
                    ])
                })
                .collect(),
            payloads: (0..steps).map(|i| format!("{{\"n\":{i}}}")).collect(),
            ..GlobalRequest::new("g", "saga")
        }
    }

    /// A saga of `steps` steps with `custom_data`, its branches as stored.
    fn saga(steps: usize, custom_data: &str) -> (GlobalTxn, Vec<BranchOp>) {
        let req = request(steps);
        let mut t = sample(TransType::Saga, GlobalStatus::Submitted);
        t.steps = req.steps.clone();
        t.custom_data = custom_data.to_owned();
        let ops = Saga
            .steps(&req, Moment::Submit, &Subscribers::new())
            .unwrap()
            .into_iter()
            .map(|b| BranchOp::new("g", b, 1))
            .collect();
        (t, ops)
    }

    /// The branch ids and ops of the operations `next` calls.
    fn calls(t: &GlobalTxn, b: &[BranchOp]) -> Vec<String> {
        match Saga.next(t, b) {
            Next::Call { ops, .. } => ops
                .into_iter()
                .map(|i| format!("{}{}", b[i].op, b[i].branch_id))
                .collect(),
            other => vec![format!("{other:?}")],
        }
    }

    fn set(b: &mut [BranchOp], id: &str, op: Op, s: BranchStatus) {
        if let Some(x) = b.iter_mut().find(|x| x.branch_id == id && x.op == op) {
            x.status = s;
        }
    }

    use BranchStatus::{Failed, Succeeded};
    use Op::{Action, Compensate};

    #[test]
    fn steps_become_a_compensate_and_an_action_each_in_dtms_order() {
        let (_, b) = saga(2, "");
        let ops: Vec<(String, Op, &str)> = b
            .iter()
            .map(|o| (o.branch_id.clone(), o.op, o.url.as_str()))
            .collect();
        assert_eq!(
            ops,
            [
                ("01".to_owned(), Compensate, "http://s/c0"),
                ("01".to_owned(), Action, "http://s/a0"),
                ("02".to_owned(), Compensate, "http://s/c1"),
                ("02".to_owned(), Action, "http://s/a1"),
            ]
        );
        assert_eq!(b[3].data, r#"{"n":1}"#);
    }

    #[test]
    fn a_chain_runs_one_action_after_the_other_then_finishes() {
        let (t, mut b) = saga(3, "");
        assert_eq!(calls(&t, &b), ["action01"]);
        set(&mut b, "01", Action, Succeeded);
        assert_eq!(calls(&t, &b), ["action02"]);
        assert!(matches!(
            Saga.next(&t, &b),
            Next::Call {
                checkpoint: true,
                ..
            }
        ));
        set(&mut b, "02", Action, Succeeded);
        set(&mut b, "03", Action, Succeeded);
        assert_eq!(Saga.next(&t, &b), Next::Finish);
    }

    #[test]
    fn a_concurrent_saga_runs_every_step_whose_predecessors_succeeded() {
        let (t, mut b) = saga(
            4,
            r#"{"orders": {"2": [0, 1], "3": [2]}, "concurrent": true}"#,
        );
        assert_eq!(calls(&t, &b), ["action01", "action02"]);
        set(&mut b, "01", Action, Succeeded);
        assert!(calls(&t, &b) == ["action02"]);
        set(&mut b, "02", Action, Succeeded);
        assert_eq!(calls(&t, &b), ["action03"]);
        let (t, _) = saga(3, r#"{"concurrent": true}"#);
        let (_, b) = saga(3, "");
        assert_eq!(calls(&t, &b), ["action01", "action02", "action03"]);
        let mut option = sample(TransType::Saga, GlobalStatus::Submitted);
        option.steps = t.steps.clone();
        option.options.concurrent = true;
        assert_eq!(calls(&option, &b).len(), 3, "the concurrent option too");
    }

    #[test]
    fn a_failed_action_turns_the_saga_to_compensation() {
        let (t, b) = saga(2, "");
        let failed = Saga.after_call(&t, &b[1], BranchOutcome::Failure);
        assert_eq!(failed, BranchStep::Done(Decision::Apply(Failed)));
        let compensate = Saga.after_call(&t, &b[0], BranchOutcome::Failure);
        assert_eq!(compensate, BranchStep::Retry { ongoing: false });
        let mut b = b;
        set(&mut b, "01", Action, Succeeded);
        set(&mut b, "02", Action, Failed);
        assert_eq!(Saga.next(&t, &b), Next::RollBack);
    }

    #[test]
    fn a_chain_compensates_the_failed_step_and_those_before_it_last_first() {
        let (mut t, mut b) = saga(4, "");
        t.status = GlobalStatus::Aborting;
        set(&mut b, "01", Action, Succeeded);
        set(&mut b, "02", Action, Succeeded);
        set(&mut b, "03", Action, Failed);
        assert_eq!(calls(&t, &b), ["compensate03"]);
        set(&mut b, "03", Compensate, Succeeded);
        assert_eq!(calls(&t, &b), ["compensate02"]);
        set(&mut b, "02", Compensate, Succeeded);
        assert_eq!(calls(&t, &b), ["compensate01"]);
        set(&mut b, "01", Compensate, Succeeded);
        assert_eq!(Saga.next(&t, &b), Next::Finish);
    }

    #[test]
    fn a_dag_compensates_a_step_once_every_step_after_it_is_rolled_back() {
        let (mut t, mut b) = saga(
            4,
            r#"{"orders": {"2": [0, 1], "3": [0]}, "concurrent": true}"#,
        );
        t.status = GlobalStatus::Aborting;
        for id in ["01", "02", "03", "04"] {
            set(&mut b, id, Action, Succeeded);
        }
        set(&mut b, "04", Action, Failed);
        // 0 waits for 2 and 3; 1 waits for 2.
        assert_eq!(calls(&t, &b), ["compensate04", "compensate03"]);
        set(&mut b, "04", Compensate, Succeeded);
        assert_eq!(calls(&t, &b), ["compensate03"]);
        set(&mut b, "03", Compensate, Succeeded);
        assert_eq!(calls(&t, &b), ["compensate02", "compensate01"]);
    }

    #[test]
    fn actions_that_may_have_run_are_failed_when_the_saga_rolls_back() {
        let (t, mut b) = saga(3, r#"{"concurrent": true}"#);
        set(&mut b, "01", Action, Succeeded);
        set(&mut b, "02", Action, Failed);
        let marked: Vec<&str> = Saga
            .on_roll_back(&t, &b)
            .into_iter()
            .map(|i| b[i].branch_id.as_str())
            .collect();
        assert_eq!(marked, ["03"], "in flight when the saga turned");
        let (t, mut chain) = saga(3, "");
        set(&mut chain, "01", Action, Failed);
        assert!(
            Saga.on_roll_back(&t, &chain).is_empty(),
            "a later step of a chain never ran"
        );
    }

    #[test]
    fn past_its_retry_limit_a_running_saga_compensates_and_a_compensation_goes_on() {
        let (mut t, _) = saga(1, "");
        t.options.retry_limit = 2;
        assert_eq!(Saga.after_failures(&t, 2), Limit::Retry);
        assert!(
            matches!(Saga.after_failures(&t, 3), Limit::RollBack(r) if r.contains("RetryLimit: 2"))
        );
        t.status = GlobalStatus::Aborting;
        assert_eq!(Saga.after_failures(&t, 99), Limit::Retry);
    }

    #[test]
    fn a_timeout_applies_to_a_running_saga_only_when_set() {
        let (mut t, _) = saga(1, "");
        t.options.timeout_to_fail = 0;
        assert_eq!(Saga.deadline(&t), None);
        t.options.timeout_to_fail = 5;
        assert_eq!(Saga.deadline(&t), Some(1_005_000));
        assert_eq!(
            Saga.on_due(&t, 1_005_000),
            crate::txn::policy::Due::RollBack("Timeout after 5 seconds".into())
        );
        assert_eq!(Saga.on_due(&t, 1_004_999), crate::txn::policy::Due::Drive);
    }

    #[test]
    fn bad_sagas_are_named() {
        let none = Subscribers::new();
        let why = |r: Result<_, Refusal>| r.map(|_: Vec<NewBranch>| ()).unwrap_err().message;
        assert!(why(Saga.steps(&request(0), Moment::Submit, &none)).contains("at least one step"));
        let mut missing = request(1);
        missing.steps[0].remove("compensate");
        assert!(why(Saga.steps(&missing, Moment::Submit, &none)).contains("no compensate URL"));
        let mut broker = request(1);
        broker.steps[0].insert("action".into(), "rocketmq://T?key=k".into());
        assert!(why(Saga.steps(&broker, Moment::Submit, &none)).contains("goes to a broker"));
        let mut data = request(2);
        data.payloads.clear();
        data.steps[1].insert("data".into(), "{}".into());
        let ops = Saga.steps(&data, Moment::Submit, &none).unwrap();
        assert_eq!((ops[1].data.as_str(), ops[3].data.as_str()), ("", "{}"));
        let check = |custom: &str| {
            let mut r = request(3);
            r.custom_data = custom.into();
            Saga.check(&r, Moment::Submit).map_err(|e| e.message)
        };
        assert!(check(r#"{"orders": {"2": [0, 1]}, "concurrent": true}"#).is_ok());
        assert!(check(r#"{"orders": {"1": [2]}}"#)
            .unwrap_err()
            .contains("only run after steps before it"));
        assert!(check(r#"{"orders": {"7": [0]}}"#)
            .unwrap_err()
            .contains("names step '7'"));
        assert!(check("not json").unwrap_err().contains("must be JSON"));
    }
}
