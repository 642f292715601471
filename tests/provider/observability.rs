//! Logs, traces and metrics, which the provider sets up itself (not with
//! the SDK's macro), reach an OTLP receiver when the host turns
//! observability on, decoded as a collector would.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;

use crate::support::otlp::Receiver;
use crate::support::{Behaviour, Lattice, Link, ProviderOptions};
use wasmcloud_provider_sdk::core::logging::Level;

fn text(value: Option<&AnyValue>) -> Option<&str> {
    match value?.value.as_ref()? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| text(kv.value.as_ref()))
}

/// True if the export came from this provider's service.
fn ours(resource: Option<&Resource>) -> bool {
    resource.is_some_and(|r| attribute(&r.attributes, "service.name") == Some("messaging-nats"))
}

/// What arrived of each signal.
#[derive(Default, Debug)]
struct Seen {
    /// Log records' bodies.
    logs: Vec<String>,
    /// Spans: name and its `component` attribute.
    spans: Vec<(String, Option<String>)>,
    metrics: Vec<String>,
}

impl Seen {
    fn record(&mut self, path: &str, body: &[u8]) {
        match path {
            "/v1/logs" => {
                let export = ExportLogsServiceRequest::decode(body).expect("logs export");
                for resource in export.resource_logs {
                    if !ours(resource.resource.as_ref()) {
                        continue;
                    }
                    for scope in resource.scope_logs {
                        for record in scope.log_records {
                            if let Some(body) = text(record.body.as_ref()) {
                                self.logs.push(body.to_string());
                            }
                        }
                    }
                }
            }
            "/v1/traces" => {
                let export = ExportTraceServiceRequest::decode(body).expect("traces export");
                for resource in export.resource_spans {
                    if !ours(resource.resource.as_ref()) {
                        continue;
                    }
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            let component = attribute(&span.attributes, "component");
                            self.spans.push((span.name, component.map(str::to_string)));
                        }
                    }
                }
            }
            "/v1/metrics" => {
                let export = ExportMetricsServiceRequest::decode(body).expect("metrics export");
                for resource in export.resource_metrics {
                    if !ours(resource.resource.as_ref()) {
                        continue;
                    }
                    for scope in resource.scope_metrics {
                        self.metrics
                            .extend(scope.metrics.into_iter().map(|m| m.name));
                    }
                }
            }
            other => panic!("export to an unexpected path {other}"),
        }
    }

    fn complete(&self) -> bool {
        self.logs.iter().any(|l| l == "handler link ready")
            && self.spans.iter().any(|(name, component)| {
                name == "handler_link" && component.as_deref() == Some("worker")
            })
            && self
                .metrics
                .iter()
                .any(|m| m == "messaging.client.consumed.messages")
    }
}

#[tokio::test]
async fn logs_traces_and_metrics_reach_an_otlp_receiver_when_the_host_enables_observability() {
    let mut receiver = Receiver::start().await;
    let lattice = Lattice::start().await;
    let provider = lattice
        .provider_with(ProviderOptions {
            observability_endpoint: Some(receiver.base.clone()),
            log_level: Level::Info,
            ..ProviderOptions::default()
        })
        .await;
    let mut component = lattice.component("worker", Behaviour::default()).await;
    let link = Link::handler("worker", &[("subscriptions", "jobs.>")]);
    provider.put_link(&link).await;
    lattice.client.publish("jobs.1", "x".into()).await.unwrap();
    component.next().await;
    // A link's spans end when it stops: only then are they exported.
    provider.delete_link(&link).await;

    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.complete() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, receiver.next()).await {
            Ok(Some((path, body))) => seen.record(&path, &body),
            _ => panic!(
                "not everything was exported: {seen:#?}\nprovider:\n{}",
                provider.logs.lines().join("\n")
            ),
        }
    }
}
