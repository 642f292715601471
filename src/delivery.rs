//! The delivery path: NATS subscriptions of a handler link, and every message
//! they receive handed to the linked component's `handle-message`.
//!
//! One task per link reads all of the link's subscriptions as fast as they
//! deliver, into a queue bounded in bytes and messages, and starts a
//! delivery whenever fewer than `max_in_flight` are running. A slow
//! component fills the queue; beyond its bound new messages are dropped and
//! counted (NATS's own slow-consumer rule, applied per link), so memory stays
//! bounded and the shared connection keeps being read.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::stream::{self, StreamExt as _};
use futures::FutureExt as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn, Instrument as _};
use wasmcloud_provider_sdk::provider::WrpcClient;

use crate::bindings::wasmcloud::messaging::handler;
use crate::config::{HandlerSettings, Subscription};
use crate::connection::{lock, Lease, SubscriberRecord};
use crate::consumer::BrokerMessage;
use crate::metrics::{Dropped, Failure, LinkMetrics};
use crate::{durable, trace_context};

/// Most messages a link queues while its component is busy; NATS clients
/// use the same default for one subscription's buffer.
const MAX_QUEUED_MESSAGES: usize = 65_536;
/// Most bytes a link queues: room for two rounds of `max_in_flight`
/// messages of the server's `max_payload`, within these bounds.
const MIN_QUEUED_BYTES: usize = 8 * 1024 * 1024;
const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// Counters and state of one handler link, for health and the stop log.
#[derive(Debug, Default)]
pub struct LinkStatus {
    pub delivered: AtomicU64,
    pub handler_errors: AtomicU64,
    pub invoke_failures: AtomicU64,
    pub timeouts: AtomicU64,
    /// Messages dropped because the link's queue was full, or left in it
    /// when a drain timed out.
    pub dropped: AtomicU64,
    /// Calls still running when a drain timed out.
    pub aborted: AtomicU64,
    /// False while the link has no open subscription (all closed by the
    /// client, waiting for a new connection).
    pub subscribed: AtomicBool,
    /// Durable messages published to the dead-letter subject.
    pub dead_lettered: AtomicU64,
    /// Durable messages that failed their last attempt with no dead-letter
    /// subject to go to.
    pub terminated: AtomicU64,
    /// Why a durable consumer cannot be read now, by `stream/consumer`.
    problems: Mutex<BTreeMap<String, String>>,
}

impl LinkStatus {
    pub fn summary(&self) -> String {
        format!(
            "delivered {}, handler errors {}, failed invocations {}, timeouts {}, dropped {}, \
             aborted {}, dead-lettered {}, terminated {}",
            self.delivered.load(Ordering::Relaxed),
            self.handler_errors.load(Ordering::Relaxed),
            self.invoke_failures.load(Ordering::Relaxed),
            self.timeouts.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
            self.aborted.load(Ordering::Relaxed),
            self.dead_lettered.load(Ordering::Relaxed),
            self.terminated.load(Ordering::Relaxed),
        )
    }

    /// The current problems of the link's durable consumers, for health.
    pub fn problems(&self) -> Vec<String> {
        lock(&self.problems).values().cloned().collect()
    }

    /// Records `problem` for `source`; true if it is new or changed.
    pub fn set_problem(&self, source: &str, problem: String) -> bool {
        lock(&self.problems).insert(source.to_string(), problem.clone()) != Some(problem)
    }

    /// Clears the problem of `source`; true if there was one.
    pub fn clear_problem(&self, source: &str) -> bool {
        lock(&self.problems).remove(source).is_some()
    }
}

/// The component a handler link delivers to.
#[derive(Clone)]
pub struct Target {
    pub component_id: Arc<str>,
    pub link_name: Arc<str>,
    /// Reused for every delivery of the link.
    pub wrpc: WrpcClient,
    pub metrics: Arc<LinkMetrics>,
}

