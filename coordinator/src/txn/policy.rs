//! What differs between transaction types, behind one trait.
//!
//! Each type Settle drives has one file saying everything only it knows ([`super::tcc`],
//! [`super::msg`], [`super::saga`], [`super::xa`]): which requests create it and which
//! branch operations they create, which answers fail an operation for good, which operation
//! phase 2 calls next (a chain, a DAG, last registered first), what a timeout does, when held
//! messages go out. The API, the transitions, the driver and the dispatcher ask [`policy`]
//! instead of matching on the type, so a new type is one new file and one line here.
//!
//! Everything here is pure: a policy looks at a transaction and its branch operations (as
//! stored, or as a round of phase 2 knows them) and answers.

use std::collections::BTreeMap;

use settle_protocol::{BranchOutcome, GlobalRequest, RegisterBranchRequest};

use super::branch::BranchStep;
use super::outbox::OutboxState;
use super::target::is_broker;
use super::{BranchOp, BranchStatus, GlobalStatus, GlobalTxn, NewBranch, Op, TransType};

/// Which request is creating branch operations from its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// `prepare`.
    Prepare,
    /// `submit` (of a prepared transaction, or one it creates).
    Submit,
}

/// The subscribers of the topics a request names (`topic://NAME` steps), as the store holds
/// them when the request is handled: topic name → subscriber URLs, in subscription order. A
/// topic missing from the map has none.
pub type Subscribers = BTreeMap<String, Vec<String>>;

/// Why a request is refused by its type: a stable code and a message naming what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable code (`invalid_steps`, `invalid_option`, ...).
    pub code: &'static str,
    /// What is wrong, naming the field.
    pub message: String,
}

impl Refusal {
    /// A refusal with its code and message.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// What to do with a transaction that came due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Nothing to do yet: due again at this time (ms).
    NotYet(i64),
    /// Roll back (its timeout passed), with this reason.
    RollBack(String),
    /// Ask the initiator whether its local transaction committed (a prepared msg).
    CheckBack,
    /// Drive phase 2.
    Drive,
}

/// What phase 2 does next, decided from the transaction and its branch operations as far as
/// the round knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Call these operations (indexes into the branches) now, all at once when there are
    /// several.
    Call {
        /// The operations.
        ops: Vec<usize>,
        /// Held messages may go out from now on.
        release_held: bool,
        /// What the round has done so far must be durable before these calls are made (a
        /// saga's later steps: if it rolls back, what may have run is known from the store).
        checkpoint: bool,
    },
    /// Nothing to call: what is left are messages the dispatcher delivers (whose last
    /// acknowledgement finishes the transaction).
    Wait {
        /// Held messages may go out from now on.
        release_held: bool,
    },
    /// The forward path cannot complete (an operation failed for good): turn to rolling
    /// back.
    RollBack,
    /// Every operation is done: the transaction reaches its end.
    Finish,
}

/// What passing `retry_limit` failed rounds in a row does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    /// The limit is not passed: retry as usual.
    Retry,
    /// Stop retrying automatically (an operator may retry it).
    Stop,
    /// Roll back with this reason.
    RollBack(String),
}

/// What a transaction type knows.
pub trait Policy: Send + Sync {
    /// The type.
    fn trans_type(&self) -> TransType;

    /// Whether `prepare` may open a transaction of this type (a saga is created by its
    /// `submit` alone).
    fn can_prepare(&self) -> bool {
        true
    }

    /// Whether a prepared transaction of this type may be aborted by its initiator.
    fn can_abort(&self) -> bool;

    /// The `timeout_to_fail` of a transaction that did not set one, given the server's
    /// default, s (0: none).
    fn default_timeout_s(&self, server_default_s: i64) -> i64 {
        server_default_s
    }

    /// Checks what only this type reads in a request (`custom_data`, `query_prepared`)
    /// beyond its steps.
    ///
    /// # Errors
    /// A [`Refusal`] naming the field.
    fn check(&self, _req: &GlobalRequest, _at: Moment) -> Result<(), Refusal> {
        Ok(())
    }

    /// The branch operations a `prepare` or `submit` creates from the steps it carries
    /// (`topic://` steps resolved through `subscribers`). Each operation's URL and payload are
    /// checked afterwards by the API, whatever the type.
    ///
    /// # Errors
    /// A [`Refusal`] naming the step and what is wrong with it.
    fn steps(
        &self,
        req: &GlobalRequest,
        at: Moment,
        subscribers: &Subscribers,
    ) -> Result<Vec<NewBranch>, Refusal>;

    /// Whether a `submit` of a prepared transaction adds the operations its steps create (a
    /// TCC's messages); otherwise they were given at prepare.
    fn steps_at_submit(&self) -> bool;

