//! What the pricing and ledger stages share, so that they stop, retry and
//! finish the same way:
//!
//! - [`Shutdown`]: a shutdown request (SIGTERM, Ctrl-C, a test), observed
//!   between messages;
//! - [`RetryPolicy`], [`Backoff`] and [`retry`]: one policy for every step
//!   retried until it succeeds (capped exponential backoff; after a
//!   shutdown request, at most `shutdown_grace` more, then [`GaveUp`]);
//! - [`Health`]: failing steps (classified by [`Classify`]: retriable,
//!   permanent, fatal) and stalled partitions, for `/readyz` and the logs;
//! - [`Watchdog`]: partitions with lag and no progress are stalled, then
//!   rejoined;
//! - [`serve_probes`]: `/healthz` and `/readyz` over HTTP;
//! - [`caught_up`] and [`StopWhen`]: whether every assigned partition is
//!   consumed to its end (runs with `--until-caught-up`).

mod caught_up;
mod classify;
mod health;
mod probes;
mod retry;
mod shutdown;
mod stop;
mod watchdog;

pub use caught_up::caught_up;
pub use health::{Classify, ErrorClass, Health, Readiness, FAILING_GRACE_DEFAULT};
pub use probes::serve_probes;
pub use retry::{retry, Backoff, GaveUp, RetryPolicy};
pub use shutdown::Shutdown;
pub use stop::StopWhen;
pub use watchdog::{Watchdog, WatchdogVerdict, STALL_AFTER_DEFAULT};
