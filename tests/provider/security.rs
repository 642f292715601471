//! What a component may and may not do to the connection it shares and to
//! the lattice, and what the provider never prints.

use std::collections::HashMap;
use std::process::Child;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::StreamExt as _;
use wasmcloud_provider_sdk::core::logging::Level;
use wasmcloud_provider_sdk::core::secrets::SecretValue;

use crate::support::{
    echo_responder, message, next_message, pairs, spawn_provider, Behaviour, BrokerMessage,
    ConsumerSetup, Lattice, Link, Logs, NatsServer, ProviderOptions, WAIT,
};

/// The id of the provider's one connection to `server`; panics unless there
/// is exactly one.
fn provider_connection_id(server: &NatsServer) -> u64 {
    let connections = server.connections();
    let ids: Vec<u64> = connections
        .iter()
        .filter(|c| c["name"] == "wasmcloud-messaging-nats")
        .filter_map(|c| c["cid"].as_u64())
        .collect();
    assert_eq!(ids.len(), 1, "provider connections: {connections:?}");
    ids[0]
}

#[tokio::test]
async fn a_component_sending_bad_subjects_and_headers_harms_no_other_component() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let a = lattice.component("a", Behaviour::default()).await;
    let b = lattice.component("b", Behaviour::default()).await;
    provider.put_link(&Link::consumer("a", &[])).await;
    provider.put_link(&Link::consumer("b", &[])).await;
    let _responder = echo_responder(&lattice.client, "svc.echo").await;
    let connection_before = provider_connection_id(&lattice.nats);
    let caller_b = b.caller(&provider.key).await;
    let requests_of_b = tokio::spawn(async move {
        let mut answered = 0;
        for i in 0..100 {
            let body = i.to_string();
            if let Ok(Ok(reply)) = caller_b.request("svc.echo", body.as_bytes(), 2000).await {
                answered += usize::from(reply.body == body.as_bytes());
            }
        }
        answered
    });

    let mut caller_a = a.caller(&provider.key).await;
    let long = format!("a.{}", "x".repeat(5000));
    let mut errors = Vec::new();
    for _ in 0..5 {
        errors.push(caller_a.publish_error(&message(&long, b"x")).await);
        errors.push(caller_a.request_error(&long, b"x", 500).await);
        errors.push(
            caller_a
                .publish_error(&BrokerMessage {
                    reply_to: Some(long.clone()),
                    ..message("ok.subject", b"x")
                })
                .await,
        );
        errors.push(
            caller_a
                .publish_error(&message("wasmbus.ctl.v1.forged", b"x"))
                .await,
        );
        caller_a.tracestate = Some("a\rX-Injected: 1".into());
        errors.push(caller_a.publish_error(&message("ok.subject", b"x")).await);
        caller_a.tracestate = None;
    }

    assert_eq!(requests_of_b.await.unwrap(), 100, "B lost requests");
    assert!(
        errors[0].contains("longer than the limit of 1024"),
        "{}",
        errors[0]
    );
    assert!(errors[1].contains("longer than the limit"), "{}", errors[1]);
    assert!(errors[2].contains("reply-to"), "{}", errors[2]);
    assert!(errors[3].contains("publish_deny"), "{}", errors[3]);
    assert!(errors[4].contains("tracestate"), "{}", errors[4]);
    assert_eq!(provider_connection_id(&lattice.nats), connection_before);
    assert_eq!(
        provider.logs.count(|l| l.contains("NATS connection lost")),
        0,
        "the shared connection dropped"
    );
}

#[tokio::test]
async fn subject_of_the_maximum_length_is_published() {
    let setup = ConsumerSetup::new(&[]).await;
    let subject = format!("a.{}", "x".repeat(1022));
    let mut sub = setup.subscribe(&subject).await;

    let result = setup
        .caller
        .publish(&message(&subject, b"hi"))
        .await
        .unwrap();

    assert_eq!(result, Ok(()));
    assert_eq!(
        next_message(&mut sub).await.unwrap().subject.as_str(),
        subject
    );
}

