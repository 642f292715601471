//! Shared set-up for the provider tests. The roles (server, host,
//! component) live in the `messaging-nats-harness` crate, which the
//! benchmark uses too; here are what only the tests need: credentials made
//! by the tests and the usual consumer set-up.

use anyhow::bail;
use bytes::Bytes;
use futures::StreamExt as _;

pub mod credentials;

pub use messaging_nats_harness::{
    echo_responder, pairs, round_trip, spawn_provider, Behaviour, BrokerMessage, Caller, Lattice,
    Link, Logs, NatsServer, Provider, ProviderOptions, Received, ServerExt, ServerOptions,
    LAME_DUCK_CONFIG, WAIT,
};

/// The usual set-up of a consumer test: a lattice, the provider, and a
/// component "c" with a consumer link configured by `config`.
pub struct ConsumerSetup {
    pub lattice: Lattice,
    /// Kept so that the provider process lives as long as the set-up.
    _provider: Provider,
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
        let caller = component.caller(&provider).await;
        Self {
            lattice,
            _provider: provider,
            caller,
        }
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

/// Reads the next message of a subscription within the wait.
pub async fn next_message(sub: &mut async_nats::Subscriber) -> anyhow::Result<async_nats::Message> {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(msg)) => Ok(msg),
        Ok(None) => bail!("subscription closed"),
        Err(_) => bail!("no message within {WAIT:?}"),
    }
}
