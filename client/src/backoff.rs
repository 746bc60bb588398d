//! Pauses between reconnection attempts: exponential, with jitter (the `backon` crate's
//! [`ExponentialBuilder`]), within fixed bounds.
//!
//! Only the schedule lives here; the callers sleep (and stay cancellable by `--timeout`,
//! a stop signal or a forwarded command, which a retry combinator would hide).
//!
//! `backon`'s jitter adds a random part of up to the nominal pause to it, so each pause
//! is drawn from `[nominal, 2 × nominal)`. The nominal pause starts at the first bound and
//! doubles up to half the upper bound, and every pause is clamped to the upper bound: a
//! pause is never shorter than the first bound nor longer than the upper one, and clients
//! cut off together (a relay restart) do not all come back in the same instant.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Shortest pause before reconnecting after a lost connection (or no answer): `listen`
/// and a linking device.
pub const RECONNECT_DELAY: Duration = Duration::from_millis(500);
/// Longest pause between two reconnection attempts: `listen` and a linking device.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);
/// Shortest pause between the attempts of one [`crate::Client::connect`].
pub const CONNECT_RETRY_DELAY: Duration = Duration::from_millis(200);
/// Longest pause between the attempts of one [`crate::Client::connect`].
pub const MAX_CONNECT_RETRY_DELAY: Duration = Duration::from_secs(5);

/// An endless schedule of pauses between `first` and `max`, growing exponentially with
/// jitter; [`Backoff::reset`] after a success starts it again.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    pauses: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// Pauses from `first` (to twice it) growing up to `max` (from half of it).
    pub fn new(first: Duration, max: Duration) -> Self {
        let max = max.max(first);
        let builder = ExponentialBuilder::new()
            .with_jitter()
            .with_factor(2.0)
            .with_min_delay(first)
            .with_max_delay((max / 2).max(first))
            .without_max_times();
        Self {
            pauses: builder.build(),
            builder,
            max,
        }
    }

    /// The schedule of `listen` and of a linking device: [`RECONNECT_DELAY`] to
    /// [`MAX_RECONNECT_DELAY`].
    pub fn reconnect() -> Self {
        Self::new(RECONNECT_DELAY, MAX_RECONNECT_DELAY)
    }

    /// The schedule between the attempts of one [`crate::Client::connect`]:
    /// [`CONNECT_RETRY_DELAY`] to [`MAX_CONNECT_RETRY_DELAY`].
    pub fn connect() -> Self {
        Self::new(CONNECT_RETRY_DELAY, MAX_CONNECT_RETRY_DELAY)
    }

    /// The next pause (the schedule never ends: the caller bounds the attempts).
    pub fn next_pause(&mut self) -> Duration {
        self.pauses.next().unwrap_or(self.max).min(self.max)
    }

    /// Start again from the first pause (after a success).
    pub fn reset(&mut self) {
        self.pauses = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_stay_within_the_bounds_and_reach_the_cap() {
        let mut b = Backoff::reconnect();
        let pauses: Vec<Duration> = (0..40).map(|_| b.next_pause()).collect();
        for p in &pauses {
            assert!(*p >= RECONNECT_DELAY && *p <= MAX_RECONNECT_DELAY, "{p:?}");
        }
        // The first pause is drawn from [500 ms, 1 s), the second from [1 s, 2 s).
        assert!(pauses[0] < Duration::from_secs(1), "{:?}", pauses[0]);
        assert!(pauses[1] >= Duration::from_secs(1) && pauses[1] < Duration::from_secs(2));
        // After the growth phase every pause is in the top range [15 s, 30 s].
        for p in &pauses[6..] {
            assert!(*p >= MAX_RECONNECT_DELAY / 2, "{p:?}");
        }
        // Jitter: the capped pauses are not all the same (34 equal draws from a
        // 15-second range do not happen).
        let capped = &pauses[6..];
        assert!(capped.iter().any(|p| *p != capped[0]), "{capped:?}");
    }

    #[test]
    fn reset_starts_again_from_the_first_pause() {
        let mut b = Backoff::connect();
        for _ in 0..10 {
            b.next_pause();
        }
        assert!(b.next_pause() >= MAX_CONNECT_RETRY_DELAY / 2);
        b.reset();
        let first = b.next_pause();
        assert!(first >= CONNECT_RETRY_DELAY && first < CONNECT_RETRY_DELAY * 2);
    }
}
