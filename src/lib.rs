//! `messaging-nats`: a wasmCloud capability provider that implements
//! `wasmcloud:messaging@0.2.0` on NATS.
//!
//! Modules, in the direction the arrows point: [`provider`] ties the host's
//! link and lifecycle calls to the rest; a handler link is a [`link`]
//! engine fed by its sources (core subscriptions, JetStream consumers), and
//! a consumer link is the [`consumer`] path (publish, request); both use
//! [`connection`] (shared NATS clients), which uses [`config`] (typed
//! settings parsed once). [`metrics`], [`subject`] and [`trace_context`]
//! are leaves every layer may use.

mod config;
mod connection;
mod consumer;
pub mod host_data;
mod lattice;
mod link;
mod metrics;
mod provider;
mod subject;
mod trace_context;

/// Bindings generated from `wit/` (world `provider`).
pub mod bindings {
    wit_bindgen_wrpc::generate!({ world: "provider", path: "wit", generate_all });
}

pub use config::{default_durable_name, known_keys};
pub use provider::MessagingProvider;
