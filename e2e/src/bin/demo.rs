//! Live demo: a NATS server, an embedded wasmCloud host and wadm; the
//! repository's `wadm.yaml` deployed by wadm (the messaging-nats provider
//! and the echo component from `build/`, linked on `demo.in`). Sends a few
//! requests as a plain NATS client and prints what happens.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use async_nats::client::RequestErrorKind;
use futures::StreamExt as _;
use messaging_nats_e2e::host::new_lattice_name;
use messaging_nats_e2e::paths::repo_root;
use messaging_nats_e2e::wadm::Wadm;
use messaging_nats_e2e::{init_logging, Host};

/// The application `wadm.yaml` defines.
const APP: &str = "messaging-nats-echo";
const SUBJECT: &str = "demo.in";
const REQUESTS: &[&str] = &["hello", "wasmCloud", "messages through NATS", "bye"];
const WAIT: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> Result<()> {
    init_logging();
    let started = Instant::now();
    let step = |what: &str| println!("[{:>6.2}s] {what}", started.elapsed().as_secs_f64());

    let nats = messaging_nats_e2e::nats::start();
    let client = messaging_nats_e2e::nats::connect(&nats).await?;
    step(&format!(
        "nats-server {} listening on {}",
        client.server_info().version,
        nats.url()
    ));

    // wadm first: it finds a lattice by its hosts' heartbeats, the first
    // one when a host starts and then one every 30 s.
    let lattice = new_lattice_name();
    let wadm = Wadm::start(&nats.url(), &lattice).await?;
    step("wadm running");
    let host = Host::start_on(&nats.url(), &lattice).await?;
    step(&format!("host {} up on lattice {lattice}", host.id()));
    wadm.wait_knows_host(host.id()).await?;

    let manifest = repo_root().join("wadm.yaml");
    let yaml = std::fs::read_to_string(&manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let (name, version) = wadm.deploy(&yaml, &repo_root()).await?;
    step(&format!("wadm.yaml put and deployed: {name} {version}"));
    let status = wadm.wait_deployed(APP).await?;
    step(&format!("application {APP}: {:?}", status.info.status_type));
    for scaler in &status.scalers {
        println!(
            "           {:<10} {:?}  {}",
            scaler.kind, scaler.info.status_type, scaler.name
        );
    }

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

    wadm.undeploy(APP).await?;
    step(&format!("{APP} undeployed"));
    drop(wadm);
    host.stop().await?;
    step("host stopped (whatever still ran stopped through it first)");
    drop(nats);
    step("nats-server stopped; done");
    Ok(())
}

/// Sends a request to [`SUBJECT`], again while nobody subscribes it yet
/// (the provider subscribes shortly after wadm puts the link); such a
/// request reaches no one, so retrying it has no side effect.
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
