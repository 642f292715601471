//! Core NATS subscriptions as a source of a handler link.
//!
//! The source reads all of the link's subscriptions as fast as they
//! deliver, into a queue bounded in bytes and messages, and starts a
//! delivery for each message it gets a slot for. A slow component fills
//! the queue; beyond its bound new messages are dropped and counted (NATS's
//! own slow-consumer rule, applied per link), so memory stays bounded and
//! the shared connection keeps being read.

use std::collections::VecDeque;
use std::time::Duration;

use futures::stream::{self, FuturesUnordered, StreamExt as _};
use futures::FutureExt as _;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::drain::Drain;
use super::invoke::{invoke, Target};
use super::slots::{Slot, SlotQueue};
use crate::config::Subscription;
use crate::connection::{Lease, SubscriberRecord};
use crate::consumer::BrokerMessage;
use crate::metrics::Dropped;
use crate::trace_context;

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

    /// Delivers until the link drains.
    ///
    /// On stop the source drains as NATS clients do: it withdraws its
    /// interest, confirms that with a server round trip, and keeps
    /// delivering what arrived until then; if the drain time runs out
    /// first, what is still queued is dropped and counted. When the
    /// connection's client is replaced (see `connection`), the source
    /// subscribes again on the new one.
    pub(crate) async fn run(
        self,
        target: Target,
        mut slots: SlotQueue,
        drain: Drain,
        tasks: TaskTracker,
    ) {
        let Self {
            connection,
            mut clients,
            subscriptions,
            mut messages,
            _records,
            drain_timeout,
        } = self;
        let counters = &target.counters;
        let mut queue = Queue::new(slots.max_in_flight(), connection.max_payload());
        // Deliveries run inside this task rather than as tasks of their own:
        // on the provider's single thread that saves a task and a wake-up
        // per message.
        let mut in_flight = FuturesUnordered::new();
        let mut draining = false;
        loop {
            if draining && messages.is_empty() && queue.is_empty() && in_flight.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                () = drain.aborted() => {
                    // Counted as dropped, with what the client still buffers,
                    // so that the link's figures add up to what it received.
                    // Dropping the calls still running counts them aborted.
                    let mut left = queue.len() as u64;
                    while let Some(Some(_)) = messages.next().now_or_never() {
                        left += 1;
                    }
                    counters.dropped(Dropped::DrainTimeout, left);
                    if left > 0 {
                        warn!(dropped = left, "messages not yet delivered were dropped at the drain timeout");
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
                    // hold up deliveries.
                    let connection = connection.clone();
                    tasks.spawn(async move {
                        tokio::time::timeout_at(deadline, connection.round_trip()).await
                    });
                }
                slot = slots.next(), if !queue.is_empty() => {
                    let mut slot = Some(slot);
                    while let Some(free) = slot.take().or_else(|| slots.try_next()) {
                        let Some(msg) = queue.pop() else { break };
                        in_flight.push(deliver(msg, free, &target));
                    }
                }
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                next = messages.next(), if !messages.is_empty() => match next {
                    Some(msg) if queue.has_room_for(&msg) => queue.push(msg),
                    Some(msg) => {
                        let dropped = counters.dropped(Dropped::QueueFull, 1);
                        // One line per power of two, not one per message.
                        if dropped.is_power_of_two() {
                            warn!(
                                subject = msg.subject.as_str(),
                                dropped,
                                "handler link is behind: its queue is full, message dropped"
                            );
                        }
                    }
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

/// Delivers one message: NATS message in, `handle-message` call out; the
/// slot is held until the call ends.
async fn deliver(msg: async_nats::Message, slot: Slot, target: &Target) {
    let headers = trace_context::from_message(msg.headers.as_ref());
    let message = BrokerMessage {
        subject: msg.subject.to_string(),
        body: msg.payload,
        reply_to: msg.reply.map(|reply| reply.to_string()),
    };
    invoke(target, headers, &message).await;
    drop(slot);
}

/// Received messages waiting for a free delivery slot, bounded in count and
/// bytes.
struct Queue {
    messages: VecDeque<async_nats::Message>,
    bytes: usize,
    max_bytes: usize,
}

impl Queue {
    fn new(max_in_flight: usize, max_payload: usize) -> Self {
        Self {
            messages: VecDeque::new(),
            bytes: 0,
            max_bytes: (2 * max_in_flight)
                .saturating_mul(max_payload)
                .clamp(MIN_QUEUED_BYTES, MAX_QUEUED_BYTES),
        }
    }

    fn size(msg: &async_nats::Message) -> usize {
        msg.length.max(msg.payload.len())
    }

    /// True if `msg` fits in the queue.
    fn has_room_for(&self, msg: &async_nats::Message) -> bool {
        self.messages.len() < MAX_QUEUED_MESSAGES && self.bytes + Self::size(msg) <= self.max_bytes
    }

    fn push(&mut self, msg: async_nats::Message) {
        self.bytes += Self::size(&msg);
        self.messages.push_back(msg);
    }

    fn pop(&mut self) -> Option<async_nats::Message> {
        let msg = self.messages.pop_front()?;
        self.bytes -= Self::size(&msg);
        if self.messages.is_empty() && self.messages.capacity() > 1024 {
            // Give the memory of a burst back.
            self.messages = VecDeque::new();
        }
        Some(msg)
    }

    fn len(&self) -> usize {
        self.messages.len()
    }

    fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}
