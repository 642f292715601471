//! The provider executable that a wasmCloud host starts.

use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use messaging_nats::{bindings, host_data, observability, MessagingProvider};
use tracing::{info, warn};
use wasmcloud_provider_sdk::core::logging::Level;
use wasmcloud_provider_sdk::provider::WrpcClient;
use wasmcloud_provider_sdk::{get_connection, run_provider};

const PROVIDER_NAME: &str = "messaging-nats";

/// Log filter added after the host's `RUST_LOG`: the SDK logs whole link
/// definitions, config values included, at debug level, and a user may have
/// put a credential in link config rather than in secrets.
const LOG_CAP: &str = "wasmcloud_provider_sdk=info";

/// The NATS client echoes every connection event at `info`, which the SDK
/// lets through whatever the level; the provider logs those events itself
/// (naming the servers), so the client's own lines show only when
/// `RUST_LOG` names `async_nats`.
const NATS_CLIENT_QUIET: &str = "async_nats=warn";

/// `RUST_LOG` as the provider applies it: the host's filter, then the caps.
/// The SDK's cap is added only where debug output is asked for (by the
/// host's level or `RUST_LOG`), so that it never raises a quieter level.
fn log_filter(rust_log: &str, host_level: Option<&Level>) -> String {
    let mut filter = rust_log.to_string();
    if !rust_log.contains("async_nats") {
        filter.push(',');
        filter.push_str(NATS_CLIENT_QUIET);
    }
    let verbose =
        asks_for_debug(rust_log) || matches!(host_level, Some(Level::Debug | Level::Trace));
    if verbose {
        filter.push(',');
        filter.push_str(LOG_CAP);
    }
    filter.trim_start_matches(',').to_string()
}

/// True if a directive of `rust_log` lets debug output through: a level of
/// `debug` or `trace` in any case, or `4` or `5`, as the filter reads them;
/// or a bare target, which enables every level of it.
fn asks_for_debug(rust_log: &str) -> bool {
    rust_log.split(',').map(str::trim).any(|directive| {
        let (level, bare) = match directive.rsplit_once('=') {
            Some((_, level)) => (level.trim(), false),
            None => (directive, true),
        };
        match level.to_ascii_lowercase().as_str() {
            "debug" | "trace" | "4" | "5" => true,
            "" | "off" | "error" | "warn" | "info" | "0" | "1" | "2" | "3" => false,
            _ => bare,
        }
    })
}

fn main() -> std::process::ExitCode {
    let host_data = match host_data::read(std::io::stdin().lock()) {
        Ok(data) => data,
        Err(message) => {
            eprintln!("{PROVIDER_NAME}: {message}");
            return std::process::ExitCode::from(2);
        }
    };
    // Set before the runtime starts any thread that could read the
    // environment at the same time.
    std::env::set_var(
        "RUST_LOG",
        log_filter(
            &std::env::var("RUST_LOG").unwrap_or_default(),
            host_data.log_level.as_ref(),
        ),
    );
    if wasmcloud_provider_sdk::provider::initialize_host_data(host_data).is_err() {
        eprintln!("{PROVIDER_NAME}: host data was already initialised");
        return std::process::ExitCode::from(2);
    }
    // One thread: the provider mostly waits on sockets, and wake-ups across
    // worker threads cost more than a second thread gives (see
    // BENCHMARKS.md: delivery and publish rates rose on 2 cores). Nothing
    // here blocks the thread for long.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{PROVIDER_NAME}: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{PROVIDER_NAME}: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    // Logs, and the traces and metrics exporters the host enables.
    let host_data =
        wasmcloud_provider_sdk::provider::load_host_data().context("failed to load host data")?;
    let _observability = observability::init(PROVIDER_NAME, host_data)
        .context("failed to set up logs, traces and metrics")?;

    // Watched before the links the host hands over at start are set up: a
    // signal that arrives meanwhile is kept and drains them right after.
    let mut signals = StopSignals::watch()?;
    let provider = MessagingProvider::default();
    let host_shutdown = run_provider(provider.clone(), PROVIDER_NAME)
        .await
        .context("failed to start the provider")?;
    // Before the SDK's command loop runs: from here on, link puts and
    // deletes are applied in the order the host sent them.
    provider
        .follow_host_links()
        .await
        .context("failed to subscribe to the host's link puts and deletes")?;
    // Now that the provider listens for link puts: any the host sent before
    // is found in the lattice's links.
    provider.watch_lattice_links();
    let stopped = {
        let provider = provider.clone();
        async move {
            tokio::select! {
                // Before the SDK's command loop: once the host's shutdown is
                // answered, that loop finds its command channels closed and
                // reports each as an error (and calls shutdown again), so it
                // is not polled any more.
                biased;
                () = provider.host_shutdown_done() => send_host_reply().await,
                () = host_shutdown => {}
                signal = signals.next() => {
                    info!("{signal} received, draining");
                    provider.shutdown_now().await;
                }
            }
        }
    };

    let connection = get_connection();
    let wrpc = connection
        .get_wrpc_client(connection.provider_key())
        .await
        .context("failed to create the wRPC client")?;
    serve(&wrpc, provider, stopped).await?;
    info!("provider stopped");
    Ok(())
}

