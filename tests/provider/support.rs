//! Shared set-up for the provider tests. The roles (server, host,
//! component) live in the `messaging-nats-harness` crate, which the
//! benchmark uses too; here are what only the tests need: credentials made
//! by the tests and the usual consumer set-up.

use anyhow::bail;
use bytes::Bytes;
use futures::StreamExt as _;
use std::time::Duration;

pub mod credentials;
pub mod otlp;

pub use messaging_nats_harness::{
    echo_responder, pairs, round_trip, spawn_provider, Behaviour, BrokerMessage, Caller, Gate,
    Lattice, LeafTopology, Link, Logs, NatsServer, Provider, ProviderOptions, Received, ServerExt,
    ServerOptions, HUB_DOMAIN, LAME_DUCK_CONFIG, WAIT,
};

/// The usual set-up of a consumer test: a lattice, the provider, and a
/// component "c" with a consumer link configured by `config`.
pub struct ConsumerSetup {
    pub lattice: Lattice,
    pub provider: Provider,
    pub caller: Caller,
}

impl ConsumerSetup {
    pub async fn new(config: &[(&str, &str)]) -> Self {
        Self::on(Lattice::start().await, config).await
    }

    pub async fn on(lattice: Lattice, config: &[(&str, &str)]) -> Self {
        let provider = lattice.provider(&[]).await;
        let component = lattice.component("c", Behaviour::default()).await;
        let line = provider.put_link(&Link::consumer("c", config)).await;
        assert!(line.contains("link ready"), "{line}");
        let caller = component.caller(&provider.key).await;
        Self {
            lattice,
            provider,
            caller,
        }
    }

    /// Waits until health says every link's connection is up: a link put
    /// answers after `connect_timeout_ms` at most, connected or not (a
    /// slow machine or emulator can take longer to connect).
    pub async fn wait_connected(&self) {
        self.provider.wait_healthy(WAIT).await;
    }

    /// Subscribes on the lattice's server, confirmed before it returns.
    pub async fn subscribe(&self, subject: &str) -> async_nats::Subscriber {
        let sub = self
            .lattice
            .client
            .subscribe(subject.to_string())
            .await
            .expect("subscribe");
        round_trip(&self.lattice.client).await;
        sub
    }
}

/// A message with no reply-to.
pub fn message(subject: &str, body: &[u8]) -> BrokerMessage {
    BrokerMessage {
        subject: subject.to_string(),
        body: Bytes::copy_from_slice(body),
        reply_to: None,
    }
}

/// A lattice whose server has JetStream, on a store of its own.
pub async fn jetstream_lattice() -> Lattice {
    Lattice::on(NatsServer::with(ServerOptions {
        jetstream: true,
        ..ServerOptions::default()
    }))
    .await
}

/// The JetStream of the lattice's server.
pub fn js(lattice: &Lattice) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(lattice.client.clone())
}

/// Publishes bodies `0..n` through JetStream, each stored before the next
/// batch of 256 is sent.
pub async fn publish_stored(
    js: &async_nats::jetstream::Context,
    subject: &str,
    range: std::ops::Range<usize>,
) {
    let mut acks = Vec::new();
    for i in range {
        acks.push(
            js.publish(subject.to_string(), i.to_string().into())
                .await
                .expect("publish"),
        );
        if acks.len() == 256 {
            for ack in acks.drain(..) {
                ack.await.expect("stored");
            }
        }
    }
    for ack in acks {
        ack.await.expect("stored");
    }
}

/// Creates stream `name` (file storage) on `subjects`.
pub async fn create_stream(
    js: &async_nats::jetstream::Context,
    name: &str,
    subjects: &[&str],
) -> async_nats::jetstream::stream::Stream {
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.to_string(),
        subjects: subjects.iter().map(ToString::to_string).collect(),
        ..Default::default()
    })
    .await
    .expect("create stream")
}

/// A client of the cluster at `urls` (comma-separated) and its JetStream,
/// with stream `ORDERS` on `orders.>` in three replicas, made once the
/// cluster's JetStream answers (when it has elected its meta leader).
pub async fn replicated_orders(urls: &str) -> async_nats::jetstream::Context {
    let addresses: Vec<async_nats::ServerAddr> = urls
        .split(',')
        .map(|url| url.parse().expect("node URL"))
        .collect();
    let client = async_nats::connect(addresses)
        .await
        .expect("cluster client");
    let js = async_nats::jetstream::new(client);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let made = js
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: "ORDERS".into(),
                subjects: vec!["orders.>".into()],
                num_replicas: 3,
                ..Default::default()
            })
            .await;
        if made.is_ok() {
            return js;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no JetStream cluster: {made:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The server's view of consumer `name` of `stream`.
pub async fn consumer_info(
    js: &async_nats::jetstream::Context,
    stream: &str,
    name: &str,
) -> async_nats::jetstream::consumer::Info {
    js.get_stream(stream)
        .await
        .expect("stream")
        .consumer_info(name)
        .await
        .expect("consumer info")
}

/// Every message stream `name` stores, read by a consumer of its own
/// that acks nothing.
pub async fn stream_messages(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> Vec<async_nats::jetstream::Message> {
    use async_nats::jetstream::consumer;
    let stream = js.get_stream(name).await.expect("stream");
    let reader: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("reading consumer");
    let total = stream.get_info().await.expect("info").state.messages as usize;
    let mut messages = Vec::with_capacity(total);
    while messages.len() < total {
        let mut batch = reader
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .expect("fetch");
        let before = messages.len();
        while let Some(Ok(msg)) = batch.next().await {
            messages.push(msg);
        }
        if messages.len() == before {
            break;
        }
    }
    messages
}

/// The figures of the first handler link stop line ("delivered N, ...
/// terminated M", before the durable consumers' lag).
pub fn stop_figures(provider: &Provider) -> Vec<(String, u64)> {
    let line = provider
        .logs
        .lines()
        .into_iter()
        .find(|l| l.contains("handler link stopped"))
        .expect("stop line");
    let stats = line
        .split("stats=")
        .nth(1)
        .unwrap_or_default()
        .trim_matches('"');
    let counts = stats.split("; ").next().unwrap_or_default();
    counts
        .split(", ")
        .filter_map(|part| {
            let (name, n) = part.trim_matches('"').rsplit_once(' ')?;
            Some((name.to_string(), n.parse().ok()?))
        })
        .collect()
}

/// Reads the next message of a subscription within the wait.
pub async fn next_message(sub: &mut async_nats::Subscriber) -> anyhow::Result<async_nats::Message> {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(msg)) => Ok(msg),
        Ok(None) => bail!("subscription closed"),
        Err(_) => bail!("no message within {WAIT:?}"),
    }
}
