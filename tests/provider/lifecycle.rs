//! Health, shutdown and signals.

use std::time::Duration;

use crate::support::{Behaviour, Lattice, Link, NatsServer, ServerExt as _, WAIT};

#[tokio::test]
async fn shutdown_request_exits_zero() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    provider
        .put_link(&Link::handler("c", &[("subscriptions", "x")]))
        .await;

    let status = provider.shutdown().await;

    assert!(status.success(), "{status:?}");
}

/// The SDK's command loop, polled after it answered the host, reported each
/// of its closed command channels as an error; one process seldom shows
/// it, so three are shut down.
#[tokio::test]
async fn shutdown_is_answered_and_logs_no_error() {
    let lattice = Lattice::start().await;
    for _ in 0..3 {
        let mut provider = lattice.provider(&[]).await;
        provider
            .put_link(&Link::handler("c", &[("subscriptions", "x")]))
            .await;
        provider.put_link(&Link::consumer("c", &[])).await;

        let answer = provider.request_shutdown().await;
        let status = provider.wait_exit().await;
        provider.logs.wait_closed().await;

        assert_eq!(answer.as_deref(), Some("shutting down"));
        assert!(status.success(), "{status:?}");
        let errors: Vec<_> = provider
            .logs
            .lines()
            .into_iter()
            .filter(|l| l.contains("ERROR"))
            .collect();
        assert!(errors.is_empty(), "errors at shutdown: {errors:#?}");
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_deliveries_and_exits_zero() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let behaviour = Behaviour::slow(Duration::from_millis(300));
    let mut component = lattice.component("c", behaviour).await;
    provider
        .put_link(&Link::handler("c", &[("subscriptions", "slow")]))
        .await;
    lattice
        .client
        .publish("slow", "in flight".into())
        .await
        .unwrap();
    while component.peak_in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let logs = provider.logs.clone();
    let status = provider.signal("TERM").await;

    assert!(status.success(), "{status:?}");
    assert_eq!(&component.next().await.message.body[..], b"in flight");
    assert_eq!(
        logs.count(|l| l.contains("handler link stopped") && l.contains("delivered 1,")),
        1,
        "the in-flight delivery was not completed and counted"
    );
    assert_eq!(logs.count(|l| l.contains("all links stopped")), 1);
}

#[tokio::test]
async fn health_is_unhealthy_while_a_link_connection_is_down() {
    let lattice = Lattice::start().await;
    let mut data = NatsServer::start();
    let provider = lattice.provider(&[]).await;
    provider
        .put_link(&Link::consumer("c", &[("cluster_uris", &data.url())]))
        .await;
    // A consumer link is taken before its connection is up.
    provider.wait_healthy(WAIT).await;

    data.stop();
    let (healthy, message) = provider
        .wait_for_health("the connection down", WAIT, |healthy, _| !healthy)
        .await;

    assert!(!healthy);
    assert!(message.contains("consumer link c/default"), "{message}");
    assert!(message.contains(&data.url()), "{message}");
}

#[tokio::test]
async fn link_to_a_server_that_is_down_is_kept_and_works_once_it_is_up() {
    let lattice = Lattice::start().await;
    let mut data = NatsServer::start();
    data.stop();
    let provider = lattice.provider(&[]).await;
    let mut component = lattice.component("c", Behaviour::default()).await;
    provider
        .put_link(&Link::handler(
            "c",
            &[
                ("cluster_uris", &data.url()),
                ("subscriptions", "later"),
                ("connect_timeout_ms", "200"),
            ],
        ))
        .await;
    assert!(!provider.health().await.unwrap().0);

    data.restart();
    let client = data.client().await;
    let mut delivered = None;
    for _ in 0..50 {
        client.publish("later", "hello".into()).await.unwrap();
        client.flush().await.unwrap();
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(200), component.next()).await {
            delivered = Some(r);
            break;
        }
    }

    assert_eq!(
        delivered.map(|r| r.message.subject).as_deref(),
        Some("later")
    );
}

/// Connections the provider holds open to `server`.
fn provider_connections(server: &NatsServer) -> usize {
    server
        .connection_names()
        .iter()
        .filter(|name| name.as_str() == "wasmcloud-messaging-nats")
        .count()
}

#[tokio::test]
async fn links_with_equal_settings_share_a_connection_closed_with_the_last_link() {
    let lattice = Lattice::start().await;
    let data = NatsServer::start();
    let provider = lattice.provider(&[]).await;
    let handler = Link::handler(
        "c",
        &[("cluster_uris", &data.url()), ("subscriptions", "s")],
    );
    let consumer = Link::consumer("c", &[("cluster_uris", &data.url())]);
    provider.put_link(&handler).await;
    provider.put_link(&consumer).await;
    assert_eq!(provider_connections(&data), 1);

    provider.delete_link(&handler).await;
    assert_eq!(provider_connections(&data), 1);

    provider.delete_link(&consumer).await;
    let mut open = provider_connections(&data);
    for _ in 0..50 {
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        open = provider_connections(&data);
    }
    assert_eq!(open, 0);
}

#[tokio::test]
async fn provider_config_update_applies_to_links_put_afterwards() {
    let lattice = Lattice::start().await;
    let data = NatsServer::start();
    let provider = lattice.provider(&[]).await;

    provider
        .update_config(&[("cluster_uris", &data.url())])
        .await;
    provider.put_link(&Link::consumer("c", &[])).await;

    assert_eq!(provider_connections(&data), 1);
}

/// `wash link put` again with other config: the host replaces the link in
/// place and sends the provider a put for the same link (the SDK on its
/// own would ignore it as a duplicate).
#[tokio::test]
async fn a_link_put_again_with_new_config_replaces_the_running_link() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let mut component = lattice.component("c", Behaviour::default()).await;
    provider
        .put_link(&Link::handler("c", &[("subscriptions", "first")]))
        .await;

    let line = provider
        .put_link(&Link::handler("c", &[("subscriptions", "second")]))
        .await;
    lattice
        .client
        .publish("second", "new".into())
        .await
        .unwrap();
    let delivered = component.next().await;

    assert!(line.contains(r#"subscriptions="second""#), "{line}");
    assert_eq!(delivered.message.subject, "second");
}

#[tokio::test]
async fn a_link_put_again_with_the_same_config_keeps_the_running_link() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let link = Link::handler("c", &[("subscriptions", "same")]);
    provider.put_link(&link).await;
    let from = provider.logs.line_count();

    provider.send_link_put(&link).await;
    provider
        .logs
        .wait_for(from, "the put being handled", |l| {
            l.contains("kept as it runs")
        })
        .await;

    assert_eq!(
        provider
            .logs
            .count(|l| l.contains("replaced handler link draining")),
        0,
        "an unchanged link was restarted"
    );
}
