//! Edge to cloud: a provider connected to a leaf node consumes from, and
//! confirms publishes into, a stream of the hub's JetStream domain
//! (`jetstream_domain`), and loses nothing answered `Ok` when the leaf is
//! cut off the hub mid-traffic.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::at_least_once::{more_than_once, publish_all, stored};
use crate::support::{
    replicated_orders, Behaviour, Gate, Lattice, LeafTopology, Link, HUB_DOMAIN, WAIT,
};

/// Handler calls at once on the durable link.
const MAX_IN_FLIGHT: usize = 16;
/// How long the leaf stays off the hub at least.
const CUT: Duration = Duration::from_secs(3);
/// How long the test waits for every stored message to be handled.
const HANDLED_WAIT: Duration = Duration::from_secs(60);

/// The durable handler link of component `worker` on the leaf.
fn durable_link(topology: &LeafTopology, domain: Option<&str>) -> Link {
    let leaf = topology.leaf.url();
    let max_in_flight = MAX_IN_FLIGHT.to_string();
    let mut config = vec![
        ("cluster_uris", leaf.as_str()),
        ("stream", "ORDERS"),
        ("max_in_flight", max_in_flight.as_str()),
        ("ack_wait_ms", "3000"),
    ];
    config.extend(domain.map(|domain| ("jetstream_domain", domain)));
    Link::handler("worker", &config)
}

#[tokio::test]
async fn without_jetstream_domain_a_link_on_a_leaf_node_sees_only_the_leafs_jetstream() {
    let topology = LeafTopology::start(3).await;
    replicated_orders(&topology.hub_urls()).await;
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let _worker = lattice.component("worker", Behaviour::default()).await;

    provider.put_link(&durable_link(&topology, None)).await;

    let (_, message) = provider
        .wait_for_health("the stream not found", WAIT, |healthy, message| {
            !healthy && message.contains("stream \"ORDERS\" not found")
        })
        .await;
    assert!(!message.contains("JetStream domain"), "{message}");
}

#[tokio::test]
async fn through_a_leaf_node_nothing_answered_ok_is_lost_when_the_leaf_is_cut_off_the_hub() {
    /// Publishes before the cut, during it, and after it.
    const BEFORE: usize = 1_000;
    const DURING: usize = 32;
    const AFTER: usize = 1_000;
    const N: usize = BEFORE + DURING + AFTER;
    let topology = LeafTopology::start(3).await;
    let js = replicated_orders(&topology.hub_urls()).await;
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    // Deliveries are under way when the cut comes: calls wait at the gate
    // until nine tenths of the first thousand are published, and the
    // thousand take at least 3 s to handle (50 ms each, MAX_IN_FLIGHT at
    // once), far longer than the last tenth takes to publish. (Without the
    // gate, a loaded machine published so slowly that all were handled
    // before the cut once.)
    let gate = Gate::closed();
    let mut worker = lattice
        .component(
            "worker",
            Behaviour {
                delay: Duration::from_millis(50),
                gate: Some(gate.clone()),
                ..Behaviour::default()
            },
        )
        .await;
    provider
        .put_link(&durable_link(&topology, Some(HUB_DOMAIN)))
        .await;
    provider
        .put_link(&Link::consumer(
            "worker",
            &[
                ("cluster_uris", &topology.leaf.url()),
                ("jetstream_publish", "orders.>"),
                ("jetstream_domain", HUB_DOMAIN),
                ("publish_timeout_ms", "2000"),
            ],
        ))
        .await;
    provider.wait_healthy(WAIT).await;
    let caller = Arc::new(worker.caller(&provider.key).await);
    let mut published = publish_all(Arc::clone(&caller), 0..BEFORE, 8, move |i| {
        if i == BEFORE * 9 / 10 {
            gate.open();
        }
    })
    .await;
    let handled_at_cut = worker.handled();

    // Cut mid-traffic: deliveries are running, and publishes go on.
    topology.cut(true);
    let cut = Instant::now();
    topology.wait_joined(false).await;
    let during = tokio::spawn(publish_all(
        Arc::clone(&caller),
        BEFORE..BEFORE + DURING,
        8,
        |_| {},
    ));
    let (_, unhealthy) = provider
        .wait_for_health(
            "the hub's domain unreachable",
            Duration::from_secs(30),
            |healthy, message| {
                !healthy && message.contains(&format!("in JetStream domain \"{HUB_DOMAIN}\""))
            },
        )
        .await;
    let during = during.await.unwrap();
    tokio::time::sleep(CUT.saturating_sub(cut.elapsed())).await;
    topology.cut(false);
    let cut_lasted = cut.elapsed();
    topology.wait_joined(true).await;
    let after = publish_all(caller, BEFORE + DURING..N, 8, |_| {}).await;
    for part in [&during, &after] {
        published.ok.extend(&part.ok);
        for (error, n) in &part.errors {
            *published.errors.entry(error.clone()).or_default() += n;
        }
    }

    let stored = stored(&js, "ORDERS").await;
    let mut handled: HashMap<usize, usize> = HashMap::new();
    let deadline = Instant::now() + HANDLED_WAIT;
    while stored.keys().any(|body| !handled.contains_key(body)) && Instant::now() < deadline {
        if let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(1), worker.next_opt()).await {
            let body: usize = std::str::from_utf8(&r.message.body)
                .unwrap()
                .parse()
                .unwrap();
            *handled.entry(body).or_default() += 1;
        }
    }
    let healthy = provider.wait_healthy(WAIT).await;

    let missing = published.not_in(&stored);
    let stored_twice = more_than_once(&stored);
    let never_handled = stored.keys().filter(|b| !handled.contains_key(b)).count();
    let handled_twice = more_than_once(&handled);
    eprintln!(
        "leaf cut off the hub for {cut_lasted:?}, {handled_at_cut} of {BEFORE} handled at the \
         cut: {N} publishes, {} answered Ok ({} of {DURING} during the cut), {} stored, \
         {stored_twice} stored twice, {} Ok but missing, {never_handled} stored but never \
         handled, {} handled, {handled_twice} handled twice; errors {:?}; health while cut: \
         {unhealthy}",
        published.ok.len(),
        during.ok.len(),
        stored.len(),
        missing.len(),
        handled.len(),
        published.errors
    );
    assert!(
        missing.is_empty(),
        "answered Ok but not stored: {missing:?}"
    );
    assert_eq!(stored_twice, 0, "a message stored twice");
    assert_eq!(never_handled, 0, "stored messages never handled");
    assert!(
        handled_at_cut < BEFORE,
        "every delivery was done before the cut: not mid-traffic"
    );
    // Handled twice: messages whose acks were lost with the cut, each
    // redelivered after its ack wait. The link holds at most MAX_IN_FLIGHT
    // in calls and at most as many fetched: at most two rounds.
    assert!(
        handled_twice <= 2 * MAX_IN_FLIGHT,
        "{handled_twice} handled twice"
    );
    // Publishes while cut fail, naming the domain that did not answer.
    let domain_error = format!("JetStream domain \"{HUB_DOMAIN}\" did not answer");
    assert!(
        during.errors.keys().any(|e| e.contains(&domain_error)),
        "no publish during the cut names the domain: {:?}",
        during.errors
    );
    assert!(healthy.contains("all NATS connections up"), "{healthy}");
}
