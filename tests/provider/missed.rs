//! Links the host published while the provider was not listening: the
//! lattice holds them (its control interface lists them), no put reaches
//! the provider, and the provider applies them itself.

use std::time::Duration;

use crate::support::{message, Behaviour, Lattice, Link, ProviderOptions, WAIT};

const KEY: &str = "messaging-nats-test";

/// A log line that says the provider applied a link it missed.
fn applied_missed(line: &str, link: &str) -> bool {
    line.contains("link missed while the provider was not listening") && line.contains(link)
}

#[tokio::test]
async fn links_the_lattice_holds_but_never_put_are_applied_once_the_provider_listens() {
    let lattice = Lattice::start().await;
    let mut component = lattice.component("c", Behaviour::default()).await;
    let handler = Link::handler("c", &[("subscriptions", "missed.in")]);
    let consumer = Link::consumer("c", &[]);
    lattice.hold_link(KEY, &handler);
    lattice.hold_link(KEY, &consumer);

    let provider = lattice.provider(&[]).await;

    let (healthy, health) = provider
        .wait_for_health("both links", WAIT, |_, m| {
            m.starts_with("1 handler links, 1 consumer links")
        })
        .await;
    assert!(healthy, "{health}");
    provider
        .logs
        .wait_for(0, "the handler link ready", |l| {
            l.contains("handler link ready") && l.contains("link=c/default")
        })
        .await;
    assert_eq!(
        provider.logs.count(|l| applied_missed(l, "link=c/default")),
        2
    );
    lattice.publish_numbered("missed.in", 1).await;
    assert_eq!(&component.next().await.message.body[..], b"0");
    let caller = component.caller(&provider.key).await;
    let mut out = lattice.client.subscribe("missed.out").await.unwrap();
    crate::support::round_trip(&lattice.client).await;
    caller
        .publish(&message("missed.out", b"sent"))
        .await
        .unwrap()
        .unwrap();
    let got = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut out))
        .await
        .expect("the consumer link's publish")
        .unwrap();
    assert_eq!(&got.payload[..], b"sent");
}

#[tokio::test]
async fn a_link_the_host_handed_over_is_not_applied_again() {
    let lattice = Lattice::start().await;
    let handler = Link::handler("c", &[("subscriptions", "given")]);
    lattice.hold_link(KEY, &handler);

    let provider = lattice
        .provider_with(ProviderOptions {
            links: vec![handler],
            ..ProviderOptions::default()
        })
        .await;
    provider
        .logs
        .wait_for(0, "the lattice's links checked", |l| {
            l.contains("checked the lattice's links")
        })
        .await;
    // Handler link starts run in order: once a later put is ready, whatever
    // the check queued has run.
    provider
        .put_link(&Link::handler("later", &[("subscriptions", "later")]))
        .await;

    assert_eq!(
        provider
            .logs
            .count(|l| l.contains("handler link ready") && l.contains("link=c/default")),
        1
    );
    assert_eq!(provider.logs.count(|l| applied_missed(l, "")), 0);
    assert_eq!(
        provider.logs.count(|l| l.contains("kept as it runs")),
        0,
        "the link was put a second time"
    );
}

/// Only the host can fetch and decrypt a link's secrets: such a link is not
/// run on part of its settings, and health says what to do.
#[tokio::test]
async fn a_missed_link_with_secrets_is_named_in_health_and_not_run() {
    let lattice = Lattice::start().await;
    let link = Link::consumer("c", &[]).with_secret("token", "s3cret");
    lattice.hold_link(KEY, &link);

    let provider = lattice.provider(&[]).await;

    let (healthy, health) = provider
        .wait_for_health("the missed link named", WAIT, |_, m| {
            m.contains("consumer link c/default was missed")
        })
        .await;
    assert!(!healthy, "{health}");
    assert!(
        health.starts_with("0 handler links, 0 consumer links"),
        "{health}"
    );
    assert!(
        health.contains("names secrets (SECRET_c-default) that only the host can decrypt"),
        "{health}"
    );
    assert!(!health.contains("s3cret"), "{health}");

    // Put again by the host, with its secrets, it runs and health clears.
    let line = provider.put_link(&link).await;
    assert!(line.contains("link ready"), "{line}");
    // Ready is not yet connected: health clears once the connection is up.
    let health = provider.wait_healthy(WAIT).await;
    assert!(!health.contains("missed"), "{health}");
}

#[tokio::test]
async fn a_link_missed_while_the_lattice_connection_was_down_is_applied_after_reconnect() {
    let mut lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;

    lattice.nats.stop();
    // Put while the provider cannot hear it: the lattice holds the link.
    let handler = Link::handler("c", &[("subscriptions", "after.outage")]);
    lattice.hold_link(KEY, &handler);
    tokio::time::sleep(Duration::from_millis(200)).await;
    lattice.nats.restart();

    provider
        .logs
        .wait_for_within(0, "the missed link applied", 2 * WAIT, |l| {
            applied_missed(l, "link=c/default")
        })
        .await;
    provider
        .wait_for_health("the link", WAIT, |_, m| m.starts_with("1 handler links"))
        .await;
    provider
        .logs
        .wait_for(0, "the handler link ready", |l| {
            l.contains("handler link ready")
        })
        .await;
    let mut component = lattice.component("c", Behaviour::default()).await;
    // The link's client may still be resubscribing on the restarted server:
    // published until one arrives.
    let deadline = std::time::Instant::now() + WAIT;
    let received = loop {
        lattice.publish_numbered("after.outage", 1).await;
        let next = tokio::time::timeout(Duration::from_millis(200), component.next_opt()).await;
        if let Ok(Some(received)) = next {
            break received;
        }
        assert!(std::time::Instant::now() < deadline, "nothing delivered");
    };
    assert_eq!(&received.message.body[..], b"0");
}
