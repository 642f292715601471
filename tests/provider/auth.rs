//! Authentication to NATS servers that require it, per link: user/password,
//! token, nkey, JWT + seed and `.creds` files against a server in operator
//! mode (with a user revoked while a durable link delivers), and TLS with a
//! CA and client certificates made by the test.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::credentials::{
    authenticated_connections, CertFiles, Operator, ServerConnection, TestPki,
};
use crate::support::{
    create_stream, message, next_message, publish_stored, round_trip, Behaviour, Lattice, Link,
    NatsServer, ServerExt as _, ServerOptions, WAIT,
};

/// Name the provider's connections carry in the server's connection list.
const PROVIDER_CONNECTION: &str = "wasmcloud-messaging-nats";

/// Subscribes and waits until the server has taken the subscription.
async fn subscribe_confirmed(client: &async_nats::Client, subject: &str) -> async_nats::Subscriber {
    let sub = client.subscribe(subject.to_string()).await.unwrap();
    round_trip(client).await;
    sub
}

/// Puts `link` (a consumer link for component "c"), publishes through it and
/// checks that `subscriber` on the protected server receives the message.
async fn assert_publishes_through(lattice: &Lattice, link: Link, subscriber: async_nats::Client) {
    let provider = lattice.provider(&[]).await;
    let component = lattice.component("c", Behaviour::default()).await;
    let line = provider.put_link(&link).await;
    assert!(line.contains("link ready"), "{line}");
    let mut sub = subscribe_confirmed(&subscriber, "secured").await;

    let result = component
        .caller(&provider.key)
        .await
        .publish(&message("secured", b"hi"))
        .await
        .unwrap();

    assert_eq!(result, Ok(()), "{}", provider.logs.lines().join("\n"));
    assert_eq!(&next_message(&mut sub).await.unwrap().payload[..], b"hi");
}

