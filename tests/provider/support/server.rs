//! Private nats-server processes (the `nats-test-server` crate, shared with
//! the end-to-end tests) and what the tests ask of them.

use bytes::Bytes;

pub use nats_test_server::{NatsServer, Options as ServerOptions};

/// What the provider tests ask of a server beyond starting and stopping it.
pub trait ServerExt {
    /// A plain client of this server.
    async fn client(&self) -> async_nats::Client;
    /// A client of this server authenticated with user and password.
    async fn client_as(&self, user: &str, password: &str) -> async_nats::Client;
    /// Names of the client connections the server has.
    fn connection_names(&self) -> Vec<String>;
}

impl ServerExt for NatsServer {
    async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to test nats")
    }

    async fn client_as(&self, user: &str, password: &str) -> async_nats::Client {
        async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
            .connect(self.url())
            .await
            .expect("connect to test nats as a user")
    }

    fn connection_names(&self) -> Vec<String> {
        self.connections()
            .iter()
            .map(|c| c["name"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// Waits until the server has processed everything `client` sent before,
/// subscriptions included (a flush only empties the client's buffer): the
/// server answers a request nobody serves with "no responders", in order.
pub async fn round_trip(client: &async_nats::Client) {
    let nobody = client.new_inbox();
    let _ = tokio::time::timeout(super::WAIT, client.request(nobody, Bytes::new())).await;
}
