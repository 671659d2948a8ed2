//! Wall-clock time as stored (milliseconds since the Unix epoch), from an injected clock.
//!
//! Every part that needs the time is handed a [`Clock`] rather than reading the system clock
//! itself. A clock reads the wall time once, when it is made, and from then on advances with
//! tokio's monotonic clock: in a test running on paused tokio time (`start_paused`,
//! `tokio::time::advance`), stored times, timeouts and retry schedules move exactly as far as
//! the test steps them, with no real sleeping.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// A source of the current time, in ms since the Unix epoch.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_ms: i64,
    start: Instant,
}

impl Clock {
    /// A clock reading the system's wall time now and advancing with tokio's clock.
    pub fn system() -> Self {
        Self::starting_at(system_now_ms())
    }

    /// A clock that reads `ms` now and advances with tokio's clock (for tests).
    pub fn starting_at(ms: i64) -> Self {
        Self {
            base_ms: ms,
            start: Instant::now(),
        }
    }

    /// Milliseconds since the Unix epoch, now.
    pub fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX / 4);
        self.base_ms.saturating_add(elapsed)
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
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_clock_moves_with_paused_tokio_time() {
        let clock = Clock::starting_at(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        tokio::time::advance(Duration::from_secs(35)).await;
        assert_eq!(clock.now_ms(), 36_000);
    }
}
