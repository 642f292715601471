//! Link puts and deletes are applied in the order the host sent them.
//!
//! The SDK hands puts and deletes over from two subscriptions, in either
//! order when both wait; wadm replacing a link sends a delete and a put of
//! it back to back. Each round here sends such a pair and checks what
//! stands. Run on a provider that followed the SDK's order alone, 1 to 3
//! rounds in 10 ended wrong.

use std::time::Duration;

use crate::support::{Behaviour, Lattice, Link, Provider, WAIT};

/// Rounds of a pair sent back to back: enough that the SDK's order alone
/// is unlikely to get them all right (0.9^30 is about 4%; 0.8^30 0.1%).
const ROUNDS: usize = 30;

/// A debug line: the SDK handed over a put or delete that the provider had
/// already taken, in the host's order, from its own subscription.
fn taken_already(line: &str, link: &str) -> bool {
    line.contains("link change from the SDK already taken in the host's order")
        && line.contains(link)
}

/// Waits until the provider has looked at `n` of the SDK's hand-overs of
/// `link` and found each already taken: none of them is applied again.
async fn wait_for_sdk_handovers_skipped(provider: &Provider, link: &str, n: usize) {
    let deadline = std::time::Instant::now() + WAIT;
    while provider.logs.count(|l| taken_already(l, link)) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of the SDK's {n} hand-overs of {link} found taken already",
            provider.logs.count(|l| taken_already(l, link))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_handler_link_deleted_and_put_back_to_back_runs_after_each_pair() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let mut component = lattice.component("c", Behaviour::default()).await;
    let handler = Link::handler("c", &[("subscriptions", "order.in")]);
    provider.put_link(&handler).await;

    for round in 0..ROUNDS {
        let from = provider.logs.line_count();
        provider.send_link_delete(&handler).await;
        provider.send_link_put(&handler).await;
        // Applied in the other order, the put finds the link running with
        // the same settings and keeps it; then the delete removes it.
        provider
            .logs
            .wait_for(
                from,
                &format!("round {round}: the link started again"),
                |l| l.contains("handler link ready") && l.contains("link=c/default"),
            )
            .await;
    }

    wait_for_sdk_handovers_skipped(&provider, "link=c/default", 2 * ROUNDS).await;
    let (healthy, health) = provider.health().await.expect("health");
    assert!(healthy && health.starts_with("1 handler links"), "{health}");
    assert_eq!(
        provider.logs.count(|l| l.contains("handler link deleted")),
        ROUNDS
    );
    assert_eq!(provider.logs.count(|l| l.contains("kept as it runs")), 0);
    lattice.publish_numbered("order.in", 1).await;
    assert_eq!(&component.next().await.message.body[..], b"0");
}

/// Sends a put and a delete of `link` back to back, then puts `other`
/// under a name of its own for each round (`r0`, `r1`, ...) and waits
/// until that one is ready: the provider has taken the pair by then (they
/// were sent before). Returns the health after the last round: `link` is
/// in it only if a pair was applied in the wrong order.
async fn put_and_delete_rounds(
    provider: &Provider,
    link: &Link,
    marker: &str,
    other: &Link,
) -> String {
    for round in 0..ROUNDS {
        provider.send_link_put(link).await;
        provider.send_link_delete(link).await;
        let name = format!("r{round}");
        provider.put_link(&other.clone().named(&name)).await;
    }
    wait_for_sdk_handovers_skipped(provider, marker, 2 * ROUNDS).await;
    let (_, health) = provider.health().await.expect("health");
    health
}

#[tokio::test]
async fn a_handler_link_put_and_deleted_back_to_back_stays_deleted() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let _component = lattice.component("c", Behaviour::default()).await;
    let handler = Link::handler("c", &[("subscriptions", "order.in")]);

    let other = Link::handler("s", &[("subscriptions", "order.other")]);
    let health = put_and_delete_rounds(&provider, &handler, "link=c/default", &other).await;

    // Applied in the other order, the delete finds nothing and the put
    // starts the link, which then runs.
    assert!(
        health.starts_with(&format!("{ROUNDS} handler links")),
        "{health}"
    );
    assert_eq!(
        provider
            .logs
            .count(|l| l.contains("handler link deleted") && l.contains("link=c/default")),
        ROUNDS
    );
}

#[tokio::test]
async fn a_consumer_link_put_and_deleted_back_to_back_stays_deleted() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let component = lattice.component("c", Behaviour::default()).await;
    let consumer = Link::consumer("c", &[]);

    let other = Link::consumer("s", &[]);
    let health = put_and_delete_rounds(&provider, &consumer, "link=c/default", &other).await;

    assert!(
        health.starts_with(&format!("0 handler links, {ROUNDS} consumer links")),
        "{health}"
    );
    assert_eq!(
        provider
            .logs
            .count(|l| l.contains("consumer link deleted") && l.contains("link=c/default")),
        ROUNDS
    );
    let caller = component.caller(&provider.key).await;
    let refused = caller
        .publish(&crate::support::message("order.out", b"sent"))
        .await
        .unwrap()
        .expect_err("no consumer link is left to publish with");
    assert!(
        refused.contains("has no wasmcloud:messaging/consumer link"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_consumer_link_deleted_and_put_back_to_back_serves_after_each_pair() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let component = lattice.component("c", Behaviour::default()).await;
    let consumer = Link::consumer("c", &[]);
    provider.put_link(&consumer).await;

    for round in 0..ROUNDS {
        let from = provider.logs.line_count();
        provider.send_link_delete(&consumer).await;
        provider.send_link_put(&consumer).await;
        provider
            .logs
            .wait_for(from, &format!("round {round}: the link ready again"), |l| {
                l.contains("consumer link ready") && l.contains("link=c/default")
            })
            .await;
    }

    wait_for_sdk_handovers_skipped(&provider, "link=c/default", 2 * ROUNDS).await;
    let (_, health) = provider.health().await.expect("health");
    assert!(
        health.starts_with("0 handler links, 1 consumer links"),
        "{health}"
    );
    let caller = component.caller(&provider.key).await;
    let mut out = lattice.client.subscribe("order.out").await.unwrap();
    crate::support::round_trip(&lattice.client).await;
    caller
        .publish(&crate::support::message("order.out", b"sent"))
        .await
        .unwrap()
        .expect("the consumer link publishes");
    let got = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut out))
        .await
        .expect("the published message")
        .unwrap();
    assert_eq!(&got.payload[..], b"sent");
}
