//! Durable delivery: JetStream pull consumers of a handler link, each
//! message acknowledged only after `handle-message` returned `Ok`.
//!
//! One task per consumer. It binds the consumer (creating the stream and
//! the consumer where the link says so), then fetches in batches no larger
//! than its free delivery slots and its byte bound, so that a slow
//! component leaves messages on the server rather than in the provider.
//! A message's path:
//!
//! 1. fetched, delivered to the component with in-progress acks every half
//!    `ack_wait` while the call runs, so that a slow handler is not
//!    redelivered meanwhile;
//! 2. `Ok`: acked;
//! 3. `Err`, failed invocation or timeout: nak'd with the link's next
//!    backoff delay, unless it was the last attempt (`max_deliver`): then
//!    it is published to the dead-letter subject (and terminated once
//!    JetStream stored it, tried again until then) or, without one,
//!    terminated with a warning.
//!
//! Link delete and shutdown stop fetching; calls running then get the
//! drain time to finish, after which they are abandoned and their messages
//! nak'd, so that another instance takes them at once. The consumer stays
//! on the server, and the next link with the same name resumes from it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::{self, Batch};
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream;
use async_nats::jetstream::{self, AckKind, ErrorCode};
use async_nats::HeaderMap;
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument as _};

use crate::config::{
    default_durable_name, ConsumerSpec, DurableSettings, DurableSource, HandlerSettings,
    ManagedConsumer,
};
use crate::connection::Lease;
use crate::consumer::BrokerMessage;
use crate::delivery::{invoke, sleep_until_deadline, LinkStatus, Target};
use crate::trace_context;

/// How long a fetch waits on the server for messages before it asks again;
/// also how soon a consumer that was deleted and recreated is noticed.
const FETCH_EXPIRY: Duration = Duration::from_secs(5);
/// Bound on one JetStream API exchange (stream and consumer look-up or
/// creation, a fetch request, a dead-letter publish and its ack).
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on handing an ack to the client: while disconnected its command
/// queue can be full. An ack that does not go out means a redelivery.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
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

/// Starts one task per durable source of the link; they end when `stop` is
/// cancelled and their in-flight messages are settled. Each consumer is
/// bound (its stream and itself created where the link says so) before
/// this returns, within `deadline`, so that a message published after the
/// link is put is consumed; one that cannot be bound yet is retried by its
/// task, and health says why meanwhile.
pub async fn start(
    connection: &Lease,
    settings: &HandlerSettings,
    target: &Target,
    status: &Arc<LinkStatus>,
    stop: &CancellationToken,
    deadline: Instant,
) -> Vec<JoinHandle<()>> {
    let policy = Arc::new(settings.durable.clone());
    let mut tasks = Vec::with_capacity(settings.durable.sources.len());
    if !settings.durable.sources.is_empty() && !connection.is_connected() {
        // A new connection may still be on its way; a round trip waits for
        // it (by the deadline: a server that is down is not waited for).
        let _ = tokio::time::timeout_at(deadline, connection.round_trip()).await;
    }
    for source in &settings.durable.sources {
        let consumer_name = match &source.consumer {
            ConsumerSpec::Managed(ManagedConsumer {
                name: Some(name), ..
            })
            | ConsumerSpec::Existing { name } => name.clone(),
            ConsumerSpec::Managed(ManagedConsumer { name: None, .. }) => {
                default_durable_name(&target.component_id, &target.link_name)
            }
        };
        let label = format!("{}/{consumer_name}", source.stream);
        let span = tracing::info_span!(
            "durable",
            component = %target.component_id,
            link_name = %target.link_name,
            consumer = label
        );
        let task = SourceTask {
            connection: connection.clone(),
            source: source.clone(),
            consumer_name,
            label,
            policy: Arc::clone(&policy),
            max_in_flight: settings.max_in_flight,
            handler_timeout: settings.handler_timeout,
            drain_timeout: settings.drain_timeout,
            target: target.clone(),
            status: Arc::clone(status),
            stop: stop.clone(),
            abandon: CancellationToken::new(),
        };
        let first = match tokio::time::timeout_at(deadline, task.bind()).await {
            Ok(bound) => bound,
            Err(_) => Err("JetStream did not answer within the link's connect timeout".to_string()),
        };
        tasks.push(tokio::spawn(task.run(first).instrument(span)));
    }
    tasks
}

