//! The delivery path: NATS subscriptions of a handler link, and every message
//! they receive handed to the linked component's `handle-message`.
//!
//! One task per link reads all of the link's subscriptions. It takes the next
//! message only while fewer than `max_in_flight` deliveries are running, so
//! a slow component back-pressures the subscription (whose buffer is bounded
//! by the NATS client) instead of growing the provider's memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::stream::{self, StreamExt as _};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn, Instrument as _};
use wasmcloud_provider_sdk::provider::WrpcClient;

use crate::bindings::wasmcloud::messaging::handler;
use crate::config::{HandlerSettings, Subscription};
use crate::connection::NatsConnection;
use crate::consumer::BrokerMessage;
use crate::trace_context;

/// Counters of one handler link, logged when the link goes.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    pub delivered: AtomicU64,
    pub handler_errors: AtomicU64,
    pub invoke_failures: AtomicU64,
    pub timeouts: AtomicU64,
}

impl DeliveryStats {
    fn summary(&self) -> String {
        format!(
            "delivered {}, handler errors {}, failed invocations {}, timeouts {}",
            self.delivered.load(Ordering::Relaxed),
            self.handler_errors.load(Ordering::Relaxed),
            self.invoke_failures.load(Ordering::Relaxed),
            self.timeouts.load(Ordering::Relaxed),
        )
    }
}

/// The component a handler link delivers to.
#[derive(Clone)]
pub struct Target {
    pub component_id: Arc<str>,
    pub link_name: Arc<str>,
    /// Reused for every delivery of the link.
    pub wrpc: WrpcClient,
}

/// A running handler link. Dropping it without [`stop`](Self::stop) aborts
/// deliveries without draining.
pub struct Deliveries {
    stop: CancellationToken,
    task: JoinHandle<()>,
    pub stats: Arc<DeliveryStats>,
}

impl Deliveries {
    /// Subscribes to every entry of `settings.subscriptions` and confirms the
    /// subscriptions with a server round trip (bounded by the connect
    /// timeout), so that a message published after this returns is delivered.
    pub async fn start(
        connection: Arc<NatsConnection>,
        settings: HandlerSettings,
        connect_timeout: Duration,
        target: Target,
    ) -> anyhow::Result<Self> {
        let client = &connection.client;
        let mut subscribers = Vec::with_capacity(settings.subscriptions.len());
        for Subscription {
            subject,
            queue_group,
        } in &settings.subscriptions
        {
            let subscriber = match queue_group {
                Some(queue) => client.queue_subscribe(subject.clone(), queue.clone()).await,
                None => client.subscribe(subject.clone()).await,
            }
            .with_context(|| format!("cannot subscribe to {subject:?}"))?;
            subscribers.push(subscriber);
        }
        match tokio::time::timeout(connect_timeout, connection.round_trip()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => warn!(%err, "could not confirm subscriptions with the server"),
            Err(_) => warn!(
                servers = connection.servers,
                state = connection.state(),
                "NATS server not reachable yet; subscriptions start once connected"
            ),
        }

        let stats = Arc::new(DeliveryStats::default());
        let stop = CancellationToken::new();
        let span = tracing::info_span!(
            "handler_link",
            component = %target.component_id,
            link_name = %target.link_name
        );
        let task = tokio::spawn(
            run(
                connection,
                stream::select_all(subscribers),
                settings,
                target,
                Arc::clone(&stats),
                stop.clone(),
            )
            .instrument(span),
        );
        Ok(Self { stop, task, stats })
    }

    /// Drains the link (see [`run`]). No delivery starts after this returns.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Err(err) = (&mut self.task).await {
            warn!(%err, "delivery task ended abnormally");
        }
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The delivery loop of one handler link, from subscription to drain.
///
/// On stop the link drains as NATS clients do: it withdraws its interest,
/// confirms that with a server round trip, keeps delivering what arrived
/// until then, and waits for in-flight calls, all within `drain_timeout`;
/// whatever is left then is aborted.
async fn run(
    connection: Arc<NatsConnection>,
    mut messages: stream::SelectAll<async_nats::Subscriber>,
    settings: HandlerSettings,
    target: Target,
    stats: Arc<DeliveryStats>,
    stop: CancellationToken,
) {
    let mut in_flight = JoinSet::new();
    let mut drain_deadline = None;
    loop {
        if drain_deadline.is_some() && messages.is_empty() && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            () = stop.cancelled(), if drain_deadline.is_none() => {
                drain_deadline = Some(Instant::now() + settings.drain_timeout);
                for subscriber in messages.iter_mut() {
                    if let Err(err) = subscriber.drain().await {
                        debug!(%err, "drain request failed; the connection is going away");
                    }
                }
                // The client ends a draining subscription the next time its
                // connection task wakes up; the reply to a round trip is that
                // wake-up, after every message sent before the UNSUB. Not
                // awaited here: while disconnected it would hold up deliveries.
                let connection = Arc::clone(&connection);
                let bound = settings.drain_timeout;
                tokio::spawn(async move {
                    tokio::time::timeout(bound, connection.round_trip()).await
                });
            }
            () = sleep_until_deadline(drain_deadline) => {
                warn!(
                    aborted = in_flight.len(),
                    drain_timeout_ms = settings.drain_timeout.as_millis() as u64,
                    "deliveries still running after the drain timeout were aborted; \
                     messages not yet delivered were dropped"
                );
                in_flight.shutdown().await;
                break;
            }
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            next = messages.next(), if !messages.is_empty() && in_flight.len() < settings.max_in_flight => {
                match next {
                    Some(msg) => {
                        in_flight.spawn(deliver(
                            msg,
                            target.clone(),
                            settings.handler_timeout,
                            Arc::clone(&stats),
                        ));
                    }
                    None if drain_deadline.is_none() => {
                        warn!("all subscriptions closed by the NATS client");
                    }
                    None => {}
                }
            }
        }
    }
    info!(stats = stats.summary(), "handler link stopped");
}

/// Sleeps until the drain deadline, or forever while not draining.
async fn sleep_until_deadline(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Delivers one message: NATS message in, `handle-message` call out, with
/// its own timeout so that a lost wRPC reply frees its slot.
async fn deliver(
    msg: async_nats::Message,
    target: Target,
    timeout: Duration,
    stats: Arc<DeliveryStats>,
) {
    let headers = trace_context::from_message(msg.headers.as_ref());
    let message = BrokerMessage {
        subject: msg.subject.to_string(),
        body: msg.payload,
        reply_to: msg.reply.map(|reply| reply.to_string()),
    };
    trace!(
        subject = message.subject,
        bytes = message.body.len(),
        "delivering"
    );
    let call = handler::handle_message(&target.wrpc, headers, &message);
    let subject = message.subject.as_str();
    let counter = match tokio::time::timeout(timeout, call).await {
        Ok(Ok(Ok(()))) => &stats.delivered,
        Ok(Ok(Err(error))) => {
            warn!(subject, error, "handle-message returned an error");
            &stats.handler_errors
        }
        Ok(Err(err)) => {
            warn!(subject, error = %format!("{err:#}"), "handle-message invocation failed");
            &stats.invoke_failures
        }
        Err(_) => {
            warn!(
                subject,
                timeout_ms = timeout.as_millis() as u64,
                "handle-message did not answer in time"
            );
            &stats.timeouts
        }
    };
    counter.fetch_add(1, Ordering::Relaxed);
}
