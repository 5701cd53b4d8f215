//! The contract every pipeline stage keeps, so the supervisor treats them
//! alike.
//!
//! A stage (intake, detect, replicate) is built, then consumed by
//! [`Stage::run`], which returns when `stop` is cancelled (after finishing
//! what it holds: intake flushes and acknowledges what it received, detect
//! commits the frames in flight, replicate gives its batch a few seconds)
//! or when it fails for good. Transient failures (broker down, log full)
//! are retried inside the stage, with backoff; an error returned is
//! permanent, and the supervisor ([`crate::supervisor`]) then stops the other
//! stages in order and the process exits non-zero. A stage reads the log
//! only through readers bounded by its upstream's position and the log's
//! durable watermark (see [`crate::log::DurableLog::bound`]). Each stage
//! implements the trait in its own module.

use std::future::Future;
use tokio_util::sync::CancellationToken;

/// A pipeline stage.
pub trait Stage: Send + 'static {
    /// Its name in logs.
    const NAME: &'static str;
    /// What stops it for good.
    type Error: std::error::Error + Send + 'static;

    /// Runs until `stop` is cancelled or a permanent failure.
    fn run(self, stop: CancellationToken) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The error standing for a task that panicked or was aborted.
    fn task_failed(why: String) -> Self::Error;
}

/// Spawns `stage` on the runtime; the handle's result is the stage's, with
/// a panic turned into [`Stage::task_failed`].
pub fn spawn<S: Stage>(stage: S, stop: CancellationToken) -> tokio::task::JoinHandle<Result<(), S::Error>> {
    tokio::spawn(stage.run(stop))
}

/// The result of a joined stage task.
pub fn joined<S: Stage>(r: Result<Result<(), S::Error>, tokio::task::JoinError>) -> Result<(), S::Error> {
    r.unwrap_or_else(|e| Err(S::task_failed(format!("{} task failed: {e}", S::NAME))))
}
