//! Private nats-server processes (the `nats-test-server` crate, shared with
//! the end-to-end tests) and what the tests ask of them.

use std::future::Future;

pub use nats_test_server::{
    round_trip, LeafTopology, NatsServer, Options as ServerOptions, HUB_DOMAIN, LAME_DUCK_CONFIG,
};

/// What the provider tests ask of a server beyond starting and stopping it.
pub trait ServerExt {
    /// A plain client of this server.
    fn client(&self) -> impl Future<Output = async_nats::Client> + Send;
    /// A client of this server authenticated with user and password.
    fn client_as(
        &self,
        user: &str,
        password: &str,
    ) -> impl Future<Output = async_nats::Client> + Send;
    /// Names of the client connections the server has.
    fn connection_names(&self) -> Vec<String>;
}

impl ServerExt for NatsServer {
    fn client(&self) -> impl Future<Output = async_nats::Client> + Send {
        let url = self.url();
        async move {
            async_nats::connect(url)
                .await
                .expect("connect to test nats")
        }
    }

    fn client_as(
        &self,
        user: &str,
        password: &str,
    ) -> impl Future<Output = async_nats::Client> + Send {
        let options =
            async_nats::ConnectOptions::with_user_and_password(user.into(), password.into());
        let url = self.url();
        async move {
            options
                .connect(url)
                .await
                .expect("connect to test nats as a user")
        }
    }

    fn connection_names(&self) -> Vec<String> {
        self.connections()
            .iter()
            .map(|c| c["name"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// Answers every request on `subject` with its own body until the returned
/// task is aborted; subscribed (confirmed by the server) when this returns.
pub async fn echo_responder(
    client: &async_nats::Client,
    subject: &str,
) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt as _;
    let mut requests = client
        .subscribe(subject.to_string())
        .await
        .expect("subscribe the responder");
    round_trip(client).await;
    let client = client.clone();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                let _ = client.publish(reply, request.payload).await;
            }
        }
    })
}
