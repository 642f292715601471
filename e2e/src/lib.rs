//! End-to-end harness for the `messaging-nats` provider.
//!
//! Runs the provider the way users do: packaged as a provider archive, started
//! by a real wasmCloud host (embedded here), linked to a real component, with
//! a real `nats-server` in between. The tests in `tests/` and the `demo`
//! binary are built on these pieces.

pub mod archive;
pub mod host;
pub mod manifest;
pub mod nats;
pub mod paths;
pub mod readme;
pub mod wadm;
pub mod wash;

pub use archive::build_provider_archive;
pub use host::Host;
pub use nats::NatsServer;

/// Sends the harness's and the host's logs to the test output when
/// `E2E_LOG` holds a filter such as `info` or `wasmcloud_host=debug`.
pub fn init_logging() {
    if let Ok(filter) = std::env::var("E2E_LOG") {
        // Only the first call installs a subscriber; later ones change nothing.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}
