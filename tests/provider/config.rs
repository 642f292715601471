//! Bad link configuration: the link is refused with an error naming the key
//! and value, and the provider goes on serving its other links.

use crate::support::{message, next_message, round_trip, Behaviour, Lattice, Link};

/// Puts a handler link with `config`, expects it to be refused with a log
/// line containing every fragment, then checks that a good link still works.
async fn assert_rejected(config: &[(&str, &str)], fragments: &[&str]) {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let component = lattice.component("c", Behaviour::default()).await;

    let line = provider.put_link(&Link::handler("c", config)).await;

    assert!(line.contains("link rejected"), "{line}");
    for fragment in fragments {
        assert!(line.contains(fragment), "{fragment:?} missing from: {line}");
    }
    provider.put_link(&Link::consumer("c", &[])).await;
    let mut sub = lattice.client.subscribe("still.working").await.unwrap();
    round_trip(&lattice.client).await;
    component
        .caller(&provider.key)
        .await
        .publish(&message("still.working", b"ok"))
        .await
        .unwrap()
        .unwrap();
    next_message(&mut sub).await.unwrap();
}

#[tokio::test]
async fn unparsable_cluster_uri_is_rejected() {
    assert_rejected(
        &[("cluster_uris", "nats://host:notaport")],
        &["cluster_uris", "nats://host:notaport"],
    )
    .await;
}

#[tokio::test]
async fn empty_subscription_entries_are_skipped_with_a_warning() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let mut component = lattice.component("c", Behaviour::default()).await;

    let line = provider
        .put_link(&Link::handler("c", &[("subscriptions", "a,,b,")]))
        .await;
    lattice.publish_numbered("a", 1).await;
    lattice.publish_numbered("b", 1).await;

    assert!(line.contains("link ready"), "{line}");
    let mut subjects: Vec<String> = component
        .take(2)
        .await
        .into_iter()
        .map(|r| r.message.subject)
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["a", "b"]);
    assert_eq!(
        provider
            .logs
            .count(|l| l.contains("empty entries in the list are skipped")
                && l.contains("subscriptions")),
        1
    );
}

#[tokio::test]
async fn invalid_subscription_subject_is_rejected() {
    assert_rejected(
        &[("subscriptions", "ok.subject,bad..subject")],
        &["subscriptions", "bad..subject", "empty token"],
    )
    .await;
}

#[tokio::test]
async fn non_numeric_max_in_flight_is_rejected() {
    assert_rejected(&[("max_in_flight", "lots")], &["max_in_flight", "lots"]).await;
}

#[tokio::test]
async fn zero_max_in_flight_is_rejected() {
    assert_rejected(&[("max_in_flight", "0")], &["max_in_flight", "\"0\""]).await;
}

#[tokio::test]
async fn unreadable_ca_file_is_rejected() {
    assert_rejected(
        &[("tls_ca_file", "/nonexistent/ca.pem")],
        &["tls_ca_file", "/nonexistent/ca.pem", "cannot read"],
    )
    .await;
}

#[tokio::test]
async fn link_for_another_interface_is_rejected() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;

    let line = provider
        .put_link(&Link::handler("c", &[]).for_interface("incoming-handler"))
        .await;

    assert!(
        line.contains("link rejected") && line.contains("incoming-handler"),
        "{line}"
    );
}

#[tokio::test]
async fn invalid_seed_is_rejected_without_printing_it() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let link = Link::handler("c", &[("client_jwt", "eyJhbGciOi.fake.jwt")])
        .with_secret("client_seed", "SUANOTAVALIDSEEDBECAUSEITHASNOCHECKSUM");

    let line = provider.put_link(&link).await;

    assert!(
        line.contains("link rejected") && line.contains("client_seed"),
        "{line}"
    );
    let leaked = provider
        .logs
        .count(|l| l.contains("SUANOTAVALIDSEED") || l.contains("eyJhbGciOi"));
    assert_eq!(leaked, 0, "a credential was logged");
}

#[tokio::test]
async fn unknown_key_is_warned_about_once() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let _component = lattice.component("c", Behaviour::default()).await;

    provider
        .put_link(&Link::consumer("c", &[("colour", "blue")]))
        .await;
    provider
        .put_link(&Link::consumer("c", &[("colour", "blue")]).named("second"))
        .await;

    let warnings = provider
        .logs
        .count(|l| l.contains("unknown config key") && l.contains("colour"));
    assert_eq!(warnings, 1);
}

#[tokio::test]
async fn subscriptions_on_a_consumer_link_are_ignored() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let component = lattice.component("c", Behaviour::default()).await;
    let mut sub = lattice.client.subscribe("out").await.unwrap();
    round_trip(&lattice.client).await;

    let line = provider
        .put_link(&Link::consumer(
            "c",
            &[("subscriptions", "demo.in,not..valid")],
        ))
        .await;
    let published = component
        .caller(&provider.key)
        .await
        .publish(&message("out", b"x"))
        .await
        .unwrap();

    assert!(line.contains("link ready"), "{line}");
    assert_eq!(published, Ok(()));
    assert_eq!(&next_message(&mut sub).await.unwrap().payload[..], b"x");
}
