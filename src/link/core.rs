//! Core NATS subscriptions as a source of a handler link.
//!
//! The source reads all of the link's subscriptions as fast as they
//! deliver and hands each message to the link's dispatcher, into a queue
//! bounded in bytes and messages. A slow component fills the queue; beyond
//! its bound new messages are dropped and counted (NATS's own
//! slow-consumer rule, applied per link), so memory stays bounded and the
//! shared connection keeps being read.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt as _};
use futures::FutureExt as _;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::counters::Undelivered;
use super::dispatch::{DeliveryFuture, Feed, Pending, QueueBound};
use super::drain::Drain;
use super::invoke::{invoke, Target};
use crate::config::Subscription;
use crate::connection::{Lease, SubscriberRecord};
use crate::message::{self, ReplyTo};

/// Most messages a link queues while its component is busy; NATS clients
/// use the same default for one subscription's buffer.
const MAX_QUEUED_MESSAGES: usize = 65_536;
/// Most bytes a link queues: room for two rounds of `max_in_flight`
/// messages of the server's `max_payload`, within these bounds.
const MIN_QUEUED_BYTES: usize = 8 * 1024 * 1024;
const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// How this source names itself in health.
const LABEL: &str = "subscriptions";

/// The core subscriptions of one handler link, subscribed.
pub(crate) struct CoreSource {
    connection: Lease,
    /// Sees each new client of the connection, to subscribe again.
    clients: watch::Receiver<async_nats::Client>,
    subscriptions: Vec<Subscription>,
    messages: stream::SelectAll<async_nats::Subscriber>,
    /// Keep the link named in its connection's subscriber list.
    _records: Vec<SubscriberRecord>,
    drain_timeout: Duration,
}

impl CoreSource {
    /// Subscribes to each of `subscriptions` and confirms them with a server
    /// round trip, by `deadline`, so that a message published once the link
    /// is put is delivered. A server that is not reachable yet is not an
    /// error: the link subscribes once connected.
    pub(crate) async fn subscribe(
        connection: &Lease,
        subscriptions: &[Subscription],
        link: &str,
        drain_timeout: Duration,
        deadline: Instant,
    ) -> Result<Self, String> {
        let records = subscriptions
            .iter()
            .map(|s| connection.register_subscriber(link, &s.subject))
            .collect();
        // Marks the client subscribed on as seen, so that only a later one
        // makes the link subscribe again.
        let mut clients = connection.watch_client();
        let client = clients.borrow_and_update().clone();
        let messages = subscribe(&client, subscriptions, deadline).await?;
        match tokio::time::timeout_at(deadline, connection.round_trip()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => warn!(%err, "could not confirm subscriptions with the server"),
            Err(_) => warn!(
                servers = connection.servers,
                state = connection.state(),
                "NATS server not reachable yet; subscriptions start once connected"
            ),
        }
        Ok(Self {
            connection: connection.clone(),
            clients,
            subscriptions: subscriptions.to_vec(),
            messages,
            _records: records,
            drain_timeout,
        })
    }

