//! `messaging-nats`: a wasmCloud capability provider that implements
//! `wasmcloud:messaging@0.2.0` on NATS.
//!
//! Modules, in the direction the arrows point: [`config`] parses maps into
//! settings; [`connection`] opens and shares NATS clients; [`consumer`]
//! (publish/request), [`delivery`] (subscriptions to `handle-message`) and
//! [`durable`] (JetStream consumers to `handle-message`) move messages;
//! [`metrics`] counts what they do; [`provider`] ties them to the host's link
//! and lifecycle calls.

pub mod config;
pub mod connection;
pub mod consumer;
pub mod delivery;
pub mod durable;
pub mod host_data;
pub mod metrics;
pub mod provider;
pub mod subject;
pub mod trace_context;

/// Bindings generated from `wit/` (world `provider`).
pub mod bindings {
    wit_bindgen_wrpc::generate!({ world: "provider", path: "wit", generate_all });
}

pub use provider::MessagingProvider;
