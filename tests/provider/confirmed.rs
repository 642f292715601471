//! Confirmed publishes (`jetstream_publish`): `Ok` only once a stream has
//! stored the message, each with a message id of the provider's, stored
//! once even when sent again; clear errors when no stream takes it.

use async_nats::jetstream::{self, stream};

use crate::support::{jetstream_lattice, message, ConsumerSetup};

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
