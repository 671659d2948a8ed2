//! What differs between transaction types, behind one small trait.
//!
//! Each type Settle drives has one file saying what only it knows ([`super::tcc`],
//! [`super::msg`]); the transitions and the driver ask [`policy`] instead of matching on the
//! type, so a new type (saga) is one new file and one line here.

use super::outbox::OutboxState;
use super::target::is_broker;
use super::{BranchOp, BranchStatus, GlobalStatus, GlobalTxn, Op, TransType};

/// What to do with a transaction found due while it is still `prepared`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DuePrepared {
    /// Not timed out yet: due again at this time (ms).
    NotYet(i64),
    /// Roll back, with this reason.
    Abort(String),
    /// Ask the initiator whether its local transaction committed.
    CheckBack,
}

/// In which order a stage of phase 2 calls its branch operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Last registered first (TCC confirms and cancels, as DTM does).
    Reverse,
    /// In the order given (a message's steps).
    Given,
}

/// One stage of phase 2: every pending operation `op`, called in `order`. A stage starts only
/// once the stage before it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    /// The operation called.
    pub op: Op,
    /// In which order.
    pub order: Order,
    /// The transaction's held messages are let out when this stage starts.
    pub releases_held: bool,
}

/// What a transaction type knows.
pub trait Policy: Send + Sync {
    /// The type.
    fn trans_type(&self) -> TransType;

    /// Whether a prepared transaction of this type may be aborted by its initiator.
    fn can_abort(&self) -> bool;

    /// Whether a submit of a prepared transaction adds the steps it carries (a TCC's
    /// messages); otherwise they were given at prepare.
    fn steps_at_submit(&self) -> bool;

    /// Whether `prepare` may carry steps (a msg's).
    fn steps_at_prepare(&self) -> bool;

    /// The state a commit puts the broker-bound steps in: out at once, or held until phase 2
    /// has confirmed every branch.
    fn outbox_at_commit(&self) -> OutboxState;

    /// What a due prepared transaction needs at `now`.
    fn on_due_prepared(&self, txn: &GlobalTxn, now: i64) -> DuePrepared {
        let deadline =
            super::timeout::timeout_deadline(txn.create_time, txn.options.timeout_to_fail);
        if now < deadline {
            DuePrepared::NotYet(deadline)
        } else {
            self.on_timeout(txn)
        }
    }

    /// How long after its commit phase 2 starts, ms (a delayed msg); 0: at once.
    fn delay_ms(&self, _txn: &GlobalTxn) -> i64 {
        0
    }

    /// What a prepared transaction past its `timeout_to_fail` needs.
    fn on_timeout(&self, txn: &GlobalTxn) -> DuePrepared;

    /// The stages of phase 2 in `status` (none in other statuses).
    fn phase_two(&self, status: GlobalStatus) -> &'static [Stage];
}

/// Whether phase 2 of a transaction in `status` with `branches` has nothing to call: every
/// operation left is a message the dispatcher delivers (whose last acknowledgement finishes
/// the transaction), and no stage lets held messages out.
pub fn only_deliveries_left(
    policy: &dyn Policy,
    status: GlobalStatus,
    branches: &[BranchOp],
) -> bool {
    policy.phase_two(status).iter().all(|stage| {
        let mut pending = branches
            .iter()
            .filter(|b| b.op == stage.op && b.status == BranchStatus::Prepared)
            .peekable();
        pending.peek().is_none() || (!stage.releases_held && pending.all(|b| is_broker(&b.url)))
    })
}

/// The policy of a type Settle drives, or `None` for a type it only accepts on the wire.
pub fn policy(trans_type: TransType) -> Option<&'static dyn Policy> {
    match trans_type {
        TransType::Tcc => Some(&super::tcc::Tcc),
        TransType::Msg => Some(&super::msg::Msg),
        TransType::Saga | TransType::Xa | TransType::Workflow => None,
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
