//! Live demo: a NATS server, an embedded wasmCloud host, the messaging-nats
//! provider from its archive and the echo component, linked on `demo.in`.
//! Sends a few requests as a plain NATS client and prints what happens.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use async_nats::client::RequestErrorKind;
use futures::StreamExt as _;
use messaging_nats_e2e::archive::native_target;
use messaging_nats_e2e::host::DEFAULT_LINK_NAME;
use messaging_nats_e2e::{build_provider_archive, init_logging, paths, Host};

const PROVIDER_ID: &str = "messaging-nats";
const PROVIDER_CONFIG: &str = "messaging-nats-defaults";
const COMPONENT_ID: &str = "echo";
const SUBJECT: &str = "demo.in";
const REQUESTS: &[&str] = &["hello", "wasmCloud", "messages through NATS", "bye"];
const WAIT: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> Result<()> {
    init_logging();
    let started = Instant::now();
    let step = |what: &str| println!("[{:>6.2}s] {what}", started.elapsed().as_secs_f64());

    let nats = messaging_nats_e2e::nats::start();
    step(&format!("nats-server listening on {}", nats.url()));

    let work = tempfile::tempdir().context("failed to create work dir")?;
    let par = build_provider_archive(
        &paths::provider_bin()?,
        &paths::provider_version()?,
        &work.path().join("messaging-nats.par.gz"),
    )
    .await?;
    step(&format!(
        "provider archive {} (target {})",
        par.display(),
        native_target()
    ));

    let host = Host::start(&nats.url()).await?;
    step(&format!(
        "host {} up on lattice {}",
        host.id(),
        host.lattice()
    ));

    // The provider connects to nats://127.0.0.1:4222 unless told otherwise.
    host.put_config(PROVIDER_CONFIG, &[("cluster_uris", &nats.url())])
        .await?;
    host.start_provider(PROVIDER_ID, &par, &[PROVIDER_CONFIG])
        .await?;
    step(&format!(
        "provider {PROVIDER_ID} started and healthy (config {PROVIDER_CONFIG}: cluster_uris={})",
        nats.url()
    ));

    host.deploy_messaging_component(
        COMPONENT_ID,
        &paths::echo_component_wasm()?,
        PROVIDER_ID,
        DEFAULT_LINK_NAME,
        SUBJECT,
    )
    .await?;
    step(&format!(
        "component {COMPONENT_ID} running, linked: handler (subscriptions={SUBJECT}) and consumer"
    ));

    let client = messaging_nats_e2e::nats::connect(&nats).await?;
    let mut events = client.subscribe(format!("events.{SUBJECT}")).await?;
    messaging_nats_e2e::nats::round_trip(&client).await;
    step("transcript follows\n");

    for body in REQUESTS {
        println!("  -> {SUBJECT:<16} {body:?}");
        let reply = request(&client, body).await?;
        println!(
            "  <- reply            {:?}",
            String::from_utf8_lossy(&reply.payload)
        );
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .context("no event from the component")?
            .context("event subscription ended")?;
        println!(
            "  <- {:<16} {:?}\n",
            event.subject.as_str(),
            String::from_utf8_lossy(&event.payload)
        );
    }

    host.stop().await?;
    step("host stopped (provider stopped through it first)");
    drop(nats);
    step("nats-server stopped; done");
    Ok(())
}

/// Sends a request to [`SUBJECT`], again while nobody subscribes it yet (the
/// provider subscribes shortly after the link is put); such a request reaches
/// no one, so retrying it has no side effect.
async fn request(client: &async_nats::Client, body: &str) -> Result<async_nats::Message> {
    let deadline = Instant::now() + WAIT;
    loop {
        match client
            .request(SUBJECT, body.as_bytes().to_vec().into())
            .await
        {
            Err(e) if e.kind() == RequestErrorKind::NoResponders && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other.with_context(|| format!("request to {SUBJECT} failed")),
        }
    }
}
