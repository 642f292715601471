//! `messaging-nats`: a wasmCloud capability provider that implements
//! `wasmcloud:messaging@0.2.0` on NATS.
//!
//! Modules, in the direction the arrows point: [`provider`] ties the host's
//! link and lifecycle calls to the rest (and asks the [`lattice`] for links
//! it missed); a handler link is a [`link`] engine, one dispatcher fed by
//! its sources (core subscriptions, JetStream consumers), and a consumer
//! link is the [`consumer`] path (publish, request); both use
//! [`connection`] (shared NATS clients), which uses [`config`] (typed
//! settings parsed once). [`bindings`], [`message`], [`metrics`],
//! [`subject`], [`sync`] and [`trace_context`] are leaves every layer may
//! use.

pub mod bindings;
mod config;
mod connection;
mod consumer;
pub mod host_data;
mod lattice;
mod link;
mod message;
mod metrics;
pub mod observability;
mod provider;
#[cfg(test)]
mod readme;
mod subject;
mod sync;
mod trace_context;

pub use config::{default_durable_name, known_keys};
pub use provider::MessagingProvider;
