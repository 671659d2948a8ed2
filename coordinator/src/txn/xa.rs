//! What only an XA transaction knows.
//!
//! The initiator prepares the global transaction, then calls each participant, which runs
//! its local transaction as an XA branch of its own database up to `XA PREPARE` and registers
//! the branch with one URL (`registerBranch` with `url`). A submit commits every branch (the
//! URL called with `op=commit`), in registration order; an abort, or `timeout_to_fail`
//! passing while prepared, rolls every branch back (`op=rollback`). Both are retried until
//! they succeed. A submit may carry messages (a Settle extension, as for TCC), let out once
//! every branch committed.

use settle_protocol::{GlobalRequest, RegisterBranchRequest};

use super::outbox::OutboxState;
use super::policy::{
    field, messages_at_submit, staged, Moment, Next, Order, Policy, Refusal, Stage, Subscribers,
    DELIVER_HELD,
};
use super::{BranchOp, GlobalStatus, GlobalTxn, NewBranch, Op, TransType};

/// The XA policy.
#[derive(Debug, Clone, Copy)]
pub struct Xa;

const COMMIT_THEN_DELIVER: &[Stage] = &[
    Stage {
        op: Op::Commit,
        order: Order::Given,
        releases_held: false,
    },
    DELIVER_HELD,
];

const ROLLBACK: &[Stage] = &[Stage {
    op: Op::Rollback,
    order: Order::Given,
    releases_held: false,
}];

impl Policy for Xa {
    fn trans_type(&self) -> TransType {
        TransType::Xa
    }

    fn can_abort(&self) -> bool {
        true
    }

    fn steps(
        &self,
        req: &GlobalRequest,
        at: Moment,
        _subscribers: &Subscribers,
    ) -> Result<Vec<NewBranch>, Refusal> {
        messages_at_submit("an XA transaction's messages", req, at)
    }

    fn steps_at_submit(&self) -> bool {
        true
    }

    /// An XA branch registers one URL, called with `op=commit` or `op=rollback`: its two
    /// operations, rollback then commit, as DTM stores them.
    fn register(&self, req: &RegisterBranchRequest) -> Result<Vec<NewBranch>, Refusal> {
        let url = field(req, "url");
        if url.is_empty() {
            return Err(Refusal::new("invalid_url", "url is missing or empty"));
        }
        let op = |op| NewBranch {
            branch_id: field(req, "branch_id").to_owned(),
            op,
            url: url.to_owned(),
            data: field(req, "data").to_owned(),
        };
        Ok(vec![op(Op::Rollback), op(Op::Commit)])
    }

    fn outbox_at_commit(&self) -> OutboxState {
        OutboxState::Held
    }

    fn next(&self, txn: &GlobalTxn, branches: &[BranchOp]) -> Next {
        match txn.status {
            GlobalStatus::Submitted => staged(txn, branches, COMMIT_THEN_DELIVER, |_| true),
            GlobalStatus::Aborting => staged(txn, branches, ROLLBACK, |_| true),
            _ => Next::Finish,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::model::sample;
    use crate::txn::policy::Due;
    use crate::txn::BranchStatus;

    fn registered(ids: &[&str]) -> Vec<BranchOp> {
        ids.iter()
            .flat_map(|id| {
                let req = RegisterBranchRequest::from([
                    ("branch_id".to_owned(), (*id).to_owned()),
                    ("url".to_owned(), "http://p/xa".to_owned()),
                ]);
                Xa.register(&req).unwrap()
            })
            .map(|b| BranchOp::new("g", b, 1))
            .collect()
    }

    #[test]
    fn a_branch_registers_rollback_then_commit_on_one_url() {
        let b = registered(&["01"]);
        let ops: Vec<Op> = b.iter().map(|o| o.op).collect();
        assert_eq!(ops, [Op::Rollback, Op::Commit]);
        assert!(Xa.register(&RegisterBranchRequest::new()).is_err());
    }

    #[test]
    fn a_submit_commits_in_registration_order_and_an_abort_rolls_back() {
        let mut b = registered(&["01", "02"]);
        let t = sample(TransType::Xa, GlobalStatus::Submitted);
        let first = |t: &GlobalTxn, b: &[BranchOp]| match Xa.next(t, b) {
            Next::Call { ops, .. } => Some((b[ops[0]].branch_id.clone(), b[ops[0]].op)),
            _ => None,
        };
        assert_eq!(first(&t, &b), Some(("01".into(), Op::Commit)));
        b[1].status = BranchStatus::Succeeded;
        assert_eq!(first(&t, &b), Some(("02".into(), Op::Commit)));
        b[3].status = BranchStatus::Succeeded;
        assert_eq!(Xa.next(&t, &b), Next::Finish);
        let aborting = sample(TransType::Xa, GlobalStatus::Aborting);
        assert_eq!(first(&aborting, &b), Some(("01".into(), Op::Rollback)));
    }

    #[test]
    fn a_prepared_xa_transaction_rolls_back_at_its_timeout() {
        let t = sample(TransType::Xa, GlobalStatus::Prepared);
        assert_eq!(
            Xa.on_due(&t, 1_035_000),
            Due::RollBack("Timeout after 35 seconds".into())
        );
    }
}