#[tokio::test]
async fn lattice_subjects_are_refused_by_default_and_never_reach_the_server() {
    let setup = ConsumerSetup::new(&[]).await;
    let mut control = setup.subscribe("wasmbus.ctl.>").await;
    let mut wrpc = setup.subscribe("default.other.wrpc.>").await;

    let publish = setup
        .caller
        .publish_error(&message("wasmbus.ctl.v1.default.host.stop", b"{}"))
        .await;
    let invoke = setup
        .caller
        .request_error("default.other.wrpc.0.0.1.x", b"", 500)
        .await;
    let system = setup
        .caller
        .request_error("$SYS.REQ.SERVER.PING", b"", 500)
        .await;
    let reply_to = setup
        .caller
        .publish_error(&BrokerMessage {
            reply_to: Some("wasmbus.ctl.v1.default.host.stop".into()),
            ..message("innocent", b"")
        })
        .await;

    for err in [&publish, &invoke, &system, &reply_to] {
        assert!(
            err.contains("refused by this link") && err.contains("publish_deny"),
            "{err}"
        );
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), control.next())
            .await
            .is_err(),
        "a control message reached the server"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), wrpc.next())
            .await
            .is_err(),
        "a wRPC invocation reached the server"
    );
}

#[tokio::test]
async fn link_opts_in_to_lattice_subjects_by_setting_publish_deny() {
    let setup = ConsumerSetup::new(&[("publish_deny", "$SYS.>")]).await;
    let mut control = setup.subscribe("wasmbus.test.opt-in").await;

    let result = setup
        .caller
        .publish(&message("wasmbus.test.opt-in", b"allowed"))
        .await
        .unwrap();

    assert_eq!(result, Ok(()));
    assert_eq!(
        &next_message(&mut control).await.unwrap().payload[..],
        b"allowed"
    );
}

#[tokio::test]
async fn publish_allow_confines_a_link_to_its_patterns() {
    let setup = ConsumerSetup::new(&[("publish_allow", "orders.>")]).await;
    let mut orders = setup.subscribe("orders.created").await;

    let allowed = setup
        .caller
        .publish(&message("orders.created", b"1"))
        .await
        .unwrap();
    let refused = setup
        .caller
        .publish_error(&message("billing.x", b"1"))
        .await;

    assert_eq!(allowed, Ok(()));
    assert_eq!(&next_message(&mut orders).await.unwrap().payload[..], b"1");
    assert!(refused.contains("publish_allow"), "{refused}");
}

/// Every form in which `secret` could be printed: as is, and base64 in
/// either alphabet at every alignment within a longer encoded text.
fn printed_forms(secret: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let mut forms = vec![secret.to_string()];
    for engine in [STANDARD_NO_PAD, URL_SAFE_NO_PAD] {
        for lead in 0..3 {
            let encoded = engine.encode(format!("{}{secret}", "\0".repeat(lead)));
            // Characters that depend only on the secret's bytes.
            let start = (lead * 4).div_ceil(3) + 1;
            let end = encoded.len().saturating_sub(2);
            if start < end {
                forms.push(encoded[start..end].to_string());
            }
        }
    }
    forms
}

