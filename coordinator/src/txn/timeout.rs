//! What happens when a prepared transaction comes due: a TCC past `timeout_to_fail` rolls
//! back; a msg is checked back.

use super::{GlobalTxn, TransType};

/// What to do with a transaction the scheduler found due while it is still `prepared`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DuePrepared {
    /// Not timed out yet: due again at this time (ms).
    NotYet(i64),
    /// Roll back, with this reason.
    Abort(String),
    /// Ask the initiator whether its local transaction committed.
    CheckBack,
}

/// Decides what a due prepared transaction needs at `now` (ms since the epoch).
pub fn on_due_prepared(txn: &GlobalTxn, now: i64) -> DuePrepared {
    let deadline = timeout_deadline(txn.create_time, txn.options.timeout_to_fail);
    if now < deadline {
        return DuePrepared::NotYet(deadline);
    }
    match txn.trans_type {
        TransType::Msg => DuePrepared::CheckBack,
        _ => DuePrepared::Abort(format!(
            "Timeout after {} seconds",
            txn.options.timeout_to_fail
        )),
    }
}

/// When a transaction created at `create_time` (ms) times out.
pub fn timeout_deadline(create_time: i64, timeout_to_fail_s: i64) -> i64 {
    create_time.saturating_add(timeout_to_fail_s.saturating_mul(1000))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::txn::{GlobalStatus, TransOptions};

    pub(crate) fn txn(trans_type: TransType, status: GlobalStatus) -> GlobalTxn {
        GlobalTxn {
            gid: "g".into(),
            trans_type,
            status,
            custom_data: String::new(),
            steps: vec![],
            payloads: vec![],
            query_prepared: String::new(),
            protocol: "http".into(),
            options: TransOptions {
                timeout_to_fail: 35,
                request_timeout: 3,
                retry_interval: 10,
                branch_headers: Default::default(),
                concurrent: false,
                wait_result: false,
                retry_limit: 0,
            },
            rollback_reason: String::new(),
            create_time: 1_000_000,
            update_time: 1_000_000,
            finish_time: None,
            rollback_time: None,
            next_cron_time: 1_035_000,
            next_cron_interval: 10,
            owner: String::new(),
            lease_token: String::new(),
            lease_expire: 0,
            retry_count: 0,
            last_error: String::new(),
        }
    }

    #[test]
    fn a_tcc_is_left_alone_until_it_times_out() {
        let t = txn(TransType::Tcc, GlobalStatus::Prepared);
        assert_eq!(
            on_due_prepared(&t, 1_034_999),
            DuePrepared::NotYet(1_035_000)
        );
    }

    #[test]
    fn a_tcc_that_timed_out_rolls_back_with_dtms_reason() {
        let t = txn(TransType::Tcc, GlobalStatus::Prepared);
        assert_eq!(
            on_due_prepared(&t, 1_035_000),
            DuePrepared::Abort("Timeout after 35 seconds".into())
        );
    }

    #[test]
    fn a_msg_that_timed_out_is_checked_back() {
        let t = txn(TransType::Msg, GlobalStatus::Prepared);
        assert_eq!(on_due_prepared(&t, 2_000_000), DuePrepared::CheckBack);
    }
}
