//! The wRPC clients that handler links call their components with: one per
//! component, shared by all of its links.
//!
//! A client subscribes to an inbox of its own on the lattice's connection
//! and runs a task that routes the replies (with their channels, about
//! 10 KiB), so a client per link would pay that for every link of a
//! component. The last link of a component to go takes its client along.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use wasmcloud_provider_sdk::get_connection;
use wasmcloud_provider_sdk::provider::WrpcClient;

use crate::config::keys::MAX_HANDLER_TIMEOUT;
use crate::sync::lock;

type Registry = Mutex<HashMap<String, Weak<ComponentClient>>>;

/// The clients in use, by component.
#[derive(Default)]
pub(super) struct ComponentClients {
    clients: Arc<Registry>,
}

impl ComponentClients {
    /// The client of `component`: the one its other links use, or a new
    /// one. Creating one subscribes on the lattice's NATS, which the caller
    /// bounds.
    pub(super) async fn get(&self, component: &str) -> anyhow::Result<Arc<ComponentClient>> {
        if let Some(client) = lock(&self.clients).get(component).and_then(Weak::upgrade) {
            return Ok(client);
        }
        // Each call is bounded by its link's own `handler_timeout_ms` (see
        // `link::invoke`); the client's own bound is the largest of those.
        let wrpc = get_connection()
            .get_wrpc_client_custom(component, Some(MAX_HANDLER_TIMEOUT))
            .await?;
        let client = Arc::new(ComponentClient {
            wrpc,
            component: component.to_string(),
            registry: Arc::downgrade(&self.clients),
        });
        // Two links of one component started at once: the later client
        // wins the entry; the earlier one serves its link until that goes.
        lock(&self.clients).insert(component.to_string(), Arc::downgrade(&client));
        Ok(client)
    }
}

/// A component's wRPC client; dropped with the last link that uses it.
pub(super) struct ComponentClient {
    wrpc: WrpcClient,
    component: String,
    registry: Weak<Registry>,
}

impl AsRef<WrpcClient> for ComponentClient {
    fn as_ref(&self) -> &WrpcClient {
        &self.wrpc
    }
}

impl Drop for ComponentClient {
    fn drop(&mut self) {
        let Some(registry) = self.registry.upgrade() else {
            return;
        };
        let mut clients = lock(&registry);
        // Unless a newer client took the entry meanwhile.
        if clients
            .get(&self.component)
            .is_some_and(|client| client.strong_count() == 0)
        {
            clients.remove(&self.component);
        }
    }
}
