//! Shared set-up of the end-to-end tests: a NATS server, an embedded host, the
//! provider from its archive and the echo component, linked as users link them.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use async_nats::client::RequestErrorKind;
use async_nats::{Message, Subscriber};
use futures::StreamExt as _;
use messaging_nats_e2e::host::{new_lattice_name, DEFAULT_LINK_NAME};
use messaging_nats_e2e::nats::round_trip;
use messaging_nats_e2e::wadm::Wadm;
use messaging_nats_e2e::{build_provider_archive, init_logging, paths, Host, NatsServer};
use tokio::sync::OnceCell;

pub const PROVIDER_ID: &str = "messaging-nats";
pub const PROVIDER_CONFIG: &str = "messaging-nats-defaults";
pub const COMPONENT_ID: &str = "echo";
pub const SUBJECT: &str = "demo.in";
pub const EVENT_SUBJECT: &str = "events.demo.in";

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(30);

/// How long a test watches for something that should not happen.
pub const QUIET: Duration = Duration::from_secs(1);

/// The provider archive, built once per test process from the release
/// build, under a name of its own: nextest runs tests as parallel
/// processes, and one must not read an archive another is still writing.
pub async fn provider_archive() -> Result<PathBuf> {
    static ARCHIVE: OnceCell<PathBuf> = OnceCell::const_new();
    ARCHIVE
        .get_or_try_init(|| async {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(env!("CARGO_CRATE_NAME"));
            tokio::fs::create_dir_all(&dir).await?;
            build_provider_archive(
                &paths::provider_bin()?,
                &paths::provider_version()?,
                &dir.join(format!("messaging-nats-{}.par.gz", std::process::id())),
            )
            .await
        })
        .await
        .cloned()
}

/// A running lattice: its NATS server, the host, and a plain NATS client of
/// the kind an application outside wasmCloud would use.
pub struct Lattice {
    pub host: Host,
    pub client: async_nats::Client,
    // Dropped last: the host and client talk to it until they are gone.
    pub nats: NatsServer,
}

impl Lattice {
    /// A NATS server and a host with nothing deployed.
    pub async fn start() -> Result<Self> {
        init_logging();
        let nats = messaging_nats_e2e::nats::start();
        let host = Host::start(&nats.url()).await?;
        let client = messaging_nats_e2e::nats::connect(&nats).await?;
        Ok(Self { host, client, nats })
    }

    /// A NATS server, wadm, and a host with nothing deployed. wadm starts
    /// first: it finds a lattice by its hosts' heartbeats, the first one
    /// when a host starts and then one every 30 s.
    pub async fn with_wadm() -> Result<(Self, Wadm)> {
        init_logging();
        let nats = messaging_nats_e2e::nats::start();
        let lattice = new_lattice_name();
        let wadm = Wadm::start(&nats.url(), &lattice).await?;
        let host = Host::start_on(&nats.url(), &lattice).await?;
        wadm.wait_knows_host(host.id()).await?;
        let client = messaging_nats_e2e::nats::connect(&nats).await?;
        Ok((Self { host, client, nats }, wadm))
    }

    /// A lattice with the provider running and the echo component linked to
    /// it on [`SUBJECT`], already answering.
    pub async fn with_echo() -> Result<Self> {
        let lattice = Self::start().await?;
        lattice.start_provider().await?;
        lattice
            .deploy_echo(COMPONENT_ID, DEFAULT_LINK_NAME, SUBJECT)
            .await?;
        Ok(lattice)
    }

    /// Starts the provider with provider-level config naming this
    /// lattice's NATS server (also its default: the lattice's own), as a
    /// user names the server links use.
    pub async fn start_provider(&self) -> Result<()> {
        self.host
            .put_config(PROVIDER_CONFIG, &[("cluster_uris", &self.nats.url())])
            .await?;
        self.host
            .start_provider(PROVIDER_ID, &provider_archive().await?, &[PROVIDER_CONFIG])
            .await
    }

    /// Runs the echo component as `component_id`, with a handler link named
    /// `link_name` subscribing it to `subject` and a consumer link back, and
    /// waits until it answers on `subject`.
    pub async fn deploy_echo(
        &self,
        component_id: &str,
        link_name: &str,
        subject: &str,
    ) -> Result<()> {
        self.host
            .deploy_messaging_component(
                component_id,
                &paths::echo_component_wasm()?,
                PROVIDER_ID,
                link_name,
                subject,
            )
            .await?;
        self.wait_answering(subject).await
    }

    /// Sends requests to `subject` until one is answered, then waits for the
    /// events of all of them so that they do not reach later subscribers.
    pub async fn wait_answering(&self, subject: &str) -> Result<()> {
        let mut events = self.client.subscribe(format!("events.{subject}")).await?;
        round_trip(&self.client).await;
        let deadline = Instant::now() + WAIT;
        loop {
            match self.client.request(subject.to_owned(), "ping".into()).await {
                Ok(_) => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        RequestErrorKind::NoResponders | RequestErrorKind::TimedOut
                    ) =>
                {
                    if Instant::now() > deadline {
                        bail!("{subject} not answered within {WAIT:?}: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).context("request failed"),
            }
        }
        // At least the answered request has an event; timed-out ones may too.
        next(&mut events, WAIT)
            .await
            .context("no event for the first answered request")?;
        quiet(&mut events, Duration::from_millis(300)).await;
        Ok(())
    }

    /// Subscribes the plain client to `subject`, ready when this returns.
    pub async fn subscribe(&self, subject: &str) -> Result<Subscriber> {
        let subscriber = self.client.subscribe(subject.to_owned()).await?;
        // The component publishes from the host's connection: the server
        // must have taken this subscription first.
        round_trip(&self.client).await;
        Ok(subscriber)
    }
}

/// The next message on `subscriber` within `timeout`.
pub async fn next(subscriber: &mut Subscriber, timeout: Duration) -> Result<Message> {
    tokio::time::timeout(timeout, subscriber.next())
        .await
        .context("timed out waiting for a message")?
        .context("subscription ended")
}

/// Messages arriving on `subscriber` until none came for `gap`.
pub async fn quiet(subscriber: &mut Subscriber, gap: Duration) -> Vec<Message> {
    let mut messages = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout(gap, subscriber.next()).await {
        messages.push(message);
    }
    messages
}

/// Counts of messages per subject.
pub fn count_by_subject(messages: &[Message]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for message in messages {
        *counts.entry(message.subject.to_string()).or_default() += 1;
    }
    counts
}

/// The body of `message` as text.
pub fn text(message: &Message) -> String {
    String::from_utf8_lossy(&message.payload).into_owned()
}
