//! One handler link: the engine that owns the link's bound, its drain and
//! its counters, and the sources that feed it.
//!
//! A link's sources are its core subscriptions ([`core`]) and each of its
//! JetStream consumers ([`durable`]). Each runs as a task of its own and
//! only hands its messages to the link's one dispatcher ([`dispatch`]),
//! which owns the link's `max_in_flight` slots, the messages waiting for
//! them and every delivery ([`invoke`]) running, so that no source's own
//! waiting holds up a delivery. Stopping the link ([`drain`]) tells every
//! source and the dispatcher at once, waits once for the link's
//! `drain_timeout_ms`, then aborts what still runs. Everything is counted
//! in one [`LinkCounters`].

mod core;
mod counters;
mod dispatch;
mod drain;
mod durable;
mod invoke;
mod pull;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument as _};

pub(crate) use self::counters::LinkCounters;
pub(crate) use self::invoke::Target;

use self::core::CoreSource;
use self::dispatch::{AtStop, Dispatcher};
use self::drain::Drain;
use self::durable::{ConsumerReader, ACK_TIMEOUT};
use crate::config::keys::MAX_DRAIN_TIMEOUT;
use crate::config::HandlerSettings;
use crate::connection::Lease;

/// How long an aborted link waits for its dispatcher to settle: it naks
/// the JetStream messages it still holds, each nak bounded by
/// [`ACK_TIMEOUT`].
const ABORT_GRACE: Duration = ACK_TIMEOUT.saturating_add(Duration::from_secs(1));

/// How long a stopped link waits for its connection to write out what its
/// sources left (the unsubscribes of their inboxes): a second is ample on
/// a live connection, and a dead one has no server to tell.
const UNSUBSCRIBE_FLUSH: Duration = Duration::from_secs(1);

/// The longest a link's stop takes: the largest accepted `drain_timeout_ms`,
/// then the abort grace, then the flush of its unsubscribes.
pub(crate) const LONGEST_STOP: Duration = MAX_DRAIN_TIMEOUT
    .saturating_add(ABORT_GRACE)
    .saturating_add(UNSUBSCRIBE_FLUSH);

/// A running handler link. Dropping it without [`stop`](Self::stop) aborts
/// its sources without draining.
pub(crate) struct HandlerLink {
    /// `component/link`, naming the link in its stop line.
    name: String,
    drain: Drain,
    /// The sources' tasks and, last, the dispatcher's.
    sources: Vec<JoinHandle<()>>,
    drain_timeout: Duration,
    counters: Arc<LinkCounters>,
    connection: Lease,
    /// The subjects of the link's subscriptions, for health.
    subjects: Vec<String>,
}

impl HandlerLink {
    /// Starts the link's sources: subscribes to every entry of
    /// `settings.subscriptions` (confirmed by a server round trip) and
    /// binds its durable consumers, all by `deadline`, so that a message
    /// published after this returns is delivered. An unreachable server is
    /// not an error: the link starts and subscribes once connected; health
    /// says so meanwhile.
    pub(crate) async fn start(
        connection: Lease,
        settings: &HandlerSettings,
        target: Target,
        deadline: Instant,
        tasks: &TaskTracker,
    ) -> Result<Self, String> {
        let link = format!("{}/{}", target.component_id, target.link_name);
        let drain = Drain::default();
        // A link that only consumes streams has no subscription source.
        let core = match settings.subscriptions.as_slice() {
            [] => None,
            subscriptions => Some(
                CoreSource::subscribe(
                    &connection,
                    subscriptions,
                    &link,
                    settings.drain_timeout,
                    deadline,
                )
                .await?,
            ),
        };
        let policy = Arc::new(settings.durable.clone());
        if !settings.durable.sources.is_empty() && !connection.is_connected() {
            // A new connection may still be on its way; a round trip waits
            // for it (by the deadline: a server that is down is not waited
            // for).
            let _ = tokio::time::timeout_at(deadline, connection.round_trip()).await;
        }
        let mut durables = Vec::with_capacity(settings.durable.sources.len());
        for source in &settings.durable.sources {
            durables.push(
                ConsumerReader::bind_at_start(
                    &connection,
                    source,
                    &policy,
                    &target,
                    &drain,
                    deadline,
                )
                .await,
            );
        }

        let mut dispatcher = Dispatcher::new(
            settings.max_in_flight,
            usize::from(core.is_some()) + durables.len(),
            Arc::clone(&target.counters),
            drain.clone(),
        );
        let span = || {
            tracing::info_span!(
                "handler_link",
                component = %target.component_id,
                link_name = %target.link_name
            )
        };
        let mut sources = Vec::with_capacity(durables.len() + 2);
        if let Some(core) = core {
            let bound = core.queue_bound(settings.max_in_flight);
            let feed = dispatcher.feed(AtStop::Deliver, Some(bound));
            let run = core.run(target.clone(), feed, drain.clone(), tasks.clone());
            sources.push(tasks.spawn(run.instrument(span())));
        }
        for durable in durables {
            let span = tracing::info_span!(parent: &span(), "durable", consumer = durable.label());
            let feed = dispatcher.feed(AtStop::Withdraw, None);
            sources.push(tasks.spawn(durable.run(feed).instrument(span)));
        }
        sources.push(tasks.spawn(dispatcher.run().instrument(span())));
        Ok(Self {
            name: link,
            drain,
            sources,
            drain_timeout: settings.drain_timeout,
            counters: Arc::clone(&target.counters),
            connection,
            subjects: settings
                .subscriptions
                .iter()
                .map(|s| s.subject.clone())
                .collect(),
        })
    }

