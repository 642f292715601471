//! Logs, traces and metrics, set up as the host asks for them.
//!
//! The same set-up as the SDK's `initialize_observability!`: the host's log
//! level (then `RUST_LOG`), plain or JSON lines on standard error, and an
//! OTLP exporter (HTTP or gRPC, its endpoints, extra CA files, sampler and
//! batch settings) for each signal the host enables, with the `OTEL_*`
//! overrides of provider config. What differs is the stderr writer: the
//! SDK's queues up to 128,000 lines, a 4 MiB buffer that is resident from
//! start-up (a third of the idle provider; BENCHMARKS.md "Idle memory").
//! This one queues [`LOG_LINES`], and says how many lines it dropped.

use std::io::IsTerminal as _;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::resource::EnvResourceDetector;
use opentelemetry_sdk::trace::{BatchConfigBuilder, Sampler};
use opentelemetry_sdk::Resource;
use tracing::warn;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::{Directive, LevelFilter};
use tracing_subscriber::fmt::format::{DefaultFields, Format, JsonFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};
use wasmcloud_provider_sdk::core::logging::Level;
use wasmcloud_provider_sdk::core::{HostData, OtelConfig, OtelProtocol};

/// Lines the stderr writer queues while standard error is slow to take
/// them (32 bytes each while empty): at the most this provider logs (a few
/// lines per link put or delete, 10,000 links at once), a host that reads
/// its providers' output does not fall that far behind. Beyond it lines
/// are dropped, counted and reported (the SDK's writer drops too, silently),
/// so that a host that stops reading never stalls the provider.
const LOG_LINES: usize = 8_192;

/// How often dropped log lines are looked for.
const DROPS_EVERY: Duration = Duration::from_secs(10);

/// Keeps the stderr writer's thread running; dropping it writes out what
/// is queued.
pub struct Guard {
    _stderr: WorkerGuard,
}

/// The logger provider outlives the subscriber layer that borrows it.
static LOGGER: OnceLock<SdkLoggerProvider> = OnceLock::new();

/// Installs the global subscriber (and meter provider) for `service` as
/// `host` asks. Must run inside the runtime: the exporters and the
/// dropped-lines report are tasks.
pub fn init(service: &str, host: &HostData) -> anyhow::Result<Guard> {
    let (otel, mut problems) = settings(&host.otel_config, &host.config);
    let sampler = sampler(&otel, &mut problems);
    let directives = rust_log(host_level(host.log_level.as_ref()), &mut problems);
    let level = host.log_level.as_ref();
    let resource = || {
        Resource::builder_empty()
            .with_detector(Box::new(EnvResourceDetector::new()))
            .with_attribute(KeyValue::new("service.name", service.to_string()))
            .build()
    };
    let (traces, logs) = if otel.metrics_enabled() || otel.traces_enabled() || otel.logs_enabled() {
        // Made only when something is exported: the HTTP client loads the
        // system's roots.
        let transport = Transport::new(&otel, &mut problems)?;
        if otel.metrics_enabled() {
            metrics(&otel, &transport, resource())?;
            crate::metrics::enable();
        }
        let traces = otel
            .traces_enabled()
            .then(|| traces(&otel, &transport, sampler, resource()))
            .transpose()?
            .map(|layer| layer.with_filter(level_filter(Some(&otel.trace_level), &[])));
        let logs = otel
            .logs_enabled()
            .then(|| logs(&otel, &transport, resource()))
            .transpose()?
            .map(|layer| layer.with_filter(level_filter(level, &directives)));
        (traces, logs)
    } else {
        (None, None)
    };

    let stderr = std::io::stderr();
    let ansi = stderr.is_terminal();
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_LINES)
        .lossy(true)
        .finish(stderr);
    let dropped = writer.error_counter();
    // Two layer values of different types (each typed by where it sits),
    // of which one is set.
    let (json, plain) = if host.structured_logging {
        let json = tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .event_format(Format::default().json())
            .fmt_fields(JsonFields::new());
        (Some(json), None)
    } else {
        let plain = tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .event_format(Format::default())
            .fmt_fields(DefaultFields::new());
        (None, Some(plain))
    };
    tracing_subscriber::registry()
        .with(level_filter(level, &directives))
        .with(traces)
        .with(logs)
        .with(json)
        .with(plain)
        .try_init()
        .context("a global tracing subscriber was already set")?;
    // Written whatever the level, as the SDK wrote them: a setting that
    // was not applied must not go unsaid.
    for problem in problems {
        eprintln!("messaging-nats: {problem}");
    }
    tokio::spawn(report_drops(dropped));
    Ok(Guard { _stderr: guard })
}