#[tokio::test]
async fn no_secret_is_printed_at_trace_level() {
    let lattice = Lattice::start().await;
    let mut with_password =
        NatsServer::with_config("authorization { user: alice, password: pw-S3CR3T-user }");
    let with_token = NatsServer::with_config("authorization { token: tok-S3CR3T-token }");
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let with_nkey = NatsServer::with_config(&format!(
        "authorization {{ users = [ {{ nkey: {} }} ] }}",
        user.public_key()
    ));
    let secrets = [
        "pw-S3CR3T-user",
        "tok-S3CR3T-token",
        seed.as_str(),
        "pw-S3CR3T-provider",
        "pw-S3CR3T-alone",
        "pw-S3CR3T-wrong",
        "url-S3CR3T-userinfo",
        "p@ss-S3CR3T-at",
        "tok-S3CR3T-update",
    ];
    let provider = lattice
        .provider_with(ProviderOptions {
            config: pairs(&[("username", "provider-user")]),
            secrets: HashMap::from([(
                "password".to_string(),
                SecretValue::String("pw-S3CR3T-provider".into()),
            )]),
            log_level: Level::Trace,
            rust_log: Some("trace".into()),
            ..ProviderOptions::default()
        })
        .await;
    let component = lattice.component("c", Behaviour::default()).await;
    let quick = [("connect_timeout_ms", "300")];
    let links = [
        Link::consumer("c", &[("cluster_uris", &with_password.url())])
            .with_secret("username", "alice")
            .with_secret("password", "pw-S3CR3T-user")
            .named("password"),
        // A credential in link config, not secrets: the SDK logs link
        // definitions, config included, at debug level.
        Link::consumer(
            "c",
            &[
                ("cluster_uris", &with_token.url()),
                ("token", "tok-S3CR3T-token"),
            ],
        )
        .named("token"),
        Link::handler(
            "c",
            &[("cluster_uris", &with_nkey.url()), ("subscriptions", "s")],
        )
        .with_secret("nkey_seed", &seed)
        .named("nkey"),
        Link::consumer("c", &quick)
            .with_secret("password", "pw-S3CR3T-alone")
            .with_secret("username", "")
            .named("rejected-password"),
        Link::consumer("c", &[("cluster_uris", &with_password.url()), quick[0]])
            .with_secret("username", "alice")
            .with_secret("password", "pw-S3CR3T-wrong")
            .named("wrong-password"),
        Link::consumer(
            "c",
            &[
                (
                    "cluster_uris",
                    &format!(
                        "nats://bob:url-S3CR3T-userinfo@127.0.0.1:{},",
                        with_token.port()
                    ),
                ),
                quick[0],
            ],
        )
        .named("trailing-comma"),
        Link::consumer(
            "c",
            &[
                (
                    "cluster_uris",
                    &format!("nats://bob:p@ss-S3CR3T-at@127.0.0.1:{}", with_token.port()),
                ),
                quick[0],
            ],
        )
        .named("at-sign"),
    ];
    for link in &links {
        provider.put_link(link).await;
    }
    let _ = provider.health().await;
    let mut caller = component.caller(&provider.key).await;
    caller.link_name = "password".into();
    assert_eq!(caller.publish(&message("s", b"x")).await.unwrap(), Ok(()));
    provider
        .update_config(&[("token", "tok-S3CR3T-update")])
        .await;
    with_password.restart();
    provider
        .logs
        .wait_for(0, "a reconnect", |l| l.contains("NATS connection up"))
        .await;
    for link in &links[..3] {
        provider.delete_link(link).await;
    }
    let logs = provider.logs.clone();
    let status = provider.shutdown().await;

    let lines = logs.lines();
    assert!(status.success(), "{status:?}");
    assert!(
        lines.iter().any(|l| l.contains("TRACE")),
        "trace level not in effect"
    );
    assert!(lines.iter().any(|l| l.contains("link rejected")));
    for secret in secrets {
        for form in printed_forms(secret) {
            let found: Vec<&String> = lines.iter().filter(|l| l.contains(&form)).collect();
            assert!(
                found.is_empty(),
                "{secret:?} printed as {form:?}: {found:?}"
            );
        }
    }
}

/// Starts the provider with `stdin` and waits for it to exit.
async fn exit_with_stdin(stdin: &[u8]) -> (i32, Logs) {
    let (mut child, logs): (Child, Logs) = spawn_provider(stdin, None);
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            // Let the reader threads take the last lines.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return (status.code().unwrap_or(-1), logs);
        }
        assert!(Instant::now() < deadline, "provider did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn empty_host_data_ends_the_process_saying_a_host_starts_it() {
    let (code, logs) = exit_with_stdin(b"").await;

    assert_eq!(code, 2);
    assert_eq!(logs.count(|l| l.contains("started by a wasmCloud host")), 1);
}

#[tokio::test]
async fn host_data_that_is_not_base64_ends_the_process_with_a_clear_message() {
    let (code, logs) = exit_with_stdin(b"{this is not base64: S3CR3T}\n").await;

    assert_eq!(code, 2);
    assert_eq!(logs.count(|l| l.contains("not valid base64")), 1);
    assert_eq!(logs.count(|l| l.contains("S3CR3T")), 0);
}

#[tokio::test]
async fn host_data_with_a_wrong_field_ends_the_process_without_quoting_it() {
    let json =
        r#"{"lattice_rpc_user_seed": ["SUS3CR3T"], "env_values": {}, "link_definitions": []}"#;
    let line = base64::engine::general_purpose::STANDARD.encode(json) + "\r\n";

    let (code, logs) = exit_with_stdin(line.as_bytes()).await;

    assert_eq!(code, 2);
    assert_eq!(
        logs.count(|l| l.contains("not a valid HostData")),
        1,
        "{:?}",
        logs.lines()
    );
    assert_eq!(logs.count(|l| l.contains("S3CR3T")), 0);
}

#[tokio::test]
async fn host_data_missing_a_field_ends_the_process_naming_it() {
    let line = base64::engine::general_purpose::STANDARD.encode(r#"{"host_id": "h"}"#);

    let (code, logs) = exit_with_stdin(format!("{line}\n").as_bytes()).await;

    assert_eq!(code, 2);
    assert_eq!(logs.count(|l| l.contains("missing field `env_values`")), 1);
}
