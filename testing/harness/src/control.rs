//! The lattice's control interface as hosts answer it, for what the
//! provider asks: the link list (`link.get`) and named config
//! (`config.get.<name>`). Holds only what a test puts in it: links the
//! lattice knows, whether or not a put reached the provider.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use serde_json::{json, Value};

use crate::server::round_trip;

/// What the lattice holds; clones share it.
#[derive(Clone, Default)]
pub struct ControlInterface {
    state: Arc<Mutex<Held>>,
}

#[derive(Default)]
struct Held {
    /// Links as the control interface lists them (config by name).
    links: Vec<Value>,
    configs: HashMap<String, HashMap<String, String>>,
}

impl ControlInterface {
    /// Answers the lattice's `link.get` and `config.get.*` on `client` from
    /// now on (confirmed by a server round trip) until `client` closes.
    pub async fn serve(client: &async_nats::Client, lattice: &str) -> Self {
        let this = Self::default();
        let prefix = format!("wasmbus.ctl.v1.{lattice}");
        let mut links = client
            .subscribe(format!("{prefix}.link.get"))
            .await
            .expect("subscribe link.get");
        let mut configs = client
            .subscribe(format!("{prefix}.config.get.*"))
            .await
            .expect("subscribe config.get");
        round_trip(client).await;
        let (state, nats) = (this.state.clone(), client.clone());
        tokio::spawn(async move {
            loop {
                let (msg, answer) = tokio::select! {
                    Some(msg) = links.next() => {
                        let links = state.lock().expect("control state").links.clone();
                        (msg, json!({"success": true, "message": "", "response": links}))
                    }
                    Some(msg) = configs.next() => {
                        let name = msg.subject.rsplit('.').next().unwrap_or_default().to_string();
                        let config = state.lock().expect("control state").configs.get(&name).cloned();
                        let answer = match config {
                            Some(config) => json!({"success": true, "message": "", "response": config}),
                            None => json!({"success": true, "message": "Configuration not found"}),
                        };
                        (msg, answer)
                    }
                    else => return,
                };
                if let Some(reply) = msg.reply {
                    let _ = nats.publish(reply, answer.to_string().into()).await;
                }
            }
        });
        this
    }

    /// The lattice now holds `link` (as the control interface lists it)
    /// and the named configs it refers to.
    pub fn hold(&self, link: Value, configs: Vec<(String, HashMap<String, String>)>) {
        let mut held = self.state.lock().expect("control state");
        held.links.push(link);
        held.configs.extend(configs);
    }
}
