//! When a transaction times out: past `timeout_to_fail`, a prepared TCC rolls back, a
//! prepared msg is checked back, a running saga compensates (see each type's policy; the
//! rollback itself is [`super::roll_back`]).

/// When a transaction created at `create_time` (ms) times out.
pub fn timeout_deadline(create_time: i64, timeout_to_fail_s: i64) -> i64 {
    create_time.saturating_add(timeout_to_fail_s.saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_is_the_creation_plus_the_timeout() {
        assert_eq!(timeout_deadline(1_000, 35), 36_000);
        assert_eq!(timeout_deadline(i64::MAX - 1, 35), i64::MAX);
    }
}