    /// The branch operations a `registerBranch` creates (its fields are all strings). URLs
    /// are checked afterwards by the API.
    ///
    /// # Errors
    /// A [`Refusal`] when this type registers no branches, or a field is missing.
    fn register(&self, req: &RegisterBranchRequest) -> Result<Vec<NewBranch>, Refusal> {
        let _ = req;
        Err(Refusal::new(
            "unsupported_trans_type",
            format!(
                "a {} transaction registers no branches: its steps come with its submit",
                self.trans_type()
            ),
        ))
    }

    /// The state a commit puts the broker-bound steps in: out at once, or held until phase 2
    /// has done everything else.
    fn outbox_at_commit(&self) -> OutboxState;

    /// How long after its commit phase 2 starts, ms (a delayed msg); 0: at once.
    fn delay_ms(&self, _txn: &GlobalTxn) -> i64 {
        0
    }

    /// What a prepared transaction past its `timeout_to_fail` needs.
    fn on_timeout(&self, txn: &GlobalTxn) -> Due {
        Due::RollBack(timeout_reason(txn))
    }

    /// When a transaction in its current status times out, ms, if its timeout applies now
    /// (a prepared TCC's, a running saga's).
    fn deadline(&self, txn: &GlobalTxn) -> Option<i64> {
        (txn.status == GlobalStatus::Prepared)
            .then(|| super::timeout::timeout_deadline(txn.create_time, txn.options.timeout_to_fail))
    }

    /// What a transaction that came due at `now` needs: a prepared one waits for its
    /// timeout; past a timeout that applies, it rolls back (or, for a prepared msg, is
    /// checked back); otherwise phase 2 is driven.
    fn on_due(&self, txn: &GlobalTxn, now: i64) -> Due {
        due_by_timeout(self, txn, now)
    }

    /// What phase 2 of `txn` does next, given its `branches`.
    fn next(&self, txn: &GlobalTxn, branches: &[BranchOp]) -> Next;

    /// What an answer `outcome` to a call of `branch` means. By default only a success
    /// finishes an operation: a confirm or cancel must eventually succeed, so a FAILURE is
    /// retried like an error, as DTM does.
    fn after_call(
        &self,
        _txn: &GlobalTxn,
        branch: &BranchOp,
        outcome: BranchOutcome,
    ) -> BranchStep {
        super::branch::after_call(branch.status, outcome)
    }

    /// The operations (indexes into `branches`) to mark failed when the transaction turns to
    /// rolling back: those that may have run although they never answered, so that they are
    /// undone too.
    fn on_roll_back(&self, _txn: &GlobalTxn, _branches: &[BranchOp]) -> Vec<usize> {
        Vec::new()
    }

    /// What `failures` failed rounds in a row mean, given the transaction's `retry_limit`
    /// (the default: past a limit, automatic retries stop).
    fn after_failures(&self, txn: &GlobalTxn, failures: i64) -> Limit {
        if txn.options.retry_limit > 0 && failures >= txn.options.retry_limit {
            Limit::Stop
        } else {
            Limit::Retry
        }
    }
}

/// [`Policy::on_due`] as the timeouts alone decide it: a prepared transaction waits for
/// its timeout; past a timeout that applies, it rolls back (or, for a prepared msg, is
/// checked back); otherwise phase 2 is driven.
pub fn due_by_timeout<P: Policy + ?Sized>(policy: &P, txn: &GlobalTxn, now: i64) -> Due {
    let prepared = txn.status == GlobalStatus::Prepared;
    match policy.deadline(txn) {
        Some(deadline) if now < deadline && prepared => Due::NotYet(deadline),
        Some(deadline) if now < deadline => Due::Drive,
        Some(_) if prepared => policy.on_timeout(txn),
        Some(_) => Due::RollBack(timeout_reason(txn)),
        None if prepared => Due::NotYet(super::NEVER),
        None => Due::Drive,
    }
}

/// DTM's rollback reason for a timeout.
pub fn timeout_reason(txn: &GlobalTxn) -> String {
    format!("Timeout after {} seconds", txn.options.timeout_to_fail)
}

/// In which order a [`Stage`] calls its operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Last registered first (TCC confirms and cancels, as DTM does).
    Reverse,
    /// In the order given (a message's steps, XA commits).
    Given,
}

/// One stage of a simple phase 2: every pending operation `op`, called in `order`, one at a
/// time (or all at once for a `concurrent` transaction). A stage starts once the stage before
/// it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    /// The operation called.
    pub op: Op,
    /// In which order.
    pub order: Order,
    /// The transaction's held messages are let out when this stage starts.
    pub releases_held: bool,
}

