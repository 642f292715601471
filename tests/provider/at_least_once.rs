//! End to end at least once, under faults: publishes confirmed by
//! JetStream (`jetstream_publish`) are never lost once answered `Ok`, and
//! each is stored once; a durable handler link delivers every stored
//! message at least once. Each test prints its figures.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;

use crate::support::{
    create_stream, message, replicated_orders, stream_messages, Behaviour, Caller, Lattice, Link,
    NatsServer, ServerOptions, WAIT,
};

/// What the publishers saw.
#[derive(Default)]
pub(crate) struct Published {
    pub(crate) ok: HashSet<usize>,
    /// Each error text (its subject left out), with how often it came.
    pub(crate) errors: BTreeMap<String, usize>,
}

impl Published {
    /// The bodies answered `Ok` that `stored` lacks.
    pub(crate) fn not_in(&self, stored: &HashMap<usize, usize>) -> Vec<usize> {
        let mut missing: Vec<usize> = self
            .ok
            .iter()
            .filter(|i| !stored.contains_key(i))
            .copied()
            .collect();
        missing.sort_unstable();
        missing
    }
}

/// How many of the bodies `counts` counts more than once.
pub(crate) fn more_than_once(counts: &HashMap<usize, usize>) -> usize {
    counts.values().filter(|n| **n > 1).count()
}

