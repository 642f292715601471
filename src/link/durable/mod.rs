//! A JetStream pull consumer as a source of a handler link: each message
//! acknowledged only after `handle-message` returned `Ok`.
//!
//! The reader binds the consumer (creating the stream and the consumer
//! where the link says so), then fetches in batches sized by the link's
//! free delivery slots (at least its fair share of them) and its byte
//! bound, so that a slow component leaves messages on the server rather
//! than in the provider. It hands what it fetched to the link's
//! dispatcher, so that a bind or a fetch that waits on the server never
//! holds up a delivery. It also keeps the consumer's lag: what each
//! message says is still pending, and the consumer's own counts every
//! [`LAG_REFRESH`]. With `jetstream_domain`, every API request (bind,
//! fetch, lag) goes to `$JS.<domain>.API`. A message's path ([`settle`]):
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

mod settle;

use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::consumer::{self, AckPolicy, IntoConsumerConfig as _, PullConsumer};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::response::Response;
use async_nats::jetstream::stream;
use async_nats::jetstream::{self, ErrorCode};
use futures::FutureExt as _;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use self::settle::{FetchedMessage, SettleContext};
use super::counters::LagRecorder;
use super::dispatch::{Feed, Room};
use super::drain::{sleep_until, Drain};
use super::invoke::Target;
use super::pull::{Ask, PinnedPull, Pull, PIN_ID_HEADER};
use crate::config::{ConsumerSpec, DurableSettings, DurableSource, ManagedConsumer};
use crate::connection::{jetstream_api, Lease};

/// How long a fetch waits on the server for messages before it asks again;
/// also how soon a consumer that was deleted and recreated is noticed.
const FETCH_EXPIRY: Duration = Duration::from_secs(5);
/// Bound on one JetStream API exchange (stream and consumer look-up or
/// creation, a fetch request, a dead-letter publish and its ack).
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on handing an ack to the client: while disconnected its command
/// queue can be full. An ack that does not go out means a redelivery.
pub(crate) const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before binding again after a passing failure (missing stream or
/// consumer, no JetStream, server unreachable).
const RETRY_DELAY: Duration = Duration::from_secs(2);
/// Pause before looking again at a consumer that cannot serve the link as
/// it is (a push consumer, no explicit acks, a server too old): only a
/// change on the server helps, so it is not asked every [`RETRY_DELAY`].
const PERMANENT_RETRY_DELAY: Duration = Duration::from_secs(60);
/// Bytes one fetch asks for when the link does not say: room for a burst
/// without letting a backlog of large messages fill the provider's memory.
const DEFAULT_FETCH_BYTES: usize = 8 * 1024 * 1024;
/// How often a bound consumer is asked for its lag (one small API request
/// per consumer): often enough for a dashboard or an autoscaler, rare
/// enough for thousands of links.
const LAG_REFRESH: Duration = Duration::from_secs(5);

/// The priority group of a consumer with `priority_policy=pinned_client`:
/// one group, since every instance of the link has the same keys.
const PRIORITY_GROUP: &str = "wasmcloud";

/// Why a JetStream consumer cannot be read now; health shows it.
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
    /// A JetStream API request got no answer within `within`.
    NoAnswer {
        request: &'static str,
        within: Duration,
    },
    /// The look-up of the stream failed on the way.
    StreamLookup {
        stream: String,
        cause: String,
    },
    CreateStream {
        stream: String,
        cause: String,
    },
    /// The server refused to create, update or bind the consumer.
    Consumer {
        consumer: String,
        cause: String,
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
    /// `priority_policy`, which a server before 2.11 ignores.
    PriorityGroupsUnsupported {
        version: String,
    },
    Fetch {
        cause: String,
    },
}

impl DurableError {
    /// True for a consumer or server that cannot serve the link as it is:
    /// binding again helps only once someone changes it.
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::PushConsumer { .. }
                | Self::NotExplicitAck { .. }
                | Self::FilterSubjectsUnsupported { .. }
                | Self::PriorityGroupsUnsupported { .. }
        )
    }
}

