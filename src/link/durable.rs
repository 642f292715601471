//! A JetStream pull consumer as a source of a handler link: each message
//! acknowledged only after `handle-message` returned `Ok`.
//!
//! The source binds the consumer (creating the stream and the consumer
//! where the link says so), then fetches in batches sized by the link's
//! free delivery slots (at least its fair share of them) and its byte
//! bound, so that a slow component leaves messages on the server rather
//! than in the provider. A message's path:
//!
//! 1. fetched; once it has a slot, delivered to the component with
//!    in-progress acks every half `ack_wait` while the call runs, so that a
//!    slow handler is not redelivered meanwhile;
//! 2. `Ok`: acked;
//! 3. `Err`, failed invocation or timeout: nak'd with the link's next
//!    backoff delay, unless it was the last attempt (`max_deliver`): then
//!    it is published to the dead-letter subject (and terminated once
//!    JetStream stored it, tried again until then) or, without one,
//!    terminated with a warning.
//!
//! When the link stops, fetching stops and fetched messages not yet
//! delivered are nak'd; calls still running when the drain time is up are
//! abandoned and their messages nak'd, so that another instance takes them
//! at once. The consumer stays on the server, and the next link with the
//! same name resumes from it.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream;
use async_nats::jetstream::{self, AckKind, ErrorCode};
use async_nats::HeaderMap;
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::drain::{sleep_until, Drain};
use super::invoke::{invoke, Target};
use super::pull::Pull;
use super::slots::{Slot, SlotQueue};
use crate::config::{ConsumerSpec, DurableSettings, ManagedConsumer};
use crate::connection::Lease;
use crate::consumer::BrokerMessage;
use crate::metrics::Dropped;
use crate::trace_context;

/// How long a fetch waits on the server for messages before it asks again;
/// also how soon a consumer that was deleted and recreated is noticed.
const FETCH_EXPIRY: Duration = Duration::from_secs(5);
/// Bound on one JetStream API exchange (stream and consumer look-up or
/// creation, a fetch request, a dead-letter publish and its ack).
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on handing an ack to the client: while disconnected its command
/// queue can be full. An ack that does not go out means a redelivery.
pub(crate) const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before binding again after a failure (missing stream or consumer,
/// no JetStream, server unreachable).
const RETRY_DELAY: Duration = Duration::from_secs(2);
/// Bytes one fetch asks for when the link does not say: room for a burst
/// without letting a backlog of large messages fill the provider's memory.
const DEFAULT_FETCH_BYTES: usize = 8 * 1024 * 1024;
/// Pauses between attempts to store a dead letter: doubling, so that a
/// missing dead-letter stream is not hammered, yet found soon once created.
const DEAD_LETTER_RETRY_MIN: Duration = Duration::from_millis(500);
const DEAD_LETTER_RETRY_MAX: Duration = Duration::from_secs(30);
/// Longest handler error copied into a dead letter's header.
const MAX_ERROR_HEADER_LEN: usize = 1024;

/// Headers a dead letter carries besides the original message's own.
const HEADER_SUBJECT: &str = "Wasmcloud-Original-Subject";
const HEADER_STREAM: &str = "Wasmcloud-Original-Stream";
const HEADER_SEQUENCE: &str = "Wasmcloud-Original-Sequence";
const HEADER_DELIVERIES: &str = "Wasmcloud-Delivery-Count";
const HEADER_ERROR: &str = "Wasmcloud-Last-Error";

/// Why a durable consumer cannot be read now; health shows it.
#[derive(Debug)]
pub(crate) enum DurableError {
    /// The link's connection has no server now.
    Disconnected {
        servers: String,
        state: &'static str,
    },
    NoJetStream,
    StreamNotFound {
        stream: String,
    },
    /// A JetStream API call got no answer in time, or failed on the way.
    NoAnswer {
        what: String,
        detail: String,
    },
    CreateStream {
        stream: String,
        detail: String,
    },
    Consumer {
        consumer: String,
        detail: String,
    },
    PushConsumer {
        consumer: String,
    },
    NotExplicitAck {
        consumer: String,
    },
    /// Several `filter_subjects`, which a server before 2.10 would ignore.
    FilterSubjectsUnsupported {
        version: String,
    },
    Fetch {
        detail: String,
    },
}

impl fmt::Display for DurableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disconnected { servers, state } => write!(f, "NATS at {servers} is {state}"),
            Self::NoJetStream => {
                f.write_str("JetStream is not enabled on the NATS server (or for this account)")
            }
            Self::StreamNotFound { stream } => write!(f, "stream {stream:?} not found"),
            Self::NoAnswer { what, detail } => write!(
                f,
                "the JetStream API did not answer the {what} (is JetStream enabled on the NATS \
                 server?){detail}"
            ),
            Self::CreateStream { stream, detail } => {
                write!(f, "cannot create stream {stream:?}: {detail}")
            }
            Self::Consumer { consumer, detail } => {
                write!(
                    f,
                    "cannot create, update or bind consumer {consumer:?}: {detail}"
                )
            }
            Self::PushConsumer { consumer } => write!(
                f,
                "consumer {consumer:?} is a push consumer; only pull consumers can be bound"
            ),
            Self::NotExplicitAck { consumer } => write!(
                f,
                "consumer {consumer:?} does not ask for explicit acks; messages could not be \
                 acknowledged one by one after their handler succeeded"
            ),
            Self::FilterSubjectsUnsupported { version } => write!(
                f,
                "more than one of filter_subjects needs nats-server 2.10 or later; this server \
                 is {version}"
            ),
            Self::Fetch { detail } => write!(f, "fetch failed: {detail}"),
        }
    }
}