/// The held messages of a transaction, delivered once everything else of phase 2 is done:
/// the last stage of a TCC, an XA transaction or a saga.
pub const DELIVER_HELD: Stage = Stage {
    op: Op::Action,
    order: Order::Given,
    releases_held: true,
};

/// [`Policy::next`] for a phase 2 made of `stages` among `branches` (only those for which
/// `ours` holds).
pub fn staged(
    txn: &GlobalTxn,
    branches: &[BranchOp],
    stages: &[Stage],
    ours: impl Fn(&BranchOp) -> bool,
) -> Next {
    for stage in stages {
        let mut pending: Vec<usize> = branches
            .iter()
            .enumerate()
            .filter(|(_, b)| b.op == stage.op && b.status == BranchStatus::Prepared && ours(b))
            .map(|(i, _)| i)
            .collect();
        if pending.is_empty() {
            continue;
        }
        if stage.order == Order::Reverse {
            pending.reverse();
        }
        let calls: Vec<usize> = pending
            .into_iter()
            .filter(|i| !is_broker(&branches[*i].url))
            .collect();
        if calls.is_empty() {
            return Next::Wait {
                release_held: stage.releases_held,
            };
        }
        let ops = if txn.options.concurrent {
            calls
        } else {
            calls.into_iter().take(1).collect()
        };
        return Next::Call {
            ops,
            release_held: stage.releases_held,
            checkpoint: false,
        };
    }
    Next::Finish
}

/// Whether phase 2 of `txn` has nothing to call now: every operation left is a message the
/// dispatcher delivers (whose last acknowledgement finishes the transaction), and no held
/// message needs letting out.
pub fn only_deliveries_left(policy: &dyn Policy, txn: &GlobalTxn, branches: &[BranchOp]) -> bool {
    policy.next(txn, branches)
        == Next::Wait {
            release_held: false,
        }
}

/// The policy of a type Settle drives, or `None` for a type it only accepts on the wire.
pub fn policy(trans_type: TransType) -> Option<&'static dyn Policy> {
    match trans_type {
        TransType::Tcc => Some(&super::tcc::Tcc),
        TransType::Msg => Some(&super::msg::Msg),
        TransType::Saga => Some(&super::saga::Saga),
        TransType::Xa => Some(&super::xa::Xa),
        TransType::Workflow => None,
    }
}

/// The policy of `trans_type`, or the error saying Settle does not drive it.
///
/// # Errors
/// [`super::TxnError::Unsupported`] for a type without a policy.
pub fn require(trans_type: TransType) -> Result<&'static dyn Policy, super::TxnError> {
    policy(trans_type).ok_or(super::TxnError::Unsupported {
        trans_type,
        action: "be driven by Settle yet",
    })
}

/// Message steps a transaction carries beside its own (a TCC's or XA transaction's on its
/// submit, a saga's `messages`): each `{"action": URL}` with one payload, delivered once the
/// rest of phase 2 succeeded, as branches `m01`, `m02`, ... `what` names the list in errors.
///
/// # Errors
/// A [`Refusal`] naming the step and what is wrong with it.
pub fn held_messages(
    what: &str,
    steps: &[BTreeMap<String, String>],
    payloads: &[String],
) -> Result<Vec<NewBranch>, Refusal> {
    actions(what, steps, payloads, "m")
}

/// The steps of a type whose steps are only the messages its submit carries (a TCC, an XA
/// transaction): see [`held_messages`]; none at prepare.
///
/// # Errors
/// A [`Refusal`] for steps at prepare, or naming the step and what is wrong with it.
pub fn messages_at_submit(
    what: &str,
    req: &GlobalRequest,
    at: Moment,
) -> Result<Vec<NewBranch>, Refusal> {
    if req.steps.is_empty() && req.payloads.is_empty() {
        return Ok(Vec::new());
    }
    if at == Moment::Prepare {
        return Err(Refusal::new(
            "invalid_steps",
            format!("{what} go with its submit, not its prepare"),
        ));
    }
    held_messages(what, &req.steps, &req.payloads)
}