/// Logs, now and then, how many lines the stderr writer dropped.
async fn report_drops(dropped: ErrorCounter) {
    let mut reported = 0;
    loop {
        tokio::time::sleep(DROPS_EVERY).await;
        let now = dropped.dropped_lines();
        if now > reported {
            warn!(
                dropped = now - reported,
                "log lines dropped: standard error was not read fast enough"
            );
            reported = now;
        }
    }
}

/// The host's OpenTelemetry settings with the `OTEL_*` keys of provider
/// config applied (any case), and what could not be read.
fn settings(
    host: &OtelConfig,
    config: &std::collections::HashMap<String, String>,
) -> (OtelConfig, Vec<String>) {
    let mut otel = host.clone();
    let mut problems = Vec::new();
    let mut number = |key: &str, value: &str| match value.trim().parse::<usize>() {
        Ok(n) => Some(n),
        Err(_) => {
            problems.push(format!(
                "provider config {key} is not a whole number ({value:?}); the host's setting is kept"
            ));
            None
        }
    };
    for (key, value) in config {
        match key.to_ascii_uppercase().as_str() {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => otel.observability_endpoint = Some(value.clone()),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => otel.traces_endpoint = Some(value.clone()),
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT" => otel.metrics_endpoint = Some(value.clone()),
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT" => otel.logs_endpoint = Some(value.clone()),
            "OTEL_TRACES_SAMPLER" => otel.traces_sampler = Some(value.clone()),
            "OTEL_TRACES_SAMPLER_ARG" => otel.traces_sampler_arg = Some(value.clone()),
            "OTEL_BSP_MAX_CONCURRENT_EXPORTS" => {
                if let Some(n) = number(key, value) {
                    otel.concurrent_exports = Some(n);
                }
            }
            "OTEL_BSP_MAX_QUEUE_SIZE" => {
                if let Some(n) = number(key, value) {
                    otel.max_batch_queue_size = Some(n);
                }
            }
            _ => {}
        }
    }
    (otel, problems)
}

/// Targets kept at `info` at most (or the host's level, if quieter) unless
/// `RUST_LOG` names them: the NATS client, and the HTTP and OpenTelemetry
/// crates under the exporters, whose debug lines about each export would
/// themselves be exported as logs.
const QUIET: [&str; 5] = ["async_nats", "hyper", "h2", "reqwest", "opentelemetry"];

/// `RUST_LOG`'s directives (with main.rs's caps added), after [`QUIET`]'s
/// at `cap`; one that cannot be read is noted in `problems` and left out.
fn rust_log(cap: LevelFilter, problems: &mut Vec<String>) -> Vec<Directive> {
    let cap = cap.min(LevelFilter::INFO);
    let mut directives: Vec<Directive> = QUIET
        .iter()
        .filter_map(|target| format!("{target}={cap}").parse().ok())
        .collect();
    for directive in std::env::var("RUST_LOG").unwrap_or_default().split(',') {
        let directive = directive.trim();
        if directive.is_empty() {
            continue;
        }
        match directive.parse() {
            Ok(directive) => directives.push(directive),
            Err(err) => problems.push(format!(
                "RUST_LOG directive {directive:?} cannot be read ({err}); it is left out"
            )),
        }
    }
    directives
}