/// Why a dead letter was not stored (yet).
#[derive(Debug)]
enum DeadLetterError {
    Publish(String),
    NotStored(String),
    NoAck,
}

impl fmt::Display for DeadLetterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Publish(detail) => write!(f, "publish failed: {detail}"),
            Self::NotStored(detail) => {
                write!(
                    f,
                    "not stored by a stream (is one bound to the subject?): {detail}"
                )
            }
            Self::NoAck => write!(f, "no ack from JetStream within {API_TIMEOUT:?}"),
        }
    }
}

/// One durable consumer of a handler link.
pub(crate) struct DurableSource {
    connection: Lease,
    source: crate::config::DurableSource,
    consumer_name: String,
    /// `stream/consumer`, naming the consumer in health and logs.
    label: String,
    policy: Arc<DurableSettings>,
    target: Target,
    drain: Drain,
    /// The outcome of the bind at link start (see [`DurableSource::bind_at_start`]).
    first: Option<Result<Bound, DurableError>>,
}

/// A consumer found on the server, and what its deliveries need.
struct Bound {
    consumer: PullConsumer,
    settle: Arc<Settle>,
}

/// What a delivery needs besides its message; shared by all of a
/// consumer's deliveries.
struct Settle {
    target: Target,
    policy: Arc<DurableSettings>,
    /// The consumer's own settings, which decide its messages' fate.
    ack_wait: Duration,
    /// Attempts per message; `None` for unlimited.
    max_deliver: Option<u64>,
    drain: Drain,
    jetstream: jetstream::Context,
}

impl DurableSource {
    /// The source for `source`, bound (its stream and consumer created
    /// where the link says so) by `deadline`, so that a message published
    /// once the link is put is consumed; one that cannot be bound yet is
    /// retried when it runs, and health says why meanwhile.
    pub(crate) async fn bind_at_start(
        connection: &Lease,
        source: &crate::config::DurableSource,
        policy: &Arc<DurableSettings>,
        target: &Target,
        drain: &Drain,
        deadline: Instant,
    ) -> Self {
        let consumer_name = match &source.consumer {
            ConsumerSpec::Managed(ManagedConsumer {
                name: Some(name), ..
            })
            | ConsumerSpec::Existing { name } => name.clone(),
            ConsumerSpec::Managed(ManagedConsumer { name: None, .. }) => {
                crate::config::default_durable_name(&target.component_id, &target.link_name)
            }
        };
        let mut this = Self {
            connection: connection.clone(),
            label: format!("{}/{consumer_name}", source.stream),
            source: source.clone(),
            consumer_name,
            policy: Arc::clone(policy),
            target: target.clone(),
            drain: drain.clone(),
            first: None,
        };
        let first = match tokio::time::timeout_at(deadline, this.bind()).await {
            Ok(bound) => bound,
            Err(_) => Err(DurableError::NoAnswer {
                what: "consumer look-up within the link's connect timeout".to_string(),
                detail: String::new(),
            }),
        };
        this.first = Some(first);
        this
    }

