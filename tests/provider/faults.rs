//! Outages, restarts, failover and slow components: the provider keeps
//! answering the host, bounds its memory and says what it lost.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmcloud_provider_sdk::core::secrets::SecretValue;

use crate::support::{
    echo_responder, message, next_message, pairs, round_trip, stream_messages, Behaviour, Lattice,
    Link, NatsServer, ProviderOptions, ServerExt as _, ServerOptions, LAME_DUCK_CONFIG, WAIT,
};

#[tokio::test]
async fn an_outage_with_a_full_command_queue_leaves_every_host_call_answering() {
    let lattice = Lattice::start().await;
    let mut data = NatsServer::start();
    let provider = lattice.provider(&[]).await;
    let component = lattice.component("c", Behaviour::default()).await;
    let servers = ("cluster_uris", data.url());
    let consumer = Link::consumer(
        "c",
        &[(servers.0, &servers.1), ("publish_timeout_ms", "1000")],
    );
    let handler = Link::handler(
        "c",
        &[
            (servers.0, &servers.1),
            ("subscriptions", "in"),
            ("drain_timeout_ms", "1000"),
        ],
    );
    provider.put_link(&consumer).await;
    provider.put_link(&handler).await;
    data.kill();
    provider
        .wait_for_health("unhealthy", WAIT, |healthy, _| !healthy)
        .await;

    // Each publish queues a message and a flush in the client, which does
    // not read its queue while disconnected: 1,100 of them fill it.
    let caller = Arc::new(component.caller(&provider.key).await);
    let publishes: Vec<_> = (0..1100)
        .map(|i| {
            let caller = Arc::clone(&caller);
            tokio::spawn(async move {
                caller
                    .publish(&message("out", i.to_string().as_bytes()))
                    .await
            })
        })
        .collect();
    let mut refused = 0;
    for publish in publishes {
        if let Ok(Ok(Err(_))) = publish.await {
            refused += 1;
        }
    }
    provider.delete_link(&handler).await;
    let health = provider.health().await;
    let status = provider.shutdown().await;

    assert_eq!(
        refused, 1100,
        "publishes answered Ok while the server was down"
    );
    let (healthy, message) = health.expect("health answered during the outage");
    assert!(
        !healthy && message.contains("consumer link c/default"),
        "{message}"
    );
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn link_delete_answers_while_its_drain_goes_on() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let mut component = lattice
        .component("c", Behaviour::slow(Duration::from_secs(2)))
        .await;
    let slow = Link::handler(
        "c",
        &[("subscriptions", "slow"), ("drain_timeout_ms", "30000")],
    )
    .named("slow");
    provider.put_link(&slow).await;
    let mut other = lattice.component("other", Behaviour::default()).await;
    provider
        .put_link(&Link::handler("other", &[("subscriptions", "fast")]))
        .await;
    lattice
        .client
        .publish("slow", "draining".into())
        .await
        .unwrap();
    while component.peak_in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    provider.start_link_delete(&slow).await;
    let health = provider.health().await;
    lattice
        .client
        .publish("fast", "meanwhile".into())
        .await
        .unwrap();
    let meanwhile = other.next().await;
    let drained = component.next().await;

    assert!(health.is_ok(), "health not answered during the drain");
    assert_eq!(&meanwhile.message.body[..], b"meanwhile");
    assert_eq!(&drained.message.body[..], b"draining");
    provider
        .logs
        .wait_for(0, "the drained link's stop", |l| {
            l.contains("handler link stopped") && l.contains("delivered 1,")
        })
        .await;
}

