//! wadm, the real wasmCloud deployment manager (the `wadm` library, 0.21),
//! running in this process beside the embedded host, and a client of its
//! API for the lattice under test.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use tokio::task::JoinSet;
use wadm_client::{Client, ClientConnectOptions};
use wadm_types::api::{Status, StatusType};
use wadm_types::{Manifest, Properties};

/// How long a deployment may take to reach the state a test waits for.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(90);

/// A wadm process's tasks, and a client of its API for one lattice.
/// Dropping it stops wadm.
pub struct Wadm {
    tasks: JoinSet<anyhow::Result<()>>,
    client: Client,
    jetstream: async_nats::jetstream::Context,
    lattice: String,
}

impl Wadm {
    /// Starts wadm on the NATS server at `nats_url` (which needs
    /// JetStream: wadm keeps its state and manifests there) with a client
    /// for `lattice`.
    pub async fn start(nats_url: &str, lattice: &str) -> Result<Self> {
        let config = wadm::config::WadmConfig {
            nats_server: nats_url.to_string(),
            ..wadm::config::WadmConfig::default()
        };
        let tasks = wadm::start_wadm(config)
            .await
            .context("failed to start wadm")?;
        let client = Client::new(
            lattice,
            None,
            ClientConnectOptions {
                url: Some(nats_url.to_string()),
                ..ClientConnectOptions::default()
            },
        )
        .await
        .map_err(|err| anyhow!("cannot connect the wadm client: {err}"))?;
        let nats = async_nats::connect(nats_url)
            .await
            .with_context(|| format!("cannot connect to {nats_url}"))?;
        Ok(Self {
            tasks,
            client,
            jetstream: async_nats::jetstream::new(nats),
            lattice: lattice.to_string(),
        })
    }

    /// Waits until wadm knows the host `host_id` of its lattice (from the
    /// host's start event or, if it missed that, its next heartbeat, sent
    /// every 30 s): a manifest deployed before has nowhere to go and, seen
    /// with wadm 0.21.1, can stay unreconciled.
    pub async fn wait_knows_host(&self, host_id: &str) -> Result<()> {
        let deadline = Instant::now() + DEPLOY_TIMEOUT;
        let key = format!("host_{}", self.lattice);
        loop {
            let known = match self.jetstream.get_key_value("wadm_state").await {
                Ok(store) => store
                    .get(&key)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|hosts| String::from_utf8_lossy(&hosts).contains(host_id)),
                Err(_) => false,
            };
            if known {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("wadm did not learn of host {host_id} within {DEPLOY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Puts and deploys `yaml`, a manifest whose relative `file://./`
    /// image references are resolved against `dir`, as `wash app deploy`
    /// resolves them against the manifest's folder. Returns its name and
    /// version.
    pub async fn deploy(&self, yaml: &str, dir: &Path) -> Result<(String, String)> {
        let mut manifest: Manifest =
            serde_yaml::from_str(yaml).context("the manifest does not parse")?;
        resolve_file_images(&mut manifest, dir)?;
        self.client
            .put_and_deploy_manifest(manifest)
            .await
            .map_err(|err| anyhow!("wadm refused the manifest: {err}"))
    }

    /// Waits until the application `name` is deployed; returns its status.
    pub async fn wait_deployed(&self, name: &str) -> Result<Status> {
        let deadline = Instant::now() + DEPLOY_TIMEOUT;
        loop {
            let status = self.client.get_manifest_status(name).await;
            match status {
                Ok(status) if status.info.status_type == StatusType::Deployed => return Ok(status),
                Ok(status) if status.info.status_type == StatusType::Failed => {
                    bail!("application {name} failed: {}", status.info.message)
                }
                _ if Instant::now() > deadline => {
                    bail!("application {name} not deployed within {DEPLOY_TIMEOUT:?}: {status:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Undeploys the application `name` (its manifest stays stored).
    pub async fn undeploy(&self, name: &str) -> Result<()> {
        self.client
            .undeploy_manifest(name)
            .await
            .map(drop)
            .map_err(|err| anyhow!("wadm refused to undeploy {name}: {err}"))
    }
}

impl Drop for Wadm {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Turns each `file://` image that is not absolute into an absolute one
/// under `dir`.
fn resolve_file_images(manifest: &mut Manifest, dir: &Path) -> Result<()> {
    for component in &mut manifest.spec.components {
        let image = match &mut component.properties {
            Properties::Component { properties } => properties.image.as_mut(),
            Properties::Capability { properties } => properties.image.as_mut(),
        };
        let Some(image) = image else { continue };
        if let Some(relative) = image
            .strip_prefix("file://")
            .filter(|p| !p.starts_with('/'))
        {
            let path = dir.join(relative);
            let path = path.canonicalize().with_context(|| {
                format!("{} (image of {}) not found", path.display(), component.name)
            })?;
            *image = format!("file://{}", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_file_images_are_resolved_against_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("build")).unwrap();
        std::fs::write(dir.path().join("build/x.wasm"), b"").unwrap();
        let yaml = "apiVersion: core.oam.dev/v1beta1\nkind: Application\nmetadata:\n  name: a\n  annotations:\n    version: v1\nspec:\n  components:\n    - name: c\n      type: component\n      properties:\n        image: file://./build/x.wasm\n    - name: d\n      type: component\n      properties:\n        image: ghcr.io/x/y:1\n";
        let mut manifest: Manifest = serde_yaml::from_str(yaml).unwrap();
        resolve_file_images(&mut manifest, dir.path()).unwrap();
        let images: Vec<_> = manifest
            .spec
            .components
            .iter()
            .map(|c| match &c.properties {
                Properties::Component { properties } => properties.image.clone().unwrap(),
                Properties::Capability { properties } => properties.image.clone().unwrap(),
            })
            .collect();
        let expected = dir.path().canonicalize().unwrap().join("build/x.wasm");
        assert_eq!(images[0], format!("file://{}", expected.display()));
        assert_eq!(images[1], "ghcr.io/x/y:1");
    }
}
