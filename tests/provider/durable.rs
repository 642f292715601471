//! Durable delivery from JetStream: acked only after the handler succeeds,
//! retried with backoff, dead-lettered, shared, and resumed after faults.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use nats_test_server::Proxy;

use crate::support::{
    consumer_info, create_stream, jetstream_lattice, js, publish_stored, Behaviour, Gate, Lattice,
    Link, NatsServer, ProviderOptions, ServerExt as _, ServerOptions, WAIT,
};

/// The first message `stream` stores, waiting for it up to `within`.
async fn first_stored(
    js: &jetstream::Context,
    stream: &str,
    within: Duration,
) -> async_nats::jetstream::message::StreamMessage {
    let stream = js.get_stream(stream).await.expect("stream");
    let deadline = Instant::now() + within;
    while stream.get_info().await.expect("stream info").state.messages == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing stored within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stream.get_raw_message(1).await.expect("first message")
}

/// Waits until the consumer has no message left unacked or undelivered.
async fn wait_until_settled(js: &jetstream::Context, stream: &str, name: &str) -> consumer::Info {
    let deadline = Instant::now() + WAIT;
    loop {
        let info = consumer_info(js, stream, name).await;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "consumer never settled: {} pending, {} unacked",
            info.num_pending,
            info.num_ack_pending
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn message_is_acked_after_the_handler_succeeds() {
    let lattice = jetstream_lattice().await;
    let js = js(&lattice);
    let provider = lattice.provider(&[]).await;
    let mut component = lattice.component("worker", Behaviour::default()).await;
    let line = provider
        .put_link(&Link::handler(
            "worker",
            &[
                ("stream", "ORDERS"),
                ("stream_subjects", "orders.>"),
                ("durable_name", "workers"),
            ],
        ))
        .await;
    assert!(line.contains("link ready"), "{line}");

    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    js.publish_with_headers("orders.new", headers, "order 1".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let got = component.next().await;
    assert_eq!(got.message.subject, "orders.new");
    assert_eq!(&got.message.body[..], b"order 1");
    assert_eq!(
        got.message.reply_to, None,
        "the ack subject is not the component's"
    );
    assert!(got.traceparent.is_some(), "trace context carried over");
    let info = wait_until_settled(&js, "ORDERS", "workers").await;
    assert_eq!(info.ack_floor.stream_sequence, 1);
}

#[tokio::test]
async fn failed_message_is_retried_after_the_backoff_delays() {
    let lattice = jetstream_lattice().await;
    let js = js(&lattice);
    create_stream(&js, "JOBS", &["jobs.>"]).await;
    let provider = lattice.provider(&[]).await;
    let mut component = lattice
        .component(
            "worker",
            Behaviour {
                fail_attempts: 2,
                ..Behaviour::default()
            },
        )
        .await;
    provider
        .put_link(&Link::handler(
            "worker",
            &[
                ("stream", "JOBS"),
                ("backoff_ms", "400,1200"),
                ("max_deliver", "5"),
            ],
        ))
        .await;

    publish_stored(&js, "jobs.a", 0..1).await;
    let attempts = component.take(3).await;
    let first_gap = attempts[1].at - attempts[0].at;
    let second_gap = attempts[2].at - attempts[1].at;
    // Generous: the machine is shared; the delays must be there, in order.
    assert!(
        first_gap >= Duration::from_millis(350),
        "first retry after {first_gap:?}"
    );
    assert!(
        second_gap >= Duration::from_millis(1100),
        "second retry after {second_gap:?}"
    );
    assert!(first_gap < Duration::from_secs(10) && second_gap < Duration::from_secs(10));
    let name = messaging_nats::default_durable_name("worker", "default");
    let info = wait_until_settled(&js, "JOBS", &name).await;
    assert_eq!(
        info.ack_floor.stream_sequence, 1,
        "acked on the third attempt"
    );
    component.expect_nothing(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn always_failing_message_goes_to_the_dead_letter_subject_and_others_keep_flowing() {
    let lattice = jetstream_lattice().await;
    let js = js(&lattice);
    create_stream(&js, "DEAD", &["dead.orders"]).await;
    let provider = lattice.provider(&[]).await;
    let mut component = lattice
        .component("worker", Behaviour::failing_on(b"poison"))
        .await;
    provider
        .put_link(&Link::handler(
            "worker",
            &[
                ("stream", "ORDERS"),
                ("stream_subjects", "orders.>"),
                ("durable_name", "orders"),
                ("max_deliver", "3"),
                ("backoff_ms", "100"),
                ("dead_letter_subject", "dead.orders"),
            ],
        ))
        .await;

    let mut headers = async_nats::HeaderMap::new();
    headers.insert("order-id", "17");
    js.publish_with_headers("orders.bad", headers, "poison pill".into())
        .await
        .unwrap()
        .await
        .unwrap();
    publish_stored(&js, "orders.good", 0..20).await;

    let received = component.take(23).await;
    let poison = received
        .iter()
        .filter(|r| r.message.body.starts_with(b"poison"))
        .count();
    assert_eq!(poison, 3, "max_deliver attempts");
    let good: HashSet<_> = received
        .iter()
        .filter(|r| !r.message.body.starts_with(b"poison"))
        .map(|r| r.message.body.clone())
        .collect();
    assert_eq!(good.len(), 20, "the other messages were delivered");

    let letter = first_stored(&js, "DEAD", WAIT).await;
    assert_eq!(&letter.payload[..], b"poison pill");
    let header = |name: &str| {
        letter
            .headers
            .get(name)
            .map(|v| v.as_str().to_string())
            .unwrap_or_else(|| panic!("dead letter lacks {name}: {:?}", letter.headers))
    };
    assert_eq!(header("Wasmcloud-Original-Subject"), "orders.bad");
    assert_eq!(header("Wasmcloud-Original-Stream"), "ORDERS");
    assert_eq!(header("Wasmcloud-Original-Sequence"), "1");
    assert_eq!(header("Wasmcloud-Delivery-Count"), "3");
    assert_eq!(header("Wasmcloud-Last-Error"), "told to fail");
    assert_eq!(
        header("order-id"),
        "17",
        "the message's own headers go along"
    );
    wait_until_settled(&js, "ORDERS", "orders").await;
    component.expect_nothing(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn handler_slower_than_ack_wait_is_not_redelivered_while_it_runs() {
    let lattice = jetstream_lattice().await;
    let js = js(&lattice);
    create_stream(&js, "SLOW", &["slow.>"]).await;
    let provider = lattice.provider(&[]).await;
    let mut component = lattice
        .component("worker", Behaviour::slow(Duration::from_secs(5)))
        .await;
    // In-progress acks go every second: a second of slack for a loaded
    // machine, and the call outlasts the ack wait two and a half times.
    provider
        .put_link(&Link::handler(
            "worker",
            &[
                ("stream", "SLOW"),
                ("durable_name", "slow"),
                ("ack_wait_ms", "2000"),
                ("handler_timeout_ms", "10000"),
            ],
        ))
        .await;

    publish_stored(&js, "slow.job", 0..1).await;
    component.next().await;
    let info = wait_until_settled(&js, "SLOW", "slow").await;
    assert_eq!(info.num_redelivered, 0, "redelivered while the handler ran");
    assert_eq!(
        info.delivered.consumer_sequence, 1,
        "delivered more than once"
    );
    component.expect_nothing(Duration::from_secs(2)).await;
}

/// The reader of a consumer waits on the JetStream API (here: a look-up
/// that never gets an answer, after a fetch the server ended with an
/// error), while a slow delivery of the same link runs: the delivery keeps
/// its in-progress acks going, ends, and is acked meanwhile, so that the
/// server does not redeliver it.
#[tokio::test]
async fn a_delivery_keeps_its_progress_acks_and_its_ack_while_the_consumer_look_up_hangs() {
    let lattice = jetstream_lattice().await;
    let js = js(&lattice);
    let stream = create_stream(&js, "STALL", &["stall.>"]).await;
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("slow".to_string()),
            ack_wait: Duration::from_secs(2),
            ..Default::default()
        })
        .await
        .unwrap();
    let proxy = Proxy::start(lattice.nats.port()).await;
    let provider = lattice.provider(&[]).await;
    let mut component = lattice
        .component("worker", Behaviour::slow(Duration::from_secs(6)))
        .await;
    // Fetches of at most 1 KiB: a larger message ends the pull request
    // with `409 Message Size Exceeds MaxBytes`, and the reader then looks
    // the consumer up again.
    let url = proxy.url();
    provider
        .put_link(&Link::handler(
            "worker",
            &[
                ("cluster_uris", url.as_str()),
                (
                    "consumers",
                    r#"[{"stream":"STALL","consumer":"slow","max_bytes":1024}]"#,
                ),
                ("max_in_flight", "2"),
                ("handler_timeout_ms", "20000"),
            ],
        ))
        .await;

    publish_stored(&js, "stall.slow", 0..1).await;
    // The call runs once its first in-progress ack (every second) is out.
    let deadline = Instant::now() + WAIT;
    while !proxy.acks().iter().any(|a| a.kind == "+WPI") {
        assert!(
            Instant::now() < deadline,
            "no in-progress ack: {:?}",
            proxy.acks()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.silence_jetstream_api(true);
    js.publish("stall.big", vec![b'x'; 4096].into())
        .await
        .unwrap()
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let acked = loop {
        if let Some(ack) = proxy.acks().into_iter().find(|a| a.kind == "+ACK") {
            break ack;
        }
        assert!(Instant::now() < deadline, "never acked: {:?}", proxy.acks());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let dropped = proxy.dropped_requests();
    proxy.silence_jetstream_api(false);

    assert!(
        dropped
            .iter()
            .any(|s| s.starts_with("$JS.API.STREAM.INFO.STALL")),
        "the reader did not look the consumer up while the API was silent: {dropped:?}"
    );
    let silent_since = proxy
        .dropped_at()
        .first()
        .copied()
        .expect("a dropped request");
    let progress_while_waiting = proxy
        .acks()
        .iter()
        .filter(|a| a.kind == "+WPI" && a.at > silent_since && a.at < acked.at)
        .count();
    assert!(
        progress_while_waiting >= 2,
        "{progress_while_waiting} in-progress acks while the reader waited on the API, \
         acked {:?} after it began waiting",
        acked.at.duration_since(silent_since)
    );
    assert_eq!(acked.stream_sequence(), Some(1), "{acked:?}");
    assert_eq!(component.next().await.message.body, "0");
    let info = consumer_info(&js, "STALL", "slow").await;
    assert_eq!(info.num_redelivered, 0, "redelivered while the handler ran");
    assert_eq!(info.ack_floor.stream_sequence, 1);
}

#[tokio::test]
async fn v1_consumers_config_binds_an_existing_consumer() {
    let lattice = jetstream_lattice().await;
    let js = js(&lattice);
    let stream = create_stream(&js, "EVENTS", &["events.>"]).await;
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("legacy".to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    let provider = lattice.provider(&[]).await;
    let mut component = lattice.component("worker", Behaviour::default()).await;
    // As written for the v1 host's built-in messaging.
    let line = provider
        .put_link(&Link::handler(
            "worker",
            &[(
                "consumers",
                r#"[{"stream":"EVENTS","consumer":"legacy","max_messages":5,"max_bytes":65536}]"#,
            )],
        ))
        .await;
    assert!(line.contains("link ready"), "{line}");

    publish_stored(&js, "events.x", 0..40).await;
    let bodies: HashSet<_> = component
        .take(40)
        .await
        .into_iter()
        .map(|r| r.message.body)
        .collect();
    assert_eq!(bodies.len(), 40);
    let info = wait_until_settled(&js, "EVENTS", "legacy").await;
    assert_eq!(info.ack_floor.stream_sequence, 40);
}

#[tokio::test]
async fn two_providers_share_one_durable_consumer() {
    const COUNT: usize = 2000;
    let lattice = jetstream_lattice().await;
    let js = js(&lattice);
    create_stream(&js, "SHARED", &["shared.>"]).await;
    let mut component = lattice.component("worker", Behaviour::default()).await;
    let link = Link::handler("worker", &[("stream", "SHARED"), ("max_in_flight", "16")]);
    let first = lattice.provider_with_key("messaging-nats-a", &[]).await;
    let second = lattice.provider_with_key("messaging-nats-b", &[]).await;
    first.put_link(&link).await;
    second.put_link(&link).await;

    publish_stored(&js, "shared.job", 0..COUNT).await;
    let received = component.take(COUNT).await;
    let mut by_provider: BTreeMap<String, usize> = BTreeMap::new();
    for r in &received {
        *by_provider
            .entry(r.source_id.clone().unwrap_or_default())
            .or_default() += 1;
    }
    let bodies: HashSet<_> = received.iter().map(|r| r.message.body.clone()).collect();
    assert_eq!(bodies.len(), COUNT, "each message handled once");
    assert_eq!(
        by_provider.len(),
        2,
        "both providers took a share: {by_provider:?}"
    );
    component.expect_nothing(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn every_message_is_handled_at_least_once_when_the_provider_is_killed_mid_stream() {
    const COUNT: usize = 10_000;
    let lattice = jetstream_lattice().await;
    let js = js(&lattice);
    create_stream(&js, "WORK", &["work.>"]).await;
    let mut component = lattice
        .component("worker", Behaviour::slow(Duration::from_millis(1)))
        .await;
    let link = Link::handler(
        "worker",
        &[
            ("stream", "WORK"),
            ("ack_wait_ms", "2000"),
            ("max_in_flight", "64"),
        ],
    );
    let provider = lattice.provider(&[]).await;
    provider.put_link(&link).await;
    publish_stored(&js, "work.item", 0..COUNT).await;

    let mut seen: BTreeMap<bytes::Bytes, usize> = BTreeMap::new();
    let mut handled = 0;
    while handled < COUNT / 3 {
        *seen.entry(component.next().await.message.body).or_default() += 1;
        handled += 1;
    }
    let status = provider.signal("KILL").await;
    assert!(!status.success(), "killed: {status:?}");

    let restarted = lattice.provider(&[]).await;
    restarted.put_link(&link).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < COUNT {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(got) = tokio::time::timeout(left, component.next()).await else {
            panic!("only {} of {COUNT} messages handled", seen.len());
        };
        *seen.entry(got.message.body).or_default() += 1;
    }
    let name = messaging_nats::default_durable_name("worker", "default");
    wait_until_settled(&js, "WORK", &name).await;
    // Late redeliveries still on their way count as duplicates too.
    while let Ok(Some(got)) =
        tokio::time::timeout(Duration::from_secs(1), component.next_opt()).await
    {
        *seen.entry(got.message.body).or_default() += 1;
    }
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    println!("handled all {COUNT} messages; {duplicates} duplicate deliveries after SIGKILL");
    assert_eq!(seen.len(), COUNT);
    // Only what was fetched but not acked when the process died can come
    // twice: at most two rounds of max_in_flight.
    assert!(duplicates <= 128, "{duplicates} duplicates");
}

#[tokio::test]
async fn delivery_resumes_after_the_server_restarts_without_losing_a_message() {
    const COUNT: usize = 600;
    let lattice = Lattice::start().await;
    let mut data = NatsServer::with(ServerOptions {
        jetstream: true,
        ..ServerOptions::default()
    });
    let client = data.client().await;
    let js = jetstream::new(client.clone());
    create_stream(&js, "DATA", &["data.>"]).await;
    let provider = lattice.provider(&[]).await;
    let mut component = lattice.component("worker", Behaviour::default()).await;
    provider
        .put_link(&Link::handler(
            "worker",
            &[
                ("cluster_uris", &data.url()),
                ("stream", "DATA"),
                ("durable_name", "d"),
                // An ack written just before the server went down is lost
                // with it: that message comes again after the ack wait.
                ("ack_wait_ms", "2000"),
            ],
        ))
        .await;

    publish_stored(&js, "data.x", 0..COUNT / 2).await;
    let mut seen = HashSet::new();
    while seen.len() < COUNT / 4 {
        seen.insert(component.next().await.message.body);
    }
    data.restart();
    let js = jetstream::new(data.client().await);
    publish_stored(&js, "data.x", COUNT / 2..COUNT).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < COUNT {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(got) = tokio::time::timeout(left, component.next()).await else {
            panic!(
                "only {} of {COUNT} messages handled after the restart",
                seen.len()
            );
        };
        seen.insert(got.message.body);
    }
    wait_until_settled(&js, "DATA", "d").await;
}

#[tokio::test]
async fn relinked_component_resumes_from_its_durable_consumer() {
    let lattice = jetstream_lattice().await;
    let js = js(&lattice);
    create_stream(&js, "TASKS", &["tasks.>"]).await;
    let provider = lattice.provider(&[]).await;
    let mut component = lattice.component("worker", Behaviour::default()).await;
    let link = Link::handler("worker", &[("stream", "TASKS")]);
    provider.put_link(&link).await;
    publish_stored(&js, "tasks.t", 0..10).await;
    component.take(10).await;

    provider.delete_link(&link).await;
    // Published while nobody is linked: kept by the stream.
    publish_stored(&js, "tasks.t", 10..20).await;
    component.expect_nothing(Duration::from_millis(500)).await;
    provider.put_link(&link).await;

    let bodies: Vec<_> = component
        .take(10)
        .await
        .into_iter()
        .map(|r| String::from_utf8_lossy(&r.message.body).into_owned())
        .collect();
    let expected: Vec<_> = (10..20).map(|i| i.to_string()).collect();
    assert_eq!(bodies, expected, "resumed where the consumer stopped");
}

#[tokio::test]
async fn health_names_a_missing_stream_until_it_is_created() {
    let lattice = jetstream_lattice().await;
    let js = js(&lattice);
    let provider = lattice.provider(&[]).await;
    let mut component = lattice.component("worker", Behaviour::default()).await;
    let line = provider
        .put_link(&Link::handler("worker", &[("stream", "LATER")]))
        .await;
    assert!(
        line.contains("link ready"),
        "a missing stream does not reject the link: {line}"
    );
    provider
        .wait_for_health(
            "the missing stream",
            Duration::from_secs(10),
            |healthy, message| !healthy && message.contains("stream \"LATER\" not found"),
        )
        .await;

    create_stream(&js, "LATER", &["later.>"]).await;
    provider
        .wait_for_health("health again", Duration::from_secs(10), |healthy, _| {
            healthy
        })
        .await;
    publish_stored(&js, "later.x", 0..1).await;
    assert_eq!(&component.next().await.message.body[..], b"0");
}

#[tokio::test]
async fn health_names_a_server_without_jetstream() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let _component = lattice.component("worker", Behaviour::default()).await;
    provider
        .put_link(&Link::handler("worker", &[("stream", "ANY")]))
        .await;
    provider
        .wait_for_health(
            "no JetStream",
            Duration::from_secs(10),
            |healthy, message| {
                !healthy && message.contains("JetStream") && message.contains("worker/default")
            },
        )
        .await;
}

#[tokio::test]
async fn bad_durable_config_is_rejected_naming_the_key() {
    let lattice = jetstream_lattice().await;
    let provider = lattice.provider_with(ProviderOptions::default()).await;
    for (config, key) in [
        (vec![("durable_name", "x")], "durable_name"),
        (vec![("stream", "A.B")], "stream"),
        (
            vec![("stream", "A"), ("deliver_policy", "by_start_sequence")],
            "start_sequence",
        ),
        (
            vec![("stream", "A"), ("dead_letter_subject", "dead")],
            "dead_letter_subject",
        ),
        (vec![("consumers", "[{\"stream\": \"A\"}]")], "consumers"),
        (
            vec![
                ("stream", "A"),
                ("max_deliver", "2"),
                ("backoff_ms", "1,2,3"),
            ],
            "backoff_ms",
        ),
    ] {
        let line = provider.put_link(&Link::handler("worker", &config)).await;
        assert!(
            line.contains("link rejected") && line.contains(&format!("'{key}'")),
            "{config:?}: {line}"
        );
    }
}

#[tokio::test]
async fn dead_letter_waits_for_its_stream_instead_of_being_lost() {
    let lattice = jetstream_lattice().await;
    let js = js(&lattice);
    create_stream(&js, "ORDERS", &["orders.>"]).await;
    let provider = lattice.provider(&[]).await;
    let mut component = lattice
        .component("worker", Behaviour::failing_on(b"poison"))
        .await;
    provider
        .put_link(&Link::handler(
            "worker",
            &[
                ("stream", "ORDERS"),
                ("durable_name", "orders"),
                ("max_deliver", "2"),
                ("ack_wait_ms", "1000"),
                ("dead_letter_subject", "dead.orders"),
            ],
        ))
        .await;
    let from = provider.logs.line_count();
    js.publish("orders.bad", "poison".into())
        .await
        .unwrap()
        .await
        .unwrap();
    component.take(2).await;
    // Its last attempt failed while no stream stores dead letters; the
    // server will not redeliver it, so the provider must keep it.
    provider
        .logs
        .wait_for(from, "a failed dead-letter attempt", |l| {
            l.contains("dead letter not stored")
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    create_stream(&js, "DEAD", &["dead.orders"]).await;
    let letter = first_stored(&js, "DEAD", Duration::from_secs(60)).await;
    assert_eq!(&letter.payload[..], b"poison");
    wait_until_settled(&js, "ORDERS", "orders").await;
}

#[tokio::test]
async fn shutdown_naks_messages_still_running_after_the_drain_time() {
    let lattice = jetstream_lattice().await;
    let js = js(&lattice);
    create_stream(&js, "LONG", &["long.>"]).await;
    let provider = lattice.provider(&[]).await;
    let component = lattice
        .component("worker", Behaviour::slow(Duration::from_secs(20)))
        .await;
    provider
        .put_link(&Link::handler(
            "worker",
            &[
                ("stream", "LONG"),
                ("durable_name", "long"),
                ("drain_timeout_ms", "300"),
                ("handler_timeout_ms", "60000"),
            ],
        ))
        .await;
    publish_stored(&js, "long.job", 0..5).await;
    let deadline = Instant::now() + WAIT;
    while component.peak_in_flight() < 5 {
        assert!(Instant::now() < deadline, "the calls never all started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let logs = provider.logs.clone();
    let status = provider.shutdown().await;
    assert!(status.success(), "{status:?}");
    // The ack wait is 30 s: only naks let another instance take the
    // messages this soon.
    let consumer: consumer::PullConsumer = js
        .get_stream("LONG")
        .await
        .unwrap()
        .get_consumer("long")
        .await
        .unwrap();
    let mut batch = consumer
        .fetch()
        .max_messages(5)
        .expires(Duration::from_secs(3))
        .messages()
        .await
        .unwrap();
    let mut redelivered = 0;
    while let Some(Ok(_)) = batch.next().await {
        redelivered += 1;
    }
    assert_eq!(
        redelivered,
        5,
        "provider logs:\n{}",
        logs.lines().join("\n")
    );
    assert_eq!(component.handled(), 0, "no call finished");
}

#[tokio::test]
async fn several_filter_subjects_deliver_only_theirs_or_are_named_in_health_before_2_10() {
    let lattice = jetstream_lattice().await;
    let js = js(&lattice);
    create_stream(&js, "MANY", &["many.>"]).await;
    let version = lattice.client.server_info().version;
    let provider = lattice.provider(&[]).await;
    let mut component = lattice.component("worker", Behaviour::default()).await;
    provider
        .put_link(&Link::handler(
            "worker",
            &[("stream", "MANY"), ("filter_subjects", "many.a,many.b")],
        ))
        .await;
    if version.starts_with("2.9.") || version.starts_with("2.8.") {
        // The server would ignore the field and hand over the whole stream.
        provider
            .wait_for_health(
                "the filter_subjects problem",
                Duration::from_secs(10),
                |healthy, message| {
                    !healthy && message.contains("filter_subjects") && message.contains(&version)
                },
            )
            .await;
        return;
    }
    for subject in ["many.a", "many.c", "many.b", "many.d"] {
        js.publish(subject, "x".into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    let mut subjects: Vec<_> = component
        .take(2)
        .await
        .into_iter()
        .map(|r| r.message.subject)
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["many.a", "many.b"]);
    component.expect_nothing(Duration::from_millis(500)).await;
    let (healthy, message) = provider.health().await.expect("health");
    assert!(healthy, "{message}");
}

/// The lag health gives for durable consumer `label` (`stream/consumer`):
/// its pending and unacked counts, `None` for one not known yet.
fn lag_in(health: &str, label: &str) -> Option<(Option<u64>, Option<u64>)> {
    let marker = format!("durable consumer {label}: ");
    let rest = &health[health.find(&marker)? + marker.len()..];
    let mut words = rest.split([' ', ',', ';']).filter(|w| !w.is_empty());
    let pending = words.next()?.parse().ok();
    (words.next()? == "pending").then_some(())?;
    let unacked = words.next()?.parse().ok();
    Some((pending, unacked))
}

#[tokio::test]
async fn a_backlog_reads_as_pending_in_health_and_zero_once_drained() {
    const N: u64 = 200;
    let lattice = jetstream_lattice().await;
    let js = js(&lattice);
    create_stream(&js, "ORDERS", &["orders.>"]).await;
    publish_stored(&js, "orders.new", 0..N as usize).await;
    let gate = Gate::closed();
    let provider = lattice.provider(&[]).await;
    let mut component = lattice
        .component(
            "worker",
            Behaviour {
                gate: Some(gate.clone()),
                ..Behaviour::default()
            },
        )
        .await;
    let link = Link::handler(
        "worker",
        &[
            ("stream", "ORDERS"),
            ("durable_name", "workers"),
            ("max_in_flight", "1"),
        ],
    );
    provider.put_link(&link).await;

    // One message is held in its call; the rest wait on the server.
    let (_, backlog) = provider
        .wait_for_health("the backlog with its unacked count", WAIT, |_, health| {
            matches!(lag_in(health, "ORDERS/workers"), Some((Some(_), Some(1))))
        })
        .await;
    let (pending, _) = lag_in(&backlog, "ORDERS/workers").unwrap();
    gate.open();
    component.take(N as usize).await;
    let (_, drained) = provider
        .wait_for_health("no lag once drained", WAIT, |_, health| {
            lag_in(health, "ORDERS/workers") == Some((Some(0), Some(0)))
        })
        .await;
    provider.delete_link(&link).await;
    let stop = provider
        .logs
        .wait_for(0, "the stop line", |line| {
            line.contains("handler link stopped")
        })
        .await;

    assert_eq!(pending, Some(N - 1), "{backlog}");
    assert!(drained.contains("all NATS connections up"), "{drained}");
    assert!(
        stop.contains("durable consumer ORDERS/workers: 0 pending, 0 unacked"),
        "{stop}"
    );
}
