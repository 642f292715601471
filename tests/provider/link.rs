//! One handler link, one engine: its `max_in_flight` bounds every source
//! of the link together (core subscriptions, its `stream`, its `consumers`
//! entries), free slots go to the sources in turn, one drain stops them
//! all, and health never waits for a link put.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};

use crate::support::{
    consumer_info, create_stream, jetstream_lattice, Behaviour, Gate, Lattice, Link, NatsServer,
    Received, WAIT,
};

/// Messages published to each of the three sources.
const EACH: usize = 40;

/// The three sources of one link: a core subscription on `core.in`, the
/// link's own `stream` MANAGED (`managed.>`, made by the provider) and a
/// `consumers` entry bound to the pull consumer `bound` of DUR (`dur.>`).
async fn three_source_link(
    max_in_flight: &str,
    drain_timeout_ms: &str,
) -> (Lattice, crate::support::Provider, jetstream::Context) {
    let lattice = jetstream_lattice().await;
    let js = jetstream::new(lattice.client.clone());
    create_stream(&js, "DUR", &["dur.>"])
        .await
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bound".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("consumer bound");
    let provider = lattice.provider(&[]).await;
    let line = provider
        .put_link(&Link::handler(
            "worker",
            &[
                ("subscriptions", "core.in"),
                ("stream", "MANAGED"),
                ("stream_subjects", "managed.>"),
                ("consumers", r#"[{"stream": "DUR", "consumer": "bound"}]"#),
                ("max_in_flight", max_in_flight),
                ("drain_timeout_ms", drain_timeout_ms),
            ],
        ))
        .await;
    assert!(line.contains("handler link ready"), "{line}");
    (lattice, provider, js)
}

/// The subjects of the three sources: core, `stream`, `consumers`.
const SUBJECTS: [&str; 3] = ["core.in", "managed.x", "dur.x"];

/// How [`flood`] orders its messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    Interleaved,
    /// All of the first source's, then the second's, then the third's.
    SourceBySource,
}

/// Floods all three sources with [`EACH`] messages each.
async fn flood(lattice: &Lattice, js: &jetstream::Context, order: Order) {
    let mut sends: Vec<(usize, usize)> = (0..EACH)
        .flat_map(|i| (0..SUBJECTS.len()).map(move |source| (source, i)))
        .collect();
    if order == Order::SourceBySource {
        sends.sort_by_key(|(source, _)| *source);
    }
    let mut acks = Vec::new();
    for (source, i) in sends {
        let body = i.to_string().into();
        if source == 0 {
            lattice
                .client
                .publish(SUBJECTS[0], body)
                .await
                .expect("core publish");
        } else {
            acks.push(
                js.publish(SUBJECTS[source], body)
                    .await
                    .expect("stream publish"),
            );
        }
    }
    for ack in acks {
        ack.await.expect("stored");
    }
}