/// What one consumer's task owns.
struct SourceTask {
    connection: Lease,
    source: DurableSource,
    consumer_name: String,
    /// `stream/consumer`, naming the consumer in health and logs.
    label: String,
    policy: Arc<DurableSettings>,
    max_in_flight: usize,
    handler_timeout: Duration,
    drain_timeout: Duration,
    target: Target,
    status: Arc<LinkStatus>,
    stop: CancellationToken,
    /// Cancelled when the drain time is up (see [`Settle::abandon`]).
    abandon: CancellationToken,
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
    status: Arc<LinkStatus>,
    policy: Arc<DurableSettings>,
    handler_timeout: Duration,
    /// The consumer's own settings, which decide its messages' fate.
    ack_wait: Duration,
    /// Attempts per message; `None` for unlimited.
    max_deliver: Option<u64>,
    /// Cancelled when the drain time is up: running calls are abandoned
    /// and their messages nak'd.
    abandon: CancellationToken,
    jetstream: jetstream::Context,
}

impl SourceTask {
    /// Runs the consumer from `first`, the outcome of the bind at link start.
    async fn run(self, first: Result<Bound, String>) {
        let mut bound: Option<Bound> = None;
        let mut batch: Option<Batch> = None;
        let mut in_flight = FuturesUnordered::new();
        let mut retry_at: Option<Instant> = None;
        let mut drain_deadline: Option<Instant> = None;
        let abandon = &self.abandon;
        let mut connected = self.connection.watch_connected();
        match first {
            Ok(found) => {
                self.clear_problem();
                bound = Some(found);
            }
            Err(problem) => self.problem(problem, &mut retry_at),
        }
        loop {
            let stopping = drain_deadline.is_some();
            if stopping && in_flight.is_empty() {
                break;
            }
            let waiting = retry_at.is_some_and(|at| Instant::now() < at);
            if !stopping && !waiting && bound.is_none() {
                match tokio::time::timeout(API_TIMEOUT, self.bind()).await {
                    Ok(Ok(found)) => {
                        self.clear_problem();
                        bound = Some(found);
                    }
                    Ok(Err(problem)) => self.problem(problem, &mut retry_at),
                    Err(_) => self.problem(
                        format!("JetStream did not answer within {API_TIMEOUT:?}"),
                        &mut retry_at,
                    ),
                }
            }
            // A fetch waits for half the slots to be free (or all, when
            // idle): one request per freed slot would cost a server round
            // trip per message.
            let free = self.max_in_flight.saturating_sub(in_flight.len());
            let worth_fetching = free >= self.max_in_flight.div_ceil(2) || in_flight.is_empty();
            if let (false, None, Some(found), true) = (stopping, &batch, &bound, worth_fetching) {
                match tokio::time::timeout(API_TIMEOUT, self.fetch(&found.consumer, free)).await {
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
                        self.problem("the fetch request timed out".to_string(), &mut retry_at);
                    }
                }
            }
            tokio::select! {
                biased;
                () = self.stop.cancelled(), if !stopping => {
                    drain_deadline = Some(Instant::now() + self.drain_timeout);
                    // Messages the server already sent for this batch are
                    // nak'd, so that another instance gets them now.
                    if let Some(mut open) = batch.take() {
                        while let Some(Some(Ok(msg))) = open.next().now_or_never() {
                            nak(&msg, None).await;
                        }
                    }
                }
                () = sleep_until_deadline(drain_deadline), if !abandon.is_cancelled() => {
                    let abandoned = in_flight.len() as u64;
                    self.status.aborted.fetch_add(abandoned, Ordering::Relaxed);
                    warn!(
                        abandoned,
                        drain_timeout_ms = self.drain_timeout.as_millis() as u64,
                        "deliveries still running after the drain timeout were abandoned; \
                         their messages were nak'd for redelivery"
                    );
                    abandon.cancel();
                }
                () = sleep_until_deadline(retry_at), if retry_at.is_some() && !stopping => {
                    retry_at = None;
                }
                // A pull request waiting on a server that restarted (or that
                // the client left) is gone: without this the fetch would
                // only end at its own timeout, `FETCH_EXPIRY` + 5 s later.
                Ok(()) = connected.changed(), if batch.is_some() && !stopping => {
                    debug!("reconnected; asking for messages again");
                    batch = None;
                }
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                next = next_message(&mut batch), if batch.is_some() => match next {
                    Some(Ok(msg)) => {
                        // A batch is open only while its consumer is bound.
                        if let Some(found) = &bound {
                            in_flight.push(deliver(msg, Arc::clone(&found.settle)));
                        }
                    }
                    Some(Err(err)) => {
                        batch = None;
                        debug!(error = %err, "fetch ended with an error");
                        // Binding again tells what went away (stream,
                        // consumer, JetStream) in words.
                        bound = None;
                        self.problem(format!("fetch failed: {err}"), &mut retry_at);
                    }
                    None => batch = None,
                },
            }
        }
        info!(stats = self.status.summary(), "durable consumer stopped");
    }

    /// Records why the consumer cannot be read now, for health; logs it
    /// when it changes; and schedules the next attempt.
    fn problem(&self, problem: String, retry_at: &mut Option<Instant>) {
        let line = format!("durable consumer {}: {problem}", self.label);
        if self.status.set_problem(&self.label, line.clone()) {
            warn!(problem, "durable consumer not available; retrying");
        }
        *retry_at = Some(Instant::now() + RETRY_DELAY);
    }

    fn clear_problem(&self) {
        if self.status.clear_problem(&self.label) {
            info!("durable consumer available again");
        } else {
            info!("durable consumer bound");
        }
    }

    /// Finds (or creates, as the link says) the stream and the consumer.
    async fn bind(&self) -> Result<Bound, String> {
        if !self.connection.is_connected() {
            return Err(format!(
                "NATS at {} is {}",
                self.connection.servers,
                self.connection.state()
            ));
        }
        let context = jetstream::new(self.connection.client());
        let name = &self.source.stream;
        let stream = match context.get_stream(name).await {
            Ok(stream) => stream,
            Err(err) => match (&self.source.consumer, jetstream_code(&err)) {
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
                    let created = context
                        .get_or_create_stream(config)
                        .await
                        .map_err(|err| format!("cannot create stream {name:?}: {err}"))?;
                    info!(
                        stream = name,
                        subjects = spec.subjects.join(","),
                        "stream created"
                    );
                    created
                }
                _ => return Err(explain_stream_error(name, &err)),
            },
        };
        let consumer: PullConsumer = match &self.source.consumer {
            ConsumerSpec::Managed(managed) if managed.filter_subjects.len() > 1 => {
                // A server before 2.10 ignores the field and would hand
                // over the whole stream.
                let version = self.connection.client().server_info().version;
                if !supports_filter_subjects(&version) {
                    return Err(format!(
                        "more than one of filter_subjects needs nats-server 2.10 or later; \
                         this server is {version}"
                    ));
                }
                create_consumer(&stream, &self.consumer_name, managed).await?
            }
            ConsumerSpec::Managed(managed) => {
                create_consumer(&stream, &self.consumer_name, managed).await?
            }
            ConsumerSpec::Existing { name } => {
                let info = stream.consumer_info(name).await.map_err(|err| {
                    format!(
                        "cannot bind consumer {name:?} of stream {:?}: {err}",
                        self.source.stream
                    )
                })?;
                if info.config.deliver_subject.is_some() {
                    return Err(format!(
                        "consumer {name:?} is a push consumer; only pull consumers can be bound"
                    ));
                }
                stream
                    .get_consumer(name)
                    .await
                    .map_err(|err| format!("cannot bind consumer {name:?}: {err}"))?
            }
        };
        let config = &consumer.cached_info().config;
        if config.ack_policy != AckPolicy::Explicit {
            return Err(format!(
                "consumer {:?} does not ask for explicit acks; messages could not be \
                 acknowledged one by one after their handler succeeded",
                self.consumer_name
            ));
        }
        let max_deliver = u64::try_from(config.max_deliver).ok().filter(|n| *n > 0);
        if self.policy.dead_letter_subject.is_some() && max_deliver.is_none() {
            warn!("the consumer redelivers without limit (max_deliver unset): nothing will be dead-lettered");
        }
        let settle = Settle {
            target: self.target.clone(),
            status: Arc::clone(&self.status),
            policy: Arc::clone(&self.policy),
            handler_timeout: self.handler_timeout,
            ack_wait: config.ack_wait,
            max_deliver,
            abandon: self.abandon.clone(),
            jetstream: context,
        };
        Ok(Bound {
            consumer,
            settle: Arc::new(settle),
        })
    }

    /// Asks for at most `free` messages and the byte bound, waiting up to
    /// [`FETCH_EXPIRY`] for them.
    async fn fetch(&self, consumer: &PullConsumer, free: usize) -> Result<Batch, String> {
        let count = self.source.max_messages.map_or(free, |max| max.min(free));
        let bytes = self
            .source
            .max_bytes
            .unwrap_or(DEFAULT_FETCH_BYTES.max(self.connection.max_payload()));
        consumer
            .batch()
            .max_messages(count)
            .max_bytes(bytes)
            .expires(FETCH_EXPIRY)
            .messages()
            .await
            .map_err(|err| format!("fetch request failed: {err}"))
    }
}

