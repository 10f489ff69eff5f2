//! What the pricing and ledger stages share, so that they stop, retry and
//! finish the same way:
//!
//! - [`Shutdown`]: a shutdown request (SIGTERM, Ctrl-C, a test), observed
//!   between messages;
//! - [`RetryPolicy`], [`Backoff`] and [`retry`]: one policy for every step
//!   retried until it succeeds (capped exponential backoff; after a
//!   shutdown request, at most `shutdown_grace` more, then [`GaveUp`]);
//! - [`caught_up`] and [`StopWhen`]: whether every assigned partition is
//!   consumed to its end (runs with `--until-caught-up`).

mod caught_up;
mod retry;
mod shutdown;
mod stop;

pub use caught_up::caught_up;
pub use retry::{retry, Backoff, GaveUp, RetryPolicy};
pub use shutdown::Shutdown;
pub use stop::StopWhen;
