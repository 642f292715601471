//! The repository's `wadm.yaml` only names what this project ships.

use anyhow::{Context as _, Result};
use messaging_nats_e2e::manifest::{accepted_config_keys, check_manifest, wit_interfaces};
use messaging_nats_e2e::paths::repo_root;

#[tokio::test]
async fn wadm_manifest_matches_project() -> Result<()> {
    let root = repo_root();
    let path = root.join("wadm.yaml");
    let yaml = std::fs::read_to_string(&path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    let interfaces = wit_interfaces(&root.join("wit"))?;

    let problems = check_manifest(&yaml, &interfaces, &accepted_config_keys()).await?;

    assert!(
        problems.is_empty(),
        "{}:\n{}",
        path.display(),
        problems.join("\n")
    );
    Ok(())
}
