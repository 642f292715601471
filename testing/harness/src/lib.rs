//! Plays everything around the `messaging-nats` provider process, one
//! module per role: `server` (private nats-server processes), `host` (the
//! provider started with the host handshake, and the host's control
//! messages) and `component` (a component that serves `handler` and calls
//! `consumer` over wRPC). The provider's tests and its benchmark use it.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub mod component;
pub mod control;
pub mod host;
pub mod server;

pub use component::{Behaviour, BrokerMessage, Caller, Component, Gate, Received};
pub use host::{pairs, rss_kib, spawn_provider, Lattice, Link, Logs, Provider, ProviderOptions};
pub use server::{
    echo_responder, round_trip, LeafTopology, NatsServer, ServerExt, ServerOptions, HUB_DOMAIN,
    LAME_DUCK_CONFIG,
};

/// How long a helper waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(10);

/// The command that starts the provider executable `binary`, run through
/// `PROVIDER_RUNNER` if that is set (an emulator for an executable of
/// another target, such as `qemu-aarch64` or `wine`; words after the first
/// are its arguments).
pub fn provider_command(binary: &std::path::Path) -> Command {
    let runner = std::env::var("PROVIDER_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(binary);
            command
        }
        None => Command::new(binary),
    }
}

/// Names the provider executable to start: `MESSAGING_NATS_PROVIDER_BIN`
/// if set, else `messaging-nats` in the cargo target folder of the running
/// test or benchmark (cargo builds the binary before its integration tests;
/// the benchmark script builds it first).
pub fn provider_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MESSAGING_NATS_PROVIDER_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("path of the running executable");
    let mut dir = exe.parent().expect("executable folder").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("messaging-nats")
}