/// The server's JetStream error code behind a failed stream look-up.
fn jetstream_code(err: &async_nats::jetstream::context::GetStreamError) -> Option<ErrorCode> {
    match err.kind() {
        GetStreamErrorKind::JetStream(js) => Some(js.error_code()),
        _ => None,
    }
}

fn explain_stream_error(
    name: &str,
    err: &async_nats::jetstream::context::GetStreamError,
) -> String {
    match (err.kind(), jetstream_code(err)) {
        (_, Some(ErrorCode::STREAM_NOT_FOUND)) => format!("stream {name:?} not found"),
        (
            _,
            Some(ErrorCode::JETSTREAM_NOT_ENABLED | ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT),
        ) => "JetStream is not enabled on the NATS server (or for this account)".to_string(),
        (GetStreamErrorKind::Request, _) => format!(
            "the JetStream API did not answer the look-up of stream {name:?} \
             (is JetStream enabled on the NATS server?): {err}"
        ),
        _ => format!("cannot look up stream {name:?}: {err}"),
    }
}

/// Creates the consumer a link's keys describe, or updates it to them.
async fn create_consumer(
    stream: &stream::Stream,
    name: &str,
    managed: &ManagedConsumer,
) -> Result<PullConsumer, String> {
    stream
        .create_consumer(consumer_config(name, managed))
        .await
        .map_err(|err| format!("cannot create or update consumer {name:?}: {err}"))
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
    batch: &mut Option<Batch>,
) -> Option<Result<jetstream::Message, async_nats::Error>> {
    match batch {
        Some(batch) => batch.next().await,
        None => std::future::pending().await,
    }
}

