//! Behaviour of the provider binary against a real `nats-server`, driven
//! through the host's control subjects and wRPC as a component would.

mod support;

mod at_least_once;
mod auth;
mod config;
mod confirmed;
mod delivery;
mod durable;
mod faults;
mod leaf;
mod lifecycle;
mod link;
mod memory;
mod metrics;
mod missed;
mod observability;
mod order;
mod pinned;
mod publish;
mod request;
mod security;
