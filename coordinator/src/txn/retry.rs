//! Retry schedules: capped exponential backoff with jitter.
//!
//! The schedule is stored with the transaction (its retry count), not held in memory, so it
//! survives restarts and moves between coordinator instances.

use std::hash::{Hash, Hasher};

/// The jitter of one attempt, in `[0, 1)`: a function of `what` (the transaction or message
/// and how many attempts it has had), so that things failing together spread out over the
/// interval while a run that repeats the same attempts repeats the same schedule (a
/// simulation seed replays exactly).
pub fn jitter(what: &impl Hash) -> f64 {
    // `DefaultHasher::new` always starts from the same keys; SplitMix64's finaliser spreads
    // the bits.
    let mut h = std::hash::DefaultHasher::new();
    what.hash(&mut h);
    let mut z = h.finish().wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

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

/// Milliseconds before looking again at a transaction that waits on others (its messages,
/// which the dispatcher delivers and records): `start_s` the first time, then twice the
/// interval used the time before (`previous_s`; 0 when it just began waiting), up to
/// `cap_s`. The dispatcher's acknowledgement finishes such a transaction; looking again is
/// only a safety net, and one that waits long (a dead letter) need not be looked at often.
pub fn wait_delay_ms(start_s: i64, previous_s: i64, cap_s: i64) -> i64 {
    let s = if previous_s > 0 {
        previous_s.saturating_mul(2)
    } else {
        start_s
    };
    s.clamp(1, cap_s.max(1)).saturating_mul(1000)
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
    fn a_wait_is_looked_at_less_and_less_often_up_to_the_cap() {
        let mut previous = 0;
        let mut seen = Vec::new();
        for _ in 0..6 {
            let d = wait_delay_ms(1, previous, 10);
            seen.push(d);
            previous = d / 1000;
        }
        assert_eq!(seen, [1_000, 2_000, 4_000, 8_000, 10_000, 10_000]);
    }

    #[test]
    fn jitter_takes_at_most_a_fifth_off() {
        let d = retry_delay_ms(10, 60, 0, 0.999_999);
        assert!((8_000..8_010).contains(&d), "{d}");
        assert_eq!(retry_delay_ms(10, 60, 0, 0.5), 9_000);
    }

    #[test]
    fn jitter_is_fixed_by_what_it_is_of_and_spread_over_the_unit() {
        assert_eq!(jitter(&("g1", 3_i64)), jitter(&("g1", 3_i64)));
        assert_ne!(jitter(&("g1", 3_i64)), jitter(&("g1", 4_i64)));
        let draws: Vec<f64> = (0..1_000_i64).map(|n| jitter(&("gid", n))).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        // Spread: every tenth of the unit interval gets a share.
        for tenth in 0..10 {
            let lo = f64::from(tenth) / 10.0;
            let n = draws.iter().filter(|u| (lo..lo + 0.1).contains(*u)).count();
            assert!((50..150).contains(&n), "{n} draws in [{lo}, {lo}+0.1)");
        }
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