/// The signals that ask the process to stop: it drains its links first.
#[cfg(unix)]
struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl StopSignals {
    fn watch() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            terminate: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
        })
    }

    /// The name of the next signal.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

/// On Windows: Ctrl-C and Ctrl-Break, and the console closing.
#[cfg(windows)]
struct StopSignals {
    ctrl_c: tokio::signal::windows::CtrlC,
    ctrl_break: tokio::signal::windows::CtrlBreak,
    ctrl_close: tokio::signal::windows::CtrlClose,
}

#[cfg(windows)]
impl StopSignals {
    fn watch() -> anyhow::Result<Self> {
        use tokio::signal::windows;
        Ok(Self {
            ctrl_c: windows::ctrl_c().context("cannot watch Ctrl-C")?,
            ctrl_break: windows::ctrl_break().context("cannot watch Ctrl-Break")?,
            ctrl_close: windows::ctrl_close().context("cannot watch the console closing")?,
        })
    }

    /// The name of the next signal.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.ctrl_c.recv() => "Ctrl-C",
            _ = self.ctrl_break.recv() => "Ctrl-Break",
            _ = self.ctrl_close.recv() => "console close",
        }
    }
}

/// Longest wait for the lattice connection to write the answer to the
/// host's shutdown: its server may be gone.
const REPLY_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Lets the SDK's shutdown task, woken by the answer to the host, queue its
/// reply on the lattice connection, then writes it out before the process
/// ends (the SDK's command loop would have flushed it, but it is no longer
/// polled).
async fn send_host_reply() {
    tokio::task::yield_now().await;
    let nats = &get_connection().nats;
    if tokio::time::timeout(REPLY_FLUSH_TIMEOUT, nats.flush())
        .await
        .is_err()
    {
        warn!("the lattice connection did not write the shutdown answer in time");
    }
}

/// Serves the `consumer` export until `stopped` resolves: each invocation
/// runs as a task of its own. (The SDK's `serve_provider_exports` keeps
/// every finished invocation's task in a set it never empties, about half a
/// KiB per call for the life of the process.)
async fn serve(
    wrpc: &WrpcClient,
    provider: MessagingProvider,
    stopped: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let tasks = provider.tasks().clone();
    let exports = bindings::serve(wrpc, provider)
        .await
        .context("failed to serve the consumer interface")?;
    let mut invocations = futures::stream::select_all(
        exports
            .into_iter()
            .map(|(instance, name, stream)| stream.map(move |call| (instance, name, call))),
    );
    let mut stopped = std::pin::pin!(stopped);
    loop {
        tokio::select! {
            Some((instance, name, call)) = invocations.next() => match call {
                Ok(call) => {
                    // On the provider's tracker: shutdown waits for calls
                    // still running (each bounded by its own timeout).
                    tasks.spawn(async move {
                        if let Err(err) = call.await {
                            warn!(instance, name, error = %format!("{err:#}"), "failed to serve an invocation");
                        }
                    });
                }
                Err(err) => warn!(instance, name, error = %format!("{err:#}"), "failed to accept an invocation"),
            },
            () = &mut stopped => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nats_client_is_quiet_unless_rust_log_names_it() {
        assert_eq!(log_filter("", None), "async_nats=warn");
        assert_eq!(
            log_filter("info,async_nats=debug", None),
            "info,async_nats=debug,wasmcloud_provider_sdk=info"
        );
    }

    #[test]
    fn the_sdk_is_capped_at_info_only_when_debug_is_asked_for() {
        assert_eq!(log_filter("warn", None), "warn,async_nats=warn");
        assert_eq!(
            log_filter("trace", None),
            "trace,async_nats=warn,wasmcloud_provider_sdk=info"
        );
        assert_eq!(
            log_filter("", Some(&Level::Debug)),
            "async_nats=warn,wasmcloud_provider_sdk=info"
        );
    }

    #[test]
    fn debug_is_asked_for_in_every_spelling_the_filter_reads() {
        for rust_log in [
            "DEBUG",
            "Trace",
            "5",
            "info,messaging_nats=4",
            "wasmcloud_provider_sdk",
        ] {
            assert!(asks_for_debug(rust_log), "{rust_log}");
        }
        for rust_log in ["", "warn", "INFO", "3", "info,messaging_nats=warn", "off"] {
            assert!(!asks_for_debug(rust_log), "{rust_log}");
        }
    }
}
