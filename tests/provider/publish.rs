//! `consumer.publish`.

use std::time::Duration;

use crate::support::{
    message, next_message, round_trip, Behaviour, ConsumerSetup, Lattice, Link, NatsServer,
    ServerExt as _,
};

#[tokio::test]
async fn publish_arrives_with_reply_to() {
    let setup = ConsumerSetup::new(&[]).await;
    let mut sub = setup.subscribe("orders.created").await;

    let mut msg = message("orders.created", b"order 1");
    msg.reply_to = Some("orders.replies".into());
    let result = setup.caller.publish(&msg).await.unwrap();

    assert_eq!(result, Ok(()));
    let got = next_message(&mut sub).await.unwrap();
    assert_eq!(&got.payload[..], b"order 1");
    assert_eq!(got.reply.as_deref(), Some("orders.replies"));
}

#[tokio::test]
async fn publish_carries_the_invocation_trace_context() {
    let mut setup = ConsumerSetup::new(&[]).await;
    let mut sub = setup.subscribe("traced").await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    setup.caller.traceparent = Some(traceparent.into());
    setup
        .caller
        .publish(&message("traced", b"x"))
        .await
        .unwrap()
        .unwrap();

    let got = next_message(&mut sub).await.unwrap();
    let header = got.headers.as_ref().and_then(|h| h.get("traceparent"));
    assert_eq!(header.map(|v| v.as_str()), Some(traceparent));
}

/// A consumer link to a server that accepts messages of at most 64 KiB.
/// The lattice keeps the default limit, so that the wRPC call carrying the
/// body is one NATS message and only the link's limit is under test.
async fn small_payload_setup() -> (ConsumerSetup, NatsServer) {
    let data = NatsServer::with_config("max_payload: 65536");
    let setup = ConsumerSetup::new(&[("cluster_uris", &data.url())]).await;
    // The limit is the server's, known once the link's connection is up:
    // before that the size is not checked (the README, "Security").
    setup.wait_connected().await;
    (setup, data)
}

#[tokio::test]
async fn payload_of_exactly_max_payload_is_published() {
    let (setup, data) = small_payload_setup().await;
    let client = data.client().await;
    let mut sub = client.subscribe("big").await.unwrap();
    round_trip(&client).await;

    let result = setup
        .caller
        .publish(&message("big", &[7u8; 65536]))
        .await
        .unwrap();

    assert_eq!(result, Ok(()));
    assert_eq!(next_message(&mut sub).await.unwrap().payload.len(), 65536);
}

#[tokio::test]
async fn payload_one_byte_over_max_payload_is_refused_naming_the_limit() {
    let (setup, _data) = small_payload_setup().await;

    let err = setup
        .caller
        .publish_error(&message("big", &[7u8; 65537]))
        .await;

    assert!(err.contains("65537 bytes"), "{err}");
    assert!(err.contains("max_payload of 65536"), "{err}");
}

#[tokio::test]
async fn publish_to_a_wildcard_subject_is_refused() {
    let setup = ConsumerSetup::new(&[]).await;

    let err = setup.caller.publish_error(&message("orders.*", b"x")).await;

    assert!(
        err.contains("\"orders.*\"") && err.contains("wildcard"),
        "{err}"
    );
}

#[tokio::test]
async fn publish_while_the_server_is_down_fails_after_the_publish_timeout() {
    let mut data = NatsServer::start();
    let config = [
        ("cluster_uris", data.url()),
        ("publish_timeout_ms", "300".into()),
    ];
    let config: Vec<(&str, &str)> = config.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let setup = ConsumerSetup::on(Lattice::start().await, &config).await;
    setup.wait_connected().await;
    data.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let err = setup.caller.publish_error(&message("lost", b"x")).await;

    assert!(err.contains("not confirmed"), "{err}");
    assert!(err.contains("within 300 ms"), "{err}");
}

#[tokio::test]
async fn unlinked_component_is_refused() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let component = lattice.component("stranger", Behaviour::default()).await;

    let err = component
        .caller(&provider.key)
        .await
        .publish_error(&message("anything", b"x"))
        .await;

    assert!(err.contains("\"stranger\""), "{err}");
    assert!(
        err.contains("no wasmcloud:messaging/consumer link"),
        "{err}"
    );
}

#[tokio::test]
async fn caller_without_source_id_is_refused() {
    let mut setup = ConsumerSetup::new(&[]).await;

    setup.caller.source_id = None;
    let err = setup.caller.publish_error(&message("anything", b"x")).await;

    assert!(err.contains("no source component"), "{err}");
}

#[tokio::test]
async fn each_component_publishes_through_its_own_link_and_link_name() {
    let lattice = Lattice::start().await;
    let other = NatsServer::start();
    let provider = lattice.provider(&[]).await;
    let a = lattice.component("a", Behaviour::default()).await;
    let b = lattice.component("b", Behaviour::default()).await;
    provider.put_link(&Link::consumer("a", &[])).await;
    provider
        .put_link(&Link::consumer("b", &[("cluster_uris", &other.url())]))
        .await;
    provider
        .put_link(&Link::consumer("a", &[("cluster_uris", &other.url())]).named("secondary"))
        .await;
    let mut on_lattice = lattice.client.subscribe("where").await.unwrap();
    round_trip(&lattice.client).await;
    let other_client = other.client().await;
    let mut on_other = other_client.subscribe("where").await.unwrap();
    round_trip(&other_client).await;

    let mut a_caller = a.caller(&provider.key).await;
    a_caller
        .publish(&message("where", b"a-default"))
        .await
        .unwrap()
        .unwrap();
    b.caller(&provider.key)
        .await
        .publish(&message("where", b"b-default"))
        .await
        .unwrap()
        .unwrap();
    a_caller.link_name = "secondary".into();
    a_caller
        .publish(&message("where", b"a-secondary"))
        .await
        .unwrap()
        .unwrap();

    assert_eq!(
        &next_message(&mut on_lattice).await.unwrap().payload[..],
        b"a-default"
    );
    assert_eq!(
        &next_message(&mut on_other).await.unwrap().payload[..],
        b"b-default"
    );
    assert_eq!(
        &next_message(&mut on_other).await.unwrap().payload[..],
        b"a-secondary"
    );
    let stray =
        tokio::time::timeout(Duration::from_millis(300), next_message(&mut on_lattice)).await;
    assert!(stray.is_err(), "a message reached the wrong server");
}
