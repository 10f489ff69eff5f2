//! One retry policy for every step that must eventually succeed (an
//! INSERT, a delivery to the broker, a changelog write): capped exponential
//! backoff, each failure logged and reported to [`Health`]; after a
//! shutdown request, at most `shutdown_grace` more, then the caller is told
//! it [`GaveUp`] and stops without committing (what it was doing is redone
//! on restart). Errors are classified ([`Classify`]): a permanent one is
//! retried at the slowest pace, logged as an error and makes the instance
//! unready until it passes; a fatal one gives up at once.

use crate::health::{Classify, ErrorClass, Health};
use crate::shutdown::Shutdown;
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;
// Tokio's clock, the one `sleep` uses: a test with paused time sees the
// grace pass as the backoff sleeps do.
use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Wait after the first failure; doubled after each, up to `max`.
    pub initial: Duration,
    pub max: Duration,
    /// After a shutdown request, how long a failing step keeps retrying.
    pub shutdown_grace: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// A step kept failing after a shutdown request, or failed fatally.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {error}", if *.fatal { "failed fatally (a restart starts afresh)" } else { "kept failing after a shutdown request" })]
pub struct GaveUp {
    pub what: &'static str,
    pub error: String,
    /// The error was [`ErrorClass::Fatal`].
    pub fatal: bool,
}

/// The retry state of one step.
pub struct Backoff {
    what: &'static str,
    policy: RetryPolicy,
    health: Health,
    next: Duration,
    failures: u32,
    give_up_at: Option<Instant>,
}

impl Backoff {
    pub fn new(what: &'static str, policy: RetryPolicy, health: &Health) -> Self {
        Self { what, policy, health: health.clone(), next: policy.initial, failures: 0, give_up_at: None }
    }

    /// Logs a failure and waits before the next attempt, or gives up: at
    /// once on a fatal error, else when a shutdown request is older than
    /// the grace.
    pub async fn failed<E: Display + Classify + ?Sized>(
        &mut self,
        error: &E,
        shutdown: &Shutdown,
    ) -> Result<(), GaveUp> {
        self.failures += 1;
        let class = error.class();
        self.health.failed(self.what, class, error.to_string());
        if class == ErrorClass::Fatal {
            tracing::error!(what = self.what, error = %error, "failed fatally: stopping");
            return Err(GaveUp { what: self.what, error: error.to_string(), fatal: true });
        }
        if shutdown.is_requested() {
            let deadline = *self.give_up_at.get_or_insert_with(|| Instant::now() + self.policy.shutdown_grace);
            if Instant::now() >= deadline {
                return Err(GaveUp { what: self.what, error: error.to_string(), fatal: false });
            }
        }
        if class == ErrorClass::Permanent {
            // Retrying soon cannot help; an operator can, and then this
            // resumes by itself.
            self.next = self.policy.max;
            tracing::error!(
                what = self.what,
                failures = self.failures,
                error = %error,
                retry_in_ms = self.next.as_millis() as u64,
                "permanent error: needs an operator (the instance is unready until it passes)"
            );
        } else {
            tracing::warn!(
                what = self.what,
                failures = self.failures,
                error = %error,
                retry_in_ms = self.next.as_millis() as u64,
                "failed; retrying"
            );
        }
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.policy.max);
        Ok(())
    }

    /// Logs a recovery, if there were failures.
    pub fn succeeded(&self) {
        if self.failures > 0 {
            self.health.recovered(self.what);
            tracing::info!(what = self.what, failures = self.failures, "recovered");
        }
    }
}

/// Runs `attempt` until it succeeds (see [`Backoff`]).
pub async fn retry<T, E: Display + Classify, F: Future<Output = Result<T, E>>>(
    what: &'static str,
    policy: RetryPolicy,
    health: &Health,
    shutdown: &Shutdown,
    mut attempt: impl FnMut() -> F,
) -> Result<T, GaveUp> {
    let mut backoff = Backoff::new(what, policy, health);
    loop {
        match attempt().await {
            Ok(v) => {
                backoff.succeeded();
                return Ok(v);
            }
            Err(e) => backoff.failed(&e, shutdown).await?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Down(ErrorClass);

    impl Display for Down {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "down ({:?})", self.0)
        }
    }

    impl Classify for Down {
        fn class(&self) -> ErrorClass {
            self.0
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(40),
            shutdown_grace: Duration::from_millis(100),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_and_gives_up_only_after_the_grace_of_a_shutdown() {
        let health = Health::default();
        let (stop, shutdown) = Shutdown::new();
        let mut calls = 0;
        let v = retry("step", policy(), &health, &shutdown, || {
            calls += 1;
            let ok = calls == 4;
            async move {
                if ok {
                    Ok(7)
                } else {
                    Err(Down(ErrorClass::Retriable))
                }
            }
        })
        .await
        .unwrap();
        assert_eq!((v, calls), (7, 4));
        stop.send(true).unwrap();
        let started = tokio::time::Instant::now();
        let gave_up =
            retry("step", policy(), &health, &shutdown, || async { Err::<(), _>(Down(ErrorClass::Retriable)) })
                .await
                .unwrap_err();
        assert_eq!((gave_up.what, gave_up.fatal), ("step", false));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(100) && waited < Duration::from_millis(200), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_is_retried_at_the_slowest_pace_and_unready_until_it_passes_a_fatal_one_stops() {
        let health = Health::default();
        let (_stop, shutdown) = Shutdown::new();
        let started = tokio::time::Instant::now();
        let mut calls = 0;
        let probe = health.clone();
        retry("insert", policy(), &health, &shutdown, || {
            calls += 1;
            let n = calls;
            let readiness = probe.readiness();
            async move {
                if n > 1 {
                    // Unready from the first permanent failure on.
                    assert!(matches!(readiness, crate::Readiness::Unready(_)), "{readiness:?}");
                }
                if n == 3 {
                    Ok(())
                } else {
                    Err(Down(ErrorClass::Permanent))
                }
            }
        })
        .await
        .unwrap();
        // Two waits at `max` (40 ms), none at `initial`.
        assert_eq!(started.elapsed(), Duration::from_millis(80));
        assert_eq!(health.readiness(), crate::Readiness::Ready);

        let mut calls = 0;
        let gave_up = retry("producer", policy(), &health, &shutdown, || {
            calls += 1;
            async { Err::<(), _>(Down(ErrorClass::Fatal)) }
        })
        .await
        .unwrap_err();
        assert!(gave_up.fatal && calls == 1, "{gave_up}");
    }
}
