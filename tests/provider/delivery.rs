//! Subscriptions of handler links and delivery to `handle-message`.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::HeaderMap;

use crate::support::{Behaviour, Lattice, Link};

#[tokio::test]
async fn message_is_delivered_to_the_handler_with_reply_to() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let mut component = lattice.component("worker", Behaviour::default()).await;
    provider
        .put_link(&Link::handler("worker", &[("subscriptions", "jobs.new")]))
        .await;

    lattice
        .client
        .publish_with_reply("jobs.new", "jobs.done", "job 1".into())
        .await
        .unwrap();

    let got = component.next().await;
    assert_eq!(got.message.subject, "jobs.new");
    assert_eq!(&got.message.body[..], b"job 1");
    assert_eq!(got.message.reply_to.as_deref(), Some("jobs.done"));
    assert_eq!(got.source_id.as_deref(), Some(provider.key.as_str()));
}

#[tokio::test]
async fn message_published_right_after_the_link_is_put_is_delivered() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let mut component = lattice.component("worker", Behaviour::default()).await;

    for round in 0..5 {
        let link =
            Link::handler("worker", &[("subscriptions", "fast")]).named(&format!("l{round}"));
        provider.put_link(&link).await;
        lattice
            .client
            .publish("fast", format!("{round}").into())
            .await
            .unwrap();
        let got = component.next().await;
        assert_eq!(got.message.body, format!("{round}").as_bytes());
        provider.delete_link(&link).await;
    }
}

#[tokio::test]
async fn wildcard_and_multiple_subscriptions_all_deliver() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let mut component = lattice.component("worker", Behaviour::default()).await;
    provider
        .put_link(&Link::handler(
            "worker",
            &[("subscriptions", "a.*, b.>,c.exact")],
        ))
        .await;

    for subject in ["a.one", "b.two.three", "c.exact", "a.x.y", "d.none"] {
        lattice.client.publish(subject, "x".into()).await.unwrap();
    }

    let subjects: HashSet<String> = component
        .take(3)
        .await
        .into_iter()
        .map(|r| r.message.subject)
        .collect();
    assert_eq!(
        subjects,
        HashSet::from(["a.one".into(), "b.two.three".into(), "c.exact".into()])
    );
    component.expect_nothing(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn queue_group_across_two_providers_delivers_each_message_once() {
    let lattice = Lattice::start().await;
    let first = lattice.provider(&[]).await;
    let second = lattice
        .provider_with_key("messaging-nats-test-2", &[])
        .await;
    let mut component = lattice.component("worker", Behaviour::default()).await;
    let link = Link::handler("worker", &[("subscriptions", "work|workers")]);
    first.put_link(&link).await;
    second.put_link(&link).await;

    lattice.publish_numbered("work", 200).await;

    let received = component.take(200).await;
    component.expect_nothing(Duration::from_millis(300)).await;

    let bodies: HashSet<Vec<u8>> = received.iter().map(|r| r.message.body.to_vec()).collect();
    assert_eq!(bodies.len(), 200, "every message exactly once");
    let senders: HashSet<Option<String>> = received.into_iter().map(|r| r.source_id).collect();
    assert_eq!(
        senders,
        HashSet::from([Some(first.key.clone()), Some(second.key.clone())]),
        "both providers took a share"
    );
}

#[tokio::test]
async fn two_components_with_separate_links_stay_isolated() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let mut left = lattice.component("left", Behaviour::default()).await;
    let mut right = lattice.component("right", Behaviour::default()).await;
    provider
        .put_link(&Link::handler("left", &[("subscriptions", "to.left")]))
        .await;
    provider
        .put_link(&Link::handler("right", &[("subscriptions", "to.right")]))
        .await;

    lattice.client.publish("to.left", "L".into()).await.unwrap();
    lattice
        .client
        .publish("to.right", "R".into())
        .await
        .unwrap();

    assert_eq!(left.next().await.message.subject, "to.left");
    assert_eq!(right.next().await.message.subject, "to.right");
    left.expect_nothing(Duration::from_millis(300)).await;
    right.expect_nothing(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn handler_errors_do_not_stop_delivery() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let behaviour = Behaviour {
        fail_prefix: Some(b"bad".to_vec()),
        ..Behaviour::default()
    };
    let mut component = lattice.component("worker", behaviour).await;
    provider
        .put_link(&Link::handler(
            "worker",
            &[("subscriptions", "mixed"), ("max_in_flight", "1")],
        ))
        .await;

    for body in ["bad 1", "good 1", "bad 2", "good 2"] {
        lattice.client.publish("mixed", body.into()).await.unwrap();
    }

    let bodies: Vec<_> = component
        .take(4)
        .await
        .into_iter()
        .map(|r| r.message.body)
        .collect();
    assert_eq!(
        bodies,
        ["bad 1", "good 1", "bad 2", "good 2"].map(bytes::Bytes::from)
    );
    provider
        .logs
        .wait_for(0, "about the handler error", |l| {
            l.contains("handle-message returned an error") && l.contains("mixed")
        })
        .await;
}

#[tokio::test]
async fn max_in_flight_bounds_concurrent_deliveries() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let behaviour = Behaviour::slow(Duration::from_millis(50));
    let mut component = lattice.component("worker", behaviour).await;
    provider
        .put_link(&Link::handler(
            "worker",
            &[("subscriptions", "burst"), ("max_in_flight", "4")],
        ))
        .await;

    lattice.publish_numbered("burst", 40).await;

    component.take(40).await;
    assert_eq!(component.peak_in_flight(), 4, "peak concurrent deliveries");
}

