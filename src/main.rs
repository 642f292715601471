//! The provider executable that a wasmCloud host starts.

use anyhow::Context as _;
use messaging_nats::{bindings, MessagingProvider};
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;
use wasmcloud_provider_sdk::{get_connection, run_provider, serve_provider_exports};

const PROVIDER_NAME: &str = "messaging-nats";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    wasmcloud_provider_sdk::initialize_observability!(PROVIDER_NAME, None::<&str>);

    let provider = MessagingProvider::default();
    let host_shutdown = run_provider(provider.clone(), PROVIDER_NAME)
        .await
        .context("failed to start the provider")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let stopped = {
        let provider = provider.clone();
        async move {
            tokio::select! {
                () = host_shutdown => {}
                _ = terminate.recv() => {
                    info!("SIGTERM received, draining");
                    provider.shutdown_now().await;
                }
                _ = tokio::signal::ctrl_c() => {
                    info!("SIGINT received, draining");
                    provider.shutdown_now().await;
                }
            }
        }
    };

    let connection = get_connection();
    let wrpc = connection
        .get_wrpc_client(connection.provider_key())
        .await
        .context("failed to create the wRPC client")?;
    serve_provider_exports(&wrpc, provider, stopped, bindings::serve)
        .await
        .context("failed to serve the consumer interface")?;
    info!("provider stopped");
    Ok(())
}
