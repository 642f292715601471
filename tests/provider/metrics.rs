//! OpenTelemetry metrics, exported by the provider's real OTLP/HTTP
//! exporter to a receiver this test runs, and decoded as a collector would.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;
use prost::Message as _;

use crate::support::otlp::Receiver;
use crate::support::{
    create_stream, echo_responder, jetstream_lattice, round_trip, stop_figures, Behaviour,
    BrokerMessage, Gate, Lattice, Link, Provider, ProviderOptions,
};

/// The next metrics export `receiver` got (other signals are not on).
async fn next_metrics(receiver: &mut Receiver) -> Option<ExportMetricsServiceRequest> {
    while let Some((path, body)) = receiver.next().await {
        if path == "/v1/metrics" {
            if let Ok(request) = ExportMetricsServiceRequest::decode(body.as_slice()) {
                return Some(request);
            }
        }
    }
    None
}

/// A series the test expects: metric, attributes it has, attribute keys
/// it lacks, value.
type Expected<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<&'a str>, f64);

/// The latest value of each series: (metric name, sorted attributes) to a
/// sum, a gauge value, or a histogram's count.
type Series = BTreeMap<(String, Vec<(String, String)>), f64>;

fn record(series: &mut Series, export: &ExportMetricsServiceRequest) {
    for resource in &export.resource_metrics {
        for scope in &resource.scope_metrics {
            for metric in &scope.metrics {
                let mut put =
                    |attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
                     value: f64| {
                        let mut attributes: Vec<_> = attributes
                            .iter()
                            .map(|kv| {
                                let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                    Some(Value::StringValue(s)) => s.clone(),
                                    other => format!("{other:?}"),
                                };
                                (kv.key.clone(), value)
                            })
                            .collect();
                        attributes.sort();
                        series.insert((metric.name.clone(), attributes), value);
                    };
                let number =
                    |point: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint| match point
                        .value
                    {
                        Some(number_data_point::Value::AsInt(n)) => n as f64,
                        Some(number_data_point::Value::AsDouble(n)) => n,
                        None => 0.0,
                    };
                match &metric.data {
                    Some(Data::Sum(sum)) => {
                        for point in &sum.data_points {
                            put(&point.attributes, number(point));
                        }
                    }
                    Some(Data::Gauge(gauge)) => {
                        for point in &gauge.data_points {
                            put(&point.attributes, number(point));
                        }
                    }
                    Some(Data::Histogram(histogram)) => {
                        for point in &histogram.data_points {
                            put(&point.attributes, point.count as f64);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The attributes of the default link of `component`, and `extra`.
fn of_link(
    component: &'static str,
    extra: &[(&'static str, &'static str)],
) -> Vec<(&'static str, &'static str)> {
    [
        ("messaging.system", "nats"),
        ("wasmcloud.component.id", component),
        ("wasmcloud.link.name", "default"),
    ]
    .iter()
    .chain(extra)
    .copied()
    .collect()
}

/// The value of `metric` for the series whose attributes include all of
/// `with` and none of the keys in `without`.
fn value(series: &Series, metric: &str, with: &[(&str, &str)], without: &[&str]) -> Option<f64> {
    series
        .iter()
        .find(|((name, attributes), _)| {
            name == metric
                && with
                    .iter()
                    .all(|(k, v)| attributes.iter().any(|(ak, av)| ak == k && av == v))
                && !attributes
                    .iter()
                    .any(|(k, _)| without.contains(&k.as_str()))
        })
        .map(|(_, v)| *v)
}

#[tokio::test]
async fn deliveries_publishes_and_requests_are_exported_per_link() {
    let mut receiver = Receiver::start().await;
    let lattice = Lattice::start().await;
    let provider = lattice
        .provider_with(ProviderOptions {
            metrics_endpoint: Some(receiver.url("metrics")),
            ..ProviderOptions::default()
        })
        .await;
    let mut component = lattice
        .component("worker", Behaviour::failing_on(b"bad"))
        .await;
    provider
        .put_link(&Link::handler("worker", &[("subscriptions", "jobs.>")]))
        .await;
    provider.put_link(&Link::consumer("worker", &[])).await;
    let _responder = echo_responder(&lattice.client, "echo").await;

    for body in ["ok 1", "ok 2", "ok 3", "bad 1", "bad 2"] {
        lattice.client.publish("jobs.x", body.into()).await.unwrap();
    }
    component.take(5).await;
    let caller = component.caller(&provider.key).await;
    for i in 0..3 {
        let message = BrokerMessage {
            subject: "out.x".to_string(),
            body: format!("{i}").into(),
            reply_to: None,
        };
        caller.publish(&message).await.unwrap().unwrap();
    }
    caller
        .request("echo", b"ping", 2000)
        .await
        .unwrap()
        .unwrap();

    let with = |extra| of_link("worker", extra);
    let expected: Vec<Expected> = vec![
        ("messaging.client.consumed.messages", with(&[]), vec![], 5.0),
        (
            "messaging.process.duration",
            with(&[]),
            vec!["error.type"],
            3.0,
        ),
        (
            "messaging.process.duration",
            with(&[("error.type", "handler_error")]),
            vec![],
            2.0,
        ),
        (
            "wasmcloud.messaging.deliveries.in_flight",
            with(&[]),
            vec![],
            0.0,
        ),
        (
            "messaging.client.sent.messages",
            with(&[("messaging.operation.name", "publish")]),
            vec!["error.type"],
            3.0,
        ),
        (
            "messaging.client.operation.duration",
            with(&[("messaging.operation.name", "request")]),
            vec!["error.type"],
            1.0,
        ),
    ];
    wait_exported(&mut receiver, &provider, &expected).await;
}

/// Reads exports until every `expected` series has its value; returns what
/// was seen.
async fn wait_exported(
    receiver: &mut Receiver,
    provider: &Provider,
    expected: &[Expected<'_>],
) -> Series {
    let mut series = Series::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing: Vec<_> = expected
            .iter()
            .filter(|(metric, with, without, want)| {
                value(&series, metric, with, without) != Some(*want)
            })
            .map(|(metric, with, _, want)| format!("{metric} {with:?} = {want}"))
            .collect();
        if missing.is_empty() {
            return series;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, next_metrics(receiver)).await {
            Ok(Some(export)) => record(&mut series, &export),
            _ => panic!(
                "not exported: {missing:#?}\nseen: {series:#?}\nprovider:\n{}",
                provider.logs.lines().join("\n")
            ),
        }
    }
}

#[tokio::test]
async fn dead_lettered_and_dropped_messages_are_exported_for_their_own_link() {
    let mut receiver = Receiver::start().await;
    let lattice = jetstream_lattice().await;
    let js = async_nats::jetstream::new(lattice.client.clone());
    create_stream(&js, "JOBS", &["jobs.>"]).await;
    create_stream(&js, "DEAD", &["dead.>"]).await;
    let provider = lattice
        .provider_with(ProviderOptions {
            metrics_endpoint: Some(receiver.url("metrics")),
            ..ProviderOptions::default()
        })
        .await;
    // One link dead-letters every message: its handler always fails, and
    // one attempt is all it gets.
    let mut failing = lattice
        .component("failing", Behaviour::failing_on(b""))
        .await;
    provider
        .put_link(&Link::handler(
            "failing",
            &[
                ("stream", "JOBS"),
                ("max_deliver", "1"),
                ("dead_letter_subject", "dead.jobs"),
            ],
        ))
        .await;
    // The other is stopped with messages still queued behind a call that
    // outlives its drain: those are dropped.
    let slow = lattice
        .component("slow", Behaviour::slow(Duration::from_secs(10)))
        .await;
    let slow_link = Link::handler(
        "slow",
        &[
            ("subscriptions", "burst"),
            ("max_in_flight", "1"),
            ("drain_timeout_ms", "200"),
        ],
    );
    provider.put_link(&slow_link).await;

    for i in 0..2 {
        js.publish(format!("jobs.{i}"), "job".into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    failing.take(2).await;
    for _ in 0..5 {
        lattice.client.publish("burst", "x".into()).await.unwrap();
    }
    round_trip(&lattice.client).await;
    // The slow component records a call when it ends: wait for it to start.
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.peak_in_flight() == 0 {
        assert!(Instant::now() < deadline, "the slow call never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    provider.delete_link(&slow_link).await;
    provider
        .logs
        .wait_for(0, "the slow link's stop", |l| {
            l.contains("handler link stopped")
        })
        .await;
    let dropped = stop_figures(&provider)
        .into_iter()
        .find_map(|(name, n)| (name == "dropped").then_some(n))
        .expect("dropped figure");
    assert!(dropped > 0, "nothing was left to drop");

    let expected: Vec<Expected> = vec![
        (
            "wasmcloud.messaging.dead_lettered.messages",
            of_link("failing", &[]),
            vec![],
            2.0,
        ),
        (
            "wasmcloud.messaging.dropped.messages",
            of_link("slow", &[("reason", "drain_timeout")]),
            vec![],
            dropped as f64,
        ),
    ];
    let series = wait_exported(&mut receiver, &provider, &expected).await;
    let foreign = [
        ("wasmcloud.messaging.dead_lettered.messages", "slow"),
        ("wasmcloud.messaging.dropped.messages", "failing"),
    ];
    for (metric, component) in foreign {
        assert_eq!(
            value(&series, metric, &of_link(component, &[]), &[]),
            None,
            "{metric} counted for {component}"
        );
    }
}

#[tokio::test]
async fn a_durable_consumers_lag_is_exported_with_its_stream_and_consumer() {
    let mut receiver = Receiver::start().await;
    let lattice = jetstream_lattice().await;
    let js = async_nats::jetstream::new(lattice.client.clone());
    create_stream(&js, "JOBS", &["jobs.>"]).await;
    for i in 0..3 {
        js.publish(format!("jobs.{i}"), "job".into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    let provider = lattice
        .provider_with(ProviderOptions {
            metrics_endpoint: Some(receiver.url("metrics")),
            ..ProviderOptions::default()
        })
        .await;
    let gate = Gate::closed();
    let mut worker = lattice
        .component(
            "worker",
            Behaviour {
                gate: Some(gate.clone()),
                ..Behaviour::default()
            },
        )
        .await;
    provider
        .put_link(&Link::handler(
            "worker",
            &[
                ("stream", "JOBS"),
                ("durable_name", "jobs"),
                ("max_in_flight", "1"),
            ],
        ))
        .await;
    let consumer = of_link(
        "worker",
        &[
            ("messaging.destination.name", "JOBS"),
            ("messaging.consumer.group.name", "jobs"),
        ],
    );
    let lag = |pending: f64, unacked: f64| -> Vec<Expected> {
        vec![
            (
                "wasmcloud.messaging.consumer.pending",
                consumer.clone(),
                vec![],
                pending,
            ),
            (
                "wasmcloud.messaging.consumer.unacked",
                consumer.clone(),
                vec![],
                unacked,
            ),
        ]
    };

    // One message held in its call, two waiting on the server.
    wait_exported(&mut receiver, &provider, &lag(2.0, 1.0)).await;
    gate.open();
    worker.take(3).await;
    wait_exported(&mut receiver, &provider, &lag(0.0, 0.0)).await;
}
