//! OpenTelemetry metrics, exported when the host enables them (see
//! `main.rs`); otherwise the instruments are OpenTelemetry's no-op ones.
//!
//! Names and attributes follow the messaging semantic conventions where
//! they have one (`messaging.client.*`, `messaging.process.duration`,
//! `messaging.system`, `messaging.operation.*`, `error.type`); the rest is
//! under `wasmcloud.messaging.*`. Every series carries the link it belongs
//! to (`wasmcloud.component.id`, `wasmcloud.link.name`), never a subject: a
//! component chooses subjects freely, and a series per subject would let it
//! grow the exporter's memory without bound.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::metrics::{Counter, Gauge, Histogram, UpDownCounter};
use opentelemetry::KeyValue;

/// Set once at start-up when the host enables metrics: until then (and
/// when it does not) links build no attribute sets and record nothing.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Metrics are exported from now on (see `observability`).
pub(crate) fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The instruments, made on first use: after `main` has installed the
/// meter provider.
struct Instruments {
    consumed: Counter<u64>,
    process_duration: Histogram<f64>,
    in_flight: UpDownCounter<i64>,
    dropped: Counter<u64>,
    dead_lettered: Counter<u64>,
    sent: Counter<u64>,
    operation_duration: Histogram<f64>,
    pending: Gauge<u64>,
    unacked: Gauge<u64>,
}

fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter("messaging-nats");
        Instruments {
            consumed: meter
                .u64_counter("messaging.client.consumed.messages")
                .with_description("Messages a handler link handed to its component: each handle-message call started, a redelivery again")
                .with_unit("{message}")
                .build(),
            process_duration: meter
                .f64_histogram("messaging.process.duration")
                .with_description("Duration of handle-message calls; error.type names failures")
                .with_unit("s")
                .build(),
            in_flight: meter
                .i64_up_down_counter("wasmcloud.messaging.deliveries.in_flight")
                .with_description("handle-message calls running")
                .with_unit("{call}")
                .build(),
            dropped: meter
                .u64_counter("wasmcloud.messaging.dropped.messages")
                .with_description("Messages dropped before delivery; the reason attribute says why")
                .with_unit("{message}")
                .build(),
            dead_lettered: meter
                .u64_counter("wasmcloud.messaging.dead_lettered.messages")
                .with_description("Durable messages moved to the dead-letter subject")
                .with_unit("{message}")
                .build(),
            sent: meter
                .u64_counter("messaging.client.sent.messages")
                .with_description("Messages components published or sent as requests")
                .with_unit("{message}")
                .build(),
            operation_duration: meter
                .f64_histogram("messaging.client.operation.duration")
                .with_description("Duration of publish and request calls")
                .with_unit("s")
                .build(),
            pending: meter
                .u64_gauge("wasmcloud.messaging.consumer.pending")
                .with_description("Messages of a durable consumer not yet delivered")
                .with_unit("{message}")
                .build(),
            unacked: meter
                .u64_gauge("wasmcloud.messaging.consumer.unacked")
                .with_description("Messages of a durable consumer delivered and not yet acked, by every instance sharing it")
                .with_unit("{message}")
                .build(),
        }
    })
}

/// Why a delivery failed, as `error.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    HandlerError,
    InvokeFailed,
    Timeout,
}

impl Failure {
    fn name(self) -> &'static str {
        match self {
            Failure::HandlerError => "handler_error",
            Failure::InvokeFailed => "invocation_failed",
            Failure::Timeout => "timeout",
        }
    }
}

/// Why a message was dropped, as `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// The handler link's queue was full (its component is behind).
    QueueFull,
    /// Left undelivered when a drain timed out.
    DrainTimeout,
    /// A durable message whose last attempt (`max_deliver`) failed, with no
    /// dead-letter subject to go to: terminated on the server.
    MaxDeliver,
}

/// A consumer call, as `messaging.operation.name`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Operation {
    Publish,
    Request,
}

/// The attributes of one durable consumer of a link, built once (none
/// while metrics are off).
pub(crate) struct ConsumerMetrics {
    attributes: Option<Vec<KeyValue>>,
}

impl ConsumerMetrics {
    /// How far the consumer is behind.
    pub(crate) fn lag(&self, pending: u64, unacked: u64) {
        if let Some(attributes) = &self.attributes {
            let instruments = instruments();
            instruments.pending.record(pending, attributes);
            instruments.unacked.record(unacked, attributes);
        }
    }
}

/// The attribute sets of one link, built once so that recording a
/// measurement allocates nothing; while metrics are off, none (12 sets of
/// 3 to 6 attributes, 3 KiB a link).
pub(crate) struct LinkMetrics(Option<Box<Sets>>);

struct Sets {
    /// The link's own attributes, for its consumers' sets.
    link: Vec<KeyValue>,
    process: Vec<KeyValue>,
    handler_error: Vec<KeyValue>,
    invoke_failed: Vec<KeyValue>,
    timeout: Vec<KeyValue>,
    queue_full: Vec<KeyValue>,
    drain_timeout: Vec<KeyValue>,
    max_deliver: Vec<KeyValue>,
    publish: Vec<KeyValue>,
    request: Vec<KeyValue>,
    publish_failed: Vec<KeyValue>,
    request_failed: Vec<KeyValue>,
}