impl fmt::Display for DurableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disconnected { servers, state } => write!(f, "NATS at {servers} is {state}"),
            Self::NoJetStream => {
                f.write_str("JetStream is not enabled on the NATS server (or for this account)")
            }
            Self::StreamNotFound { stream } => write!(f, "stream {stream:?} not found"),
            Self::NoAnswer { request, within } => write!(
                f,
                "the JetStream API did not answer the {request} within {within:?} (is JetStream \
                 enabled on the NATS server?)"
            ),
            Self::StreamLookup { stream, cause } => {
                write!(f, "the look-up of stream {stream:?} failed: {cause}")
            }
            Self::CreateStream { stream, cause } => {
                write!(f, "cannot create stream {stream:?}: {cause}")
            }
            Self::Consumer { consumer, cause } => {
                write!(
                    f,
                    "cannot create, update or bind consumer {consumer:?}: {cause}"
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
            Self::PriorityGroupsUnsupported { version } => write!(
                f,
                "priority_policy=pinned_client needs nats-server 2.11 or later; this server is \
                 {version}"
            ),
            Self::Fetch { cause } => write!(f, "fetch failed: {cause}"),
        }
    }
}

impl std::error::Error for DurableError {}

/// Reads one JetStream consumer for a handler link.
pub(crate) struct ConsumerReader {
    connection: Lease,
    source: DurableSource,
    consumer_name: String,
    /// `stream/consumer`, naming the consumer in health and logs.
    label: String,
    policy: Arc<DurableSettings>,
    target: Target,
    drain: Drain,
    /// What binding at link start gave (see [`ConsumerReader::bind_at_start`]).
    bound_at_start: Option<Result<BoundConsumer, DurableError>>,
    lag: LagRecorder,
}

/// A consumer found on the server, and what settling its messages takes.
struct BoundConsumer {
    consumer: PullConsumer,
    settle: Arc<SettleContext>,
    /// The consumer hands messages to one pinned instance at a time.
    pinned: bool,
}

/// Where a reader is: its consumer once bound, its open pull request, and
/// when to try binding again after a problem.
#[derive(Default)]
struct Progress {
    bound: Option<BoundConsumer>,
    batch: Option<Pull>,
    retry_at: Option<Instant>,
    /// When to ask the consumer for its lag next, and the question open.
    lag_due: Option<Instant>,
    lag_check: Option<LagCheck>,
    /// The pin id the server gave this instance (`Nats-Pin-Id`), sent with
    /// each pull request while the server keeps it.
    pin: Option<String>,
}

/// A consumer info request: the consumer's pending and unacked counts, or
/// `None` if it failed or did not answer within [`API_TIMEOUT`].
type LagCheck = std::pin::Pin<Box<dyn std::future::Future<Output = Option<(u64, u64)>> + Send>>;

/// A consumer's pending and unacked counts, as its info gives them.
fn counts_of(info: &consumer::Info) -> (u64, u64) {
    let unacked = u64::try_from(info.num_ack_pending).unwrap_or(0);
    (info.num_pending, unacked)
}

fn check_lag(mut consumer: PullConsumer) -> LagCheck {
    Box::pin(async move {
        let info = tokio::time::timeout(API_TIMEOUT, consumer.info()).await;
        match info {
            Ok(Ok(info)) => Some(counts_of(info)),
            Ok(Err(err)) => {
                debug!(error = %err, "consumer info for its lag failed");
                None
            }
            Err(_) => None,
        }
    })
}

async fn lag_answer(check: &mut Option<LagCheck>) -> Option<(u64, u64)> {
    match check {
        Some(check) => check.await,
        None => std::future::pending().await,
    }
}

/// At the stop, fetched messages the client still buffers go to the
/// dispatcher, which naks them, so that another instance gets them now.
/// The open fetch goes with its subscription: the server drops a pull
/// request whose reply subject nobody listens to any more (kept open, it
/// would take messages published after the stop).
fn hand_over_buffered(now: &mut Progress, feed: &mut Feed) {
    if let (Some(mut open), Some(found)) = (now.batch.take(), &now.bound) {
        while let Some(Some(Ok(msg))) = open.next().now_or_never() {
            feed.send(Box::new(FetchedMessage {
                msg,
                settle: Arc::clone(&found.settle),
            }));
        }
    }
}

