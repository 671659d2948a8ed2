//! Recording the outcome of one branch call made during phase 2.

use settle_protocol::BranchOutcome;

use super::{BranchStatus, Decision};

/// What a branch call's outcome means for the branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BranchStep {
    /// The branch is done (or already was).
    Done(Decision<BranchStatus>),
    /// The call must be made again later. `ongoing`: the participant said "not yet", which
    /// keeps the retry interval instead of growing it.
    Retry {
        /// The participant answered ONGOING.
        ongoing: bool,
    },
}

/// Decides what a call's `outcome` does to a branch in status `current`.
///
/// A confirm or cancel must eventually succeed, so a FAILURE answer is retried like an error,
/// as DTM does; only a success finishes the branch.
pub fn after_call(current: BranchStatus, outcome: BranchOutcome) -> BranchStep {
    if current != BranchStatus::Prepared {
        return BranchStep::Done(Decision::AlreadyDone);
    }
    match outcome {
        BranchOutcome::Success => BranchStep::Done(Decision::Apply(BranchStatus::Succeeded)),
        BranchOutcome::Ongoing => BranchStep::Retry { ongoing: true },
        BranchOutcome::Failure | BranchOutcome::Error => BranchStep::Retry { ongoing: false },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_success_finishes_a_prepared_branch() {
        assert_eq!(
            after_call(BranchStatus::Prepared, BranchOutcome::Success),
            BranchStep::Done(Decision::Apply(BranchStatus::Succeeded))
        );
    }

    #[test]
    fn failures_and_errors_are_retried_with_growing_intervals() {
        for o in [BranchOutcome::Failure, BranchOutcome::Error] {
            assert_eq!(
                after_call(BranchStatus::Prepared, o),
                BranchStep::Retry { ongoing: false }
            );
        }
    }

    #[test]
    fn ongoing_is_retried_at_a_fixed_interval() {
        assert_eq!(
            after_call(BranchStatus::Prepared, BranchOutcome::Ongoing),
            BranchStep::Retry { ongoing: true }
        );
    }

    #[test]
    fn any_outcome_on_a_finished_branch_is_a_duplicate() {
        for s in [BranchStatus::Succeeded, BranchStatus::Failed] {
            for o in [
                BranchOutcome::Success,
                BranchOutcome::Failure,
                BranchOutcome::Ongoing,
                BranchOutcome::Error,
            ] {
                assert_eq!(after_call(s, o), BranchStep::Done(Decision::AlreadyDone));
            }
        }
    }
}