/// Steps made of an action each (`{"action": URL}`, one payload per step) as action
/// operations with branch ids `{prefix}01`, `{prefix}02`, ...
///
/// # Errors
/// A [`Refusal`] naming the step and what is wrong with it.
pub fn actions(
    what: &str,
    steps: &[BTreeMap<String, String>],
    payloads: &[String],
    prefix: &str,
) -> Result<Vec<NewBranch>, Refusal> {
    if payloads.len() != steps.len() {
        return Err(Refusal::new(
            "invalid_steps",
            format!(
                "{what}: one payload per step is needed, {} steps, {} payloads",
                steps.len(),
                payloads.len()
            ),
        ));
    }
    steps
        .iter()
        .zip(payloads)
        .enumerate()
        .map(|(i, (step, payload))| {
            if let Some(other) = step.keys().find(|k| k.as_str() != "action") {
                return Err(Refusal::new(
                    "invalid_steps",
                    format!(
                        "step {} of {what} has '{}'; such a step has only an action",
                        i + 1,
                        other.escape_default()
                    ),
                ));
            }
            Ok(NewBranch {
                branch_id: format!("{prefix}{:02}", i + 1),
                op: Op::Action,
                url: required_url(step, "action", i, what)?,
                data: payload.clone(),
            })
        })
        .collect()
}

/// The URL under `key` of step `i` (0-based) of `what`.
///
/// # Errors
/// A [`Refusal`] when it is missing or empty.
pub fn required_url(
    step: &BTreeMap<String, String>,
    key: &str,
    i: usize,
    what: &str,
) -> Result<String, Refusal> {
    match step.get(key).map(String::as_str) {
        Some(url) if !url.is_empty() => Ok(url.to_owned()),
        _ => Err(Refusal::new(
            "invalid_steps",
            format!("step {} of {what} has no {key} URL", i + 1),
        )),
    }
}

/// A field of a `registerBranch` request, empty when missing.
pub fn field<'a>(req: &'a RegisterBranchRequest, name: &str) -> &'a str {
    req.get(name).map(String::as_str).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::model::sample;

    fn op(id: &str, op: Op, url: &str) -> BranchOp {
        BranchOp::new(
            "g",
            NewBranch {
                branch_id: id.into(),
                op,
                url: url.into(),
                data: String::new(),
            },
            1,
        )
    }

    #[test]
    fn a_staged_phase_two_calls_one_at_a_time_then_waits_for_deliveries_then_finishes() {
        let stages = [
            Stage {
                op: Op::Confirm,
                order: Order::Reverse,
                releases_held: false,
            },
            DELIVER_HELD,
        ];
        let mut t = sample(TransType::Tcc, GlobalStatus::Submitted);
        let mut b = vec![
            op("01", Op::Confirm, "http://a/c"),
            op("02", Op::Confirm, "http://a/c"),
            op("m01", Op::Action, "rocketmq://T?key=k"),
        ];
        let call = |ops: Vec<usize>, release_held| Next::Call {
            ops,
            release_held,
            checkpoint: false,
        };
        assert_eq!(staged(&t, &b, &stages, |_| true), call(vec![1], false));
        t.options.concurrent = true;
        assert_eq!(staged(&t, &b, &stages, |_| true), call(vec![1, 0], false));
        b[0].status = BranchStatus::Succeeded;
        b[1].status = BranchStatus::Succeeded;
        assert_eq!(
            staged(&t, &b, &stages, |_| true),
            Next::Wait { release_held: true }
        );
        b[2].status = BranchStatus::Succeeded;
        assert_eq!(staged(&t, &b, &stages, |_| true), Next::Finish);
    }

    #[test]
    fn message_steps_have_one_action_and_one_payload_each() {
        let step = |url: &str| BTreeMap::from([("action".to_owned(), url.to_owned())]);
        let ops = held_messages("messages", &[step("http://a/x")], &["{}".into()]).unwrap();
        assert_eq!((ops[0].branch_id.as_str(), ops[0].op), ("m01", Op::Action));
        let why = held_messages("messages", &[step("http://a/x")], &[]).unwrap_err();
        assert!(why.message.contains("1 steps, 0 payloads"), "{why:?}");
        let mut two = step("http://a/x");
        two.insert("compensate".into(), "http://a/y".into());
        let why = held_messages("messages", &[two], &["{}".into()]).unwrap_err();
        assert!(why.message.contains("has 'compensate'"), "{why:?}");
        let why = held_messages("messages", &[step("")], &["{}".into()]).unwrap_err();
        assert!(why.message.contains("no action URL"), "{why:?}");
    }

    #[test]
    fn a_prepared_transaction_is_due_at_its_timeout() {
        let t = sample(TransType::Tcc, GlobalStatus::Prepared);
        let tcc = policy(TransType::Tcc).unwrap();
        assert_eq!(tcc.on_due(&t, 1_034_999), Due::NotYet(1_035_000));
        assert_eq!(
            tcc.on_due(&t, 1_035_000),
            Due::RollBack("Timeout after 35 seconds".into())
        );
        let s = sample(TransType::Tcc, GlobalStatus::Submitted);
        assert_eq!(tcc.on_due(&s, 9_999_999), Due::Drive);
    }
}