impl ConsumerReader {
    /// The reader of `source`, bound (its stream and consumer created
    /// where the link says so) by `deadline`, so that a message published
    /// once the link is put is consumed; one that cannot be bound yet is
    /// retried when it runs, and health says why meanwhile.
    pub(crate) async fn bind_at_start(
        connection: &Lease,
        source: &DurableSource,
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
        let label = format!("{}/{consumer_name}", source.stream);
        let mut this = Self {
            connection: connection.clone(),
            lag: target
                .counters
                .lag_recorder(&label, &source.stream, &consumer_name),
            label,
            source: source.clone(),
            consumer_name,
            policy: Arc::clone(policy),
            target: target.clone(),
            drain: drain.clone(),
            bound_at_start: None,
        };
        let bound = match tokio::time::timeout_at(deadline, this.bind()).await {
            Ok(bound) => bound,
            Err(_) => Err(DurableError::NoAnswer {
                request: "consumer look-up",
                within: deadline.saturating_duration_since(Instant::now()),
            }),
        };
        this.bound_at_start = Some(bound);
        this
    }

    /// `stream/consumer`, for logs.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// Binds, fetches and hands what it fetched to `feed` until the link
    /// stops. Every wait here is the reader's own: the deliveries run in
    /// the dispatcher meanwhile.
    pub(crate) async fn run(mut self, mut feed: Feed) {
        let mut now = Progress::default();
        let mut connected = self.connection.watch_connected();
        let drain = self.drain.clone();
        if let Some(first) = self.bound_at_start.take() {
            self.settle_bind(first, &mut now);
        }
        loop {
            if self.bind_when_due(&mut now).await.is_break()
                || self
                    .fetch_when_room(&mut now, &feed, &mut connected)
                    .await
                    .is_break()
            {
                break;
            }
            tokio::select! {
                biased;
                () = drain.stopping() => {
                    hand_over_buffered(&mut now, &mut feed);
                    break;
                }
                () = sleep_until(now.retry_at), if now.retry_at.is_some() && now.bound.is_none() => {
                    now.retry_at = None;
                }
                // A pull request waiting on a server that restarted (or that
                // the client left) is gone: without this the fetch would
                // only end at its own timeout, `FETCH_EXPIRY` + 5 s later.
                Ok(()) = connected.changed(), if now.batch.is_some() => {
                    debug!("reconnected; asking for messages again");
                    now.batch = None;
                }
                // A settled message may leave room for the next fetch.
                () = feed.settled(), if now.batch.is_none() && now.bound.is_some() => {}
                // The consumer's own count of what it has not delivered or
                // not had acked, at most every LAG_REFRESH: between two,
                // each message says what is still pending after it.
                () = sleep_until(now.lag_due), if now.bound.is_some() && now.lag_check.is_none() => {
                    now.lag_due = Some(Instant::now() + LAG_REFRESH);
                    now.lag_check = now.bound.as_ref().map(|found| check_lag(found.consumer.clone()));
                }
                lag = lag_answer(&mut now.lag_check), if now.lag_check.is_some() => {
                    now.lag_check = None;
                    if let Some((pending, unacked)) = lag {
                        self.lag.counts(pending, unacked);
                    }
                }
                next = next_message(&mut now.batch), if now.batch.is_some() => match (next, &now.bound) {
                    (Some(Ok(msg)), Some(found)) => {
                        if let Ok(info) = msg.info() {
                            self.lag.pending_after(info.pending);
                        }
                        if found.pinned {
                            note_pin(&msg, &mut now.pin);
                        }
                        feed.send(Box::new(FetchedMessage { msg, settle: Arc::clone(&found.settle) }));
                    }
                    (Some(Err(err)), _) if err.is_pin_lost() => {
                        // Another instance holds the pin now: this one
                        // asks again without one, and waits its turn.
                        now.batch = None;
                        if now.pin.take().is_some() {
                            info!("another instance took over the pinned consumer; this one stands by");
                        }
                    }
                    (Some(Err(err)), _) => {
                        now.batch = None;
                        debug!(error = %err, "fetch ended with an error");
                        // Binding again tells what went away (stream,
                        // consumer, JetStream) in words.
                        now.bound = None;
                        self.problem(DurableError::Fetch { cause: err.to_string() }, &mut now.retry_at);
                    }
                    (Some(Ok(_)), None) | (None, _) => now.batch = None,
                },
            }
        }
    }