/// The host's level as a filter (`info` if it gives none).
fn host_level(level: Option<&Level>) -> LevelFilter {
    match level {
        Some(Level::Error | Level::Critical) => LevelFilter::ERROR,
        Some(Level::Warn) => LevelFilter::WARN,
        Some(Level::Info) | None => LevelFilter::INFO,
        Some(Level::Debug) => LevelFilter::DEBUG,
        Some(Level::Trace) => LevelFilter::TRACE,
    }
}

/// A layer's filter: the host's level, then `directives`.
fn level_filter(level: Option<&Level>, directives: &[Directive]) -> EnvFilter {
    directives.iter().cloned().fold(
        EnvFilter::default().add_directive(host_level(level).into()),
        EnvFilter::add_directive,
    )
}

/// The sampler the settings name; an unknown name or a bad ratio is noted
/// in `problems` and the default taken, as the SDK does.
fn sampler(otel: &OtelConfig, problems: &mut Vec<String>) -> Sampler {
    let mut ratio = || match otel.traces_sampler_arg.as_deref().map(str::parse::<f64>) {
        Some(Ok(ratio)) => ratio,
        _ => {
            problems.push(format!(
                "OTEL_TRACES_SAMPLER_ARG {:?} is not a ratio; 1.0 is used",
                otel.traces_sampler_arg.as_deref().unwrap_or_default()
            ));
            1.0
        }
    };
    let default = || Sampler::ParentBased(Box::new(Sampler::AlwaysOn));
    match otel.traces_sampler.as_deref() {
        None | Some("parentbased_always_on") => default(),
        Some("always_on") => Sampler::AlwaysOn,
        Some("always_off") => Sampler::AlwaysOff,
        Some("traceidratio") => Sampler::TraceIdRatioBased(ratio()),
        Some("parentbased_always_off") => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        Some("parentbased_traceidratio") => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio())))
        }
        Some(other) => {
            problems.push(format!(
                "OTEL_TRACES_SAMPLER {other:?} is not a known sampler; parentbased_always_on is used"
            ));
            default()
        }
    }
}

