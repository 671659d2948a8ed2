//! The check-back of a transactional message: a msg still prepared after its timeout asks
//! its initiator (`query_prepared`) whether the local transaction committed.

use settle_protocol::{classify_answer, BranchOutcome};

use super::change::{Change, Current, LeaseWrite};
use super::policy::require;
use super::{Decision, GlobalStatus, TxnError, NEVER};

/// Why a message whose check-back said "rolled back" ended.
pub const ROLLBACK_REASON: &str = "check-back: the local transaction did not commit";

/// What a check-back answer decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckBack {
    /// The local transaction committed: submit the message.
    Commit,
    /// It did not and never will (the barrier blocks a late commit): drop the message.
    Rollback,
    /// No decision: ask again later. `ongoing` keeps the interval fixed.
    AskAgain {
        /// The initiator answered ONGOING.
        ongoing: bool,
        /// What it answered.
        detail: String,
    },
}

/// Decides from a check-back's HTTP status and body.
///
/// As in DTM, 409 or `FAILURE` rolls back, 425 or `ONGOING` asks again, other errors are
/// retried with backoff. A 200 commits only when its body says `SUCCESS` or is JSON: a 200
/// with an empty body (an answer cut short, a proxy's) or any other (an HTML page from a
/// wrong URL, say) is not taken as a commit, since delivering a message whose transaction
/// rolled back cannot be undone. (DTM commits on any 200 without FAILURE or ONGOING.)
pub fn after_check_back(status: u16, body: &str) -> CheckBack {
    let detail = || {
        let mut d = format!("check-back answered HTTP {status}: {}", body.trim());
        d.truncate(d.floor_char_boundary(500));
        d
    };
    match classify_answer(status, body) {
        BranchOutcome::Failure => CheckBack::Rollback,
        BranchOutcome::Ongoing => CheckBack::AskAgain {
            ongoing: true,
            detail: detail(),
        },
        BranchOutcome::Error => CheckBack::AskAgain {
            ongoing: false,
            detail: detail(),
        },
        BranchOutcome::Success => {
            let text = body.trim();
            if text.contains(settle_protocol::names::RESULT_SUCCESS)
                || serde_json::from_str::<serde_json::Value>(text).is_ok()
            {
                CheckBack::Commit
            } else {
                CheckBack::AskAgain {
                    ongoing: false,
                    detail: format!("{}; a 200 answer must be JSON or say SUCCESS", detail()),
                }
            }
        }
    }
}

/// Decides what a check-back answer does to the prepared msg whose lease this instance
/// holds under `token`: a commit submits it (its steps enter the outbox, and this instance
/// keeps the lease to deliver them); a rollback drops it for good. Anything else is no
/// change (the driver schedules another check-back).
///
/// # Errors
/// [`TxnError::LeaseLost`] if another instance, or the initiator's own submit, took it over.
pub fn decide(
    current: &Current,
    token: &str,
    answer: &CheckBack,
    now: i64,
) -> Result<Decision<Change>, TxnError> {
    let t = current.fenced(token)?;
    if t.status != GlobalStatus::Prepared {
        return Ok(Decision::AlreadyDone);
    }
    match answer {
        CheckBack::Commit => {
            let policy = require(t.trans_type)?;
            let mut change = Change::at(now).to(GlobalStatus::Submitted);
            change.enqueue = Some(policy.outbox_at_commit());
            let delay = policy.delay_ms(t);
            if delay > 0 {
                // A delayed message waits for its delay from this commit, as after a
                // submit; the round that asked gives the lease up until then.
                let from = now.saturating_add(delay);
                change.deliver_from = Some(from);
                change = change.due(from);
            }
            Ok(Decision::Apply(change))
        }
        CheckBack::Rollback => Ok(Decision::Apply(
            Change::at(now)
                .to(GlobalStatus::Failed)
                .reason(ROLLBACK_REASON)
                .due(NEVER)
                .lease(LeaseWrite::Release),
        )),
        CheckBack::AskAgain { .. } => Ok(Decision::AlreadyDone),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::model::sample;
    use crate::txn::TransType;

    fn leased() -> Current {
        let mut t = sample(TransType::Msg, GlobalStatus::Prepared);
        t.lease_token = "mine".into();
        Current {
            gid: "g".into(),
            txn: Some(t),
            branches: vec![],
        }
    }

    #[test]
    fn a_commit_submits_and_a_rollback_fails_the_message() {
        let Ok(Decision::Apply(commit)) = decide(&leased(), "mine", &CheckBack::Commit, 5) else {
            panic!("commits");
        };
        assert_eq!(commit.to, Some(GlobalStatus::Submitted));
        assert!(commit.enqueue.is_some());
        let Ok(Decision::Apply(rollback)) = decide(&leased(), "mine", &CheckBack::Rollback, 5)
        else {
            panic!("rolls back");
        };
        assert_eq!(rollback.to, Some(GlobalStatus::Failed));
        assert!(matches!(
            decide(&leased(), "theirs", &CheckBack::Commit, 5),
            Err(TxnError::LeaseLost { .. })
        ));
    }

    #[test]
    fn a_delayed_message_committed_by_its_check_back_waits_for_its_delay() {
        let mut c = leased();
        if let Some(t) = c.txn.as_mut() {
            t.custom_data = r#"{"delay": 30}"#.into();
        }
        let Ok(Decision::Apply(commit)) = decide(&c, "mine", &CheckBack::Commit, 5) else {
            panic!("commits");
        };
        assert_eq!(
            (commit.deliver_from, commit.next_cron_time),
            (Some(30_005), Some(30_005))
        );
    }

    #[test]
    fn success_commits_and_failure_rolls_back() {
        assert_eq!(
            after_check_back(200, r#"{"dtm_result":"SUCCESS"}"#),
            CheckBack::Commit
        );
        assert_eq!(after_check_back(200, "{}"), CheckBack::Commit);
        assert_eq!(after_check_back(409, ""), CheckBack::Rollback);
        assert_eq!(
            after_check_back(200, r#"{"dtm_result":"FAILURE"}"#),
            CheckBack::Rollback
        );
    }

    #[test]
    fn ongoing_and_errors_ask_again() {
        assert!(matches!(
            after_check_back(425, ""),
            CheckBack::AskAgain { ongoing: true, .. }
        ));
        assert!(matches!(
            after_check_back(503, "down"),
            CheckBack::AskAgain { ongoing: false, .. }
        ));
    }

    #[test]
    fn an_empty_200_is_not_a_commit() {
        // A proxy or a server that cut its answer short says nothing of the local
        // transaction.
        for body in ["", "  \n"] {
            assert!(
                matches!(
                    after_check_back(200, body),
                    CheckBack::AskAgain { ongoing: false, .. }
                ),
                "{body:?}"
            );
        }
    }

    #[test]
    fn a_200_with_garbage_is_not_a_commit() {
        match after_check_back(200, "<html>Welcome to nginx</html>") {
            CheckBack::AskAgain {
                ongoing: false,
                detail,
            } => assert!(detail.contains("must be JSON or say SUCCESS"), "{detail}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