impl LinkMetrics {
    pub(crate) fn new(component_id: &str, link_name: &str) -> Self {
        Self(enabled().then(|| Box::new(Sets::new(component_id, link_name))))
    }

    fn sets(&self) -> Option<&Sets> {
        self.0.as_deref()
    }
}

impl Sets {
    fn new(component_id: &str, link_name: &str) -> Self {
        let link = [
            KeyValue::new("messaging.system", "nats"),
            KeyValue::new("wasmcloud.component.id", component_id.to_string()),
            KeyValue::new("wasmcloud.link.name", link_name.to_string()),
        ];
        let with = |extra: &[(&'static str, &'static str)]| -> Vec<KeyValue> {
            link.iter()
                .cloned()
                .chain(extra.iter().map(|(k, v)| KeyValue::new(*k, *v)))
                .collect()
        };
        let operation = |kind: &'static str, name: &'static str, error: Option<&'static str>| {
            let mut extra = vec![
                ("messaging.operation.type", kind),
                ("messaging.operation.name", name),
            ];
            extra.extend(error.map(|error| ("error.type", error)));
            with(&extra)
        };
        let process = |failure: Option<Failure>| {
            operation("process", "handle-message", failure.map(Failure::name))
        };
        Self {
            link: link.to_vec(),
            process: process(None),
            handler_error: process(Some(Failure::HandlerError)),
            invoke_failed: process(Some(Failure::InvokeFailed)),
            timeout: process(Some(Failure::Timeout)),
            queue_full: with(&[("reason", "queue_full")]),
            drain_timeout: with(&[("reason", "drain_timeout")]),
            max_deliver: with(&[("reason", "max_deliver")]),
            publish: operation("send", "publish", None),
            request: operation("send", "request", None),
            publish_failed: operation("send", "publish", Some("publish_failed")),
            request_failed: operation("send", "request", Some("request_failed")),
        }
    }
}

impl LinkMetrics {
    /// The attribute set of durable consumer `consumer` of `stream`, as
    /// the messaging conventions name them.
    pub(crate) fn consumer(&self, stream: &str, consumer: &str) -> ConsumerMetrics {
        let attributes = self.sets().map(|sets| {
            let mut attributes = sets.link.clone();
            attributes.push(KeyValue::new(
                "messaging.destination.name",
                stream.to_string(),
            ));
            attributes.push(KeyValue::new(
                "messaging.consumer.group.name",
                consumer.to_string(),
            ));
            attributes
        });
        ConsumerMetrics { attributes }
    }

    /// A delivery starts: counted as consumed and in flight.
    pub(crate) fn delivery_started(&self) {
        if let Some(sets) = self.sets() {
            let instruments = instruments();
            instruments.consumed.add(1, &sets.process);
            instruments.in_flight.add(1, &sets.process);
        }
    }

    /// A delivery ended after `elapsed`, failed as `failure` says.
    pub(crate) fn delivery_ended(&self, elapsed: Duration, failure: Option<Failure>) {
        let Some(sets) = self.sets() else {
            return;
        };
        let instruments = instruments();
        instruments.in_flight.add(-1, &sets.process);
        let attributes = match failure {
            None => &sets.process,
            Some(Failure::HandlerError) => &sets.handler_error,
            Some(Failure::InvokeFailed) => &sets.invoke_failed,
            Some(Failure::Timeout) => &sets.timeout,
        };
        instruments
            .process_duration
            .record(elapsed.as_secs_f64(), attributes);
    }

    /// A delivery was cancelled before it ended (its link's drain time was
    /// up): no longer in flight, and no duration to record.
    pub(crate) fn delivery_abandoned(&self) {
        if let Some(sets) = self.sets() {
            instruments().in_flight.add(-1, &sets.process);
        }
    }

    pub(crate) fn dropped(&self, reason: Dropped, count: u64) {
        let Some(sets) = self.sets() else {
            return;
        };
        let attributes = match reason {
            Dropped::QueueFull => &sets.queue_full,
            Dropped::DrainTimeout => &sets.drain_timeout,
            Dropped::MaxDeliver => &sets.max_deliver,
        };
        if count > 0 {
            instruments().dropped.add(count, attributes);
        }
    }

    pub(crate) fn dead_lettered(&self) {
        if let Some(sets) = self.sets() {
            instruments().dead_lettered.add(1, &sets.process);
        }
    }

    /// A publish or request took `elapsed` and succeeded or not.
    pub(crate) fn sent(&self, operation: Operation, elapsed: Duration, ok: bool) {
        let Some(sets) = self.sets() else {
            return;
        };
        let attributes = match (operation, ok) {
            (Operation::Publish, true) => &sets.publish,
            (Operation::Publish, false) => &sets.publish_failed,
            (Operation::Request, true) => &sets.request,
            (Operation::Request, false) => &sets.request_failed,
        };
        let instruments = instruments();
        instruments.sent.add(1, attributes);
        instruments
            .operation_duration
            .record(elapsed.as_secs_f64(), attributes);
    }
}