/// Deliveries per subject.
fn by_subject(received: &[Received]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in received {
        *counts.entry(r.message.subject.clone()).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn max_in_flight_bounds_subscriptions_stream_and_consumers_together() {
    let (lattice, _provider, js) = three_source_link("4", "2000").await;
    let mut component = lattice
        .component("worker", Behaviour::slow(Duration::from_millis(150)))
        .await;

    flood(&lattice, &js, Order::Interleaved).await;
    let received = component.take(3 * EACH).await;

    assert_eq!(
        component.peak_in_flight(),
        4,
        "peak calls at once for the link"
    );
    let counts = by_subject(&received);
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [EACH, EACH, EACH],
        "{counts:?}"
    );
}

#[tokio::test]
async fn free_slots_go_to_the_sources_in_turn_not_to_the_first_flooded() {
    let (lattice, _provider, js) = three_source_link("4", "2000").await;
    let gate = Gate::closed();
    let mut component = lattice
        .component(
            "worker",
            Behaviour {
                delay: Duration::from_millis(300),
                gate: Some(gate.clone()),
                ..Behaviour::default()
            },
        )
        .await;

    // One source after the other: served in the order messages arrived,
    // the first EACH deliveries would all be the core subscription's. The
    // calls are held until every source has messages waiting in the
    // provider (the first four slots taken by the core subscription, each
    // stream's consumer with fetched messages not yet acked).
    flood(&lattice, &js, Order::SourceBySource).await;
    let managed = messaging_nats::default_durable_name("worker", "default");
    let deadline = Instant::now() + WAIT;
    loop {
        let dur = consumer_info(&js, "DUR", "bound").await.num_ack_pending;
        let own = consumer_info(&js, "MANAGED", &managed)
            .await
            .num_ack_pending;
        if component.in_flight() == 4 && dur > 0 && own > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sources not all waiting: {} in flight, pending DUR {dur}, MANAGED {own}",
            component.in_flight()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.open();
    let first = component.take(EACH).await;
    component.take(2 * EACH).await;

    // In turn, each source gets about a third of the first deliveries (the
    // first four are the core subscription's).
    let counts = by_subject(&first);
    for subject in SUBJECTS {
        let n = counts.get(subject).copied().unwrap_or_default();
        assert!(
            n >= EACH / 4,
            "{subject} got {n} of the first {EACH}: {counts:?}"
        );
    }
}

/// Fetches from `stream`'s `consumer` until it has nothing more within a
/// short wait; returns how many messages came.
async fn fetch_all(js: &jetstream::Context, stream: &str, consumer: &str) -> usize {
    use futures::StreamExt as _;
    let consumer: consumer::PullConsumer = js
        .get_stream(stream)
        .await
        .expect("stream")
        .get_consumer(consumer)
        .await
        .expect("consumer");
    let mut total = 0;
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(100)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .expect("fetch");
        let mut got = 0;
        while let Some(Ok(msg)) = batch.next().await {
            msg.ack().await.expect("ack");
            got += 1;
        }
        if got == 0 {
            return total;
        }
        total += got;
    }
}

#[tokio::test]
async fn a_link_delete_drains_every_source_within_the_drain_timeout() {
    let (lattice, provider, js) = three_source_link("6", "3000").await;
    let mut component = lattice
        .component("worker", Behaviour::slow(Duration::from_millis(200)))
        .await;
    flood(&lattice, &js, Order::Interleaved).await;
    let mut received = component.take(12).await;

    let from = provider.logs.line_count();
    let deleted = Instant::now();
    provider.delete_link(&Link::handler("worker", &[])).await;
    let stopped = provider
        .logs
        .wait_for(from, "the link's stop", |l| {
            l.contains("handler link stopped")
        })
        .await;
    let drained_in = deleted.elapsed();
    while let Ok(Some(r)) =
        tokio::time::timeout(Duration::from_millis(600), component.next_opt()).await
    {
        received.push(r);
    }
    let handled = by_subject(&received);
    let managed = messaging_nats::default_durable_name("worker", "default");
    // The ack wait is 30 s: what the link held and did not handle is back
    // on the server at once only if it was nak'd.
    let left_in_dur = fetch_all(&js, "DUR", "bound").await;
    let left_in_managed = fetch_all(&js, "MANAGED", &managed).await;

    assert!(drained_in < Duration::from_millis(3000), "{drained_in:?}");
    assert!(stopped.contains("aborted 0,"), "{stopped}");
    // Core messages already received are delivered within the drain time
    // (at most once: they exist nowhere else); stream messages not yet
    // delivered go back to their streams.
    assert_eq!(handled.get("core.in").copied(), Some(EACH), "{handled:?}");
    assert_eq!(
        handled.get("dur.x").copied().unwrap_or(0) + left_in_dur,
        EACH
    );
    assert_eq!(
        handled.get("managed.x").copied().unwrap_or(0) + left_in_managed,
        EACH
    );
}

#[tokio::test]
async fn health_is_answered_while_a_link_put_waits_on_a_server_that_is_down() {
    let lattice = Lattice::start().await;
    let mut down = NatsServer::start();
    let url = down.url();
    down.stop();
    let provider = lattice.provider(&[]).await;
    let from = provider.logs.line_count();

    provider
        .send_link_put(&Link::handler(
            "worker",
            &[
                ("subscriptions", "later"),
                ("cluster_uris", &url),
                ("connect_timeout_ms", "4000"),
            ],
        ))
        .await;
    let started = Instant::now();
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(provider.health().await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let answered_in = started.elapsed();
    // The put waits up to its 4 s connect timeout: it was still waiting.
    let ready_meanwhile = provider.logs.count(|l| l.contains("handler link ready"));
    provider
        .logs
        .wait_for_within(from, "the link put", WAIT, |l| {
            l.contains("handler link ready")
        })
        .await;

    for answer in &answers {
        assert!(
            answer.is_ok(),
            "health not answered during the link put: {answer:?}"
        );
    }
    assert_eq!(
        ready_meanwhile, 0,
        "the link put was over before health was asked"
    );
    assert!(answered_in < Duration::from_secs(4), "{answered_in:?}");
}
