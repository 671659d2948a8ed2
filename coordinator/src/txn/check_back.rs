//! The check-back of a transactional message: a msg still prepared after its timeout asks
//! its initiator (`query_prepared`) whether the local transaction committed.

use settle_protocol::{classify_answer, BranchOutcome};

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
/// retried with backoff. A 200 commits only when its body is empty, says `SUCCESS`, or is
/// JSON: a 200 with any other body (an HTML page from a wrong URL, say) is not taken as a
/// commit, since delivering a message whose transaction rolled back cannot be undone.
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
            if text.is_empty()
                || text.contains(settle_protocol::names::RESULT_SUCCESS)
                || serde_json::from_str::<serde_json::Value>(text).is_ok()
            {
                CheckBack::Commit
            } else {
                CheckBack::AskAgain {
                    ongoing: false,
                    detail: format!(
                        "{}; a 200 answer must be empty, JSON, or say SUCCESS",
                        detail()
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_commits_and_failure_rolls_back() {
        assert_eq!(
            after_check_back(200, r#"{"dtm_result":"SUCCESS"}"#),
            CheckBack::Commit
        );
        assert_eq!(after_check_back(200, ""), CheckBack::Commit);
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
    fn a_200_with_garbage_is_not_a_commit() {
        match after_check_back(200, "<html>Welcome to nginx</html>") {
            CheckBack::AskAgain {
                ongoing: false,
                detail,
            } => assert!(
                detail.contains("must be empty, JSON, or say SUCCESS"),
                "{detail}"
            ),
            other => panic!("unexpected {other:?}"),
        }
    }
}
