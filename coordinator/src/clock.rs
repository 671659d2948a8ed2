//! Wall-clock time as stored (milliseconds since the Unix epoch), from an injected clock.
//!
//! Every part that needs the time is handed a [`Clock`] rather than reading the system clock
//! itself. A [`Clock::system`] clock reads the wall time once, when it is made, and from then
//! on advances with tokio's monotonic clock: in a test running on paused tokio time
//! (`start_paused`, `tokio::time::advance`), stored times, timeouts and retry schedules move
//! exactly as far as the test steps them, with no real sleeping. A [`Clock::stepped`] clock
//! does not move at all until the test calls [`Clock::advance`]: for tests whose waits
//! happen on threads tokio does not see (an SQLite store), where tokio's paused clock would
//! jump ahead on its own.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// A source of the current time, in ms since the Unix epoch. Clones read the same time.
#[derive(Debug, Clone)]
pub struct Clock {
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    /// `base_ms` at `start`, then moving with tokio's clock. An aligned clock's base is
    /// moved to the database's time by [`Clock::align`].
    Tokio {
        base_ms: Arc<AtomicI64>,
        start: Instant,
        alignable: bool,
    },
    /// Moves only when told to.
    Stepped(Arc<AtomicI64>),
}

impl Clock {
    /// A clock reading the system's wall time now and advancing with tokio's clock. The
    /// coordinator aligns it with the database's clock ([`Clock::align`]), so that every
    /// instance sharing a database times leases and due times alike, whatever its own wall
    /// clock says.
    pub fn system() -> Self {
        Self::system_off_by(0)
    }

    /// A system clock reading `offset_ms` off the wall time, as on a machine whose clock is
    /// wrong (for tests of clock skew). Aligned like [`Clock::system`].
    pub fn system_off_by(offset_ms: i64) -> Self {
        Self {
            source: Source::Tokio {
                base_ms: Arc::new(AtomicI64::new(system_now_ms().saturating_add(offset_ms))),
                start: Instant::now(),
                alignable: true,
            },
        }
    }

    /// A clock that reads `ms` now and advances with tokio's clock (for tests; never
    /// aligned).
    pub fn starting_at(ms: i64) -> Self {
        Self {
            source: Source::Tokio {
                base_ms: Arc::new(AtomicI64::new(ms)),
                start: Instant::now(),
                alignable: false,
            },
        }
    }

    /// Whether [`Clock::align`] moves this clock (a system clock, not a test's).
    pub fn is_alignable(&self) -> bool {
        matches!(
            self.source,
            Source::Tokio {
                alignable: true,
                ..
            }
        )
    }

    /// Sets this clock (and its clones) so that it read `reference_ms` at `at`: the
    /// database's time, read between two instants whose middle is `at`. Returns how far it
    /// moved, in ms. Does nothing to a clock that is not alignable.
    pub fn align(&self, reference_ms: i64, at: Instant) -> i64 {
        let Source::Tokio {
            base_ms,
            start,
            alignable: true,
        } = &self.source
        else {
            return 0;
        };
        let since_start =
            i64::try_from(at.saturating_duration_since(*start).as_millis()).unwrap_or(i64::MAX / 4);
        let base = reference_ms.saturating_sub(since_start);
        base.saturating_sub(base_ms.swap(base, Ordering::SeqCst))
    }

    /// A clock that reads `ms` until [`Clock::advance`] moves it (for tests).
    pub fn stepped(ms: i64) -> Self {
        Self {
            source: Source::Stepped(Arc::new(AtomicI64::new(ms))),
        }
    }

    /// Moves a [`Clock::stepped`] clock (and its clones) forward by `by`. A clock that
    /// follows tokio's time is moved with `tokio::time::advance` instead; this does nothing
    /// to it.
    pub fn advance(&self, by: Duration) {
        if let Source::Stepped(ms) = &self.source {
            let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX / 4);
            ms.fetch_add(by, Ordering::SeqCst);
        }
    }

    /// Milliseconds since the Unix epoch, now.
    pub fn now_ms(&self) -> i64 {
        match &self.source {
            Source::Tokio { base_ms, start, .. } => {
                let elapsed = i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX / 4);
                base_ms.load(Ordering::Relaxed).saturating_add(elapsed)
            }
            Source::Stepped(ms) => ms.load(Ordering::SeqCst),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

/// The system's wall time in ms since the Unix epoch (for code with no clock handed to it,
/// such as the load generator).
pub fn system_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_clock_moves_with_paused_tokio_time() {
        let clock = Clock::starting_at(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        tokio::time::advance(Duration::from_secs(35)).await;
        assert_eq!(clock.now_ms(), 36_000);
    }

    #[tokio::test(start_paused = true)]
    async fn an_aligned_clock_reads_the_reference_time_and_test_clocks_are_never_aligned() {
        let off = Clock::system_off_by(30_000);
        let seen = off.clone();
        let reference = system_now_ms();
        let moved = off.align(reference, Instant::now());
        assert!((-30_500..=-29_500).contains(&moved), "{moved}");
        assert!((seen.now_ms() - reference).abs() < 100);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!((seen.now_ms() - reference - 5_000).abs() < 100);
        let test = Clock::starting_at(1_000);
        assert!(!test.is_alignable());
        assert_eq!(test.align(50_000, Instant::now()), 0);
        assert_eq!(test.now_ms(), 1_000);
    }

    #[test]
    fn a_stepped_clock_moves_only_when_told_and_its_clones_with_it() {
        let clock = Clock::stepped(1_000);
        let seen = clock.clone();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(seen.now_ms(), 1_000);
        clock.advance(Duration::from_secs(40));
        assert_eq!(seen.now_ms(), 41_000);
    }
}