/// A running handler link. Dropping it without [`stop`](Self::stop) aborts
/// deliveries without draining.
pub struct Deliveries {
    stop: CancellationToken,
    /// The core subscriptions' task, then one per durable consumer.
    tasks: Vec<JoinHandle<()>>,
    pub status: Arc<LinkStatus>,
    pub connection: Lease,
    pub subscriptions: Vec<Subscription>,
}

impl Deliveries {
    /// Subscribes to every entry of `settings.subscriptions` and confirms the
    /// subscriptions with a server round trip, and binds the link's durable
    /// consumers (see [`durable`]), all within `connect_timeout`, so that a
    /// message published after this returns is delivered. An
    /// unreachable server is not an error: the link starts and subscribes
    /// once connected; health says so meanwhile.
    pub async fn start(
        connection: Lease,
        settings: HandlerSettings,
        connect_timeout: Duration,
        target: Target,
    ) -> anyhow::Result<Self> {
        let deadline = Instant::now() + connect_timeout;
        // A link that only consumes streams has no subscription task.
        let core = if settings.subscriptions.is_empty() {
            None
        } else {
            Some(subscribe_link(&connection, &settings.subscriptions, deadline, &target).await?)
        };
        let status = Arc::new(LinkStatus {
            subscribed: AtomicBool::new(true),
            ..LinkStatus::default()
        });
        let stop = CancellationToken::new();
        let subscriptions = settings.subscriptions.clone();
        let mut tasks =
            durable::start(&connection, &settings, &target, &status, &stop, deadline).await;
        if let Some((subscriber_records, clients, subscribers)) = core {
            let span = tracing::info_span!(
                "handler_link",
                component = %target.component_id,
                link_name = %target.link_name
            );
            let link = LinkTask {
                connection: connection.clone(),
                clients,
                settings,
                target,
                status: Arc::clone(&status),
                stop: stop.clone(),
                subscriber_records,
            };
            tasks.push(tokio::spawn(run(link, subscribers).instrument(span)));
        }
        Ok(Self {
            stop,
            tasks,
            status,
            connection,
            subscriptions,
        })
    }

