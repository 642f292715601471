//! `scripts/bench`: measures the provider against baselines taken in the
//! same run, on a private nats-server: raw async-nats, and a bare wRPC call
//! between this process and a no-op component (the same call the provider
//! makes for each delivery, without the provider). The provider is the
//! release binary, started with the host handshake; this process plays the
//! host and the components.
//!
//! Prints a markdown table and writes the figures as JSON. `--quick` runs
//! small counts and checks only that every figure was produced.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use messaging_nats_harness::component::bindings::wasmcloud::messaging::consumer;
use messaging_nats_harness::{
    echo_responder, Behaviour, BrokerMessage, Component, Lattice, Link, NatsServer, Provider,
    ProviderOptions, ServerExt as _, ServerOptions,
};
use wasmcloud_provider_sdk::core::logging::Level;

mod charts;
mod links;

mod bindings {
    // The provider's world: its import `handler` gives the caller side of a
    // bare `handle-message` call.
    wit_bindgen_wrpc::generate!({ world: "provider", path: "../wit", generate_all });
}

use bindings::wasmcloud::messaging::handler;
/// The message type of the bare `handle-message` call.
use bindings::wasmcloud::messaging::types::BrokerMessage as HandlerMessage;

/// A call slower than this is counted as lost (wRPC over NATS now and then
/// leaves an invocation unanswered) and its time left out of the rate.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// How much work each figure gets.
struct Sizes {
    calls: usize,
    raw_messages: usize,
    requests: usize,
    deliveries: usize,
    burst: usize,
    links: usize,
    /// Handler link counts of the scale part (`--only links`).
    scale: &'static [usize],
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                calls: 400,
                raw_messages: 10_000,
                requests: 200,
                deliveries: 2_000,
                burst: 5_000,
                links: 10,
                scale: &[100],
            }
        } else {
            Self {
                calls: 20_000,
                raw_messages: 500_000,
                requests: 5_000,
                deliveries: 60_000,
                burst: 100_000,
                links: 100,
                scale: &[1_000, 10_000],
            }
        }
    }
}

/// Figures in the order they were measured, for the table and the JSON.
#[derive(Default)]
struct Report {
    rows: Vec<(String, f64, String)>,
    /// Appended to every figure's name while a second build of the
    /// provider is measured (`--compare`).
    label: Option<String>,
    /// Figures measured over time, as (seconds, value) points, for charts.
    samples: BTreeMap<String, Vec<(f64, f64)>>,
}

impl Report {
    fn add(&mut self, name: &str, value: f64, unit: &str) {
        let name = match &self.label {
            Some(label) => format!("{name} [{label}]"),
            None => name.to_string(),
        };
        println!("  {name}: {value:.3} {unit}");
        self.rows.push((name, value, unit.to_string()));
    }

    fn add_samples(&mut self, name: &str, samples: Vec<(f64, f64)>) {
        let name = match &self.label {
            Some(label) => format!("{name} [{label}]"),
            None => name.to_string(),
        };
        self.samples.insert(name, samples);
    }

    fn value(&self, name: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|(row, _, _)| row == name)
            .map(|(_, value, _)| *value)
    }
}

/// Calls made at a concurrency, and how many were lost.
struct Rate {
    per_second: f64,
    lost: usize,
}

/// Runs `n` calls of `call`, `concurrency` at a time. A call that fails or
/// takes longer than [`CALL_TIMEOUT`] is lost; its time is taken out.
async fn measure<F, Fut>(n: usize, concurrency: usize, call: F) -> Rate
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let next = Arc::clone(&next);
            let call = call.clone();
            tokio::spawn(async move {
                let (mut ok, mut lost) = (0usize, 0usize);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return (ok, lost);
                    }
                    match tokio::time::timeout(CALL_TIMEOUT, call(i)).await {
                        Ok(Ok(())) => ok += 1,
                        _ => lost += 1,
                    }
                }
            })
        })
        .collect();
    let (mut ok, mut lost) = (0, 0);
    for worker in workers {
        let (o, l) = worker.await.expect("worker");
        ok += o;
        lost += l;
    }
    let lost_time = CALL_TIMEOUT.as_secs_f64() * lost as f64 / concurrency as f64;
    let elapsed = (started.elapsed().as_secs_f64() - lost_time).max(1e-9);
    Rate {
        per_second: ok as f64 / elapsed,
        lost,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[at]
}

