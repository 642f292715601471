//! The component's side: serves `handler` over wRPC (recording what it is
//! handed) and calls the provider's `consumer` as a component would.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::{mpsc, watch};

use crate::WAIT;

pub mod bindings {
    wit_bindgen_wrpc::generate!({ world: "component", path: "../../wit", generate_all });
}

use bindings::wasmcloud::messaging::consumer;
pub use bindings::wasmcloud::messaging::types::BrokerMessage;

/// What the test component's `handle-message` does.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// Sleeps this long before answering.
    pub delay: Duration,
    /// Returns `Err` for bodies that start with this.
    pub fail_prefix: Option<Vec<u8>>,
    /// Only counts calls instead of recording each message (for the
    /// benchmark: no memory or time per message beyond the call).
    pub count_only: bool,
    /// Returns `Err` for the first this many calls with the same body.
    pub fail_attempts: usize,
    /// Holds every call (before its delay) until the gate opens.
    pub gate: Option<Gate>,
}

/// Holds `handle-message` calls until opened, so that a test can let the
/// provider's queues fill before any delivery slot frees.
#[derive(Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Gate {
    pub fn closed() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }

    /// Lets every held call and every later one through.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn pass(&self) {
        // The sender lives in `self`: the wait ends only when it opens.
        let _ = self.0.subscribe().wait_for(|open| *open).await;
    }
}

impl Behaviour {
    /// Answers `Ok` at once and only counts the calls.
    pub fn no_op() -> Self {
        Self {
            count_only: true,
            ..Self::default()
        }
    }

    /// Returns `Err` for bodies that start with `prefix`, `Ok` otherwise.
    pub fn failing_on(prefix: &[u8]) -> Self {
        Self {
            fail_prefix: Some(prefix.to_vec()),
            ..Self::default()
        }
    }

    /// Answers `Ok` after `delay`.
    pub fn slow(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }
}

/// A message as the test component received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub message: BrokerMessage,
    /// When the call arrived.
    pub at: std::time::Instant,
    pub traceparent: Option<String>,
    pub source_id: Option<String>,
}

#[derive(Clone)]
struct HandlerImpl {
    behaviour: Behaviour,
    received: mpsc::UnboundedSender<Received>,
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    handled: Arc<AtomicUsize>,
    /// Calls so far per body, for [`Behaviour::fail_attempts`].
    attempts: Arc<std::sync::Mutex<std::collections::HashMap<Bytes, usize>>>,
}

impl bindings::exports::wasmcloud::messaging::handler::Handler<Option<async_nats::HeaderMap>>
    for HandlerImpl
{
    async fn handle_message(
        &self,
        cx: Option<async_nats::HeaderMap>,
        message: BrokerMessage,
    ) -> anyhow::Result<Result<(), String>> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        if let Some(gate) = &self.behaviour.gate {
            gate.pass().await;
        }
        if !self.behaviour.delay.is_zero() {
            tokio::time::sleep(self.behaviour.delay).await;
        }
        if self.behaviour.count_only {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.handled.fetch_add(1, Ordering::SeqCst);
            return Ok(Ok(()));
        }
        let header = |name: &str| {
            cx.as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        let attempt = {
            let mut attempts = self.attempts.lock().expect("attempts lock");
            let count = attempts.entry(message.body.clone()).or_default();
            *count += 1;
            *count
        };
        let fail = attempt <= self.behaviour.fail_attempts
            || self
                .behaviour
                .fail_prefix
                .as_ref()
                .is_some_and(|p| message.body.starts_with(p));
        let _ = self.received.send(Received {
            at: std::time::Instant::now(),
            traceparent: header("traceparent"),
            source_id: header("source-id"),
            message,
        });
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(if fail {
            Err("told to fail".to_string())
        } else {
            Ok(())
        })
    }
}

/// A test component: serves `handler` over wRPC and calls the provider's
/// `consumer` with its own id as the source.
pub struct Component {
    pub id: String,
    received: mpsc::UnboundedReceiver<Received>,
    peak: Arc<AtomicUsize>,
    handled: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    lattice: String,
    nats: Arc<async_nats::Client>,
    serving: tokio::task::JoinHandle<()>,
}