    /// `stream/consumer`, for logs.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// Fetches and delivers until the link drains.
    pub(crate) async fn run(mut self, mut slots: SlotQueue) {
        let mut bound: Option<Bound> = None;
        let mut batch: Option<Pull> = None;
        // Fetched messages waiting for a slot.
        let mut waiting: VecDeque<jetstream::Message> = VecDeque::new();
        let mut in_flight = FuturesUnordered::new();
        let mut retry_at: Option<Instant> = None;
        let mut stopping = false;
        let mut connected = self.connection.watch_connected();
        match self.first.take() {
            Some(Ok(found)) => {
                self.clear_problem();
                bound = Some(found);
            }
            Some(Err(problem)) => self.problem(problem, &mut retry_at),
            None => {}
        }
        loop {
            if stopping && in_flight.is_empty() {
                break;
            }
            let due = retry_at.is_none_or(|at| Instant::now() >= at);
            if !stopping && due && bound.is_none() {
                match tokio::time::timeout(API_TIMEOUT, self.bind()).await {
                    Ok(Ok(found)) => {
                        self.clear_problem();
                        bound = Some(found);
                    }
                    Ok(Err(problem)) => self.problem(problem, &mut retry_at),
                    Err(_) => self.problem(
                        DurableError::NoAnswer {
                            what: "consumer look-up".to_string(),
                            detail: format!(" within {API_TIMEOUT:?}"),
                        },
                        &mut retry_at,
                    ),
                }
            }
            if let (false, None, Some(found)) = (stopping, &batch, &bound) {
                if let Some(count) = fetch_size(&slots, in_flight.len() + waiting.len()) {
                    match tokio::time::timeout(API_TIMEOUT, self.fetch(found, count)).await {
                        Ok(Ok(started)) => {
                            // Only a reconnection after this request counts.
                            connected.borrow_and_update();
                            batch = Some(started);
                        }
                        Ok(Err(problem)) => {
                            bound = None;
                            self.problem(problem, &mut retry_at);
                        }
                        Err(_) => {
                            bound = None;
                            self.problem(
                                DurableError::Fetch {
                                    detail: "the fetch request timed out".to_string(),
                                },
                                &mut retry_at,
                            );
                        }
                    }
                }
            }
            tokio::select! {
                biased;
                // Deliveries see the abort themselves and nak their messages.
                () = self.drain.stopping(), if !stopping => {
                    stopping = true;
                    // Fetched messages not delivered, those the client still
                    // buffers included, are nak'd, so that another instance
                    // gets them now. The open fetch goes with its
                    // subscription: the server drops a pull request whose
                    // reply subject nobody listens to any more (kept open,
                    // it would take messages published after the stop).
                    if let Some(mut open) = batch.take() {
                        while let Some(Some(Ok(msg))) = open.next().now_or_never() {
                            waiting.push_back(msg);
                        }
                    }
                    for msg in waiting.drain(..) {
                        nak(&msg, None).await;
                    }
                }
                () = sleep_until(retry_at), if retry_at.is_some() && !stopping => {
                    retry_at = None;
                }
                // A pull request waiting on a server that restarted (or that
                // the client left) is gone: without this the fetch would
                // only end at its own timeout, `FETCH_EXPIRY` + 5 s later.
                Ok(()) = connected.changed(), if batch.is_some() && !stopping => {
                    debug!("reconnected; asking for messages again");
                    batch = None;
                }
                slot = slots.next(), if !waiting.is_empty() && !stopping => {
                    let mut slot = Some(slot);
                    while let Some(free) = slot.take().or_else(|| slots.try_next()) {
                        let (Some(msg), Some(found)) = (waiting.pop_front(), &bound) else { break };
                        in_flight.push(deliver(msg, free, Arc::clone(&found.settle)));
                    }
                }
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                next = next_message(&mut batch), if batch.is_some() => match next {
                    Some(Ok(msg)) => waiting.push_back(msg),
                    Some(Err(err)) => {
                        batch = None;
                        debug!(error = %err, "fetch ended with an error");
                        // Binding again tells what went away (stream,
                        // consumer, JetStream) in words.
                        bound = None;
                        self.problem(DurableError::Fetch { detail: err.to_string() }, &mut retry_at);
                    }
                    None => batch = None,
                },
            }
        }
    }