/// The provider as a host starts it by default: logging at `info` (the
/// tests' `debug` formats lines on the delivery path); `binary` is the
/// executable, unless the default.
fn provider_options(key: &str, binary: Option<&Path>) -> ProviderOptions {
    ProviderOptions {
        key: key.to_string(),
        log_level: Level::Info,
        binary: binary.map(Path::to_path_buf),
        ..ProviderOptions::default()
    }
}

/// Invocation headers of a component calling the provider.
fn component_headers(id: &str) -> Option<async_nats::HeaderMap> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("source-id", id);
    headers.insert("link-name", "default");
    Some(headers)
}

/// Serves a no-op `handle-message` in a process of its own (this program
/// run as `serve-noop <nats url> <lattice> <component id>`), so that the
/// bare call crosses processes as the provider's calls do.
async fn serve_noop(args: &[String]) -> anyhow::Result<()> {
    let [url, lattice, id] = args else {
        bail!("usage: serve-noop <nats url> <lattice> <component id>");
    };
    let nats = async_nats::connect(url.as_str()).await?;
    let _component = Component::start_on(nats, lattice, id, Behaviour::no_op()).await;
    println!("serving");
    std::future::pending::<()>().await;
    Ok(())
}

/// The no-op component in a child process, killed on drop.
struct NoopProcess(std::process::Child);

impl NoopProcess {
    fn start(lattice: &Lattice, id: &str) -> anyhow::Result<Self> {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args(["serve-noop", &lattice.nats.url(), &lattice.name, id])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "serving" {
            bail!("the no-op component did not start");
        }
        Ok(Self(child))
    }
}