    /// Binds when the reader has no consumer and its next attempt is due.
    /// `Break` when the link stops meanwhile.
    async fn bind_when_due(&self, now: &mut Progress) -> ControlFlow<()> {
        if now.bound.is_some() || now.retry_at.is_some_and(|at| Instant::now() < at) {
            return ControlFlow::Continue(());
        }
        let bind = tokio::time::timeout(API_TIMEOUT, self.bind());
        let Some(result) = self.drain.unless_stopping(bind).await else {
            return ControlFlow::Break(());
        };
        let result = result.unwrap_or(Err(DurableError::NoAnswer {
            request: "consumer look-up",
            within: API_TIMEOUT,
        }));
        self.settle_bind(result, now);
        ControlFlow::Continue(())
    }

    fn settle_bind(&self, result: Result<BoundConsumer, DurableError>, now: &mut Progress) {
        match result {
            Ok(found) => {
                now.retry_at = None;
                self.clear_problem();
                let (pending, unacked) = counts_of(found.consumer.cached_info());
                self.lag.counts(pending, unacked);
                now.lag_due = Some(Instant::now() + LAG_REFRESH);
                now.bound = Some(found);
            }
            Err(problem) => self.problem(problem, &mut now.retry_at),
        }
    }

    /// Opens a pull request when none is open and the link has room for
    /// more messages. `Break` when the link stops meanwhile.
    async fn fetch_when_room(
        &self,
        now: &mut Progress,
        feed: &Feed,
        connected: &mut watch::Receiver<u64>,
    ) -> ControlFlow<()> {
        let (None, Some(found)) = (&now.batch, &now.bound) else {
            return ControlFlow::Continue(());
        };
        let Some(count) = fetch_size(feed.room()) else {
            return ControlFlow::Continue(());
        };
        let fetch = tokio::time::timeout(API_TIMEOUT, self.fetch(found, count, now.pin.as_deref()));
        let Some(result) = self.drain.unless_stopping(fetch).await else {
            return ControlFlow::Break(());
        };
        let result = result.unwrap_or(Err(DurableError::NoAnswer {
            request: "fetch request",
            within: API_TIMEOUT,
        }));
        match result {
            Ok(started) => {
                // Only a reconnection after this request counts.
                connected.borrow_and_update();
                now.batch = Some(started);
            }
            Err(problem) => {
                now.bound = None;
                self.problem(problem, &mut now.retry_at);
            }
        }
        ControlFlow::Continue(())
    }

    /// Records why the consumer cannot be read now, for health; logs it
    /// when it changes; and schedules the next attempt, later for a
    /// problem that only a change on the server mends.
    fn problem(&self, problem: DurableError, retry_at: &mut Option<Instant>) {
        let (delay, again) = if problem.is_permanent() {
            (PERMANENT_RETRY_DELAY, "looked at again every 60 s")
        } else {
            (RETRY_DELAY, "retrying")
        };
        let line = match &self.policy.jetstream_domain {
            Some(domain) => format!(
                "durable consumer {} in JetStream domain {domain:?}: {problem}",
                self.label
            ),
            None => format!("durable consumer {}: {problem}", self.label),
        };
        if self.target.counters.set_problem(&self.label, line) {
            warn!(problem = %problem, "durable consumer not available; {again}");
        }
        *retry_at = Some(Instant::now() + delay);
    }

    fn clear_problem(&self) {
        if self.target.counters.clear_problem(&self.label) {
            info!("durable consumer available again");
        } else {
            info!("durable consumer bound");
        }
    }

