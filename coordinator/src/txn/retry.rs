//! Retry schedules: capped exponential backoff with jitter.
//!
//! The schedule is stored with the transaction (its retry count), not held in memory, so it
//! survives restarts and moves between coordinator instances.

/// Milliseconds to wait before the next attempt.
///
/// `start_s` is the first interval (s), doubled after each of `failures` failed attempts and
/// capped at `cap_s`. `unit_random` (in `[0, 1)`) takes up to a fifth off the interval so
/// that transactions failing together do not retry together; the result never exceeds the cap
/// and is at least one millisecond.
pub fn retry_delay_ms(start_s: i64, cap_s: i64, failures: i64, unit_random: f64) -> i64 {
    let cap_ms = cap_s.max(1).saturating_mul(1000);
    let start_ms = start_s.max(1).saturating_mul(1000);
    let shift = u32::try_from(failures.clamp(0, 40)).unwrap_or(40);
    let full = start_ms.saturating_mul(1_i64 << shift).min(cap_ms);
    let cut = (full as f64 * 0.2 * unit_random.clamp(0.0, 1.0)) as i64;
    (full - cut).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_interval_doubles_from_the_start_until_the_cap() {
        let no_jitter: Vec<i64> = (0..8).map(|n| retry_delay_ms(1, 60, n, 0.0)).collect();
        assert_eq!(
            no_jitter,
            vec![1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]
        );
    }

    #[test]
    fn jitter_takes_at_most_a_fifth_off() {
        let d = retry_delay_ms(10, 60, 0, 0.999_999);
        assert!((8_000..8_010).contains(&d), "{d}");
        assert_eq!(retry_delay_ms(10, 60, 0, 0.5), 9_000);
    }

    proptest! {
        #[test]
        fn delays_stay_within_bounds(start in 0i64..1_000, cap in 0i64..10_000, n in -5i64..100_000, r in 0.0f64..1.0) {
            let d = retry_delay_ms(start, cap, n, r);
            prop_assert!(d >= 1);
            prop_assert!(d <= cap.max(1) * 1000);
        }
    }
}
