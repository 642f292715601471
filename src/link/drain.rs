//! The drain signal a handler link's engine gives its sources, and the
//! deadline helper they share.
//!
//! A link stops in two steps, as NATS clients drain: first `stopping` (take
//! nothing new, finish what is running), then, if the link's drain time is
//! up before they are done, `aborted` (cancel what still runs; a durable
//! source naks what it held, so that another instance takes it at once).

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The signals of one link's drain; clones share them.
#[derive(Clone, Default)]
pub(crate) struct Drain {
    stop: CancellationToken,
    abort: CancellationToken,
}

impl Drain {
    /// Tells the sources to stop taking messages and finish.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    /// Tells the sources that the drain time is up.
    pub(crate) fn abort(&self) {
        self.abort.cancel();
    }

    /// Resolves once the link is stopping.
    pub(crate) async fn stopping(&self) {
        self.stop.cancelled().await;
    }

    /// The output of `work`, or `None` if the link starts to stop first.
    pub(crate) async fn unless_stopping<T>(
        &self,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        tokio::select! {
            biased;
            () = self.stopping() => None,
            output = work => Some(output),
        }
    }

    /// Resolves once the drain time is up.
    pub(crate) async fn aborted(&self) {
        self.abort.cancelled().await;
    }
}

/// Sleeps until `deadline`, or forever when there is none.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