    /// Records why the consumer cannot be read now, for health; logs it
    /// when it changes; and schedules the next attempt.
    fn problem(&self, problem: DurableError, retry_at: &mut Option<Instant>) {
        let line = format!("durable consumer {}: {problem}", self.label);
        if self.target.counters.set_problem(&self.label, line) {
            warn!(problem = %problem, "durable consumer not available; retrying");
        }
        *retry_at = Some(Instant::now() + RETRY_DELAY);
    }

    fn clear_problem(&self) {
        if self.target.counters.clear_problem(&self.label) {
            info!("durable consumer available again");
        } else {
            info!("durable consumer bound");
        }
    }

    /// Finds (or creates, as the link says) the stream and the consumer.
    async fn bind(&self) -> Result<Bound, DurableError> {
        if !self.connection.is_connected() {
            return Err(DurableError::Disconnected {
                servers: self.connection.servers.clone(),
                state: self.connection.state(),
            });
        }
        let context = jetstream::new(self.connection.client());
        let stream = self.find_stream(&context).await?;
        let consumer: PullConsumer = match &self.source.consumer {
            ConsumerSpec::Managed(managed) => {
                if managed.filter_subjects.len() > 1 {
                    // A server before 2.10 ignores the field and would hand
                    // over the whole stream.
                    let version = self.connection.client().server_info().version;
                    if !supports_filter_subjects(&version) {
                        return Err(DurableError::FilterSubjectsUnsupported { version });
                    }
                }
                stream
                    .create_consumer(consumer_config(&self.consumer_name, managed))
                    .await
                    .map_err(|err| self.consumer_error(err))?
            }
            ConsumerSpec::Existing { name } => {
                let info = stream
                    .consumer_info(name)
                    .await
                    .map_err(|err| self.consumer_error(err))?;
                if info.config.deliver_subject.is_some() {
                    return Err(DurableError::PushConsumer {
                        consumer: name.clone(),
                    });
                }
                stream
                    .get_consumer(name)
                    .await
                    .map_err(|err| self.consumer_error(err))?
            }
        };
        let config = &consumer.cached_info().config;
        if config.ack_policy != AckPolicy::Explicit {
            return Err(DurableError::NotExplicitAck {
                consumer: self.consumer_name.clone(),
            });
        }
        let max_deliver = u64::try_from(config.max_deliver).ok().filter(|n| *n > 0);
        if self.policy.dead_letter_subject.is_some() && max_deliver.is_none() {
            warn!("the consumer redelivers without limit (max_deliver unset): nothing will be dead-lettered");
        }
        let settle = Settle {
            target: self.target.clone(),
            policy: Arc::clone(&self.policy),
            ack_wait: config.ack_wait,
            max_deliver,
            drain: self.drain.clone(),
            jetstream: context,
        };
        Ok(Bound {
            consumer,
            settle: Arc::new(settle),
        })
    }

