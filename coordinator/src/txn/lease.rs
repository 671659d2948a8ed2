//! The lease of the instance driving a transaction: renewing it, giving it up, and the retry
//! schedule written when a round ends without finishing.

use super::change::{Change, Current, LeaseWrite, RetryNote};
use super::{Decision, Op, TxnError};

/// Extends the lease held under `token` until `expire` (also when it is next due, in case
/// this instance dies).
///
/// # Errors
/// [`TxnError::LeaseLost`] if another instance took the transaction over.
pub fn renew(
    current: &Current,
    token: &str,
    expire: i64,
    now: i64,
) -> Result<Decision<Change>, TxnError> {
    current.fenced(token)?;
    Ok(Decision::Apply(
        Change::at(now).due(expire).lease(LeaseWrite::Renew(expire)),
    ))
}

/// Gives up the lease held under `token`, due again at `next_cron_time`, changing nothing
/// else.
///
/// # Errors
/// [`TxnError::LeaseLost`] if another instance took the transaction over.
pub fn release(
    current: &Current,
    token: &str,
    next_cron_time: i64,
    now: i64,
) -> Result<Decision<Change>, TxnError> {
    current.fenced(token)?;
    Ok(Decision::Apply(
        Change::at(now)
            .due(next_cron_time)
            .lease(LeaseWrite::Release),
    ))
}

/// Records what a round has done so far (the operations in `done` succeeded), keeping the
/// lease: a saga's later steps are called only once this is durable.
///
/// # Errors
/// [`TxnError::LeaseLost`] if another instance took the transaction over.
pub fn progress(
    current: &Current,
    token: &str,
    done: Vec<(String, Op)>,
    now: i64,
) -> Result<Decision<Change>, TxnError> {
    current.fenced(token)?;
    let mut change = Change::at(now);
    change.complete = done;
    Ok(Decision::Apply(change))
}

/// How a round that did not finish ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundLeft {
    /// Operations that succeeded in the round.
    pub done: Vec<(String, Op)>,
    /// Held messages were let out in the round.
    pub release_held: bool,
    /// When to try again, ms.
    pub next_cron_time: i64,
    /// Retry bookkeeping.
    pub retry: RetryNote,
    /// Automatic retries stopped (`retry_limit`): the transaction's held messages are
    /// dead-lettered with this reason, so their keys' later messages go on.
    pub stopped: Option<String>,
}

/// Records a round that did not finish: what succeeded, the retry schedule, and the lease
/// given up so any instance can take the next round.
///
/// # Errors
/// [`TxnError::LeaseLost`] if another instance took the transaction over.
pub fn schedule_retry(
    current: &Current,
    token: &str,
    left: RoundLeft,
    now: i64,
) -> Result<Decision<Change>, TxnError> {
    current.fenced(token)?;
    let mut change = Change::at(now)
        .due(left.next_cron_time)
        .lease(LeaseWrite::Release);
    change.complete = left.done;
    change.release_held = left.release_held;
    change.retry = Some(left.retry);
    change.dead_letter_held = left.stopped;
    Ok(Decision::Apply(change))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::model::sample;
    use crate::txn::{GlobalStatus, TransType};

    fn leased() -> Current {
        let mut t = sample(TransType::Tcc, GlobalStatus::Submitted);
        t.lease_token = "mine".into();
        t.owner = "me".into();
        Current {
            gid: "g".into(),
            txn: Some(t),
            branches: vec![],
        }
    }

    #[test]
    fn a_retry_gives_the_lease_up_and_records_the_error() {
        let mut c = leased();
        let left = RoundLeft {
            done: vec![],
            release_held: false,
            next_cron_time: 50,
            retry: RetryNote {
                interval_s: 2,
                count: 1,
                last_error: "HTTP 500".into(),
            },
            stopped: None,
        };
        let Ok(Decision::Apply(change)) = schedule_retry(&c, "mine", left, 5) else {
            panic!("scheduled");
        };
        c.apply(change).unwrap();
        let t = c.txn.unwrap();
        assert_eq!((t.next_cron_time, t.retry_count), (50, 1));
        assert_eq!((t.owner.as_str(), t.lease_token.as_str()), ("", ""));
        assert_eq!(t.last_error, "HTTP 500");
    }

    #[test]
    fn progress_records_what_succeeded_and_keeps_the_lease() {
        let mut c = leased();
        let Ok(Decision::Apply(change)) = progress(&c, "mine", vec![("01".into(), Op::Action)], 5)
        else {
            panic!("recorded");
        };
        assert_eq!(change.lease, crate::txn::LeaseWrite::Keep);
        c.apply(change).unwrap();
        assert_eq!(c.txn.unwrap().lease_token, "mine");
        assert!(progress(&leased(), "old", vec![], 5).is_err());
    }

    #[test]
    fn lease_writes_need_the_current_token() {
        let c = leased();
        assert!(renew(&c, "mine", 99, 5).is_ok());
        assert!(matches!(
            renew(&c, "old", 99, 5),
            Err(TxnError::LeaseLost { .. })
        ));
        assert!(matches!(
            release(&c, "old", 99, 5),
            Err(TxnError::LeaseLost { .. })
        ));
    }
}
