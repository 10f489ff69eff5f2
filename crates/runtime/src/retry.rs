//! One retry policy for every step that must eventually succeed (an
//! INSERT, a delivery to the broker, a changelog write): capped exponential
//! backoff, each failure logged; after a shutdown request, at most
//! `shutdown_grace` more, then the caller is told it [`GaveUp`] and stops
//! without committing (what it was doing is redone on restart).

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

/// A step kept failing after a shutdown request.
#[derive(Debug, thiserror::Error)]
#[error("{what} kept failing after a shutdown request: {error}")]
pub struct GaveUp {
    pub what: &'static str,
    pub error: String,
}

/// The retry state of one step.
pub struct Backoff {
    what: &'static str,
    policy: RetryPolicy,
    next: Duration,
    failures: u32,
    give_up_at: Option<Instant>,
}

impl Backoff {
    pub fn new(what: &'static str, policy: RetryPolicy) -> Self {
        Self { what, policy, next: policy.initial, failures: 0, give_up_at: None }
    }

    /// Logs a failure and waits before the next attempt, or gives up when a
    /// shutdown request is older than the grace.
    pub async fn failed<E: Display + ?Sized>(&mut self, error: &E, shutdown: &Shutdown) -> Result<(), GaveUp> {
        self.failures += 1;
        if shutdown.is_requested() {
            let deadline = *self.give_up_at.get_or_insert_with(|| Instant::now() + self.policy.shutdown_grace);
            if Instant::now() >= deadline {
                return Err(GaveUp { what: self.what, error: error.to_string() });
            }
        }
        tracing::warn!(
            what = self.what,
            failures = self.failures,
            error = %error,
            retry_in_ms = self.next.as_millis() as u64,
            "failed; retrying"
        );
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.policy.max);
        Ok(())
    }

    /// Logs a recovery, if there were failures.
    pub fn succeeded(&self) {
        if self.failures > 0 {
            tracing::info!(what = self.what, failures = self.failures, "recovered");
        }
    }
}

/// Runs `attempt` until it succeeds (see [`Backoff`]).
pub async fn retry<T, E: Display, F: Future<Output = Result<T, E>>>(
    what: &'static str,
    policy: RetryPolicy,
    shutdown: &Shutdown,
    mut attempt: impl FnMut() -> F,
) -> Result<T, GaveUp> {
    let mut backoff = Backoff::new(what, policy);
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

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_and_gives_up_only_after_the_grace_of_a_shutdown() {
        let policy = RetryPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(40),
            shutdown_grace: Duration::from_millis(100),
        };
        let (stop, shutdown) = Shutdown::new();
        let mut calls = 0;
        let v = retry("step", policy, &shutdown, || {
            calls += 1;
            let ok = calls == 4;
            async move {
                if ok {
                    Ok(7)
                } else {
                    Err("down")
                }
            }
        })
        .await
        .unwrap();
        assert_eq!((v, calls), (7, 4));
        stop.send(true).unwrap();
        let started = tokio::time::Instant::now();
        let gave_up = retry("step", policy, &shutdown, || async { Err::<(), _>("still down") }).await.unwrap_err();
        assert_eq!(gave_up.what, "step");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(100) && waited < Duration::from_millis(200), "{waited:?}");
    }
}