    /// Drains the link (see [`run`] and [`durable`]): resolves once no
    /// delivery runs any more, within the link's `drain_timeout_ms`.
    pub async fn stop(mut self) {
        self.stop.cancel();
        for task in &mut self.tasks {
            if let Err(err) = task.await {
                warn!(%err, "delivery task ended abnormally");
            }
        }
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What [`run`] starts from: the link named as each subject's
/// subscriber, the watch of the connection's clients (the current one
/// marked seen), and the subscriptions, confirmed by a round trip.
type Subscribed = (
    Vec<SubscriberRecord>,
    watch::Receiver<async_nats::Client>,
    stream::SelectAll<async_nats::Subscriber>,
);

/// Subscribes a link to `subscriptions` and confirms them with a server
/// round trip, by `deadline` (see [`Deliveries::start`]).
async fn subscribe_link(
    connection: &Lease,
    subscriptions: &[Subscription],
    deadline: Instant,
    target: &Target,
) -> anyhow::Result<Subscribed> {
    let link = format!("{}/{}", target.component_id, target.link_name);
    let records = subscriptions
        .iter()
        .map(|s| connection.register_subscriber(&link, &s.subject))
        .collect();
    // Marks the client subscribed on as seen, so that only a later one
    // makes the link subscribe again.
    let mut clients = connection.watch_client();
    let client = clients.borrow_and_update().clone();
    let subscribers = subscribe(&client, subscriptions, deadline)
        .await
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    match tokio::time::timeout_at(deadline, connection.round_trip()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => warn!(%err, "could not confirm subscriptions with the server"),
        Err(_) => warn!(
            servers = connection.servers,
            state = connection.state(),
            "NATS server not reachable yet; subscriptions start once connected"
        ),
    }
    Ok((records, clients, subscribers))
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

/// What the delivery task of one link owns.
struct LinkTask {
    connection: Lease,
    /// Sees each new client of the connection, to subscribe again.
    clients: watch::Receiver<async_nats::Client>,
    settings: HandlerSettings,
    target: Target,
    status: Arc<LinkStatus>,
    stop: CancellationToken,
    /// Keeps the link named in its connection's subscriber list.
    subscriber_records: Vec<SubscriberRecord>,
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

    fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// The delivery loop of one handler link, from subscription to drain.
///
/// On stop the link drains as NATS clients do: it withdraws its interest,
/// confirms that with a server round trip, keeps delivering what arrived
/// until then, and waits for in-flight calls, all within `drain_timeout`;
/// whatever is left then is aborted. When the connection's client is
/// replaced (see `connection`), the link subscribes again on the new one.
async fn run(link: LinkTask, mut messages: stream::SelectAll<async_nats::Subscriber>) {
    let LinkTask {
        connection,
        mut clients,
        settings,
        target,
        status,
        stop,
        subscriber_records: _records,
    } = link;
    let mut queue = Queue::new(settings.max_in_flight, connection.max_payload());
    // Deliveries run inside this task rather than as tasks of their own: on
    // the provider's single thread that saves a task and a wake-up per
    // message.
    let mut in_flight = FuturesUnordered::new();
    let mut drain_deadline = None;
    loop {
        while in_flight.len() < settings.max_in_flight {
            let Some(msg) = queue.pop() else { break };
            in_flight.push(deliver(
                msg,
                target.clone(),
                settings.handler_timeout,
                Arc::clone(&status),
            ));
        }
        if drain_deadline.is_some()
            && messages.is_empty()
            && queue.is_empty()
            && in_flight.is_empty()
        {
            break;
        }
        tokio::select! {
            biased;
            () = stop.cancelled(), if drain_deadline.is_none() => {
                let deadline = Instant::now() + settings.drain_timeout;
                drain_deadline = Some(deadline);
                unsubscribe(&mut messages, deadline).await;
                // The client ends a draining subscription the next time its
                // connection task wakes up; the reply to a round trip is that
                // wake-up, after every message sent before the UNSUB. Not
                // awaited here: while disconnected it would hold up deliveries.
                let connection = connection.clone();
                tokio::spawn(async move {
                    tokio::time::timeout_at(deadline, connection.round_trip()).await
                });
            }
            () = sleep_until_deadline(drain_deadline) => {
                // Counted as dropped, with what the client still buffers, so
                // that the link's figures add up to what it received.
                let mut left = queue.messages.len() as u64;
                while let Some(Some(_)) = messages.next().now_or_never() {
                    left += 1;
                }
                status.dropped.fetch_add(left, Ordering::Relaxed);
                target.metrics.dropped(Dropped::DrainTimeout, left);
                // Dropping the set cancels the calls still running.
                let aborted = in_flight.len() as u64;
                drop(std::mem::take(&mut in_flight));
                status.aborted.fetch_add(aborted, Ordering::Relaxed);
                warn!(
                    aborted,
                    dropped = left,
                    drain_timeout_ms = settings.drain_timeout.as_millis() as u64,
                    "deliveries still running after the drain timeout were aborted; \
                     messages not yet delivered were dropped"
                );
                break;
            }
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            next = messages.next(), if !messages.is_empty() => match next {
                Some(msg) if queue.has_room_for(&msg) => queue.push(msg),
                Some(msg) => {
                    let dropped = status.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    target.metrics.dropped(Dropped::QueueFull, 1);
                    // One line per power of two, not one per message.
                    if dropped.is_power_of_two() {
                        warn!(
                            subject = msg.subject.as_str(),
                            dropped,
                            "handler link is behind: its queue is full, message dropped"
                        );
                    }
                }
                None if drain_deadline.is_none() => {
                    status.subscribed.store(false, Ordering::Relaxed);
                    warn!("all subscriptions closed; waiting for a new NATS connection");
                }
                None => {}
            },
            changed = clients.changed(), if drain_deadline.is_none() => {
                if changed.is_err() {
                    continue;
                }
                let client = clients.borrow_and_update().clone();
                let deadline = Instant::now() + settings.drain_timeout.max(Duration::from_secs(1));
                match subscribe(&client, &settings.subscriptions, deadline).await {
                    Ok(resubscribed) => {
                        info!("subscribed again on a new NATS connection");
                        messages = resubscribed;
                        status.subscribed.store(true, Ordering::Relaxed);
                    }
                    Err(err) => warn!(error = err, "cannot subscribe on the new NATS connection"),
                }
            }
        }
    }
    info!(stats = status.summary(), "handler link stopped");
}

/// Withdraws interest in every subscription, within `deadline`: a full
/// command queue (server unreachable) must not hold the drain up.
async fn unsubscribe(messages: &mut stream::SelectAll<async_nats::Subscriber>, deadline: Instant) {
    let all = async {
        for subscriber in messages.iter_mut() {
            if let Err(err) = subscriber.drain().await {
                debug!(%err, "drain request failed; the connection is going away");
            }
        }
    };
    if tokio::time::timeout_at(deadline, all).await.is_err() {
        debug!("NATS client too busy to take the unsubscriptions; closing them");
        *messages = stream::select_all(Vec::new());
    }
}

/// Sleeps until `deadline`, or forever when there is none (not draining,
/// no retry due).
pub(crate) async fn sleep_until_deadline(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Delivers one message: NATS message in, `handle-message` call out.
async fn deliver(
    msg: async_nats::Message,
    target: Target,
    timeout: Duration,
    status: Arc<LinkStatus>,
) {
    let headers = trace_context::from_message(msg.headers.as_ref());
    let message = BrokerMessage {
        subject: msg.subject.to_string(),
        body: msg.payload,
        reply_to: msg.reply.map(|reply| reply.to_string()),
    };
    invoke(&target, headers, &message, timeout, &status).await;
}

/// What became of one `handle-message` call.
pub enum Outcome {
    Handled,
    /// The handler returned `Err` with this text.
    HandlerError(String),
    /// The call did not reach the component, or its answer got lost.
    InvokeFailed(String),
    TimedOut,
}

impl Outcome {
    /// Why the call failed, in words, or `None` if it succeeded.
    pub fn failure(&self) -> Option<String> {
        match self {
            Outcome::Handled => None,
            Outcome::HandlerError(error) => Some(error.clone()),
            Outcome::InvokeFailed(error) => Some(format!("invocation failed: {error}")),
            Outcome::TimedOut => Some("handle-message did not answer in time".to_string()),
        }
    }
}

/// Calls `handle-message` with its own timeout, so that a lost wRPC reply
/// frees its slot; logs a failure and counts the outcome.
pub async fn invoke(
    target: &Target,
    headers: Option<async_nats::HeaderMap>,
    message: &BrokerMessage,
    timeout: Duration,
    status: &LinkStatus,
) -> Outcome {
    trace!(
        subject = message.subject,
        bytes = message.body.len(),
        "delivering"
    );
    let call = handler::handle_message(&target.wrpc, headers, message);
    let subject = message.subject.as_str();
    target.metrics.delivery_started();
    let started = Instant::now();
    let (counter, outcome) = match tokio::time::timeout(timeout, call).await {
        Ok(Ok(Ok(()))) => (&status.delivered, Outcome::Handled),
        Ok(Ok(Err(error))) => {
            warn!(subject, error, "handle-message returned an error");
            (&status.handler_errors, Outcome::HandlerError(error))
        }
        Ok(Err(err)) => {
            let error = format!("{err:#}");
            warn!(subject, error, "handle-message invocation failed");
            (&status.invoke_failures, Outcome::InvokeFailed(error))
        }
        Err(_) => {
            warn!(
                subject,
                timeout_ms = timeout.as_millis() as u64,
                "handle-message did not answer in time"
            );
            (&status.timeouts, Outcome::TimedOut)
        }
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let failure = match outcome {
        Outcome::Handled => None,
        Outcome::HandlerError(_) => Some(Failure::HandlerError),
        Outcome::InvokeFailed(_) => Some(Failure::InvokeFailed),
        Outcome::TimedOut => Some(Failure::Timeout),
    };
    target.metrics.delivery_ended(started.elapsed(), failure);
    outcome
}
