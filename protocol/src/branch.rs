//! How the coordinator calls a branch, and how a participant's answer is read.
//!
//! The call is a POST of the registered body (a GET when the body is empty) with `gid`,
//! `trans_type`, `branch_id` and `op` as query parameters. The answer is classified in this
//! order: status 425 or a body containing `ONGOING` is ongoing; status 409 or a body containing
//! `FAILURE` is a failure; any other status than 200 is an error to retry; 200 is a success.

use serde::{Deserialize, Serialize};

use crate::names::{RESULT_FAILURE, RESULT_ONGOING};

/// Query parameters of every branch call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchParams {
    /// Global transaction id.
    #[serde(default)]
    pub gid: String,
    /// Transaction type: `tcc`, `msg`, ...
    #[serde(default)]
    pub trans_type: String,
    /// Branch id within the transaction.
    #[serde(default)]
    pub branch_id: String,
    /// Operation: `try`, `confirm`, `cancel`, `action`, `msg`, ...
    #[serde(default)]
    pub op: String,
}

/// What a branch's answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchOutcome {
    /// 200: done.
    Success,
    /// 409 or `FAILURE`: will not succeed.
    Failure,
    /// 425 or `ONGOING`: not decided yet, ask again later.
    Ongoing,
    /// Anything else: retry.
    Error,
}

impl BranchOutcome {
    /// The name used in logs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Ongoing => "ongoing",
            Self::Error => "error",
        }
    }

    /// The HTTP status a participant answers with for this outcome.
    pub fn http_status(self) -> u16 {
        match self {
            Self::Success => 200,
            Self::Failure => 409,
            Self::Ongoing => 425,
            Self::Error => 500,
        }
    }
}

/// Classifies a branch's answer from its HTTP status and body, in DTM's order.
pub fn classify_answer(status: u16, body: &str) -> BranchOutcome {
    if status == 425 || body.contains(RESULT_ONGOING) {
        BranchOutcome::Ongoing
    } else if status == 409 || body.contains(RESULT_FAILURE) {
        BranchOutcome::Failure
    } else if status != 200 {
        BranchOutcome::Error
    } else {
        BranchOutcome::Success
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_in_dtm_order() {
        assert_eq!(classify_answer(200, ""), BranchOutcome::Success);
        assert_eq!(
            classify_answer(200, r#"{"dtm_result":"SUCCESS"}"#),
            BranchOutcome::Success
        );
        assert_eq!(classify_answer(425, ""), BranchOutcome::Ongoing);
        assert_eq!(classify_answer(200, "ONGOING"), BranchOutcome::Ongoing);
        // ONGOING wins over FAILURE, and a body marker wins over the status.
        assert_eq!(classify_answer(409, "ONGOING"), BranchOutcome::Ongoing);
        assert_eq!(classify_answer(409, ""), BranchOutcome::Failure);
        assert_eq!(
            classify_answer(500, r#"{"dtm_result":"FAILURE"}"#),
            BranchOutcome::Failure
        );
        assert_eq!(classify_answer(500, "boom"), BranchOutcome::Error);
        assert_eq!(classify_answer(404, ""), BranchOutcome::Error);
        assert_eq!(classify_answer(201, ""), BranchOutcome::Error);
    }
}