    /// The stream, created from the link's `stream_subjects` if missing.
    async fn find_stream(
        &self,
        context: &jetstream::Context,
    ) -> Result<stream::Stream, DurableError> {
        let name = &self.source.stream;
        let err = match context.get_stream(name).await {
            Ok(stream) => return Ok(stream),
            Err(err) => err,
        };
        let code = match err.kind() {
            GetStreamErrorKind::JetStream(js) => Some(js.error_code()),
            _ => None,
        };
        match (&self.source.consumer, code) {
            (
                ConsumerSpec::Managed(ManagedConsumer {
                    create_stream: Some(spec),
                    ..
                }),
                Some(ErrorCode::STREAM_NOT_FOUND),
            ) => {
                let config = stream::Config {
                    name: name.clone(),
                    subjects: spec.subjects.clone(),
                    storage: spec.storage,
                    ..Default::default()
                };
                let created = context.get_or_create_stream(config).await.map_err(|err| {
                    DurableError::CreateStream {
                        stream: name.clone(),
                        detail: err.to_string(),
                    }
                })?;
                info!(
                    stream = name,
                    subjects = spec.subjects.join(","),
                    "stream created"
                );
                Ok(created)
            }
            (_, Some(ErrorCode::STREAM_NOT_FOUND)) => Err(DurableError::StreamNotFound {
                stream: name.clone(),
            }),
            (
                _,
                Some(
                    ErrorCode::JETSTREAM_NOT_ENABLED | ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT,
                ),
            ) => Err(DurableError::NoJetStream),
            _ => Err(DurableError::NoAnswer {
                what: format!("look-up of stream {name:?}"),
                detail: format!(": {err}"),
            }),
        }
    }

    fn consumer_error(&self, err: impl fmt::Display) -> DurableError {
        DurableError::Consumer {
            consumer: self.consumer_name.clone(),
            detail: err.to_string(),
        }
    }

    /// Asks for `count` messages and the byte bound, waiting up to
    /// [`FETCH_EXPIRY`] for them.
    async fn fetch(&self, found: &Bound, count: usize) -> Result<Pull, DurableError> {
        let count = self.source.max_messages.map_or(count, |max| max.min(count));
        let bytes = self
            .source
            .max_bytes
            .unwrap_or(DEFAULT_FETCH_BYTES.max(self.connection.max_payload()));
        Pull::start(
            &self.connection.client(),
            &found.settle.jetstream,
            &found.consumer,
            count,
            Some(bytes),
            FETCH_EXPIRY,
        )
        .await
        .map_err(|err| DurableError::Fetch {
            detail: format!("fetch request failed: {err}"),
        })
    }
}

/// How many messages to ask for, if it is time to fetch: what this source
/// could deliver now (the free slots, and at least its fair share of the
/// link's), once at least half of that is not taken by its own deliveries
/// and fetched messages (`held`), so that a fetch is not a server round
/// trip per message.
fn fetch_size(slots: &SlotQueue, held: usize) -> Option<usize> {
    let room = (slots.free() + held)
        .max(slots.fair_share())
        .min(slots.max_in_flight());
    let wanted = room.saturating_sub(held);
    (wanted > 0 && (held == 0 || wanted >= room.div_ceil(2))).then_some(wanted)
}

/// True for a server version (`2.10.4`) from 2.10 on; an unreadable one
/// is taken as new enough, and the server itself then decides.
fn supports_filter_subjects(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u64>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= (2, 10),
        _ => true,
    }
}

/// The pull consumer a link's keys describe.
fn consumer_config(name: &str, managed: &ManagedConsumer) -> pull::Config {
    let (filter_subject, filter_subjects) = match managed.filter_subjects.as_slice() {
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    };
    pull::Config {
        durable_name: Some(name.to_string()),
        deliver_policy: managed.deliver_policy,
        ack_policy: AckPolicy::Explicit,
        ack_wait: managed.ack_wait,
        max_deliver: managed.max_deliver.unwrap_or(-1),
        filter_subject,
        filter_subjects,
        ..Default::default()
    }
}

/// The next message of the open batch.
async fn next_message(
    batch: &mut Option<Pull>,
) -> Option<Result<jetstream::Message, super::pull::PullError>> {
    match batch {
        Some(batch) => batch.next().await,
        None => std::future::pending().await,
    }
}