#[tokio::test]
async fn max_in_flight_one_delivers_in_publish_order() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let behaviour = Behaviour::slow(Duration::from_millis(2));
    let mut component = lattice.component("worker", behaviour).await;
    provider
        .put_link(&Link::handler(
            "worker",
            &[("subscriptions", "ordered"), ("max_in_flight", "1")],
        ))
        .await;

    lattice.publish_numbered("ordered", 100).await;

    let order: Vec<String> = component
        .take(100)
        .await
        .into_iter()
        .map(|r| String::from_utf8_lossy(&r.message.body).into_owned())
        .collect();
    let expected: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(order, expected);
    assert_eq!(component.peak_in_flight(), 1);
}

#[tokio::test]
async fn link_delete_stops_delivery() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let mut component = lattice.component("worker", Behaviour::default()).await;
    let link = Link::handler("worker", &[("subscriptions", "stream")]);
    provider.put_link(&link).await;
    lattice
        .client
        .publish("stream", "before".into())
        .await
        .unwrap();
    assert_eq!(&component.next().await.message.body[..], b"before");

    provider.delete_link(&link).await;
    lattice
        .client
        .publish("stream", "after".into())
        .await
        .unwrap();

    component.expect_nothing(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn link_delete_first_delivers_messages_already_received() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let behaviour = Behaviour::slow(Duration::from_millis(100));
    let mut component = lattice.component("worker", behaviour).await;
    let link = Link::handler(
        "worker",
        &[
            ("subscriptions", "queued"),
            ("max_in_flight", "1"),
            ("drain_timeout_ms", "10000"),
        ],
    );
    provider.put_link(&link).await;
    lattice.publish_numbered("queued", 5).await;
    lattice.client.flush().await.unwrap();
    while component.peak_in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    provider.delete_link(&link).await;

    let bodies: Vec<_> = component
        .take(5)
        .await
        .into_iter()
        .map(|r| r.message.body)
        .collect();
    assert_eq!(bodies, ["0", "1", "2", "3", "4"].map(bytes::Bytes::from));
}

#[tokio::test]
async fn drain_timeout_aborts_deliveries_that_outlast_it() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let behaviour = Behaviour::slow(Duration::from_secs(5));
    let component = lattice.component("worker", behaviour).await;
    let link = Link::handler(
        "worker",
        &[("subscriptions", "stuck"), ("drain_timeout_ms", "200")],
    );
    provider.put_link(&link).await;
    lattice.client.publish("stuck", "x".into()).await.unwrap();
    while component.peak_in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    provider.delete_link(&link).await;

    // The delete is answered at once; the drain ends in the background.
    let stopped = provider
        .logs
        .wait_for(0, "the link's stop", |l| l.contains("handler link stopped"))
        .await;
    assert!(stopped.contains("delivered 0,"), "{stopped}");
    assert!(stopped.contains("aborted 1,"), "{stopped}");
    assert_eq!(
        provider
            .logs
            .count(|l| l.contains("are aborted") && l.contains("running=1")),
        1,
        "the drain timeout is logged once, with the calls it aborts"
    );
}

#[tokio::test]
async fn incoming_trace_headers_reach_the_handler_call() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let mut component = lattice.component("worker", Behaviour::default()).await;
    provider
        .put_link(&Link::handler("worker", &[("subscriptions", "traced")]))
        .await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", traceparent);

    lattice
        .client
        .publish_with_headers("traced", headers, "x".into())
        .await
        .unwrap();

    assert_eq!(
        component.next().await.traceparent.as_deref(),
        Some(traceparent)
    );
}

#[tokio::test]
async fn lost_handler_reply_times_out_and_frees_its_slot() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let behaviour = Behaviour::slow(Duration::from_millis(600));
    let mut component = lattice.component("worker", behaviour).await;
    provider
        .put_link(&Link::handler(
            "worker",
            &[
                ("subscriptions", "slow"),
                ("max_in_flight", "1"),
                ("handler_timeout_ms", "200"),
            ],
        ))
        .await;

    lattice.client.publish("slow", "1".into()).await.unwrap();
    lattice.client.publish("slow", "2".into()).await.unwrap();

    let bodies: Vec<_> = component
        .take(2)
        .await
        .into_iter()
        .map(|r| r.message.body)
        .collect();
    assert_eq!(bodies, ["1", "2"].map(bytes::Bytes::from));
    // Message 2 started while the component still ran message 1: the slot
    // was freed at the timeout, not when the lost reply would have come.
    assert_eq!(component.peak_in_flight(), 2);
    provider
        .logs
        .wait_for(0, "about the timeout", |l| {
            l.contains("did not answer in time")
        })
        .await;
}
