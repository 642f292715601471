//! Authentication to NATS servers that require it, per link.

use std::time::Duration;

use crate::support::{message, next_message, Behaviour, Lattice, Link, NatsServer};

/// Puts `link` (a consumer link for component "c"), publishes through it and
/// checks that `subscriber` on the protected server receives the message.
async fn assert_publishes_through(lattice: &Lattice, link: Link, subscriber: async_nats::Client) {
    let provider = lattice.provider(&[]).await;
    let component = lattice.component("c", Behaviour::default()).await;
    let line = provider.put_link(&link).await;
    assert!(line.contains("link ready"), "{line}");
    let mut sub = subscriber.subscribe("secured").await.unwrap();
    subscriber.flush().await.unwrap();

    let result = component
        .caller(&provider)
        .await
        .publish(&message("secured", b"hi"))
        .await
        .unwrap();

    assert_eq!(result, Ok(()));
    assert_eq!(&next_message(&mut sub).await.unwrap().payload[..], b"hi");
}

#[tokio::test]
async fn username_and_password_from_link_secrets_authenticate() {
    let lattice = Lattice::start().await;
    let data = NatsServer::with_config("authorization { user: alice, password: s3cret-pw }");
    let link = Link::consumer("c", &[("cluster_uris", &data.url()), ("username", "alice")])
        .with_secret("password", "s3cret-pw");
    let subscriber =
        async_nats::ConnectOptions::with_user_and_password("alice".into(), "s3cret-pw".into())
            .connect(data.url())
            .await
            .unwrap();

    assert_publishes_through(&lattice, link, subscriber).await;
}

#[tokio::test]
async fn token_authenticates() {
    let lattice = Lattice::start().await;
    let data = NatsServer::with_config("authorization { token: t0ken-value }");
    let link =
        Link::consumer("c", &[("cluster_uris", &data.url())]).with_secret("token", "t0ken-value");
    let subscriber = async_nats::ConnectOptions::with_token("t0ken-value".into())
        .connect(data.url())
        .await
        .unwrap();

    assert_publishes_through(&lattice, link, subscriber).await;
}

#[tokio::test]
async fn nkey_seed_authenticates() {
    let lattice = Lattice::start().await;
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let data = NatsServer::with_config(&format!(
        "authorization {{ users = [ {{ nkey: {} }} ] }}",
        user.public_key()
    ));
    let link =
        Link::consumer("c", &[("cluster_uris", &data.url())]).with_secret("nkey_seed", &seed);
    let subscriber = async_nats::ConnectOptions::with_nkey(seed.clone())
        .connect(data.url())
        .await
        .unwrap();

    assert_publishes_through(&lattice, link, subscriber).await;
}

#[tokio::test]
async fn wrong_password_fails_that_link_only_and_is_never_logged() {
    let lattice = Lattice::start().await;
    let data = NatsServer::with_config("authorization { user: alice, password: right-pw }");
    let provider = lattice.provider(&[]).await;
    let component = lattice.component("c", Behaviour::default()).await;
    let bad = Link::consumer(
        "c",
        &[
            ("cluster_uris", &data.url()),
            ("username", "alice"),
            ("connect_timeout_ms", "300"),
            ("publish_timeout_ms", "300"),
        ],
    )
    .with_secret("password", "wrong-pw")
    .named("bad");
    provider.put_link(&bad).await;
    provider.put_link(&Link::consumer("c", &[])).await;

    let (healthy, health) = provider.health().await.unwrap();
    let mut caller = component.caller(&provider).await;
    caller.link_name = "bad".into();
    let bad_publish = caller.publish(&message("x", b"x")).await.unwrap();
    caller.link_name = "default".into();
    let good_publish = caller.publish(&message("x", b"x")).await.unwrap();

    assert!(!healthy);
    assert!(
        health.contains("consumer link c/bad") && !health.contains("c/default:"),
        "{health}"
    );
    assert!(bad_publish.is_err());
    assert_eq!(good_publish, Ok(()));
    provider
        .logs
        .wait_for(0, "reporting the auth failure", |l| {
            l.to_lowercase().contains("authorization")
        })
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        provider.logs.count(|l| l.contains("wrong-pw")),
        0,
        "password logged"
    );
}
