//! `consumer.request`.

use std::time::Duration;

use futures::StreamExt as _;

use crate::support::{round_trip, ConsumerSetup, Lattice, NatsServer};

/// Answers every request on `subject` with `reply: <body>`.
async fn responder(client: &async_nats::Client, subject: &str) {
    let mut sub = client.subscribe(subject.to_string()).await.unwrap();
    round_trip(client).await;
    let client = client.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(reply) = msg.reply {
                let body = [b"reply: ".as_slice(), &msg.payload].concat();
                let _ = client.publish(reply, body.into()).await;
            }
        }
    });
}

#[tokio::test]
async fn request_returns_the_reply_with_its_subject() {
    let setup = ConsumerSetup::new(&[]).await;
    responder(&setup.lattice.client, "svc.echo").await;

    let reply = setup
        .caller
        .request("svc.echo", b"ping", 2000)
        .await
        .unwrap()
        .unwrap();

    assert_eq!(&reply.body[..], b"reply: ping");
    assert!(reply.subject.starts_with("_INBOX."), "{}", reply.subject);
}

#[tokio::test]
async fn request_uses_the_custom_inbox_prefix() {
    let setup = ConsumerSetup::new(&[("custom_inbox_prefix", "_MYINBOX")]).await;
    responder(&setup.lattice.client, "svc.echo").await;

    let reply = setup
        .caller
        .request("svc.echo", b"ping", 2000)
        .await
        .unwrap()
        .unwrap();

    assert!(reply.subject.starts_with("_MYINBOX."), "{}", reply.subject);
}

#[tokio::test]
async fn request_without_a_reply_times_out_naming_the_wait() {
    let setup = ConsumerSetup::new(&[]).await;
    let _silent = setup.subscribe("svc.silent").await;

    let err = setup.caller.request_error("svc.silent", b"ping", 300).await;

    assert!(
        err.contains("no reply") && err.contains("within 300 ms"),
        "{err}"
    );
}

#[tokio::test]
async fn request_with_zero_timeout_uses_the_configured_default() {
    let setup = ConsumerSetup::new(&[("request_timeout_ms", "250")]).await;
    let _silent = setup.subscribe("svc.silent").await;

    let err = setup.caller.request_error("svc.silent", b"ping", 0).await;

    assert!(err.contains("within 250 ms"), "{err}");
}

#[tokio::test]
async fn request_with_no_responders_fails_saying_so() {
    let setup = ConsumerSetup::new(&[]).await;

    let err = setup
        .caller
        .request_error("svc.nobody", b"ping", 5000)
        .await;

    assert!(
        err.contains("no responders") && err.contains("svc.nobody"),
        "{err}"
    );
}

#[tokio::test]
async fn request_timeout_above_the_maximum_is_refused() {
    let setup = ConsumerSetup::new(&[
        ("max_request_timeout_ms", "1000"),
        ("request_timeout_ms", "500"),
    ])
    .await;

    let err = setup.caller.request_error("svc.echo", b"ping", 5000).await;

    assert!(
        err.contains("timeout-ms 5000") && err.contains("max_request_timeout_ms"),
        "{err}"
    );
}

#[tokio::test]
async fn request_while_the_server_is_down_fails_saying_the_connection_is_down() {
    let mut data = NatsServer::start();
    let setup = ConsumerSetup::on(Lattice::start().await, &[("cluster_uris", &data.url())]).await;
    setup.wait_connected().await;
    data.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let err = setup.caller.request_error("svc.echo", b"ping", 300).await;

    assert!(
        err.contains("NATS connection") && err.contains("disconnected"),
        "{err}"
    );
}
