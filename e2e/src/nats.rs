//! The lattice's `nats-server`: the repository's shared test helper
//! (`testing/nats-server`), here with JetStream, where the host keeps its
//! lattice data.

use anyhow::{Context as _, Result};
pub use nats_test_server::{round_trip, NatsServer};

/// Starts a private `nats-server` with JetStream on a port it picks itself,
/// with a fresh store; it is killed and its folder removed on drop.
pub fn start() -> NatsServer {
    NatsServer::with(nats_test_server::Options {
        jetstream: true,
        ..nats_test_server::Options::default()
    })
}

/// A new client connection to `server`.
pub async fn connect(server: &NatsServer) -> Result<async_nats::Client> {
    async_nats::connect(server.url())
        .await
        .with_context(|| format!("failed to connect to {}", server.url()))
}