/// The HTTP client of the OTLP exporters: the system's roots and the
/// host's extra CA files. A CA file that cannot be read is noted in
/// `problems` and the exporters go on with the system's roots, as with the
/// SDK (which said nothing).
fn http_client(otel: &OtelConfig, problems: &mut Vec<String>) -> anyhow::Result<reqwest::Client> {
    use wasmcloud_provider_sdk::core::tls;
    let mut builder = reqwest::ClientBuilder::default().user_agent(tls::REQWEST_USER_AGENT);
    let extra = tls::load_certs_from_paths(&otel.additional_ca_paths).unwrap_or_else(|err| {
        problems.push(format!(
            "cannot read the OpenTelemetry CA files {:?} ({err}); only the system's roots are used",
            otel.additional_ca_paths
        ));
        Vec::new()
    });
    for der in tls::NATIVE_ROOTS.iter().chain(&extra) {
        if let Ok(cert) = reqwest::tls::Certificate::from_der(der.as_ref()) {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .context("cannot build the OpenTelemetry HTTP client")
}

/// How the OTLP exporters reach the collector, as the host asks: over
/// HTTP, the three sharing one client, or over gRPC.
enum Transport {
    Http(reqwest::Client),
    Grpc,
}

impl Transport {
    fn new(otel: &OtelConfig, problems: &mut Vec<String>) -> anyhow::Result<Self> {
        Ok(match otel.protocol {
            OtelProtocol::Http => Self::Http(http_client(otel, problems)?),
            OtelProtocol::Grpc => Self::Grpc,
        })
    }
}

/// The OTLP exporter `$kind` (`MetricExporter`, `SpanExporter` or
/// `LogExporter`) to `$endpoint` over `$transport`. A macro: the three
/// builders have the same methods but no common trait for `build`.
macro_rules! exporter {
    ($kind:ident, $transport:expr, $endpoint:expr) => {
        match $transport {
            Transport::Http(client) => opentelemetry_otlp::$kind::builder()
                .with_http()
                .with_http_client(client.clone())
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint($endpoint)
                .build(),
            Transport::Grpc => opentelemetry_otlp::$kind::builder()
                .with_tonic()
                .with_endpoint($endpoint)
                .build(),
        }
    };
}

fn metrics(otel: &OtelConfig, transport: &Transport, resource: Resource) -> anyhow::Result<()> {
    use opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader;
    let exporter = exporter!(MetricExporter, transport, otel.metrics_endpoint())
        .context("cannot build the OTLP metrics exporter")?;
    let reader = PeriodicReader::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(reader)
        .build();
    opentelemetry::global::set_meter_provider(provider);
    Ok(())
}

fn traces<S>(
    otel: &OtelConfig,
    transport: &Transport,
    sampler: Sampler,
    resource: Resource,
) -> anyhow::Result<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
    let exporter = exporter!(SpanExporter, transport, otel.traces_endpoint())
        .context("cannot build the OTLP span exporter")?;
    let mut batch = BatchConfigBuilder::default();
    if let Some(size) = otel.max_batch_queue_size {
        batch = batch.with_max_queue_size(size);
    }
    if let Some(exports) = otel.concurrent_exports {
        batch = batch.with_max_concurrent_exports(exports);
    }
    let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
        .with_batch_config(batch.build())
        .build();
    let tracer = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_resource(resource)
        .with_span_processor(processor)
        .build()
        // The SDK's scope name, so that what keys on it still matches.
        .tracer("wasmcloud-tracing");
    Ok(tracing_opentelemetry::layer().with_tracer(tracer))
}

fn logs(
    otel: &OtelConfig,
    transport: &Transport,
    resource: Resource,
) -> anyhow::Result<
    opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge<
        SdkLoggerProvider,
        opentelemetry_sdk::logs::SdkLogger,
    >,
> {
    use opentelemetry_sdk::logs::log_processor_with_async_runtime::BatchLogProcessor;
    let exporter = exporter!(LogExporter, transport, otel.logs_endpoint())
        .context("cannot build the OTLP log exporter")?;
    let processor = BatchLogProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let provider = SdkLoggerProvider::builder()
        .with_resource(resource)
        .with_log_processor(processor)
        .build();
    let provider = LOGGER.get_or_init(|| provider);
    Ok(opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(provider))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet(cap: LevelFilter) -> Vec<String> {
        rust_log(cap, &mut Vec::new())
            .iter()
            .take(QUIET.len())
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_exporters_crates_stay_at_info_or_at_the_hosts_quieter_level() {
        let at = |level: &str| -> Vec<String> {
            QUIET
                .iter()
                .map(|target| format!("{target}={level}"))
                .collect()
        };
        assert_eq!(quiet(LevelFilter::TRACE), at("info"));
        assert_eq!(quiet(LevelFilter::INFO), at("info"));
        assert_eq!(quiet(LevelFilter::WARN), at("warn"));
        assert_eq!(quiet(LevelFilter::ERROR), at("error"));
    }

    #[test]
    fn an_unreadable_otel_number_keeps_the_hosts_setting_and_names_the_key() {
        let host = OtelConfig {
            max_batch_queue_size: Some(7),
            ..OtelConfig::default()
        };
        let config = [("otel_bsp_max_queue_size".to_string(), "lots".to_string())].into();
        let (otel, problems) = settings(&host, &config);
        assert_eq!(otel.max_batch_queue_size, Some(7));
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("otel_bsp_max_queue_size"),
            "{problems:?}"
        );
    }
}