    /// Why the link does not deliver now, for health: its connection, any
    /// subscription the server refused, and what its sources report.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.connection.is_connected() {
            problems.push(format!(
                "NATS at {} is {}",
                self.connection.servers,
                self.connection.state()
            ));
        }
        for subject in self
            .connection
            .refused(self.subjects.iter().map(String::as_str))
        {
            problems.push(format!(
                "NATS server refused the subscription to {subject:?} (permissions violation)"
            ));
        }
        problems.extend(self.counters.problems());
        problems
    }

    /// How far each of its durable consumers is behind, for health.
    pub(crate) fn lags(&self) -> Vec<String> {
        self.counters.lags()
    }

    /// Drains the link: every source stops taking messages, and the
    /// dispatcher finishes what it has; once the link's `drain_timeout_ms`
    /// is up, what still runs is aborted (and JetStream messages nak'd).
    /// Resolves once every source and the dispatcher have ended.
    pub(crate) async fn stop(mut self) {
        self.drain.stop();
        let deadline = Instant::now() + self.drain_timeout;
        let mut sources = std::mem::take(&mut self.sources);
        if tokio::time::timeout_at(deadline, wait_all(&mut sources))
            .await
            .is_err()
        {
            warn!(
                running = self.counters.in_flight(),
                drain_timeout_ms = self.drain_timeout.as_millis() as u64,
                "deliveries still running after the drain timeout are aborted"
            );
            self.drain.abort();
            if tokio::time::timeout(ABORT_GRACE, wait_all(&mut sources))
                .await
                .is_err()
            {
                warn!("sources of the link did not settle after the abort; ending them");
                for source in &sources {
                    source.abort();
                }
            }
        }
        // An open pull request ends with its inbox's unsubscribe, which
        // the client would otherwise write with its next command: until the
        // server has it, the request takes messages published after the
        // stop, and they wait out their ack wait (a link put again at once
        // would not see them for that long).
        if tokio::time::timeout(UNSUBSCRIBE_FLUSH, self.connection.client().flush())
            .await
            .is_err()
        {
            debug!(link = %self.name, "connection did not flush the link's unsubscribes in time");
        }
        info!(link = %self.name, stats = self.counters.summary(), "handler link stopped");
    }
}

/// Waits for every task in `tasks`, removing each as it ends.
async fn wait_all(tasks: &mut Vec<JoinHandle<()>>) {
    while let Some(task) = tasks.last_mut() {
        if let Err(err) = task.await {
            warn!(%err, "a source of the link ended abnormally");
        }
        tasks.pop();
    }
}

impl Drop for HandlerLink {
    fn drop(&mut self) {
        for source in &self.sources {
            source.abort();
        }
    }
}