/// Publishes bodies `bodies` (`i` to `orders.<i>`) through `caller`,
/// `concurrency` at a time, calling `at(i)` before publish `i` (to inject
/// faults).
pub(crate) async fn publish_all(
    caller: Arc<Caller>,
    bodies: std::ops::Range<usize>,
    concurrency: usize,
    at: impl Fn(usize) + Send + Sync + 'static,
) -> Published {
    let published = Arc::new(Mutex::new(Published::default()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(bodies.start));
    let end = bodies.end;
    let at = Arc::new(at);
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (caller, published, next, at) = (
                Arc::clone(&caller),
                Arc::clone(&published),
                Arc::clone(&next),
                Arc::clone(&at),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= end {
                        return;
                    }
                    at(i);
                    let msg = message(&format!("orders.{i}"), i.to_string().as_bytes());
                    let result = caller.publish(&msg).await;
                    let mut published = published.lock().unwrap();
                    match result {
                        Ok(Ok(())) => {
                            published.ok.insert(i);
                        }
                        Ok(Err(err)) => *published.errors.entry(kind_of(&err)).or_default() += 1,
                        Err(err) => {
                            *published.errors.entry(format!("call: {err}")).or_default() += 1
                        }
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    Arc::try_unwrap(published)
        .ok()
        .map(|m| m.into_inner().unwrap())
        .unwrap()
}

/// An error's kind: its text with the subject (the first quoted part,
/// `"orders.<i>"`) left out.
fn kind_of(error: &str) -> String {
    match error.split_once('"') {
        Some((before, rest)) => {
            let after = rest.split_once('"').map_or("", |(_, after)| after);
            format!("{before}<subject>{after}")
        }
        None => error.to_string(),
    }
}

/// Every body the stream stores, with how many times it is stored.
pub(crate) async fn stored(js: &jetstream::Context, name: &str) -> HashMap<usize, usize> {
    let mut counts = HashMap::new();
    for msg in stream_messages(js, name).await {
        let body: usize = std::str::from_utf8(&msg.payload).unwrap().parse().unwrap();
        *counts.entry(body).or_default() += 1;
    }
    counts
}

/// How long a killed server stays down.
const OUTAGE: Duration = Duration::from_millis(500);

/// A JetStream server (file store) for the data, beside the lattice's.
async fn jetstream_server() -> NatsServer {
    NatsServer::with(ServerOptions {
        jetstream: true,
        ..ServerOptions::default()
    })
}

#[tokio::test]
async fn confirmed_publishes_answered_ok_survive_a_sigkill_of_the_server() {
    const N: usize = 1500;
    let lattice = Lattice::start().await;
    let data = Arc::new(Mutex::new(jetstream_server().await));
    let url = data.lock().unwrap().url();
    let js = jetstream::new(async_nats::connect(&url).await.expect("data client"));
    create_stream(&js, "ORDERS", &["orders.>"]).await;
    let provider = lattice.provider(&[]).await;
    let component = lattice.component("c", Behaviour::default()).await;
    provider
        .put_link(&Link::consumer(
            "c",
            &[
                ("cluster_uris", &url),
                ("jetstream_publish", "orders.>"),
                ("publish_timeout_ms", "10000"),
            ],
        ))
        .await;
    let caller = Arc::new(component.caller(&provider.key).await);

    // A third of the way through, the server dies and is down for half a
    // second while publishes go on.
    let killer = Arc::clone(&data);
    let published = publish_all(caller, 0..N, 16, move |i| {
        if i == N / 3 {
            let killer = Arc::clone(&killer);
            std::thread::spawn(move || {
                killer.lock().unwrap().kill();
                std::thread::sleep(OUTAGE);
                killer.lock().unwrap().restart();
            });
        }
    })
    .await;
    let js = jetstream::new(async_nats::connect(&url).await.expect("data client"));
    let stored = stored(&js, "ORDERS").await;

    let missing = published.not_in(&stored);
    let twice = more_than_once(&stored);
    eprintln!(
        "SIGKILL of the server: {} publishes, {} answered Ok, {} stored, {} stored twice, {} Ok \
         but missing; errors {:?}",
        N,
        published.ok.len(),
        stored.len(),
        twice,
        missing.len(),
        published.errors
    );
    assert!(
        missing.is_empty(),
        "answered Ok but not stored: {missing:?}"
    );
    assert_eq!(twice, 0, "a message stored twice");
    // Each publish may retry for 10 s; the server is down for 0.5 s.
    assert_eq!(
        published.ok.len(),
        N,
        "every publish answered Ok; errors {:?}",
        published.errors
    );
}

/// How long the cluster test waits for every stored message to be handled.
const HANDLED_WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_jetstream_cluster_loses_nothing_answered_ok_when_the_leader_and_a_provider_die() {
    const N: usize = 10_000;
    let lattice = Lattice::start().await;
    let nodes = Arc::new(Mutex::new(NatsServer::cluster(
        3,
        ServerOptions {
            jetstream: true,
            ..ServerOptions::default()
        },
    )));
    let urls = nodes
        .lock()
        .unwrap()
        .iter()
        .map(NatsServer::url)
        .collect::<Vec<_>>()
        .join(",");
    let js = replicated_orders(&urls).await;
    let durable = [
        ("cluster_uris", urls.as_str()),
        ("stream", "ORDERS"),
        ("max_in_flight", "32"),
        ("ack_wait_ms", "3000"),
    ];
    let handler = Link::handler("worker", &durable);
    let start_provider = |key: &'static str| {
        let lattice = &lattice;
        let handler = handler.clone();
        async move {
            let provider = lattice.provider_with_key(key, &[]).await;
            provider.put_link(&handler).await;
            provider
        }
    };
    let publisher = start_provider("provider-a").await;
    let mut other = Some(start_provider("provider-b").await);
    let mut worker = lattice.component("worker", Behaviour::default()).await;
    publisher
        .put_link(&Link::consumer(
            "worker",
            &[
                ("cluster_uris", &urls),
                ("jetstream_publish", "orders.>"),
                ("publish_timeout_ms", "15000"),
            ],
        ))
        .await;
    let caller = Arc::new(worker.caller(&publisher.key).await);

    // The leader's node dies at a third, and comes back at two thirds.
    let leader = stream_leader(&js, "ORDERS").await;
    let leader_index: usize = leader
        .strip_prefix("node")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("stream leader {leader:?} is none of the nodes"));
    let killed_node = Arc::new(Mutex::new(None));
    let faults = {
        let nodes = Arc::clone(&nodes);
        let killed_node = Arc::clone(&killed_node);
        move |i: usize| {
            if i == N / 3 {
                nodes.lock().unwrap()[leader_index].kill();
                *killed_node.lock().unwrap() = Some(leader_index);
            }
            if i == 2 * N / 3 {
                if let Some(index) = *killed_node.lock().unwrap() {
                    // Not on the runtime's thread: a start waits for the
                    // server to be ready.
                    let nodes = Arc::clone(&nodes);
                    std::thread::spawn(move || nodes.lock().unwrap()[index].restart());
                }
            }
        }
    };
    let publishing = tokio::spawn(publish_all(caller, 0..N, 16, faults));
    // The second provider dies (SIGKILL) while deliveries run, and a new
    // one takes its place.
    let mut handled: HashMap<usize, usize> = HashMap::new();
    let receive = |received: crate::support::Received, handled: &mut HashMap<usize, usize>| {
        let body: usize = std::str::from_utf8(&received.message.body)
            .unwrap()
            .parse()
            .unwrap();
        *handled.entry(body).or_default() += 1;
    };
    while handled.len() < N / 2 {
        match tokio::time::timeout(HANDLED_WAIT, worker.next_opt()).await {
            Ok(Some(r)) => receive(r, &mut handled),
            _ => panic!(
                "deliveries stopped at {}; provider-a:\n{}\nprovider-b:\n{}",
                handled.len(),
                publisher.logs.lines().join("\n"),
                other
                    .as_ref()
                    .map(|p| p.logs.lines().join("\n"))
                    .unwrap_or_default()
            ),
        }
    }
    if let Some(provider) = other.take() {
        provider.signal("KILL").await;
    }
    let _replacement = start_provider("provider-b2").await;
    let published = publishing.await.unwrap();
    let stored = stored(&js, "ORDERS").await;
    let deadline = Instant::now() + HANDLED_WAIT;
    while stored.keys().any(|body| !handled.contains_key(body)) && Instant::now() < deadline {
        if let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(1), worker.next_opt()).await {
            receive(r, &mut handled);
        }
    }

    let missing = published.not_in(&stored);
    let stored_twice = more_than_once(&stored);
    let never_handled: Vec<_> = stored.keys().filter(|b| !handled.contains_key(b)).collect();
    let handled_twice = more_than_once(&handled);
    eprintln!(
        "cluster, leader {leader} killed and restarted, a provider killed: {N} publishes, {} \
         answered Ok, {} stored, {stored_twice} stored twice, {} Ok but missing, {} stored \
         but never handled, {} handled, {handled_twice} handled twice; errors {:?}",
        published.ok.len(),
        stored.len(),
        missing.len(),
        never_handled.len(),
        handled.len(),
        published.errors
    );
    assert!(
        missing.is_empty(),
        "answered Ok but not stored: {:?}",
        &missing[..missing.len().min(20)]
    );
    assert_eq!(stored_twice, 0, "a message stored twice");
    assert!(
        never_handled.is_empty(),
        "stored, never handled: {}",
        never_handled.len()
    );
    // Handled twice: what the killed instance had in flight, and what was
    // handled while its ack was lost with the moving leader: at most one
    // round of each instance's max_in_flight (32).
    assert!(handled_twice <= 64, "{handled_twice} handled twice");
}

/// The name of the server that leads `stream`, once the stream names one.
async fn stream_leader(js: &async_nats::jetstream::Context, stream: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let info = js
            .get_stream(stream)
            .await
            .expect("stream")
            .get_info()
            .await
            .expect("stream info");
        if let Some(leader) = info
            .cluster
            .and_then(|c| c.leader)
            .filter(|l| !l.is_empty())
        {
            return leader;
        }
        assert!(Instant::now() < deadline, "stream {stream} names no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