/// One message's path, from the handler call to its ack (see the module
/// doc); the slot is held until the message is settled.
async fn deliver(msg: jetstream::Message, slot: Slot, settle: Arc<Settle>) {
    let _slot = slot;
    let (delivered, stream_sequence) = match msg.info() {
        Ok(info) => (
            u64::try_from(info.delivered).unwrap_or(1),
            info.stream_sequence,
        ),
        Err(err) => {
            // Not a JetStream delivery: nothing to ack, nothing to retry.
            warn!(error = %err, "message without JetStream metadata skipped");
            return;
        }
    };
    let headers = trace_context::from_message(msg.headers.as_ref());
    let message = BrokerMessage {
        subject: msg.subject.to_string(),
        body: msg.payload.clone(),
        // The reply subject of a JetStream delivery is its ack subject,
        // which is not the component's to answer.
        reply_to: None,
    };
    let call = invoke(&settle.target, headers, &message);
    let outcome = tokio::select! {
        biased;
        () = settle.drain.aborted() => {
            nak(&msg, None).await;
            return;
        }
        outcome = with_progress(call, &msg, settle.ack_wait) => outcome,
    };
    let Some(error) = outcome.failure() else {
        if let Err(err) = bounded_ack(&msg, AckKind::Ack).await {
            warn!(
                error = err,
                stream_sequence, "ack not sent; the message will be redelivered"
            );
        }
        return;
    };
    let last_attempt = settle.max_deliver.is_some_and(|max| delivered >= max);
    if !last_attempt {
        nak(&msg, settle.policy.backoff_after(delivered)).await;
        return;
    }
    let counters = &settle.target.counters;
    match &settle.policy.dead_letter_subject {
        Some(subject) => {
            // The server does not redeliver a message past `max_deliver`,
            // so a dead letter that cannot be stored is tried again here,
            // the message kept in progress meanwhile, until it is stored or
            // the link's drain time is up.
            let mut pause = DEAD_LETTER_RETRY_MIN;
            loop {
                let store = dead_letter(&settle.jetstream, subject, &msg, delivered, &error);
                let stored = tokio::select! {
                    biased;
                    () = settle.drain.aborted() => return,
                    stored = with_progress(store, &msg, settle.ack_wait) => stored,
                };
                match stored {
                    Ok(()) => break,
                    Err(problem) => {
                        error!(
                            problem = %problem,
                            dead_letter_subject = subject,
                            stream_sequence,
                            retry_in_ms = pause.as_millis() as u64,
                            "dead letter not stored; trying again"
                        );
                    }
                }
                tokio::select! {
                    biased;
                    () = settle.drain.aborted() => return,
                    () = with_progress(tokio::time::sleep(pause), &msg, settle.ack_wait) => {}
                }
                pause = (pause * 2).min(DEAD_LETTER_RETRY_MAX);
            }
            counters.dead_lettered();
            warn!(
                dead_letter_subject = subject,
                stream_sequence, delivered, "message dead-lettered after its last attempt"
            );
            let _ = bounded_ack(&msg, AckKind::Term).await;
        }
        None => {
            counters.dropped(Dropped::MaxDeliver, 1);
            warn!(
                stream_sequence,
                delivered,
                error,
                "message failed its last attempt (max_deliver) and is dropped; set \
                 dead_letter_subject to keep such messages"
            );
            let _ = bounded_ack(&msg, AckKind::Term).await;
        }
    }
}

/// Runs `call`, telling the server every half `ack_wait` that the message
/// is still being worked on.
async fn with_progress<T>(
    call: impl std::future::Future<Output = T>,
    msg: &jetstream::Message,
    ack_wait: Duration,
) -> T {
    let period = (ack_wait / 2).max(Duration::from_millis(50));
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    tokio::pin!(call);
    loop {
        tokio::select! {
            outcome = &mut call => return outcome,
            _ = ticks.tick() => {
                if let Err(err) = bounded_ack(msg, AckKind::Progress).await {
                    debug!(error = err, "in-progress ack not sent");
                }
            }
        }
    }
}

async fn nak(msg: &jetstream::Message, delay: Option<Duration>) {
    if let Err(err) = bounded_ack(msg, AckKind::Nak(delay)).await {
        debug!(
            error = err,
            "nak not sent; the server redelivers after ack_wait"
        );
    }
}