    /// Finds (or creates, as the link says) the stream and the consumer.
    async fn bind(&self) -> Result<BoundConsumer, DurableError> {
        if !self.connection.is_connected() {
            return Err(DurableError::Disconnected {
                servers: self.connection.servers.clone(),
                state: self.connection.state(),
            });
        }
        let context = self
            .connection
            .jetstream(self.policy.jetstream_domain.as_deref());
        let stream = self.find_stream(&context).await?;
        let consumer: PullConsumer = match &self.source.consumer {
            ConsumerSpec::Managed(managed) => {
                if managed.filter_subjects.len() > 1 {
                    // A server before 2.10 ignores the field and would hand
                    // over the whole stream.
                    let version = self.connection.client().server_info().version;
                    if !at_least(&version, (2, 10)) {
                        return Err(DurableError::FilterSubjectsUnsupported { version });
                    }
                }
                match managed.pinned_ttl {
                    Some(ttl) => self.create_pinned(&context, managed, ttl).await?,
                    None => stream
                        .create_consumer(consumer_config(&self.consumer_name, managed))
                        .await
                        .map_err(|err| self.consumer_error(err))?,
                }
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
        let settle = SettleContext {
            target: self.target.clone(),
            policy: Arc::clone(&self.policy),
            ack_wait: config.ack_wait,
            max_deliver,
            drain: self.drain.clone(),
            jetstream: context,
        };
        Ok(BoundConsumer {
            consumer,
            settle: Arc::new(settle),
            pinned: matches!(
                &self.source.consumer,
                ConsumerSpec::Managed(ManagedConsumer {
                    pinned_ttl: Some(_),
                    ..
                })
            ),
        })
    }

    /// Creates (or updates) the consumer with a pinned-client priority
    /// group, written by hand: async-nats 0.39, which wRPC pins, has no
    /// priority fields, and its create would drop them again; a newer
    /// async-nats beside it would build a second client into every
    /// executable for three JSON fields and a header. A server before 2.11
    /// ignores the fields; its consumer would hand messages to every
    /// instance.
    async fn create_pinned(
        &self,
        context: &jetstream::Context,
        managed: &ManagedConsumer,
        ttl: Duration,
    ) -> Result<PullConsumer, DurableError> {
        let version = self.connection.client().server_info().version;
        if !at_least(&version, (2, 11)) {
            return Err(DurableError::PriorityGroupsUnsupported { version });
        }
        let stream = &self.source.stream;
        let name = &self.consumer_name;
        let mut config =
            serde_json::to_value(consumer_config(name, managed).into_consumer_config())
                .map_err(|err| self.consumer_error(err))?;
        config["priority_groups"] = serde_json::json!([PRIORITY_GROUP]);
        config["priority_policy"] = "pinned_client".into();
        config["priority_timeout"] = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX).into();
        let request = serde_json::json!({"stream_name": stream, "config": config, "action": ""});
        let created: Response<serde_json::Value> = context
            .request(format!("CONSUMER.CREATE.{stream}.{name}"), &request)
            .await
            .map_err(|err| self.consumer_error(err))?;
        let info = match created {
            Response::Ok(info) => info,
            Response::Err { error } => return Err(self.consumer_error(error)),
        };
        // The server (or another in a cluster of mixed versions) ignored
        // the fields.
        if info["config"]["priority_policy"] != "pinned_client" {
            return Err(DurableError::PriorityGroupsUnsupported { version });
        }
        context
            .get_consumer_from_stream(name, stream)
            .await
            .map_err(|err| self.consumer_error(err))
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
                        cause: err.to_string(),
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
            _ => Err(DurableError::StreamLookup {
                stream: name.clone(),
                cause: err.to_string(),
            }),
        }
    }

    fn consumer_error(&self, err: impl fmt::Display) -> DurableError {
        DurableError::Consumer {
            consumer: self.consumer_name.clone(),
            cause: err.to_string(),
        }
    }

    /// Asks for `count` messages and the byte bound, waiting up to
    /// [`FETCH_EXPIRY`] for them.
    async fn fetch(
        &self,
        found: &BoundConsumer,
        count: usize,
        pin: Option<&str>,
    ) -> Result<Pull, DurableError> {
        let count = self.source.max_messages.map_or(count, |max| max.min(count));
        let bytes = self
            .source
            .max_bytes
            .unwrap_or(DEFAULT_FETCH_BYTES.max(self.connection.max_payload()));
        Pull::start(
            &self.connection.client(),
            &jetstream_api(self.policy.jetstream_domain.as_deref()),
            &found.settle.jetstream,
            &found.consumer,
            Ask {
                count,
                max_bytes: Some(bytes),
                expires: FETCH_EXPIRY,
                pinned: found.pinned.then_some(PinnedPull {
                    group: PRIORITY_GROUP,
                    pin,
                }),
            },
        )
        .await
        .map_err(|err| DurableError::Fetch {
            cause: format!("the request was not sent: {err}"),
        })
    }
}

