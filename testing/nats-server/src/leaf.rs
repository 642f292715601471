//! A leaf node joined to a hub cluster, as wasmCloud runs hosts at the
//! edge: the hub's JetStream is domain [`HUB_DOMAIN`], the leaf's own is
//! [`LEAF_DOMAIN`], and each of the leaf's connections to a hub node goes
//! through a [`Cut`], so a test can take the leaf off the hub while the
//! clients of both stay connected to their own servers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{unused_port, NatsServer, Options};

/// The hub's JetStream domain.
pub const HUB_DOMAIN: &str = "hub";
/// The leaf node's own JetStream domain.
pub const LEAF_DOMAIN: &str = "leaf";

/// How long [`LeafTopology::start`] waits for the leaf to reach the hub.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A hub cluster and a leaf node server connected to every hub node.
pub struct LeafTopology {
    pub hub: Vec<NatsServer>,
    pub leaf: NatsServer,
    cuts: Vec<Cut>,
}

impl LeafTopology {
    /// `hub_nodes` clustered servers with JetStream in [`HUB_DOMAIN`], each
    /// taking leaf connections, and a leaf server with JetStream in
    /// [`LEAF_DOMAIN`] whose remote names all of them (through a cut each).
    /// Returns once the leaf has a connection to the hub.
    pub async fn start(hub_nodes: usize) -> Self {
        let leaf_ports: Vec<u16> = (0..hub_nodes).map(|_| unused_port()).collect();
        let hub = NatsServer::cluster_with(
            hub_nodes,
            Options {
                jetstream: true,
                jetstream_domain: Some(HUB_DOMAIN.into()),
                ..Options::default()
            },
            // Not advertised: the leaf would learn the nodes' own leaf
            // ports from them and reconnect around its cuts.
            |i| {
                format!(
                    "leafnodes {{ listen: \"127.0.0.1:{}\", no_advertise: true }}\n",
                    leaf_ports[i]
                )
            },
        );
        let mut cuts = Vec::new();
        for port in &leaf_ports {
            cuts.push(Cut::start(*port).await);
        }
        let urls = cuts
            .iter()
            .map(|cut| format!("\"nats-leaf://127.0.0.1:{}\"", cut.port))
            .collect::<Vec<_>>()
            .join(", ");
        let leaf = NatsServer::with(Options {
            config: format!(
                "server_name: leaf\nleafnodes {{\n  reconnect: \"1s\"\n  remotes: [ {{ urls: [{urls}] }} ]\n}}\n"
            ),
            jetstream: true,
            jetstream_domain: Some(LEAF_DOMAIN.into()),
        });
        let topology = Self { hub, leaf, cuts };
        topology.wait_joined(true).await;
        topology
    }

    /// Takes the leaf off the hub (`true`: its connections are closed and
    /// new ones refused) or lets it reconnect (`false`).
    pub fn cut(&self, cut: bool) {
        for link in &self.cuts {
            link.set(cut);
        }
    }

    /// Waits until the leaf server has (`true`) or has no (`false`)
    /// connection to the hub, as its monitoring says.
    pub async fn wait_joined(&self, joined: bool) {
        let deadline = Instant::now() + JOIN_TIMEOUT;
        loop {
            let leafz = self.leaf.monitor("/leafz");
            let count = leafz["leafnodes"].as_u64().unwrap_or(0);
            if (count > 0) == joined {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "leaf connections to the hub: {count} after {JOIN_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The hub nodes' client URLs, comma-separated.
    pub fn hub_urls(&self) -> String {
        self.hub
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A TCP relay that can be cut: while cut, its connections are closed and
/// new ones are closed as they arrive.
struct Cut {
    port: u16,
    cut: Arc<watch::Sender<bool>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Cut {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a cut");
        let port = listener.local_addr().expect("cut address").port();
        let cut = Arc::new(watch::Sender::new(false));
        let watching = Arc::clone(&cut);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut = watching.subscribe();
                if *cut.borrow_and_update() {
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Self { port, cut, accept }
    }

    fn set(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        self.accept.abort();
        self.set(true);
    }
}
