//! Confirmed publishes (`jetstream_publish`): `Ok` only once a stream has
//! stored the message, each with a message id of the provider's, stored
//! once even when sent again; clear errors when no stream takes it, when
//! JetStream does not answer and when acks are lost.

use async_nats::jetstream::{self, stream};
use nats_test_server::Proxy;

use crate::support::{jetstream_lattice, message, ConsumerSetup, Lattice};

/// A consumer link with `jetstream_publish=orders.>` on a JetStream server
/// whose stream ORDERS stores `orders.>` (made with `config`'s limits).
async fn confirmed_setup(stream_config: stream::Config) -> (ConsumerSetup, jetstream::Context) {
    let lattice = jetstream_lattice().await;
    let js = jetstream::new(lattice.client.clone());
    if !stream_config.name.is_empty() {
        js.create_stream(stream_config).await.expect("stream");
    }
    let setup = ConsumerSetup::on(lattice, &[("jetstream_publish", "orders.>")]).await;
    (setup, js)
}

fn orders_stream() -> stream::Config {
    stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["orders.>".into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_jetstream_publish_is_ok_once_the_stream_stored_it_with_a_message_id() {
    let (setup, js) = confirmed_setup(orders_stream()).await;

    let result = setup
        .caller
        .publish(&message("orders.created", b"order 1"))
        .await
        .unwrap();

    assert_eq!(result, Ok(()));
    // Stored before the publish was answered: no wait needed.
    let stored = js
        .get_stream("ORDERS")
        .await
        .unwrap()
        .get_last_raw_message_by_subject("orders.created")
        .await
        .expect("stored when Ok came");
    assert_eq!(&stored.payload[..], b"order 1");
    let id = stored
        .headers
        .get(async_nats::header::NATS_MESSAGE_ID)
        .map(|v| v.as_str().to_string())
        .unwrap_or_default();
    assert!(id.len() >= 16, "message id {id:?} in {:?}", stored.headers);
}

#[tokio::test]
async fn each_confirmed_publish_has_a_message_id_of_its_own() {
    let (setup, js) = confirmed_setup(orders_stream()).await;

    for _ in 0..3 {
        let result = setup
            .caller
            .publish(&message("orders.same", b"same body"))
            .await
            .unwrap();
        assert_eq!(result, Ok(()));
    }

    let info = js
        .get_stream("ORDERS")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.state.messages, 3, "three publishes, three messages");
}

#[tokio::test]
async fn a_jetstream_subject_no_stream_stores_fails_saying_so() {
    let (setup, _js) = confirmed_setup(stream::Config::default()).await;

    let err = setup
        .caller
        .publish_error(&message("orders.created", b"order 1"))
        .await;

    assert!(
        err.contains("no JetStream stream stores this subject"),
        "{err}"
    );
    assert!(err.contains("orders.created"), "{err}");
}

#[tokio::test]
async fn a_stream_that_refuses_the_message_fails_the_publish_with_its_reason() {
    let (setup, _js) = confirmed_setup(stream::Config {
        max_messages: 1,
        discard: stream::DiscardPolicy::New,
        ..orders_stream()
    })
    .await;
    let first = setup
        .caller
        .publish(&message("orders.1", b"fits"))
        .await
        .unwrap();

    let err = setup
        .caller
        .publish_error(&message("orders.2", b"over the limit"))
        .await;

    assert_eq!(first, Ok(()));
    assert!(err.contains("the stream refused it"), "{err}");
    assert!(err.to_lowercase().contains("maximum messages"), "{err}");
}

#[tokio::test]
async fn a_reply_to_on_a_jetstream_subject_is_refused() {
    let (setup, js) = confirmed_setup(orders_stream()).await;
    let mut msg = message("orders.created", b"order 1");
    msg.reply_to = Some("_INBOX.reply".into());

    let err = setup.caller.publish_error(&msg).await;

    assert!(err.contains("reply-to"), "{err}");
    let info = js
        .get_stream("ORDERS")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.state.messages, 0);
}

#[tokio::test]
async fn subjects_outside_jetstream_publish_stay_core_publishes() {
    let (setup, js) = confirmed_setup(orders_stream()).await;
    let mut sub = setup.subscribe("events.created").await;
    let mut msg = message("events.created", b"event");
    msg.reply_to = Some("events.replies".into());

    let result = setup.caller.publish(&msg).await.unwrap();

    assert_eq!(result, Ok(()));
    let got = crate::support::next_message(&mut sub).await.unwrap();
    assert_eq!(got.reply.as_deref(), Some("events.replies"));
    let id = got
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID));
    assert!(id.is_none(), "{id:?}");
    let info = js
        .get_stream("ORDERS")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.state.messages, 0);
}

#[tokio::test]
async fn a_confirmed_publish_without_jetstream_on_the_server_fails_saying_it_did_not_answer() {
    // A server without JetStream: no stream answers the publish, and
    // nothing answers the question which stream stores the subject.
    let setup = ConsumerSetup::on(
        Lattice::start().await,
        &[
            ("jetstream_publish", "orders.>"),
            ("publish_timeout_ms", "1500"),
        ],
    )
    .await;

    let err = setup
        .caller
        .publish_error(&message("orders.created", b"order 1"))
        .await;

    assert!(
        err.contains(
            "publish to \"orders.created\" not stored: JetStream did not answer within 1500 ms"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_confirmed_publish_whose_acks_are_lost_fails_and_is_stored_once() {
    let lattice = jetstream_lattice().await;
    let js = jetstream::new(lattice.client.clone());
    js.create_stream(orders_stream()).await.expect("stream");
    let proxy = Proxy::start(lattice.nats.port()).await;
    let url = proxy.url();
    let setup = ConsumerSetup::on(
        lattice,
        &[
            ("cluster_uris", url.as_str()),
            ("jetstream_publish", "orders.>"),
            ("publish_timeout_ms", "3000"),
        ],
    )
    .await;
    // Every answer the link's connection gets is lost on the way back,
    // a stream's acks among them: the provider sends again, with the same
    // message id, until its publish timeout.
    proxy.drop_replies(true);

    let err = setup
        .caller
        .publish_error(&message("orders.created", b"order 1"))
        .await;

    assert!(
        err.contains("publish to \"orders.created\" not acknowledged by JetStream within 3000 ms"),
        "{err}"
    );
    assert!(err.contains("it may still have been stored"), "{err}");
    let stream = js.get_stream("ORDERS").await.expect("stream");
    assert_eq!(
        stream.get_info().await.expect("info").state.messages,
        1,
        "sent again with its message id, stored once"
    );
}