/// One message's path, from the handler call to its ack (see module doc).
async fn deliver(msg: jetstream::Message, settle: Arc<Settle>) {
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
    let call = invoke(
        &settle.target,
        headers,
        &message,
        settle.handler_timeout,
        &settle.status,
    );
    let outcome = tokio::select! {
        outcome = with_progress(call, &msg, settle.ack_wait) => outcome,
        () = settle.abandon.cancelled() => {
            nak(&msg, None).await;
            return;
        }
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
    match &settle.policy.dead_letter_subject {
        Some(subject) => {
            // The server does not redeliver a message past `max_deliver`,
            // so a dead letter that cannot be stored is tried again here,
            // the message kept in progress meanwhile, until it is stored or
            // the link drains.
            let mut pause = DEAD_LETTER_RETRY_MIN;
            loop {
                let stored = tokio::select! {
                    stored = with_progress(dead_letter(&settle.jetstream, subject, &msg, delivered, &error), &msg, settle.ack_wait) => stored,
                    () = settle.abandon.cancelled() => return,
                };
                match stored {
                    Ok(()) => break,
                    Err(problem) => {
                        error!(
                            problem,
                            dead_letter_subject = subject,
                            stream_sequence,
                            retry_in_ms = pause.as_millis() as u64,
                            "dead letter not stored; trying again"
                        );
                    }
                }
                tokio::select! {
                    () = with_progress(tokio::time::sleep(pause), &msg, settle.ack_wait) => {}
                    () = settle.abandon.cancelled() => return,
                }
                pause = (pause * 2).min(DEAD_LETTER_RETRY_MAX);
            }
            settle.status.dead_lettered.fetch_add(1, Ordering::Relaxed);
            settle.target.metrics.dead_lettered();
            warn!(
                dead_letter_subject = subject,
                stream_sequence, delivered, "message dead-lettered after its last attempt"
            );
            let _ = bounded_ack(&msg, AckKind::Term).await;
        }
        None => {
            settle.status.terminated.fetch_add(1, Ordering::Relaxed);
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
) -> Result<(), String> {
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
    let info = msg.info().map_err(|err| err.to_string())?;
    headers.insert(HEADER_SUBJECT, msg.subject.as_str());
    headers.insert(HEADER_STREAM, info.stream);
    headers.insert(HEADER_SEQUENCE, info.stream_sequence.to_string().as_str());
    headers.insert(HEADER_DELIVERIES, delivered.to_string().as_str());
    headers.insert(HEADER_ERROR, header_text(error).as_str());
    let publish = async {
        jetstream
            .publish_with_headers(subject.to_string(), headers, msg.payload.clone())
            .await
            .map_err(|err| format!("publish failed: {err}"))?
            .await
            .map_err(|err| format!("not stored by a stream (is one bound to the subject?): {err}"))
    };
    match tokio::time::timeout(API_TIMEOUT, publish).await {
        Ok(Ok(_ack)) => Ok(()),
        Ok(Err(problem)) => Err(problem),
        Err(_) => Err(format!("no ack from JetStream within {API_TIMEOUT:?}")),
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
}