#[tokio::test]
async fn a_released_connection_to_a_down_server_stops_retrying() {
    let lattice = Lattice::start().await;
    let mut data = NatsServer::start();
    let url = data.url();
    data.kill();
    let provider = lattice.provider(&[]).await;
    let link = Link::consumer(
        "c",
        &[("cluster_uris", &url), ("connect_timeout_ms", "200")],
    );
    provider.put_link(&link).await;

    provider.delete_link(&link).await;
    // Ten attempts with delays up to 4 s: the client gives up within ~25 s.
    let gave_up = Instant::now() + Duration::from_secs(40);
    loop {
        if provider.logs.count(|l| l.contains("NATS client gave up")) > 0 {
            break;
        }
        assert!(
            Instant::now() < gave_up,
            "the released connection kept retrying"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let attempts = || {
        provider
            .logs
            .count(|l| l.contains("NATS connection attempt failed"))
    };
    let after_giving_up = attempts();
    tokio::time::sleep(Duration::from_secs(5)).await;

    assert_eq!(
        attempts(),
        after_giving_up,
        "attempts went on after giving up"
    );
    let (_, health) = provider.health().await.unwrap();
    assert!(
        health.starts_with("0 handler links, 0 consumer links"),
        "{health}"
    );
}

#[tokio::test]
async fn a_link_outliving_its_client_subscribes_again_on_a_new_one() {
    let lattice = Lattice::start().await;
    let mut data = NatsServer::start();
    let provider = lattice.provider(&[]).await;
    let mut component = lattice.component("c", Behaviour::default()).await;
    provider
        .put_link(&Link::handler(
            "c",
            &[("cluster_uris", &data.url()), ("subscriptions", "in")],
        ))
        .await;
    data.kill();

    // The client gives up after ten attempts (~25 s); its subscriptions
    // close with it, and the link subscribes on the new client at once.
    let unhealthy = provider
        .wait_for_health("unhealthy", WAIT, |healthy, _| !healthy)
        .await
        .1;
    provider
        .logs
        .wait_for_within(0, "the new client", Duration::from_secs(40), |l| {
            l.contains("subscribed again")
        })
        .await;
    let still_down = provider.health().await.unwrap();
    data.restart();
    provider.wait_healthy(Duration::from_secs(30)).await;
    let publisher = data.client().await;
    publisher.publish("in", "after".into()).await.unwrap();
    publisher.flush().await.unwrap();

    assert!(unhealthy.contains("handler link c/default"), "{unhealthy}");
    assert!(!still_down.0, "healthy while the server was still down");
    assert_eq!(&component.next().await.message.body[..], b"after");
}

#[tokio::test]
async fn a_subscription_the_server_refuses_makes_the_link_unhealthy_naming_it() {
    let lattice = Lattice::start().await;
    let data = NatsServer::with_config(
        "authorization { users = [ { user: app, password: pw, \
         permissions: { subscribe: { deny: [\"secret.>\"] } } } ] }",
    );
    let provider = lattice.provider(&[]).await;
    let _component = lattice.component("c", Behaviour::default()).await;
    let link = Link::handler(
        "c",
        &[
            ("cluster_uris", &data.url()),
            ("username", "app"),
            ("subscriptions", "open.x,secret.x"),
        ],
    )
    .with_secret("password", "pw");
    provider.put_link(&link).await;

    let (_, health) = provider
        .wait_for_health("the refusal", WAIT, |_, m| m.contains("refused"))
        .await;
    let logged = provider
        .logs
        .wait_for(0, "the refusal", |l| l.contains("refused the subscription"))
        .await;

    assert!(
        health.contains("handler link c/default") && health.contains("\"secret.x\""),
        "{health}"
    );
    assert!(!health.contains("\"open.x\""), "{health}");
    assert!(
        logged.contains("c/default") && logged.contains("secret.x"),
        "{logged}"
    );
}

#[tokio::test]
async fn provider_secrets_survive_a_config_update() {
    let lattice = Lattice::start().await;
    let data = NatsServer::with_config("authorization { user: alice, password: pw-kept }");
    let provider = lattice
        .provider_with(ProviderOptions {
            config: pairs(&[("cluster_uris", &data.url()), ("username", "alice")]),
            secrets: [(
                "password".to_string(),
                SecretValue::String("pw-kept".into()),
            )]
            .into(),
            ..ProviderOptions::default()
        })
        .await;
    let component = lattice.component("c", Behaviour::default()).await;
    provider
        .update_config(&[
            ("cluster_uris", &data.url()),
            ("username", "alice"),
            ("ping_interval_sec", "30"),
        ])
        .await;
    provider
        .put_link(&Link::consumer("c", &[("connect_timeout_ms", "500")]))
        .await;
    let subscriber = data.client_as("alice", "pw-kept").await;
    let mut sub = subscriber.subscribe("kept").await.unwrap();
    round_trip(&subscriber).await;

    let result = component
        .caller(&provider.key)
        .await
        .publish(&message("kept", b"x"))
        .await
        .unwrap();

    assert_eq!(result, Ok(()));
    assert_eq!(&next_message(&mut sub).await.unwrap().payload[..], b"x");
}

#[tokio::test]
async fn a_failed_re_put_keeps_the_running_link() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let mut component = lattice.component("c", Behaviour::default()).await;
    let first = Link::handler("c", &[("subscriptions", "first")]).named("a");
    provider.put_link(&first).await;
    // The SDK passes a re-put of a link on only when another link to the
    // same component came in between.
    provider
        .put_link(&Link::handler("c", &[("subscriptions", "b")]).named("b"))
        .await;
    let broken =
        Link::handler("c", &[("subscriptions", "second"), ("max_in_flight", "0")]).named("a");
    let line = provider.put_link(&broken).await;

    lattice.publish_numbered("first", 1).await;

    assert!(
        line.contains("link rejected") && line.contains("max_in_flight"),
        "{line}"
    );
    assert_eq!(&component.next().await.message.subject, "first");
}

#[tokio::test]
async fn a_re_put_replaces_the_link_once_the_new_one_runs() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let mut component = lattice.component("c", Behaviour::default()).await;
    provider
        .put_link(&Link::handler("c", &[("subscriptions", "first")]).named("a"))
        .await;
    provider
        .put_link(&Link::handler("c", &[("subscriptions", "b")]).named("b"))
        .await;
    provider
        .put_link(&Link::handler("c", &[("subscriptions", "second")]).named("a"))
        .await;
    provider
        .logs
        .wait_for(0, "the old link's stop", |l| {
            l.contains("handler link stopped")
        })
        .await;

    lattice.publish_numbered("first", 1).await;
    lattice.publish_numbered("second", 1).await;

    assert_eq!(&component.next().await.message.subject, "second");
    component.expect_nothing(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn sigterm_during_start_up_drains_and_exits_zero() {
    let lattice = Lattice::start().await;
    let mut down = NatsServer::start();
    let down_url = down.url();
    down.kill();
    // The first link waits for its unreachable server (connect_timeout_ms)
    // while the process is still setting up.
    let mut provider = crate::support::Provider::launch(
        &lattice,
        ProviderOptions {
            config: pairs(&[("cluster_uris", &lattice.nats.url())]),
            links: vec![
                Link::handler(
                    "c",
                    &[
                        ("cluster_uris", &down_url),
                        ("subscriptions", "x"),
                        ("connect_timeout_ms", "3000"),
                    ],
                ),
                Link::handler("d", &[("subscriptions", "y")]),
            ],
            ..ProviderOptions::default()
        },
    );
    provider
        .logs
        .wait_for(0, "the start of set-up", |l| {
            l.contains("Starting capability provider")
        })
        .await;

    provider.send_signal("TERM");
    let status = provider.wait_exit().await;

    assert!(status.success(), "{status:?}");
    assert_eq!(
        provider
            .logs
            .count(|l| l.contains("SIGTERM received, draining")),
        1
    );
    assert_eq!(provider.logs.count(|l| l.contains("all links stopped")), 1);
}

/// How the server is restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Restart {
    /// SIGTERM.
    Stop,
    /// Lame duck mode first (SIGUSR2), as for maintenance.
    LameDuck,
}

// Several threads: the restart blocks the test's own thread while the
// publishing and feeding tasks go on, so that traffic runs during it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_restart_mid_traffic_resumes_publishes_and_deliveries() {
    restart_mid_traffic(Restart::Stop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lame_duck_restart_mid_traffic_resumes_publishes_and_deliveries() {
    restart_mid_traffic(Restart::LameDuck).await;
}

/// Core publishes and deliveries across a server restart (same store):
/// both resume, and every publish made once the provider is healthy again
/// reaches the server. Those answered `Ok` just before the stop may not:
/// `Ok` means written to the connection, and a stopping server drops what
/// it has not read yet (about 1 run in 5 lost one on a loaded machine; the
/// README says so, and `jetstream_publish` is the mode that promises more:
/// see `at_least_once.rs`). Prints what was lost.
async fn restart_mid_traffic(restart: Restart) {
    let lattice = Lattice::start().await;
    let mut data = NatsServer::with(ServerOptions {
        jetstream: true,
        config: match restart {
            Restart::Stop => String::new(),
            Restart::LameDuck => LAME_DUCK_CONFIG.to_string(),
        },
        ..ServerOptions::default()
    });
    // A stream records what the server received, across the restart.
    let js = async_nats::jetstream::new(data.client().await);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "RECEIVED".into(),
        subjects: vec!["out.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    let provider = lattice.provider(&[]).await;
    let mut component = lattice.component("c", Behaviour::default()).await;
    let servers = data.url();
    provider
        .put_link(&Link::consumer(
            "c",
            &[("cluster_uris", &servers), ("publish_timeout_ms", "2000")],
        ))
        .await;
    provider
        .put_link(&Link::handler(
            "c",
            &[("cluster_uris", &servers), ("subscriptions", "in.>")],
        ))
        .await;
    let caller = component.caller(&provider.key).await;

    let ok = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicUsize::new(0));
    // The index of the next publish.
    let next = Arc::new(AtomicUsize::new(0));
    let publishing = {
        let ok = Arc::clone(&ok);
        let stop = Arc::clone(&stop);
        let next = Arc::clone(&next);
        tokio::spawn(async move {
            while stop.load(Ordering::Relaxed) == 0 {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if let Ok(Ok(())) = caller.publish(&message(&format!("out.{i}"), b"x")).await {
                    ok.lock().unwrap().push(i);
                }
            }
            next.load(Ordering::SeqCst)
        })
    };
    // Messages for the handler link, every 5 ms, before, during and after
    // the restart (those sent while the server is down wait in the
    // feeder's client).
    let feeder = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(data.url())
        .await
        .unwrap();
    let feeding = {
        let stop = Arc::clone(&stop);
        let feeder = feeder.clone();
        tokio::spawn(async move {
            let mut sent = 0u32;
            while stop.load(Ordering::Relaxed) == 0 {
                if feeder
                    .publish(format!("in.{sent}"), "x".into())
                    .await
                    .is_ok()
                {
                    sent += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_millis(250)).await;
    let before_restart = next.load(Ordering::SeqCst);
    match restart {
        Restart::Stop => data.restart(),
        Restart::LameDuck => data.lame_duck_restart(),
    }
    let during_restart = next.load(Ordering::SeqCst) - before_restart;
    let unhealthy_seen = provider.logs.count(|l| l.contains("NATS connection lost")) > 0;
    provider.wait_healthy(WAIT).await;
    let resumed_from = next.load(Ordering::SeqCst);
    // Traffic goes on until 20 publishes made after the recovery were
    // answered Ok (or the wait is over: the assertion below then fails).
    let deadline = Instant::now() + WAIT;
    while ok
        .lock()
        .unwrap()
        .iter()
        .filter(|i| **i >= resumed_from)
        .count()
        < 20
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(1, Ordering::Relaxed);
    let sent = feeding.await.unwrap();
    feeder.flush().await.unwrap();
    let attempted = publishing.await.unwrap();
    // Collect deliveries until the last message sent is in (or the wait is
    // over), then what still trickles in.
    let last = format!("in.{}", sent - 1);
    let mut delivered = HashSet::new();
    let deadline = Instant::now() + WAIT;
    while !delivered.contains(&last) && Instant::now() < deadline {
        if let Ok(Some(received)) =
            tokio::time::timeout(Duration::from_millis(200), component.next_opt()).await
        {
            delivered.insert(received.message.subject);
        }
    }
    while let Ok(Some(received)) =
        tokio::time::timeout(Duration::from_millis(300), component.next_opt()).await
    {
        delivered.insert(received.message.subject);
    }

    // What the server received, read back from the stream.
    let stored: HashSet<String> = stream_messages(&js, "RECEIVED")
        .await
        .into_iter()
        .map(|msg| msg.subject.to_string())
        .collect();
    let ok = ok.lock().unwrap().clone();
    let (missing_after, missing_before): (Vec<&usize>, Vec<&usize>) = ok
        .iter()
        .filter(|i| !stored.contains(&format!("out.{i}")))
        .partition(|i| **i >= resumed_from);
    let ok_after = ok.iter().filter(|i| **i >= resumed_from).count();
    let lost_in_core = (0..sent)
        .filter(|i| !delivered.contains(&format!("in.{i}")))
        .count();
    println!(
        "{restart:?} restart: {attempted} publishes attempted ({during_restart} during the \
         restart), {} answered Ok, {} stored, {} answered Ok before the restart but not \
         received; {sent} messages sent to the handler link, {} delivered, {lost_in_core} lost \
         by core NATS",
        ok.len(),
        stored.len(),
        missing_before.len(),
        delivered.len()
    );

    assert!(unhealthy_seen || provider.logs.count(|l| l.contains("NATS connection up")) >= 2);
    if restart == Restart::LameDuck {
        assert!(
            provider
                .logs
                .count(|l| l.contains("NATS server entered lame duck mode"))
                > 0,
            "the provider never saw lame duck mode"
        );
    }
    assert!(
        missing_after.is_empty(),
        "published after the restart, answered Ok, never received: {missing_after:?}"
    );
    assert!(
        ok_after > 10,
        "too few publishes went through after the restart: {ok_after}"
    );
    assert!(
        delivered.contains(&format!("in.{}", sent - 1)),
        "delivery did not resume"
    );
}

#[tokio::test]
async fn cluster_failover_keeps_publish_request_and_delivery_going() {
    let lattice = Lattice::start().await;
    let mut nodes = NatsServer::cluster(3, ServerOptions::default());
    let servers = nodes
        .iter()
        .map(NatsServer::url)
        .collect::<Vec<_>>()
        .join(",");
    let provider = lattice.provider(&[]).await;
    let mut component = lattice.component("c", Behaviour::default()).await;
    provider
        .put_link(&Link::consumer("c", &[("cluster_uris", &servers)]))
        .await;
    provider
        .put_link(&Link::handler(
            "c",
            &[("cluster_uris", &servers), ("subscriptions", "in")],
        ))
        .await;
    let caller = component.caller(&provider.key).await;
    let connected = nodes
        .iter()
        .position(|n| {
            n.connection_names()
                .iter()
                .any(|name| name == "wasmcloud-messaging-nats")
        })
        .expect("the provider is connected to a node");
    let survivor = (connected + 1) % 3;
    let client = nodes[survivor].client().await;
    let answering = echo_responder(&client, "svc").await;
    let mut published = client.subscribe("out").await.unwrap();
    round_trip(&client).await;

    nodes[connected].kill();
    provider.wait_healthy(WAIT).await;
    // Interest moves with the reconnect; retry until the route carries it.
    let mut requests = 0;
    let mut answered = 0;
    let deadline = Instant::now() + WAIT;
    while answered < 20 && Instant::now() < deadline {
        requests += 1;
        if let Ok(Ok(_)) = caller.request("svc", b"ping", 500).await {
            answered += 1;
        }
    }
    let publish = caller
        .publish(&message("out", b"after failover"))
        .await
        .unwrap();
    let mut delivered = 0;
    let deadline = Instant::now() + WAIT;
    while delivered == 0 && Instant::now() < deadline {
        client.publish("in", "after failover".into()).await.unwrap();
        if let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(200), component.next_opt()).await
        {
            delivered += 1;
        }
    }
    answering.abort();
    println!("failover: {answered} of {requests} requests answered after the kill, publish {publish:?}, delivery resumed: {}", delivered > 0);

    assert_eq!(answered, 20);
    assert_eq!(publish, Ok(()));
    assert_eq!(
        &next_message(&mut published).await.unwrap().payload[..],
        b"after failover"
    );
    assert_eq!(delivered, 1);
}