impl Drop for NoopProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve-noop") => return serve_noop(&args[1..]).await,
        Some("bare-subscriptions") => return links::serve_bare(&args[1..]).await,
        _ => {}
    }
    let quick = args.iter().any(|a| a == "--quick");
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "target/bench.json".to_string());
    // `--only NAME` runs one part (raw, bare, publish, request, delivery,
    // durable, confirmed, memory, links), e.g. to profile the provider
    // during it.
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    // `--compare LABEL=PATH` (repeatable) measures publish, delivery and
    // memory again with the provider executable at PATH, its figures named
    // `[LABEL]` (the glibc build beside the static one the archive ships).
    let mut compare = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        if arg == "--compare" {
            let spec = args.get(i + 1).context("--compare needs LABEL=PATH")?;
            let (label, path) = spec
                .split_once('=')
                .with_context(|| format!("--compare takes LABEL=PATH, not {spec:?}"))?;
            compare.push((label.to_string(), PathBuf::from(path)));
        }
    }
    let runs = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let mut sizes = Sizes::new(quick);
    // `--links N` runs the scale part with N links only (to profile it).
    if let Some(n) = args
        .iter()
        .position(|a| a == "--links")
        .and_then(|i| args.get(i + 1))
    {
        let n: usize = n
            .parse()
            .with_context(|| format!("--links takes a count, not {n:?}"))?;
        sizes.scale = Vec::leak(vec![n]);
    }
    let mut report = Report::default();

    let lattice = Lattice::start().await;
    let provider = lattice
        .provider_with(provider_options("messaging-nats-bench", None))
        .await;
    let nats = Arc::new(lattice.nats.client().await);
    // The bare call is every ratio's baseline: measured unless only raw
    // NATS or memory is asked for.
    let _noop = NoopProcess::start(&lattice, "noop")?;
    let bare = Arc::new(
        wrpc_transport_nats::Client::new(Arc::clone(&nats), format!("{}.noop", lattice.name), None)
            .await?,
    );
    let _publisher = lattice.component("pub", Behaviour::no_op()).await;
    let caller = publishing_caller(&lattice, &provider, &nats).await?;

    if runs("raw") {
        println!("raw NATS");
        raw_publish(&lattice, &sizes, &mut report).await?;
    }
    if runs("bare") || runs("publish") {
        println!("bare wRPC call to a no-op handle-message in another process, and publish");
        let publish = runs("publish").then_some(&caller);
        calls(&bare, publish, &sizes, &mut report).await;
    }
    if runs("request") {
        println!("request through the provider");
        requests(&lattice, &caller, &bare, &sizes, &mut report).await?;
    }
    if runs("delivery") {
        println!("delivery to a no-op handle-message");
        deliveries(&lattice, &provider, &bare, &sizes, &mut report).await?;
    }
    if runs("durable") {
        println!("durable delivery from a JetStream backlog to a no-op handle-message");
        durable(&lattice, &provider, &bare, &sizes, &mut report).await?;
    }
    if runs("confirmed") {
        println!("confirmed publish (jetstream_publish) against a bare JetStream publish");
        confirmed(&lattice, &provider, &caller, &bare, &sizes, &mut report).await?;
    }
    if runs("memory") {
        println!("memory");
        memory(&lattice, &provider, None, &sizes, &mut report).await?;
    }
    if runs("links") {
        println!("handler links at scale, and a bare client's subscriptions");
        let hold = match args
            .iter()
            .position(|a| a == "--hold")
            .and_then(|i| args.get(i + 1))
        {
            Some(secs) => {
                Some(Duration::from_secs(secs.parse().with_context(|| {
                    format!("--hold takes seconds, not {secs:?}")
                })?))
            }
            None => None,
        };
        links::links(&lattice, sizes.scale, hold, &mut report).await?;
    }
    for (label, binary) in &compare {
        println!(
            "the {label} build ({}): publish, delivery, memory",
            binary.display()
        );
        report.label = Some(label.clone());
        let other = lattice
            .provider_with(provider_options(
                &format!("messaging-nats-bench-{label}"),
                Some(binary),
            ))
            .await;
        let caller = publishing_caller(&lattice, &other, &nats).await?;
        calls(&bare, Some(&caller), &sizes, &mut report).await;
        deliveries(&lattice, &other, &bare, &sizes, &mut report).await?;
        memory(&lattice, &other, Some(binary), &sizes, &mut report).await?;
        report.label = None;
    }

    print_table(&report, quick);
    let json: BTreeMap<_, _> = report
        .rows
        .iter()
        .map(|(name, value, unit)| {
            (
                name.clone(),
                serde_json::json!({ "value": value, "unit": unit }),
            )
        })
        .collect();
    if let Some(dir) = std::path::Path::new(&json_path).parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("cannot write {json_path}"))?;
    println!("\nfigures written to {json_path}");
    let dir = std::path::Path::new(&json_path)
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    for chart in charts::write_all(&report, dir)? {
        println!("chart written to {chart}");
    }

    let missing: Vec<_> = report
        .rows
        .iter()
        .filter(|(name, value, _)| {
            // Counts of lost calls and unanswered requests may be 0, a
            // difference to the floor may be below it; every other figure
            // is a positive measurement. A compared build's figures carry
            // its label: ` [glibc]`.
            let base = name.split(" [").next().unwrap_or(name);
            let signed =
                base.ends_with("lost") || base.contains("unanswered") || base.contains("above");
            !value.is_finite() || (*value <= 0.0 && !signed)
        })
        .map(|(name, _, _)| name.clone())
        .collect();
    if !missing.is_empty() {
        bail!("figures not produced: {missing:?}");
    }
    Ok(())
}

/// A wRPC client that calls `provider`'s `consumer` export as the component
/// `pub`, which gets a consumer link for it.
async fn publishing_caller(
    lattice: &Lattice,
    provider: &Provider,
    nats: &Arc<async_nats::Client>,
) -> anyhow::Result<Arc<wrpc_transport_nats::Client>> {
    provider.put_link(&Link::consumer("pub", &[])).await;
    Ok(Arc::new(
        wrpc_transport_nats::Client::new(
            Arc::clone(nats),
            format!("{}.{}", lattice.name, provider.key),
            None,
        )
        .await?,
    ))
}

/// Rounds in which the bare call and `publish` are measured in turn, so
/// that a busy moment of the machine hits both alike; medians are reported.
const ROUNDS: usize = 5;

