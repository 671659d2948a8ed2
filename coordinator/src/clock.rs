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
    /// `base_ms` at `start`, then moving with tokio's clock.
    Tokio { base_ms: i64, start: Instant },
    /// Moves only when told to.
    Stepped(Arc<AtomicI64>),
}

impl Clock {
    /// A clock reading the system's wall time now and advancing with tokio's clock.
    pub fn system() -> Self {
        Self::starting_at(system_now_ms())
    }

    /// A clock that reads `ms` now and advances with tokio's clock (for tests).
    pub fn starting_at(ms: i64) -> Self {
        Self {
            source: Source::Tokio {
                base_ms: ms,
                start: Instant::now(),
            },
        }
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
            Source::Tokio { base_ms, start } => {
                let elapsed = i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX / 4);
                base_ms.saturating_add(elapsed)
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
