//! The configs that upstream's v1 NATS messaging provider (0.27, and the
//! 1.9.x release branch, which shows the same ones) is documented, shipped
//! and tested with, each run through this parser: every one must be taken,
//! and read as the v1 provider read it. The source of each is named.

use std::collections::HashMap;

use super::*;

/// A handler link's settings from `link`, over provider config `provider`.
fn handler(provider: &[(&str, &str)], link: &[(&str, &str)]) -> LinkSettings {
    ProviderDefaults::new(&map(provider), &HashMap::new())
        .settings_for(LinkRole::Handler, &map(link), &HashMap::new())
        .unwrap_or_else(|err| panic!("{link:?} rejected: {err}"))
}

fn consumer(provider: &[(&str, &str)], link: &[(&str, &str)]) -> LinkSettings {
    ProviderDefaults::new(&map(provider), &HashMap::new())
        .settings_for(LinkRole::Consumer, &map(link), &HashMap::new())
        .unwrap_or_else(|err| panic!("{link:?} rejected: {err}"))
}

fn subjects(settings: &LinkSettings) -> Vec<String> {
    settings
        .handler
        .subscriptions
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// `crates/provider-messaging-nats/README.md`: upper-case key names, a
/// queue group, the documented default server.
#[test]
fn readme_link_config_with_upper_case_keys() {
    let settings = handler(
        &[],
        &[
            ("SUBSCRIPTIONS", "example.actor,example.task|work_queue"),
            ("CLUSTER_URIS", "0.0.0.0:4222"),
        ],
    );
    assert_eq!(
        subjects(&settings),
        ["example.actor", "example.task|work_queue"]
    );
    assert_eq!(servers(&settings), ["nats://0.0.0.0:4222"]);
}

/// `examples/rust/components/echo-messaging/wadm.yaml`: `subscriptions` on
/// both links (the consumer link's is not used), and the commented-out
/// two-server `cluster_uris`.
#[test]
fn echo_messaging_manifest_links() {
    let target = consumer(&[], &[("subscriptions", "wasmcloud.echo")]);
    assert!(target.handler.subscriptions.is_empty());
    let source = handler(
        &[],
        &[
            ("subscriptions", "wasmcloud.echo"),
            (
                "cluster_uris",
                "nats://your-custom-nats:4222,nats://your-second-nats:5222",
            ),
        ],
    );
    assert_eq!(subjects(&source), ["wasmcloud.echo"]);
    assert_eq!(servers(&source).len(), 2);
}

/// The same manifests' commented-out provider config: the OpenTelemetry
/// keys are the SDK's and pass without complaint.
#[test]
fn echo_messaging_manifest_otel_provider_config() {
    let provider = [
        ("otel_exporter_otlp_endpoint", "http://127.0.0.1:4318"),
        (
            "otel_exporter_otlp_traces_endpoint",
            "http://127.0.0.1:4318/v1/traces",
        ),
        (
            "otel_exporter_otlp_metrics_endpoint",
            "http://127.0.0.1:4318/v1/metrics",
        ),
        (
            "otel_exporter_otlp_logs_endpoint",
            "http://127.0.0.1:4318/v1/logs",
        ),
    ];
    ProviderDefaults::new(&map(&provider), &HashMap::new())
        .check()
        .expect("otel keys accepted");
    let settings = handler(&provider, &[("subscriptions", "wasmcloud.echo")]);
    assert_eq!(subjects(&settings), ["wasmcloud.echo"]);
}

/// `echo-messaging/local.wadm.yaml`, `keyvalue-messaging`,
/// `messaging-image-processor-worker` and its test fixture: one subject on
/// the handler link, no config on the consumer link.
#[test]
fn example_handler_subscriptions() {
    for subject in [
        "wasmcloud.echo",
        "nats.atomic.delta",
        "images.processing",
        "wasmcloud.test",
    ] {
        assert_eq!(
            subjects(&handler(&[], &[("subscriptions", subject)])),
            [subject]
        );
        consumer(&[], &[]);
    }
}

/// `tests/interfaces.rs`: the consumer link's target config is two named
/// configs merged, the server and a subscription.
#[test]
fn interfaces_test_consumer_link_config() {
    let settings = consumer(
        &[],
        &[
            ("cluster_uris", "nats://127.0.0.1:4222"),
            ("subscriptions", "interfaces-handler"),
        ],
    );
    assert_eq!(servers(&settings), ["nats://127.0.0.1:4222"]);
}

/// `crates/provider-messaging-nats/src/lib.rs` unit tests: inbox prefixes
/// written with a final wildcard.
#[test]
fn unit_test_inbox_prefixes() {
    for (prefix, used) in [("_TEST.>", "_TEST"), ("_NOPE.>", "_NOPE")] {
        let settings = handler(
            &[("cluster_uris", "old_server")],
            &[("subscriptions", "topic1"), ("custom_inbox_prefix", prefix)],
        );
        assert_eq!(
            settings.connection.custom_inbox_prefix.as_deref(),
            Some(used)
        );
        assert_eq!(subjects(&settings), ["topic1"]);
    }
}

/// The same unit tests' server lists: bare host names, as the v1 tests
/// write them.
#[test]
fn unit_test_server_lists() {
    let settings = handler(&[], &[("cluster_uris", "server1,server2")]);
    assert_eq!(
        servers(&settings),
        ["nats://server1:4222", "nats://server2:4222"]
    );
    let settings = handler(&[], &[("cluster_uris", "nats://soyvuh")]);
    assert_eq!(servers(&settings), ["nats://soyvuh:4222"]);
}

/// The v1 host's built-in messaging: `consumers` binding existing
/// JetStream consumers, next to `subscriptions`.
#[test]
fn builtin_messaging_consumers() {
    let settings = handler(
        &[],
        &[
            ("subscriptions", "wasmcloud.echo"),
            ("consumers", r#"[{"stream":"ORDERS","consumer":"billing"}]"#),
        ],
    );
    assert_eq!(subjects(&settings), ["wasmcloud.echo"]);
    assert_eq!(settings.handler.durable.sources.len(), 1);
    assert_eq!(settings.handler.durable.sources[0].stream, "ORDERS");
}

/// Upstream's provider template (`examples/rust/providers/messaging-nats`,
/// `local.wadm.yaml`): an unknown provider key is warned about, not fatal.
#[test]
fn template_provider_config_with_an_unknown_key() {
    ProviderDefaults::new(&map(&[("foo", "bar")]), &HashMap::new())
        .check()
        .expect("unknown key accepted");
}
