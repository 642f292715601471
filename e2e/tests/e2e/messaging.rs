//! Messages between plain NATS clients and a component, through the provider
//! on a real host.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common::*;
use anyhow::{bail, Context as _, Result};
use async_nats::client::RequestErrorKind;
use messaging_nats_e2e::host::DEFAULT_LINK_NAME;
use messaging_nats_e2e::nats::round_trip;

#[tokio::test(flavor = "multi_thread")]
async fn request_is_answered_by_component() -> Result<()> {
    let lattice = Lattice::with_echo().await?;

    let reply = lattice.client.request(SUBJECT, "hello".into()).await?;

    assert_eq!(text(&reply), "echo: HELLO");
    lattice.host.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn component_publish_reaches_event_subject() -> Result<()> {
    let lattice = Lattice::with_echo().await?;
    let mut events = lattice.subscribe(EVENT_SUBJECT).await?;

    lattice
        .client
        .publish(SUBJECT, "hello there".into())
        .await?;

    let event = next(&mut events, WAIT).await?;
    assert_eq!(event.subject.as_str(), EVENT_SUBJECT);
    assert_eq!(text(&event), "handled 11 bytes");
    lattice.host.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn thousand_messages_are_all_delivered() -> Result<()> {
    const COUNT: usize = 1000;
    // Message i has a body of BASE + i bytes, so its event names it.
    const BASE: usize = 1000;
    let lattice = Lattice::with_echo().await?;
    let mut events = lattice.subscribe(EVENT_SUBJECT).await?;

    for i in 0..COUNT {
        lattice
            .client
            .publish(SUBJECT, vec![b'x'; BASE + i].into())
            .await?;
    }
    lattice.client.flush().await?;

    let mut seen = Vec::with_capacity(COUNT);
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < COUNT {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = next(&mut events, left)
            .await
            .with_context(|| format!("only {} of {COUNT} events arrived", seen.len()))?;
        seen.push(event_length(&text(&event))? - BASE);
    }
    let extra = quiet(&mut events, QUIET).await;
    let distinct: BTreeSet<usize> = seen.iter().copied().collect();
    assert_eq!(
        distinct,
        (0..COUNT).collect(),
        "missing or unexpected messages"
    );
    assert_eq!(seen.len(), COUNT, "duplicate deliveries");
    assert!(
        extra.is_empty(),
        "{} events more than messages",
        extra.len()
    );
    lattice.host.stop().await
}

/// N in an event body `handled N bytes`.
fn event_length(body: &str) -> Result<usize> {
    body.strip_prefix("handled ")
        .and_then(|rest| rest.strip_suffix(" bytes"))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected event body {body:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_link_stops_delivery() -> Result<()> {
    let lattice = Lattice::with_echo().await?;

    lattice
        .host
        .delete_link(PROVIDER_ID, DEFAULT_LINK_NAME)
        .await?;

    // Once the provider has dropped the link's subscription, nobody listens.
    // (Requests the provider took before that may go unanswered: short timeout.)
    let deadline = Instant::now() + WAIT;
    loop {
        match request(&lattice.client, "hello", Duration::from_secs(1)).await {
            Err(e) if e.kind() == RequestErrorKind::NoResponders => break,
            other => {
                if Instant::now() > deadline {
                    bail!("{SUBJECT} still served {WAIT:?} after link delete: {other:?}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let mut events = lattice.subscribe(EVENT_SUBJECT).await?;
    lattice.client.publish(SUBJECT, "hello".into()).await?;
    let late = quiet(&mut events, QUIET).await;
    assert!(late.is_empty(), "component still got messages: {late:?}");
    lattice.host.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_received_before_link_delete_are_answered() -> Result<()> {
    const REQUESTS: usize = 20;
    let lattice = Lattice::with_echo().await?;
    let inbox = lattice.client.new_inbox();
    let mut replies = lattice.subscribe(&format!("{inbox}.>")).await?;
    for i in 0..REQUESTS {
        lattice
            .client
            .publish_with_reply(SUBJECT, format!("{inbox}.{i}"), "hello".into())
            .await?;
    }
    // On the server before the host is even asked to delete the link, so
    // the provider has them (or is receiving them) when the delete arrives.
    round_trip(&lattice.client).await;

    lattice
        .host
        .delete_link(PROVIDER_ID, DEFAULT_LINK_NAME)
        .await?;

    let mut answered = BTreeSet::new();
    while answered.len() < REQUESTS {
        let reply = next(&mut replies, WAIT)
            .await
            .with_context(|| format!("{} of {REQUESTS} requests answered", answered.len()))?;
        assert_eq!(text(&reply), "echo: HELLO");
        answered.insert(reply.subject.to_string());
    }
    lattice.host.stop().await
}

/// A request to [`SUBJECT`] that waits at most `timeout` for the reply.
async fn request(
    client: &async_nats::Client,
    body: &'static str,
    timeout: Duration,
) -> Result<async_nats::Message, async_nats::RequestError> {
    let request = async_nats::Request::new()
        .payload(body.into())
        .timeout(Some(timeout));
    client.send_request(SUBJECT, request).await
}

#[tokio::test(flavor = "multi_thread")]
async fn second_component_only_gets_its_own_subject() -> Result<()> {
    const EACH: usize = 10;
    let lattice = Lattice::with_echo().await?;
    // A provider-side link name is unique per (source, package): the second
    // handler link from the same provider needs its own.
    lattice.deploy_echo("echo-b", "echo-b", "other.in").await?;
    let mut events = lattice.subscribe("events.>").await?;

    for _ in 0..EACH {
        lattice.client.publish(SUBJECT, "to a".into()).await?;
        lattice.client.publish("other.in", "to b".into()).await?;
    }
    lattice.client.flush().await?;

    let mut received = Vec::new();
    while received.len() < 2 * EACH {
        received.push(next(&mut events, WAIT).await?);
    }
    received.extend(quiet(&mut events, QUIET).await);
    let counts = count_by_subject(&received);
    assert_eq!(counts.get(EVENT_SUBJECT), Some(&EACH), "{counts:?}");
    assert_eq!(counts.get("events.other.in"), Some(&EACH), "{counts:?}");
    assert_eq!(counts.len(), 2, "{counts:?}");
    let reply = lattice.client.request("other.in", "b".into()).await?;
    assert_eq!(text(&reply), "echo: B");
    lattice.host.stop().await
}