/// A bare `handle-message` call to the no-op component.
fn bare_call(
    bare: &Arc<wrpc_transport_nats::Client>,
    body: Bytes,
) -> impl Fn(usize) -> futures::future::BoxFuture<'static, anyhow::Result<()>> + Clone + Send + 'static
{
    let client = Arc::clone(bare);
    move |_| {
        let client = Arc::clone(&client);
        let msg = HandlerMessage {
            subject: "bench".into(),
            body: body.clone(),
            reply_to: None,
        };
        Box::pin(async move {
            handler::handle_message(client.as_ref(), None, &msg)
                .await?
                .map_err(anyhow::Error::msg)
        })
    }
}

/// A `publish` to `subject` through the provider, by component `id`.
fn publish_call(
    caller: &Arc<wrpc_transport_nats::Client>,
    id: &'static str,
    subject: &'static str,
    body: Bytes,
) -> impl Fn(usize) -> futures::future::BoxFuture<'static, anyhow::Result<()>> + Clone + Send + 'static
{
    let client = Arc::clone(caller);
    move |_| {
        let client = Arc::clone(&client);
        let msg = BrokerMessage {
            subject: subject.into(),
            body: body.clone(),
            reply_to: None,
        };
        Box::pin(async move {
            consumer::publish(client.as_ref(), component_headers(id), &msg)
                .await?
                .map_err(anyhow::Error::msg)
        })
    }
}