    /// Reads the subscriptions into `feed` until the link drains.
    ///
    /// On stop the source drains as NATS clients do: it withdraws its
    /// interest, confirms that with a server round trip, and keeps handing
    /// over what arrived until then; what the client still buffers when the
    /// drain time runs out is dropped and counted. When the connection's
    /// client is replaced (see `connection`), the source subscribes again
    /// on the new one; deliveries go on meanwhile (they run in the link's
    /// dispatcher).
    pub(crate) async fn run(self, target: Target, feed: Feed, drain: Drain, tasks: TaskTracker) {
        let Self {
            connection,
            mut clients,
            subscriptions,
            mut messages,
            _records,
            drain_timeout,
        } = self;
        let counters = Arc::clone(&target.counters);
        let link = Arc::new(CoreLink {
            target,
            drain: drain.clone(),
        });
        let mut draining = false;
        loop {
            if draining && messages.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                () = drain.aborted() => {
                    // Counted as dropped, so that the link's figures add up
                    // to what it received.
                    let mut left = 0;
                    while let Some(Some(_)) = messages.next().now_or_never() {
                        left += 1;
                    }
                    counters.dropped(Undelivered::DrainTimeout, left);
                    if left > 0 {
                        warn!(dropped = left, "messages the client still held were dropped at the drain timeout");
                    }
                    break;
                }
                () = drain.stopping(), if !draining => {
                    draining = true;
                    let deadline = Instant::now() + drain_timeout;
                    tokio::select! {
                        () = unsubscribe(&mut messages) => {}
                        () = drain.aborted() => {
                            debug!("NATS client too busy to take the unsubscriptions; closing them");
                            messages = stream::select_all(Vec::new());
                        }
                    }
                    // The client ends a draining subscription the next time
                    // its connection task wakes up; the reply to a round trip
                    // is that wake-up, after every message sent before the
                    // UNSUB. Not awaited here: while disconnected it would
                    // hold up the drain.
                    let connection = connection.clone();
                    tasks.spawn(async move {
                        tokio::time::timeout_at(deadline, connection.round_trip()).await
                    });
                }
                next = messages.next(), if !messages.is_empty() => match next {
                    Some(msg) => feed.send(Box::new(CoreMessage {
                        msg,
                        link: Arc::clone(&link),
                    })),
                    None if !draining => {
                        counters.set_problem(
                            LABEL,
                            "no open subscription (waiting for a new NATS connection)".to_string(),
                        );
                        warn!("all subscriptions closed; waiting for a new NATS connection");
                    }
                    None => {}
                },
                changed = clients.changed(), if !draining => {
                    if changed.is_err() {
                        continue;
                    }
                    let client = clients.borrow_and_update().clone();
                    let deadline = Instant::now() + drain_timeout.max(Duration::from_secs(1));
                    match subscribe(&client, &subscriptions, deadline).await {
                        Ok(resubscribed) => {
                            info!("subscribed again on a new NATS connection");
                            messages = resubscribed;
                            counters.clear_problem(LABEL);
                        }
                        Err(err) => warn!(error = err, "cannot subscribe on the new NATS connection"),
                    }
                }
            }
        }
    }

    /// The bound of this source's queue in the link's dispatcher: room for
    /// two rounds of `max_in_flight` messages of the server's
    /// `max_payload`, within fixed bounds.
    pub(crate) fn queue_bound(&self, max_in_flight: usize) -> QueueBound {
        QueueBound {
            messages: MAX_QUEUED_MESSAGES,
            bytes: (2 * max_in_flight)
                .saturating_mul(self.connection.max_payload())
                .clamp(MIN_QUEUED_BYTES, MAX_QUEUED_BYTES),
        }
    }
}

/// What the deliveries of one link's core messages share.
struct CoreLink {
    target: Target,
    drain: Drain,
}

/// A core message waiting in the dispatcher.
struct CoreMessage {
    msg: async_nats::Message,
    link: Arc<CoreLink>,
}

impl Pending for CoreMessage {
    fn nats_message(&self) -> &async_nats::Message {
        &self.msg
    }

    /// NATS message in, `handle-message` call out; a call still running at
    /// the drain timeout is abandoned (and counted aborted).
    fn deliver(self: Box<Self>) -> DeliveryFuture {
        let Self { msg, link } = *self;
        Box::pin(async move {
            let (headers, message) = message::for_handler(&msg, ReplyTo::Keep);
            tokio::select! {
                biased;
                () = link.drain.aborted() => {}
                _ = invoke(&link.target, headers, &message) => {}
            }
        })
    }

    /// Nobody else would get it: it is counted as dropped.
    fn withdraw(self: Box<Self>) -> Option<DeliveryFuture> {
        None
    }
}

/// Subscribes to each of `subscriptions`, giving up at `deadline`: while
/// the client is disconnected its command queue can be full, and a
/// subscribe then waits for room.
async fn subscribe(
    client: &async_nats::Client,
    subscriptions: &[Subscription],
    deadline: Instant,
) -> Result<stream::SelectAll<async_nats::Subscriber>, String> {
    let all = async {
        let mut subscribers = Vec::with_capacity(subscriptions.len());
        for subscription in subscriptions {
            let subject = subscription.subject.clone();
            let subscriber = match &subscription.queue_group {
                Some(queue) => client.queue_subscribe(subject, queue.clone()).await,
                None => client.subscribe(subject).await,
            }
            .map_err(|err| format!("cannot subscribe to {:?}: {err}", subscription.subject))?;
            subscribers.push(subscriber);
        }
        Ok(stream::select_all(subscribers))
    };
    tokio::time::timeout_at(deadline, all)
        .await
        .map_err(|_| "NATS client too busy to take the subscriptions in time".to_string())?
}

/// Withdraws interest in every subscription. The caller bounds it: a full
/// command queue (server unreachable) must not hold the drain up.
async fn unsubscribe(messages: &mut stream::SelectAll<async_nats::Subscriber>) {
    for subscriber in messages.iter_mut() {
        if let Err(err) = subscriber.drain().await {
            debug!(%err, "drain request failed; the connection is going away");
        }
    }
}