/// How many messages to ask for, if it is time to fetch: what this source
/// could deliver now (the free slots, and at least its fair share of the
/// link's), once at least half of that is not taken by its own deliveries
/// and waiting messages (`held`), so that a fetch is not a server round
/// trip per message.
fn fetch_size(room: Room) -> Option<usize> {
    let held = room.held;
    let could = (room.free + held)
        .max(room.fair_share)
        .min(room.max_in_flight);
    let wanted = could.saturating_sub(held);
    (wanted > 0 && (held == 0 || wanted >= could.div_ceil(2))).then_some(wanted)
}

/// True for a server version (`2.10.4`) from `major.minor` on; an
/// unreadable one is taken as new enough, and the server itself then
/// decides.
fn at_least(version: &str, (major, minor): (u64, u64)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u64>());
    match (parts.next(), parts.next()) {
        (Some(Ok(has_major)), Some(Ok(has_minor))) => (has_major, has_minor) >= (major, minor),
        _ => true,
    }
}

/// Keeps the pin id the server sent with a message of a pinned consumer.
fn note_pin(msg: &jetstream::Message, pin: &mut Option<String>) {
    let Some(id) = msg
        .headers
        .as_ref()
        .and_then(|headers| headers.get(PIN_ID_HEADER))
    else {
        return;
    };
    if pin.as_deref() != Some(id.as_str()) {
        info!("this instance holds the pinned consumer now");
        *pin = Some(id.to_string());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_names_every_problem_of_a_durable_link() {
        let consumer = || "<consumer>".to_string();
        let cause = || "<error>".to_string();
        let stream = || "ORDERS".to_string();
        let problems = [
            DurableError::Disconnected {
                servers: "<servers>".into(),
                state: "disconnected",
            },
            DurableError::NoJetStream,
            DurableError::StreamNotFound { stream: stream() },
            DurableError::NoAnswer {
                request: "consumer look-up",
                within: API_TIMEOUT,
            },
            DurableError::StreamLookup {
                stream: stream(),
                cause: cause(),
            },
            DurableError::CreateStream {
                stream: stream(),
                cause: cause(),
            },
            DurableError::Consumer {
                consumer: consumer(),
                cause: cause(),
            },
            DurableError::PushConsumer {
                consumer: consumer(),
            },
            DurableError::NotExplicitAck {
                consumer: consumer(),
            },
            DurableError::FilterSubjectsUnsupported {
                version: "2.9.10".into(),
            },
            DurableError::PriorityGroupsUnsupported {
                version: "2.10.29".into(),
            },
            DurableError::Fetch { cause: cause() },
        ];
        let texts: Vec<String> = problems.iter().map(ToString::to_string).collect();
        crate::readme::assert_quotes("durable", &texts);
    }

    #[test]
    fn server_versions_compare_by_major_and_minor() {
        assert!(!at_least("2.9.10", (2, 10)));
        assert!(at_least("2.10.0", (2, 10)));
        assert!(at_least("3.0.1", (2, 10)));
        assert!(at_least("2.11.0-beta", (2, 10)));
        assert!(!at_least("2.10.29", (2, 11)));
        assert!(at_least("2.15.1", (2, 11)));
    }

    fn room(free: usize, held: usize) -> Room {
        Room {
            free,
            held,
            fair_share: 8,
            max_in_flight: 16,
        }
    }

    #[test]
    fn a_fetch_asks_for_what_can_be_delivered_once_half_of_it_is_free() {
        // All 16 free, nothing held: ask for 16.
        assert_eq!(fetch_size(room(16, 0)), Some(16));
        // 10 held of 16: only 6 more would be a small fetch.
        assert_eq!(fetch_size(room(6, 10)), None);
        // 4 held, 12 free: 12 more is worth a fetch.
        assert_eq!(fetch_size(room(12, 4)), Some(12));
    }

    #[test]
    fn a_busy_link_still_fetches_its_fair_share() {
        // Another source holds every slot: this one still asks for its share.
        assert_eq!(fetch_size(room(0, 0)), Some(8));
        assert_eq!(fetch_size(room(0, 8)), None);
    }
}