/// A bare JetStream publish from this process, waiting for the stream's
/// acknowledgement: what a confirmed publish costs without the provider.
fn jetstream_publish_call(
    js: &async_nats::jetstream::Context,
    subject: &'static str,
    body: Bytes,
) -> impl Fn(usize) -> futures::future::BoxFuture<'static, anyhow::Result<()>> + Clone + Send + 'static
{
    let js = js.clone();
    move |_| {
        let (js, body) = (js.clone(), body.clone());
        Box::pin(async move {
            js.publish(subject, body).await?.await?;
            Ok(())
        })
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Bare `handle-message` calls to the no-op component, and (when asked)
/// `publish` through the provider, 16 B and 16 KiB, at concurrency 1, 16
/// and 128, measured in turn over [`ROUNDS`] rounds.
async fn calls(
    bare: &Arc<wrpc_transport_nats::Client>,
    caller: Option<&Arc<wrpc_transport_nats::Client>>,
    sizes: &Sizes,
    report: &mut Report,
) {
    let per_round = (sizes.calls / ROUNDS).max(1);
    for (label, size) in [("16 B", 16), ("16 KiB", 16 * 1024)] {
        for c in [1, 16, 128] {
            let body = Bytes::from(vec![b'x'; size]);
            let (mut bare_rates, mut publish_rates) = (Vec::new(), Vec::new());
            let (mut bare_lost, mut publish_lost) = (0, 0);
            for _ in 0..ROUNDS {
                let rate = measure(per_round, c, bare_call(bare, body.clone())).await;
                bare_rates.push(rate.per_second);
                bare_lost += rate.lost;
                if let Some(caller) = caller {
                    let rate = measure(
                        per_round,
                        c,
                        publish_call(caller, "pub", "bench.published", body.clone()),
                    )
                    .await;
                    publish_rates.push(rate.per_second);
                    publish_lost += rate.lost;
                }
            }
            let bare_rate = median(bare_rates);
            let name = format!("bare call {label} c{c}");
            report.add(&name, bare_rate, "calls/s");
            report.add(&format!("{name} lost"), bare_lost as f64, "calls");
            if caller.is_some() {
                let publish_rate = median(publish_rates);
                let name = format!("publish {label} c{c}");
                report.add(&name, publish_rate, "calls/s");
                report.add(&format!("{name} lost"), publish_lost as f64, "calls");
                report.add(&format!("{name} / bare"), publish_rate / bare_rate, "x");
            }
        }
    }
}

/// Raw async-nats publish rate (16 B, flushed at the end).
async fn raw_publish(lattice: &Lattice, sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let client = lattice.nats.client().await;
    let body = Bytes::from_static(&[b'x'; 16]);
    let started = Instant::now();
    for _ in 0..sizes.raw_messages {
        client.publish("bench.raw", body.clone()).await?;
    }
    client.flush().await?;
    report.add(
        "raw NATS publish 16 B",
        sizes.raw_messages as f64 / started.elapsed().as_secs_f64(),
        "msg/s",
    );
    Ok(())
}

/// Request latency through the provider against a responder on raw NATS,
/// next to a raw NATS request and the floor (bare call + raw request).
async fn requests(
    lattice: &Lattice,
    caller: &wrpc_transport_nats::Client,
    bare: &wrpc_transport_nats::Client,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<()> {
    let responder = lattice.nats.client().await;
    let answering = echo_responder(&responder, "bench.echo").await;
    let body = Bytes::from_static(&[b'x'; 16]);

    let mut through = Vec::with_capacity(sizes.requests);
    for _ in 0..sizes.requests {
        let started = Instant::now();
        let call = consumer::request(caller, component_headers("pub"), "bench.echo", &body, 1000);
        if let Ok(Ok(Ok(_))) = tokio::time::timeout(CALL_TIMEOUT, call).await {
            through.push(started.elapsed());
        }
    }
    let client = lattice.nats.client().await;
    let mut raw = Vec::with_capacity(sizes.requests);
    for _ in 0..sizes.requests {
        let started = Instant::now();
        if client.request("bench.echo", body.clone()).await.is_ok() {
            raw.push(started.elapsed());
        }
    }
    let msg = HandlerMessage {
        subject: "bench".into(),
        body: body.clone(),
        reply_to: None,
    };
    let _noop = NoopProcess::start(lattice, "noop")?;
    let mut calls = Vec::with_capacity(sizes.requests);
    for _ in 0..sizes.requests {
        let started = Instant::now();
        if let Ok(Ok(Ok(()))) =
            tokio::time::timeout(CALL_TIMEOUT, handler::handle_message(bare, None, &msg)).await
        {
            calls.push(started.elapsed());
        }
    }
    answering.abort();
    for samples in [&mut through, &mut raw, &mut calls] {
        samples.sort();
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let floor = us(percentile(&calls, 0.5)) + us(percentile(&raw, 0.5));
    report.add("request p50", us(percentile(&through, 0.5)), "us");
    report.add("request p99", us(percentile(&through, 0.99)), "us");
    report.add("raw NATS request p50", us(percentile(&raw, 0.5)), "us");
    report.add("bare call p50", us(percentile(&calls, 0.5)), "us");
    report.add("request floor (bare call + raw request)", floor, "us");
    report.add(
        "request p50 above the floor",
        us(percentile(&through, 0.5)) - floor,
        "us",
    );
    report.add(
        "requests lost",
        (sizes.requests - through.len()) as f64,
        "requests",
    );
    Ok(())
}

/// Delivery rate to a no-op handler at `max_in_flight` 1, 16 and 128, with
/// its ratio to the bare call at the same concurrency.
async fn deliveries(
    lattice: &Lattice,
    provider: &Provider,
    bare: &Arc<wrpc_transport_nats::Client>,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<()> {
    let publisher = lattice.nats.client().await;
    for max_in_flight in [1, 16, 128] {
        let id = format!("deliver{max_in_flight}");
        let subject = format!("bench.deliver.{max_in_flight}");
        let component = lattice.component(&id, Behaviour::no_op()).await;
        let mif = max_in_flight.to_string();
        let link = Link::handler(
            &id,
            &[
                ("subscriptions", subject.as_str()),
                ("max_in_flight", mif.as_str()),
            ],
        );
        provider.put_link(&link).await;
        // At concurrency 1 fewer messages: each takes a whole round trip.
        let n = if max_in_flight == 1 {
            sizes.deliveries / 6
        } else {
            sizes.deliveries
        };
        let per_round = (n / ROUNDS).max(1);
        let body = Bytes::from_static(&[b'x'; 16]);
        let (mut rates, mut bare_rates, mut lost) = (Vec::new(), Vec::new(), 0);
        for _ in 0..ROUNDS {
            let bare_rate = measure(per_round, max_in_flight, bare_call(bare, body.clone())).await;
            bare_rates.push(bare_rate.per_second);
            let before = component.handled();
            let started = Instant::now();
            for _ in 0..per_round {
                publisher.publish(subject.clone(), body.clone()).await?;
            }
            publisher.flush().await?;
            let (handled, last) = wait_handled(&component, before + per_round).await;
            let handled = handled - before;
            lost += per_round - handled;
            let elapsed = last.duration_since(started).as_secs_f64();
            rates.push(handled as f64 / elapsed.max(1e-9));
        }
        let (rate, bare_rate) = (median(rates), median(bare_rates));
        let name = format!("delivery max_in_flight {max_in_flight}");
        report.add(&name, rate, "msg/s");
        report.add(&format!("{name} lost"), lost as f64, "msg");
        report.add(
            &format!("bare call 16 B c{max_in_flight}, alongside"),
            bare_rate,
            "calls/s",
        );
        report.add(&format!("{name} / bare"), rate / bare_rate, "x");
        provider.delete_link(&link).await;
    }
    Ok(())
}

/// Durable delivery: a backlog stored in a JetStream stream (file storage)
/// drained through the provider's pull consumer, each message acked after
/// its call; against its floor (the same work by a bare consumer in this
/// process) and against the bare call at the same concurrency.
async fn durable(
    lattice: &Lattice,
    provider: &Provider,
    bare: &Arc<wrpc_transport_nats::Client>,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (server, js, stream) = jetstream_stream("BENCH", "bench.durable.>").await?;
    let body = Bytes::from_static(&[b'x'; 16]);
    for max_in_flight in [16, 128] {
        let n = sizes.deliveries / 2;
        let subject = format!("bench.durable.{max_in_flight}");
        let bare_subject = format!("bench.durable.bare.{max_in_flight}");
        fill(&js, &subject, n, &body).await?;
        fill(&js, &bare_subject, n, &body).await?;
        let bare_rate = measure(n / 4, max_in_flight, bare_call(bare, body.clone())).await;
        let floor = bare_durable(&stream, &bare_subject, n, max_in_flight, bare).await?;
        let id = format!("durable{max_in_flight}");
        let component = lattice.component(&id, Behaviour::no_op()).await;
        let (servers, mif) = (server.url(), max_in_flight.to_string());
        let link = Link::handler(
            &id,
            &[
                ("cluster_uris", servers.as_str()),
                ("stream", "BENCH"),
                ("filter_subjects", subject.as_str()),
                ("max_in_flight", mif.as_str()),
            ],
        );
        let started = Instant::now();
        provider.put_link(&link).await;
        let (handled, last) = wait_handled(&component, n).await;
        let elapsed = last.duration_since(started).as_secs_f64();
        let rate = handled as f64 / elapsed.max(1e-9);
        let name = format!("durable delivery max_in_flight {max_in_flight}");
        report.add(&name, rate, "msg/s");
        report.add(&format!("{name} lost"), (n - handled) as f64, "msg");
        report.add(
            &format!("bare durable consumer c{max_in_flight}"),
            floor,
            "msg/s",
        );
        report.add(&format!("{name} / bare durable"), rate / floor, "x");
        report.add(
            &format!("bare call 16 B c{max_in_flight}, before it"),
            bare_rate.per_second,
            "calls/s",
        );
        report.add(&format!("{name} / bare"), rate / bare_rate.per_second, "x");
        provider.delete_link(&link).await;
    }
    Ok(())
}

/// A nats-server of its own with JetStream, and a stream `name` (file
/// storage) on `subjects`.
async fn jetstream_stream(
    name: &str,
    subjects: &str,
) -> anyhow::Result<(
    NatsServer,
    async_nats::jetstream::Context,
    async_nats::jetstream::stream::Stream,
)> {
    let server = NatsServer::with(ServerOptions {
        jetstream: true,
        ..ServerOptions::default()
    });
    let js = async_nats::jetstream::new(server.client().await);
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.to_string(),
            subjects: vec![subjects.to_string()],
            ..Default::default()
        })
        .await?;
    Ok((server, js, stream))
}

/// Stores `n` messages on `subject`, 1,024 acknowledgements in flight.
async fn fill(
    js: &async_nats::jetstream::Context,
    subject: &str,
    n: usize,
    body: &Bytes,
) -> anyhow::Result<()> {
    let mut acks = Vec::with_capacity(1024);
    for _ in 0..n {
        acks.push(js.publish(subject.to_string(), body.clone()).await?);
        if acks.len() == 1024 {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

/// The floor of durable delivery: the same work without the provider. A
/// plain async-nats pull consumer in this process reads `subject`'s `n`
/// messages, makes the bare `handle-message` call for each and acks it
/// after the call, `concurrency` at a time (the consumer's own batches are
/// that size too). Returns messages per second.
async fn bare_durable(
    stream: &async_nats::jetstream::stream::Stream,
    subject: &str,
    n: usize,
    concurrency: usize,
    bare: &Arc<wrpc_transport_nats::Client>,
) -> anyhow::Result<f64> {
    use futures::StreamExt as _;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(format!("bare{concurrency}")),
            filter_subject: subject.to_string(),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let messages = consumer
        .stream()
        .max_messages_per_batch(concurrency)
        .messages()
        .await?;
    let call = bare_call(bare, Bytes::from_static(&[b'x'; 16]));
    let handled = messages
        .take(n)
        .map(|msg| {
            let call = call.clone();
            async move {
                let msg = msg.map_err(anyhow::Error::from)?;
                tokio::time::timeout(CALL_TIMEOUT, call(0)).await??;
                msg.ack().await.map_err(anyhow::Error::msg)?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .filter(|done| std::future::ready(done.is_ok()))
        .count()
        .await;
    Ok(handled as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

/// Confirmed publishes (`jetstream_publish`) through the provider against
/// a bare JetStream publish from this process, and against the same work
/// without the provider (a bare call, then a bare JetStream publish: the
/// component's call and the provider's publish), 16 B at concurrency 1, 16
/// and 128, measured in turn over [`ROUNDS`] rounds.
async fn confirmed(
    lattice: &Lattice,
    provider: &Provider,
    caller: &Arc<wrpc_transport_nats::Client>,
    bare: &Arc<wrpc_transport_nats::Client>,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (server, js, _stream) = jetstream_stream("CONFIRMED", "bench.confirmed.>").await?;
    let _component = lattice.component("confirmed", Behaviour::no_op()).await;
    let servers = server.url();
    provider
        .put_link(&Link::consumer(
            "confirmed",
            &[
                ("cluster_uris", servers.as_str()),
                ("jetstream_publish", "bench.confirmed.>"),
            ],
        ))
        .await;
    let body = Bytes::from_static(&[b'x'; 16]);
    let per_round = (sizes.calls / ROUNDS).max(1);
    for c in [1, 16, 128] {
        let (mut bare_rates, mut floor_rates, mut rates, mut lost) =
            (Vec::new(), Vec::new(), Vec::new(), 0);
        for _ in 0..ROUNDS {
            let bare_js = jetstream_publish_call(&js, "bench.confirmed.bare", body.clone());
            bare_rates.push(measure(per_round, c, bare_js.clone()).await.per_second);
            let call = bare_call(bare, body.clone());
            let floor = move |i| {
                let (call, bare_js) = (call.clone(), bare_js.clone());
                async move {
                    call(i).await?;
                    bare_js(i).await
                }
            };
            floor_rates.push(measure(per_round, c, floor).await.per_second);
            let call = publish_call(
                caller,
                "confirmed",
                "bench.confirmed.provider",
                body.clone(),
            );
            let rate = measure(per_round, c, call).await;
            rates.push(rate.per_second);
            lost += rate.lost;
        }
        let (bare_rate, floor_rate, rate) =
            (median(bare_rates), median(floor_rates), median(rates));
        report.add(
            &format!("bare JetStream publish 16 B c{c}"),
            bare_rate,
            "msg/s",
        );
        report.add(
            &format!("bare call then bare JetStream publish 16 B c{c}"),
            floor_rate,
            "ops/s",
        );
        let name = format!("confirmed publish 16 B c{c}");
        report.add(&name, rate, "calls/s");
        report.add(&format!("{name} lost"), lost as f64, "calls");
        report.add(&format!("{name} / bare JetStream"), rate / bare_rate, "x");
        report.add(
            &format!("{name} / bare call then bare JetStream"),
            rate / floor_rate,
            "x",
        );
    }
    Ok(())
}

/// Waits until `component` has handled `count` calls in all, or made no
/// progress for three call timeouts (what is left was lost on the way, and
/// is counted by the caller); returns the count and when the last arrived.
async fn wait_handled(component: &Component, count: usize) -> (usize, Instant) {
    let mut last_progress = (component.handled(), Instant::now());
    while last_progress.0 < count {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let handled = component.handled();
        if handled != last_progress.0 {
            last_progress = (handled, Instant::now());
        } else if last_progress.1.elapsed() > 3 * CALL_TIMEOUT {
            break;
        }
    }
    last_progress
}

/// Resident memory: idle, after 60,000 deliveries, the peak of a burst into
/// a slow handler, and with many links.
async fn memory(
    lattice: &Lattice,
    provider: &Provider,
    binary: Option<&Path>,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mib = |kib: u64| kib as f64 / 1024.0;
    tokio::time::sleep(Duration::from_millis(500)).await;
    report.add("RSS after the runs above", mib(provider.rss_kib()), "MiB");

    let fresh = lattice
        .provider_with(provider_options(
            &format!("{}-memory", provider.key),
            binary,
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    report.add("RSS idle", mib(fresh.rss_kib()), "MiB");

    let component = lattice.component("mem", Behaviour::no_op()).await;
    let link = Link::handler(
        "mem",
        &[("subscriptions", "bench.mem"), ("max_in_flight", "16")],
    );
    fresh.put_link(&link).await;
    let publisher = lattice.nats.client().await;
    let body = Bytes::from_static(&[b'x'; 16]);
    for round in 0..(sizes.deliveries / 1000) {
        for _ in 0..1000 {
            publisher.publish("bench.mem", body.clone()).await?;
        }
        publisher.flush().await?;
        // Paced so that nothing is dropped: this is about what stays.
        while component.handled() + 100 < (round + 1) * 1000 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    report.add(
        &format!("RSS after {} deliveries", sizes.deliveries),
        mib(fresh.rss_kib()),
        "MiB",
    );
    fresh.delete_link(&link).await;

    let slow = lattice
        .component("slow", Behaviour::slow(Duration::from_millis(20)))
        .await;
    let link = Link::handler(
        "slow",
        &[("subscriptions", "bench.burst"), ("max_in_flight", "16")],
    );
    fresh.put_link(&link).await;
    let burst_started = Instant::now();
    let mut samples = vec![(0.0, mib(fresh.rss_kib()))];
    let sample = |samples: &mut Vec<(f64, f64)>| {
        samples.push((burst_started.elapsed().as_secs_f64(), mib(fresh.rss_kib())));
    };
    for i in 0..sizes.burst {
        publisher.publish("bench.burst", body.clone()).await?;
        if i % 1000 == 0 {
            sample(&mut samples);
        }
    }
    publisher.flush().await?;
    for _ in 0..20 {
        sample(&mut samples);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peak = samples.iter().map(|(_, rss)| *rss).fold(0.0, f64::max);
    report.add(
        &format!(
            "RSS peak, burst of {} into a 20 ms handler, max_in_flight 16",
            sizes.burst
        ),
        peak,
        "MiB",
    );
    report.add_samples("rss during the burst", samples);
    report.add(
        "peak in flight during the burst",
        slow.peak_in_flight() as f64,
        "calls",
    );
    fresh.delete_link(&link).await;

    let many: Vec<_> = (0..sizes.links)
        .map(|i| {
            if i % 2 == 0 {
                Link::handler(&format!("h{i}"), &[("subscriptions", "bench.many")])
            } else {
                Link::consumer(&format!("c{i}"), &[])
            }
        })
        .collect();
    for link in &many {
        fresh.put_link(link).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    report.add(
        &format!("RSS with {} links", sizes.links),
        mib(fresh.rss_kib()),
        "MiB",
    );
    Ok(())
}

fn print_table(report: &Report, quick: bool) {
    println!(
        "\n## messaging-nats benchmark{}\n",
        if quick {
            " (--quick: counts too small to compare)"
        } else {
            ""
        }
    );
    println!("| figure | value | unit |\n|---|---:|---|");
    for (name, value, unit) in &report.rows {
        println!("| {name} | {value:.2} | {unit} |");
    }
}
