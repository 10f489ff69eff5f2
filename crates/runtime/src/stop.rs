//! When a stage's run returns by itself.

use std::time::Duration;

/// When `run` returns by itself (it always returns on shutdown).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopWhen {
    /// Run until told to stop: the service.
    Never,
    /// Stop once every assigned partition is consumed up to its end and
    /// nothing arrived for `idle`: batch jobs, demos, tests.
    CaughtUp { idle: Duration },
}