async fn bounded_ack(msg: &jetstream::Message, kind: AckKind) -> Result<(), String> {
    match tokio::time::timeout(ACK_TIMEOUT, msg.ack_with(kind)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("the NATS client did not take the ack in time".to_string()),
    }
}

/// Publishes a copy of `msg` to the dead-letter subject through JetStream
/// and waits for the stream's ack, so that it is terminated in its source
/// only once it is stored.
async fn dead_letter(
    jetstream: &jetstream::Context,
    subject: &str,
    msg: &jetstream::Message,
    delivered: u64,
    error: &str,
) -> Result<(), DeadLetterError> {
    // The original headers go along, except the server's own `Nats-*`
    // ones: a message id or an expected-sequence check would make the
    // dead-letter stream drop or refuse the copy.
    let mut headers = HeaderMap::new();
    for (name, values) in msg.headers.iter().flat_map(HeaderMap::iter) {
        if !AsRef::<str>::as_ref(name)
            .to_ascii_lowercase()
            .starts_with("nats-")
        {
            for value in values {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    let info = msg
        .info()
        .map_err(|err| DeadLetterError::Publish(err.to_string()))?;
    headers.insert(HEADER_SUBJECT, msg.subject.as_str());
    headers.insert(HEADER_STREAM, info.stream);
    headers.insert(HEADER_SEQUENCE, info.stream_sequence.to_string().as_str());
    headers.insert(HEADER_DELIVERIES, delivered.to_string().as_str());
    headers.insert(HEADER_ERROR, header_text(error).as_str());
    let publish = async {
        jetstream
            .publish_with_headers(subject.to_string(), headers, msg.payload.clone())
            .await
            .map_err(|err| DeadLetterError::Publish(err.to_string()))?
            .await
            .map_err(|err| DeadLetterError::NotStored(err.to_string()))
    };
    match tokio::time::timeout(API_TIMEOUT, publish).await {
        Ok(Ok(_ack)) => Ok(()),
        Ok(Err(problem)) => Err(problem),
        Err(_) => Err(DeadLetterError::NoAck),
    }
}

/// `text` fit for a header value: control characters (CR, LF) replaced,
/// cut to [`MAX_ERROR_HEADER_LEN`] bytes on a character boundary.
fn header_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_ERROR_HEADER_LEN));
    for c in text.chars().map(|c| if c.is_control() { ' ' } else { c }) {
        if out.len() + c.len_utf8() > MAX_ERROR_HEADER_LEN {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_subjects_need_server_2_10() {
        assert!(!supports_filter_subjects("2.9.10"));
        assert!(supports_filter_subjects("2.10.0"));
        assert!(supports_filter_subjects("3.0.1"));
        assert!(supports_filter_subjects("2.11.0-beta"));
    }

    #[test]
    fn header_text_has_no_line_breaks_and_is_bounded() {
        let text = header_text(&format!("bad\r\nInjected: yes{}", "é".repeat(2000)));
        assert!(!text.contains('\r') && !text.contains('\n'));
        assert!(text.len() <= MAX_ERROR_HEADER_LEN);
        assert!(text.starts_with("bad  Injected: yes"));
    }

    #[test]
    fn a_fetch_asks_for_what_can_be_delivered_once_half_of_it_is_free() {
        let slots = super::super::slots::Slots::new(16, 2);
        let queue = slots.queue();
        // All 16 free, nothing held: ask for 16.
        assert_eq!(fetch_size(&queue, 0), Some(16));
        // 10 held of 16: only 6 more would be a small fetch.
        let taken: Vec<_> = (0..10).filter_map(|_| queue.try_next()).collect();
        assert_eq!(fetch_size(&queue, 10), None);
        drop(taken);
    }

    #[test]
    fn a_busy_link_still_fetches_its_fair_share() {
        let slots = super::super::slots::Slots::new(16, 2);
        let queue = slots.queue();
        // Another source holds every slot: this one still asks for its share.
        let all: Vec<_> = (0..16).filter_map(|_| queue.try_next()).collect();
        assert_eq!(all.len(), 16);
        assert_eq!(fetch_size(&queue, 0), Some(8));
        assert_eq!(fetch_size(&queue, 8), None);
    }
}
