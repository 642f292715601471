//! One pull request to a JetStream consumer and what it brings.
//!
//! async-nats' own `Batch` ends at the first `409` status. A server (2.11
//! on) ends a request that asked for a byte bound with `409 Batch
//! Completed` once it has handed out the messages asked for; on a
//! replicated consumer that status can overtake the messages themselves,
//! which wait for their replicas. Ended there, the request would lose its
//! messages to an inbox nobody reads (each then waits out its ack wait,
//! and is lost that way again on the next request). Here a request ends
//! when every message it was given has arrived, when the server says no
//! more will come, or at its deadline.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::jetstream::{self, consumer::PullConsumer};
use async_nats::{Client, StatusCode, Subscriber};
use futures::StreamExt as _;
use tokio::time::Instant;

/// How long a request waits past its own expiry for the server's word
/// that it expired: beyond that the server (or the route to it) is gone.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);
/// How long messages handed out by a completed request may still take:
/// on a replicated consumer they wait for their replicas.
const STRAGGLER_WAIT: Duration = Duration::from_secs(2);

/// The header in which a server (2.11 on) names the pin id of a pinned
/// consumer's messages.
pub(crate) const PIN_ID_HEADER: &str = "Nats-Pin-Id";

/// The status of a pull request whose pin id is no longer the consumer's
/// (`423 Nats-Pin-Id mismatch`, `423 Nats-Wrong-Pin-Id`).
const PIN_LOST: u16 = 423;

/// The priority group a pull request of a pinned consumer names, and the
/// pin id this instance holds, if any.
pub(crate) struct PinnedPull<'a> {
    pub(crate) group: &'a str,
    pub(crate) pin: Option<&'a str>,
}

/// What a pull request asks for.
pub(crate) struct Ask<'a> {
    /// Most messages.
    pub(crate) count: usize,
    /// Most bytes (no bound when `None`).
    pub(crate) max_bytes: Option<usize>,
    /// How long the server holds the request.
    pub(crate) expires: Duration,
    /// A pinned consumer's group, and the pin if this instance holds it.
    pub(crate) pinned: Option<PinnedPull<'a>>,
}

/// A pull request in progress; dropping it drops its inbox.
pub(crate) struct Pull {
    subscriber: Subscriber,
    context: jetstream::Context,
    /// Messages the request may still bring.
    pending: usize,
    deadline: Instant,
}

impl Pull {
    /// Asks `consumer` for what `ask` says. `api` is the JetStream API's
    /// subject prefix (`$JS.API`, or a domain's); `context` is the one
    /// messages are acked through.
    pub(crate) async fn start(
        client: &Client,
        api: &str,
        context: &jetstream::Context,
        consumer: &PullConsumer,
        ask: Ask<'_>,
    ) -> Result<Self, async_nats::Error> {
        let Ask {
            count,
            max_bytes,
            expires,
            pinned,
        } = ask;
        let info = consumer.cached_info();
        let subject = format!("{api}.CONSUMER.MSG.NEXT.{}.{}", info.stream_name, info.name);
        let mut request = serde_json::to_value(BatchConfig {
            batch: count,
            expires: Some(expires),
            max_bytes: max_bytes.unwrap_or(0),
            ..BatchConfig::default()
        })?;
        if let Some(PinnedPull { group, pin }) = pinned {
            request["group"] = group.into();
            if let Some(pin) = pin {
                request["id"] = pin.into();
            }
        }
        let request = serde_json::to_vec(&request)?;
        let inbox = client.new_inbox();
        // Same connection: the server has the subscription before the
        // request, so nothing the request brings can miss it.
        let subscriber = client.subscribe(inbox.clone()).await?;
        client
            .publish_with_reply(subject, inbox, request.into())
            .await?;
        Ok(Self {
            subscriber,
            context: context.clone(),
            pending: count,
            deadline: Instant::now() + expires + EXPIRY_MARGIN,
        })
    }

    /// The next message; `None` once the request is over.
    pub(crate) async fn next(&mut self) -> Option<Result<jetstream::Message, PullError>> {
        while self.pending > 0 {
            let message = tokio::time::timeout_at(self.deadline, self.subscriber.next())
                .await
                .ok()??;
            match message.status {
                None | Some(StatusCode::OK) => {
                    self.pending -= 1;
                    return Some(Ok(jetstream::Message {
                        message,
                        context: self.context.clone(),
                    }));
                }
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                // Expired, or (no-wait) nothing to deliver.
                Some(StatusCode::TIMEOUT | StatusCode::NOT_FOUND) => return None,
                Some(StatusCode::REQUEST_TERMINATED)
                    if message.description.as_deref() == Some("Batch Completed") =>
                {
                    // What the server will not send; the rest is on its way.
                    let undelivered = pending_header(&message).unwrap_or(self.pending);
                    self.pending = self.pending.saturating_sub(undelivered);
                    self.deadline = self.deadline.min(Instant::now() + STRAGGLER_WAIT);
                }
                Some(status) => {
                    self.pending = 0;
                    return Some(Err(PullError {
                        status: status.as_u16(),
                        description: message.description.unwrap_or_default(),
                    }));
                }
            }
        }
        None
    }
}

/// The `Nats-Pending-Messages` header of a status: how many messages of
/// the request were not handed out.
fn pending_header(message: &async_nats::Message) -> Option<usize> {
    message
        .headers
        .as_ref()?
        .get("Nats-Pending-Messages")?
        .as_str()
        .parse()
        .ok()
}

/// The server ended a pull request for a reason other than its end.
#[derive(Debug)]
pub(crate) struct PullError {
    status: u16,
    description: String,
}

impl PullError {
    /// True when the consumer's pin went to another instance.
    pub(crate) fn is_pin_lost(&self) -> bool {
        self.status == PIN_LOST
    }
}

impl std::fmt::Display for PullError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server ended the pull request: {} {}",
            self.status, self.description
        )
    }
}

impl std::error::Error for PullError {}