impl Component {
    /// Serves `handler` as component `id` of lattice `lattice` over `nats`
    /// (for a component in a process of its own).
    pub async fn start_on(
        nats: async_nats::Client,
        lattice: &str,
        id: &str,
        behaviour: Behaviour,
    ) -> Self {
        let nats = Arc::new(nats);
        let wrpc =
            wrpc_transport_nats::Client::new(Arc::clone(&nats), format!("{lattice}.{id}"), None)
                .await
                .expect("wrpc client");
        let (tx, received) = mpsc::unbounded_channel();
        let peak = Arc::new(AtomicUsize::new(0));
        let handled = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let handler = HandlerImpl {
            behaviour,
            received: tx,
            in_flight: Arc::clone(&in_flight),
            peak: Arc::clone(&peak),
            handled: Arc::clone(&handled),
            attempts: Arc::default(),
        };
        let streams = bindings::serve(&wrpc, handler)
            .await
            .expect("serve handler");
        // The provider invokes from another connection: the server must
        // have taken the serving subscriptions first.
        crate::round_trip(&nats).await;
        let mut invocations = futures::stream::select_all(streams.into_iter().map(|(_, _, s)| s));
        let serving = tokio::spawn(async move {
            while let Some(invocation) = invocations.next().await {
                if let Ok(fut) = invocation {
                    tokio::spawn(async move {
                        let _ = fut.await;
                    });
                }
            }
        });
        Self {
            id: id.to_string(),
            received,
            peak,
            handled,
            in_flight,
            lattice: lattice.to_string(),
            nats,
            serving,
        }
    }

    /// The next message delivered to this component.
    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.received.recv())
            .await
            .expect("no delivery within the wait")
            .expect("component channel open")
    }

    /// The next delivery, or `None` once the component is gone; for loops
    /// that bound the wait themselves.
    pub async fn next_opt(&mut self) -> Option<Received> {
        self.received.recv().await
    }

    /// Collects `n` deliveries.
    pub async fn take(&mut self, n: usize) -> Vec<Received> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    /// Asserts that nothing is delivered for `quiet`.
    pub async fn expect_nothing(&mut self, quiet: Duration) {
        if let Ok(Some(r)) = tokio::time::timeout(quiet, self.received.recv()).await {
            panic!("unexpected delivery: {:?}", r.message.subject);
        }
    }

    /// `handle-message` calls answered so far.
    pub fn handled(&self) -> usize {
        self.handled.load(Ordering::SeqCst)
    }

    /// `handle-message` calls running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Highest number of `handle-message` calls running at once.
    pub fn peak_in_flight(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// A wRPC client aimed at the provider whose key is `provider_key`,
    /// with this component as source.
    pub async fn caller(&self, provider_key: &str) -> Caller {
        Caller {
            wrpc: wrpc_transport_nats::Client::new(
                Arc::clone(&self.nats),
                format!("{}.{provider_key}", self.lattice),
                None,
            )
            .await
            .expect("wrpc client"),
            source_id: Some(self.id.clone()),
            link_name: "default".into(),
            traceparent: None,
            tracestate: None,
        }
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

/// Calls the provider's `consumer` interface as one component would.
pub struct Caller {
    wrpc: wrpc_transport_nats::Client,
    pub source_id: Option<String>,
    pub link_name: String,
    pub traceparent: Option<String>,
    /// Sent as the invocation's `tracestate` header, unchecked.
    pub tracestate: Option<String>,
}

impl Caller {
    fn headers(&self) -> Option<async_nats::HeaderMap> {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = &self.source_id {
            headers.insert("source-id", id.as_str());
        }
        headers.insert("link-name", self.link_name.as_str());
        if let Some(tp) = &self.traceparent {
            headers.insert("traceparent", tp.as_str());
        }
        if let Some(state) = &self.tracestate {
            headers.insert("tracestate", async_nats::HeaderValue::from(state.as_str()));
        }
        Some(headers)
    }

    pub async fn publish(&self, msg: &BrokerMessage) -> anyhow::Result<Result<(), String>> {
        tokio::time::timeout(WAIT, consumer::publish(&self.wrpc, self.headers(), msg))
            .await
            .context("publish call timed out")?
    }

    /// Publishes `msg` and returns the provider's error; panics on success.
    pub async fn publish_error(&self, msg: &BrokerMessage) -> String {
        match self.publish(msg).await.expect("publish call") {
            Ok(()) => panic!("publish to {:?} succeeded", msg.subject),
            Err(err) => err,
        }
    }

    /// Sends a request and returns the provider's error; panics on success.
    pub async fn request_error(&self, subject: &str, body: &[u8], timeout_ms: u32) -> String {
        match self
            .request(subject, body, timeout_ms)
            .await
            .expect("request call")
        {
            Ok(reply) => panic!("request to {subject:?} was answered: {reply:?}"),
            Err(err) => err,
        }
    }

    pub async fn request(
        &self,
        subject: &str,
        body: &[u8],
        timeout_ms: u32,
    ) -> anyhow::Result<Result<BrokerMessage, String>> {
        let body = Bytes::copy_from_slice(body);
        tokio::time::timeout(
            WAIT,
            consumer::request(&self.wrpc, self.headers(), subject, &body, timeout_ms),
        )
        .await
        .context("request call timed out")?
    }
}