/// Puts `bad` as link "c/bad" (with short timeouts) next to a link
/// "c/default" with good settings on the same provider, and checks that
/// only the bad one fails: it cannot publish, health names it (and not the
/// good one), the good one publishes, the provider logs a line satisfying
/// `reported` (the reason), and no line of the logs holds any of `secrets`.
async fn assert_fails_that_link_only(
    bad: Link,
    secrets: &[&str],
    reason: &str,
    reported: impl Fn(&str) -> bool,
) {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let component = lattice.component("c", Behaviour::default()).await;
    let mut bad = bad.named("bad");
    for (key, value) in [("connect_timeout_ms", "300"), ("publish_timeout_ms", "300")] {
        bad.config.insert(key.into(), value.into());
    }
    provider.put_link(&bad).await;
    let good = provider.put_link(&Link::consumer("c", &[])).await;
    assert!(good.contains("link ready"), "{good}");

    let mut caller = component.caller(&provider.key).await;
    let good_publish = caller.publish(&message("x", b"x")).await.unwrap();
    caller.link_name = "bad".into();
    let bad_publish = caller.publish(&message("x", b"x")).await.unwrap();
    // The good link connects in the background: wait until health no
    // longer counts it as down.
    let (healthy, health) = provider
        .wait_for_health("the good link up", WAIT, |_, h| !h.contains("c/default:"))
        .await;

    assert!(!healthy, "{health}");
    assert!(
        health.contains("consumer link c/bad") && !health.contains("c/default:"),
        "{health}"
    );
    assert!(bad_publish.is_err(), "{bad_publish:?}");
    assert_eq!(good_publish, Ok(()));
    provider.logs.wait_for(0, reason, |l| reported(l)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_no_secret_logged(&provider.logs.lines(), secrets);
}

/// No log line holds any line of any secret (a JWT, a seed, a password, the
/// body of a key PEM); PEM armour lines are not secret.
fn assert_no_secret_logged(logs: &[String], secrets: &[&str]) {
    for secret in secrets {
        for part in secret
            .lines()
            .map(str::trim)
            .filter(|p| !p.is_empty() && !p.starts_with("-----"))
        {
            let leaks: Vec<&String> = logs.iter().filter(|l| l.contains(part)).collect();
            assert!(leaks.is_empty(), "secret {part:?} logged in:\n{leaks:#?}");
        }
    }
}

/// An error line about the server on `port` (whatever it says).
fn names_server_error(port: u16) -> impl Fn(&str) -> bool {
    move |line: &str| line.contains("ERROR") && line.contains(&format!("127.0.0.1:{port}"))
}

/// A line about the failure to authenticate.
fn names_authorization(line: &str) -> bool {
    line.to_lowercase().contains("authorization")
}

/// An error line about TLS or a certificate, for the server on `port`.
fn names_tls(port: u16) -> impl Fn(&str) -> bool {
    move |line: &str| {
        // The server URL's scheme ("tls://") does not count.
        let lower = line.to_lowercase().replace("tls://", "");
        lower.contains("error")
            && (lower.contains("tls") || lower.contains("certificate"))
            && line.contains(&format!("127.0.0.1:{port}"))
    }
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
async fn username_and_password_in_the_server_url_authenticate() {
    let lattice = Lattice::start().await;
    let data = NatsServer::with_config("authorization { user: alice, password: \"p@ss\" }");
    let url = format!("nats://alice:p%40ss@127.0.0.1:{}", data.port());
    let link = Link::consumer("c", &[("cluster_uris", &url)]);
    let subscriber = data.client_as("alice", "p@ss").await;

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
    let data = NatsServer::with_config("authorization { user: alice, password: right-pw }");
    let bad = Link::consumer("c", &[("cluster_uris", &data.url()), ("username", "alice")])
        .with_secret("password", "wrong-pw");

    assert_fails_that_link_only(
        bad,
        &["wrong-pw"],
        "reporting the auth failure",
        names_authorization,
    )
    .await;
}

#[tokio::test]
async fn wrong_token_fails_that_link_only_and_is_never_logged() {
    let data = NatsServer::with_config("authorization { token: right-t0ken-value }");
    let bad = Link::consumer("c", &[("cluster_uris", &data.url())])
        .with_secret("token", "wrong-t0ken-value");

    assert_fails_that_link_only(
        bad,
        &["wrong-t0ken-value"],
        "reporting the auth failure",
        names_authorization,
    )
    .await;
}

#[tokio::test]
async fn wrong_nkey_seed_fails_that_link_only_and_is_never_logged() {
    let allowed = nkeys::KeyPair::new_user();
    let data = NatsServer::with_config(&format!(
        "authorization {{ users = [ {{ nkey: {} }} ] }}",
        allowed.public_key()
    ));
    let other_seed = nkeys::KeyPair::new_user().seed().unwrap();
    let bad =
        Link::consumer("c", &[("cluster_uris", &data.url())]).with_secret("nkey_seed", &other_seed);

    assert_fails_that_link_only(
        bad,
        &[&other_seed],
        "reporting the auth failure",
        names_authorization,
    )
    .await;
}

#[tokio::test]
async fn jwt_and_seed_authenticate_in_operator_mode() {
    let lattice = Lattice::start().await;
    let operator = Operator::new("op");
    let data = NatsServer::with_config(&operator.server_config());
    let user = operator.user("provider");
    let link = Link::consumer("c", &[("cluster_uris", &data.url())])
        .with_secret("client_jwt", &user.jwt)
        .with_secret("client_seed", &user.seed());
    let subscriber = operator.user("watcher").client(&data).await;

    assert_publishes_through(&lattice, link, subscriber).await;
}

#[tokio::test]
async fn jwt_of_another_operator_fails_that_link_only_and_is_never_logged() {
    let operator = Operator::new("op");
    let data = NatsServer::with_config(&operator.server_config());
    let stranger = Operator::new("other-op").user("stranger");
    let seed = stranger.seed();
    let bad = Link::consumer("c", &[("cluster_uris", &data.url())])
        .with_secret("client_jwt", &stranger.jwt)
        .with_secret("client_seed", &seed);

    assert_fails_that_link_only(
        bad,
        &[&stranger.jwt, &seed],
        "reporting the auth failure",
        names_authorization,
    )
    .await;
}

#[tokio::test]
async fn credentials_file_authenticates() {
    let lattice = Lattice::start().await;
    let operator = Operator::new("op");
    let data = NatsServer::with_config(&operator.server_config());
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("provider.creds");
    operator.user("provider").write_creds(&creds);
    let link = Link::consumer(
        "c",
        &[
            ("cluster_uris", &data.url()),
            ("credentials_file", creds.to_str().unwrap()),
        ],
    );
    let subscriber = operator.user("watcher").client(&data).await;

    assert_publishes_through(&lattice, link, subscriber).await;
}

#[tokio::test]
async fn credentials_file_of_another_operator_fails_that_link_only_and_is_never_logged() {
    let operator = Operator::new("op");
    let data = NatsServer::with_config(&operator.server_config());
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("stranger.creds");
    let stranger = Operator::new("other-op").user("stranger");
    stranger.write_creds(&creds);
    let bad = Link::consumer(
        "c",
        &[
            ("cluster_uris", &data.url()),
            ("credentials_file", creds.to_str().unwrap()),
        ],
    );

    assert_fails_that_link_only(
        bad,
        &[&stranger.jwt, &stranger.seed()],
        "reporting the auth failure",
        names_authorization,
    )
    .await;
}

/// Waits until the server lists an authenticated provider connection (one
/// still in its handshake is listed without a user), and returns it.
async fn provider_connection(data: &NatsServer) -> ServerConnection {
    let deadline = Instant::now() + WAIT;
    loop {
        let connections = authenticated_connections(data);
        if let Some(c) = connections
            .iter()
            .find(|c| c.name == PROVIDER_CONNECTION && !c.authorized_user.is_empty())
        {
            return c.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no provider connection on the server: {connections:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn rotated_credentials_file_is_used_at_the_next_reconnect() {
    let lattice = Lattice::start().await;
    let operator = Operator::new("op");
    let mut data = NatsServer::with_config(&operator.server_config());
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("provider.creds");
    let (user_a, user_b) = (operator.user("a"), operator.user("b"));
    user_a.write_creds(&creds);
    let provider = lattice.provider(&[]).await;
    let component = lattice.component("c", Behaviour::default()).await;
    let link = Link::consumer(
        "c",
        &[
            ("cluster_uris", &data.url()),
            ("credentials_file", creds.to_str().unwrap()),
        ],
    );
    let line = provider.put_link(&link).await;
    assert!(line.contains("link ready"), "{line}");
    let caller = component.caller(&provider.key).await;
    let watcher = operator.user("watcher");

    let before = {
        let subscriber = watcher.client(&data).await;
        let mut sub = subscribe_confirmed(&subscriber, "secured").await;
        let published = caller
            .publish(&message("secured", b"before"))
            .await
            .unwrap();
        assert_eq!(published, Ok(()));
        assert_eq!(
            &next_message(&mut sub).await.unwrap().payload[..],
            b"before"
        );
        provider_connection(&data).await
    };
    user_b.write_creds(&creds);
    data.restart();
    let after = provider_connection(&data).await;
    let subscriber = watcher.client(&data).await;
    let mut sub = subscribe_confirmed(&subscriber, "secured").await;
    let published = caller.publish(&message("secured", b"after")).await.unwrap();

    assert_eq!(before.authorized_user, user_a.public_key());
    assert_eq!(
        after.authorized_user,
        user_b.public_key(),
        "the rotated file was not used"
    );
    assert_eq!(after.account, operator.account.public_key());
    assert_eq!(published, Ok(()));
    assert_eq!(&next_message(&mut sub).await.unwrap().payload[..], b"after");
    assert_no_secret_logged(
        &provider.logs.lines(),
        &[&user_a.jwt, &user_a.seed(), &user_b.jwt, &user_b.seed()],
    );
}

fn tls_url(data: &NatsServer) -> String {
    format!("tls://127.0.0.1:{}", data.port())
}

#[tokio::test]
async fn tls_ca_from_link_config_verifies_the_server() {
    let lattice = Lattice::start().await;
    let pki = TestPki::new("test");
    let data = NatsServer::with_config(&pki.server_config(false));
    let link = Link::consumer(
        "c",
        &[("cluster_uris", &tls_url(&data)), ("tls_ca", &pki.ca_pem)],
    );
    let subscriber = pki.client(&data).await;

    assert_publishes_through(&lattice, link, subscriber).await;
}

#[tokio::test]
async fn tls_ca_file_from_link_config_verifies_the_server() {
    let lattice = Lattice::start().await;
    let pki = TestPki::new("test");
    let data = NatsServer::with_config(&pki.server_config(false));
    let link = Link::consumer(
        "c",
        &[
            ("cluster_uris", &tls_url(&data)),
            ("tls_ca_file", pki.ca_file.to_str().unwrap()),
        ],
    );
    let subscriber = pki.client(&data).await;

    assert_publishes_through(&lattice, link, subscriber).await;
}

#[tokio::test]
async fn tls_server_of_another_ca_fails_that_link_only_naming_the_certificate() {
    let pki = TestPki::new("test");
    let data = NatsServer::with_config(&pki.server_config(false));
    let other = TestPki::new("other");
    let bad = Link::consumer(
        "c",
        &[("cluster_uris", &tls_url(&data)), ("tls_ca", &other.ca_pem)],
    );

    assert_fails_that_link_only(
        bad,
        &[],
        "reporting the TLS failure",
        names_tls(data.port()),
    )
    .await;
}

#[tokio::test]
async fn client_certificate_authenticates_when_the_server_requires_one() {
    let lattice = Lattice::start().await;
    let pki = TestPki::new("test");
    let data = NatsServer::with_config(&pki.server_config(true));
    let link = Link::consumer(
        "c",
        &[
            ("cluster_uris", &tls_url(&data)),
            ("tls_ca_file", pki.ca_file.to_str().unwrap()),
            ("tls_cert", &pki.client.cert_pem),
        ],
    )
    .with_secret("tls_key", &pki.client.key_pem);
    let subscriber = pki.client(&data).await;

    assert_publishes_through(&lattice, link, subscriber).await;
}

#[tokio::test]
async fn client_certificate_files_authenticate_when_the_server_requires_one() {
    let lattice = Lattice::start().await;
    let pki = TestPki::new("test");
    let data = NatsServer::with_config(&pki.server_config(true));
    let link = Link::consumer(
        "c",
        &[
            ("cluster_uris", &tls_url(&data)),
            ("tls_ca", &pki.ca_pem),
            ("tls_cert_file", pki.client.cert_file.to_str().unwrap()),
            ("tls_key_file", pki.client.key_file.to_str().unwrap()),
        ],
    );
    let subscriber = pki.client(&data).await;

    assert_publishes_through(&lattice, link, subscriber).await;
}

/// Writes `files` (a certificate and its key) where a link's
/// `tls_cert_file` and `tls_key_file` point.
fn install_certificate(files: &CertFiles, cert: &Path, key: &Path) {
    std::fs::write(cert, &files.cert_pem).expect("write certificate");
    std::fs::write(key, &files.key_pem).expect("write key");
}

#[tokio::test]
async fn rotated_client_certificate_files_are_used_at_the_next_reconnect() {
    let lattice = Lattice::start().await;
    let pki = TestPki::new("rotation");
    let (a, b) = (
        pki.issue_client("a", "client-a.test"),
        pki.issue_client("b", "client-b.test"),
    );
    // The server takes a client certificate's DNS name as the user.
    let mut data = NatsServer::with_config(&format!(
        "{}authorization {{ users = [ {{ user: \"client-a.test\" }}, {{ user: \"client-b.test\" }}, \
         {{ user: \"client.test\" }} ] }}\n",
        pki.server_config(true)
            .replace("verify: true", "verify_and_map: true")
    ));
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.pem"), dir.path().join("tls-key.pem"));
    install_certificate(&a, &cert, &key);
    let provider = lattice.provider(&[]).await;
    let component = lattice.component("c", Behaviour::default()).await;
    let link = Link::consumer(
        "c",
        &[
            ("cluster_uris", &tls_url(&data)),
            ("tls_ca_file", pki.ca_file.to_str().unwrap()),
            ("tls_cert_file", cert.to_str().unwrap()),
            ("tls_key_file", key.to_str().unwrap()),
        ],
    );
    let line = provider.put_link(&link).await;
    assert!(line.contains("link ready"), "{line}");
    let before = provider_connection(&data).await;

    install_certificate(&b, &cert, &key);
    data.restart();
    let after = provider_connection(&data).await;
    let subscriber = pki.client(&data).await;
    let mut sub = subscribe_confirmed(&subscriber, "secured").await;
    let caller = component.caller(&provider.key).await;
    let published = caller.publish(&message("secured", b"after")).await.unwrap();

    assert_eq!(before.authorized_user, "client-a.test");
    assert_eq!(
        after.authorized_user, "client-b.test",
        "the rotated files were not used"
    );
    assert_eq!(published, Ok(()));
    assert_eq!(&next_message(&mut sub).await.unwrap().payload[..], b"after");
    assert_no_secret_logged(&provider.logs.lines(), &[&a.key_pem, &b.key_pem]);
}

#[tokio::test]
async fn a_rotated_ca_file_is_trusted_at_the_next_reconnect() {
    let lattice = Lattice::start().await;
    let (old, new) = (TestPki::new("old"), TestPki::new("new"));
    let mut data = NatsServer::with_config(&old.server_config(false));
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &old.ca_pem).unwrap();
    let provider = lattice.provider(&[]).await;
    let component = lattice.component("c", Behaviour::default()).await;
    let link = Link::consumer(
        "c",
        &[
            ("cluster_uris", &tls_url(&data)),
            ("tls_ca_file", ca.to_str().unwrap()),
        ],
    );
    let line = provider.put_link(&link).await;
    assert!(line.contains("link ready"), "{line}");
    provider.wait_healthy(WAIT).await;

    // The server restarts with a certificate of a new CA, which the
    // link's CA file now holds too.
    std::fs::write(&old.server.cert_file, &new.server.cert_pem).unwrap();
    std::fs::write(&old.server.key_file, &new.server.key_pem).unwrap();
    std::fs::write(&ca, &new.ca_pem).unwrap();
    data.restart();
    let healthy = provider.wait_healthy(WAIT).await;
    let subscriber = new.client(&data).await;
    let mut sub = subscribe_confirmed(&subscriber, "secured").await;
    let caller = component.caller(&provider.key).await;
    let published = caller.publish(&message("secured", b"after")).await.unwrap();

    assert!(healthy.contains("all NATS connections up"), "{healthy}");
    assert_eq!(published, Ok(()));
    assert_eq!(&next_message(&mut sub).await.unwrap().payload[..], b"after");
}

#[tokio::test]
async fn missing_client_certificate_fails_that_link_only() {
    let pki = TestPki::new("test");
    let data = NatsServer::with_config(&pki.server_config(true));
    let bad = Link::consumer(
        "c",
        &[("cluster_uris", &tls_url(&data)), ("tls_ca", &pki.ca_pem)],
    );

    assert_fails_that_link_only(
        bad,
        &[],
        "reporting the connection failure",
        names_server_error(data.port()),
    )
    .await;
}

#[tokio::test]
async fn client_certificate_of_another_ca_fails_that_link_only_and_key_is_never_logged() {
    let pki = TestPki::new("test");
    let data = NatsServer::with_config(&pki.server_config(true));
    let other = TestPki::new("other");
    let bad = Link::consumer(
        "c",
        &[
            ("cluster_uris", &tls_url(&data)),
            ("tls_ca", &pki.ca_pem),
            ("tls_cert", &other.client.cert_pem),
        ],
    )
    .with_secret("tls_key", &other.client.key_pem);

    assert_fails_that_link_only(
        bad,
        &[&other.client.key_pem],
        "reporting the connection failure",
        names_server_error(data.port()),
    )
    .await;
}

#[tokio::test]
async fn a_user_revoked_while_a_durable_link_delivers_is_replaced_by_the_rotated_file_and_nothing_is_lost(
) {
    const COUNT: usize = 300;
    let lattice = Lattice::start().await;
    let operator = Operator::new("op");
    let mut data = NatsServer::with(ServerOptions {
        jetstream: true,
        config: operator.server_config(),
        ..ServerOptions::default()
    });
    let admin = operator.user("admin").client(&data).await;
    let js = async_nats::jetstream::new(admin);
    create_stream(&js, "WORK", &["work.>"]).await;
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("provider.creds");
    let (revoked, rotated) = (operator.user("revoked"), operator.user("rotated"));
    revoked.write_creds(&creds);
    let provider = lattice.provider(&[]).await;
    let mut component = lattice
        .component("worker", Behaviour::slow(Duration::from_millis(10)))
        .await;
    let link = Link::handler(
        "worker",
        &[
            ("cluster_uris", &data.url()),
            ("credentials_file", creds.to_str().unwrap()),
            ("stream", "WORK"),
            ("max_in_flight", "4"),
            ("ack_wait_ms", "2000"),
        ],
    );
    provider.put_link(&link).await;
    publish_stored(&js, "work.item", 0..COUNT).await;
    let mut seen: BTreeMap<bytes::Bytes, usize> = BTreeMap::new();
    for _ in 0..COUNT / 4 {
        *seen.entry(component.next().await.message.body).or_default() += 1;
    }
    let before = provider_connection(&data).await;

    // The file is rotated, then the account revokes the old user: the
    // server drops its connection at once (no restart).
    rotated.write_creds(&creds);
    data.reload_with_config(&operator.server_config_revoking(&revoked));

    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < COUNT {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(got)) = tokio::time::timeout(left, component.next_opt()).await else {
            panic!("{} of {COUNT} handled after the revocation", seen.len());
        };
        *seen.entry(got.message.body).or_default() += 1;
    }
    let after = provider_connection(&data).await;
    assert_eq!(before.authorized_user, revoked.public_key());
    assert_eq!(after.authorized_user, rotated.public_key());
    // The server closed the provider's connection for the revocation.
    let closed = data.monitor("/connz?state=closed&auth=1");
    let revoked_closed = closed["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["name"] == PROVIDER_CONNECTION
                && c["authorized_user"] == revoked.public_key().as_str()
                && c["reason"] == "Credentials Revoked"
        })
        .count();
    assert_eq!(revoked_closed, 1, "{closed}");
    let expected: Vec<bytes::Bytes> = (0..COUNT).map(|i| i.to_string().into()).collect();
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>().len(),
        expected.len()
    );
    assert!(expected.iter().all(|body| seen.contains_key(body)));
    let twice: usize = seen.values().map(|n| n - 1).sum();
    println!("all {COUNT} handled; {twice} handled twice across the revocation");
    // Only what was in flight when the connection went can come twice.
    assert!(twice <= 8, "{twice} handled twice");
    assert_no_secret_logged(
        &provider.logs.lines(),
        &[&revoked.jwt, &revoked.seed(), &rotated.jwt, &rotated.seed()],
    );
}
