//! The repository's `wadm.yaml` and the README's manifests only name what
//! this project ships and accepts.

use anyhow::{Context as _, Result};
use messaging_nats_e2e::manifest::{accepted_config_keys, check_manifest, wit_interfaces};
use messaging_nats_e2e::paths::repo_root;
use messaging_nats_e2e::readme::{manifests, readme};

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

/// The README's manifests for a consumer-only app, a handler-only app and
/// a durable link with secrets: wadm accepts each, and every config key
/// and secret name is one the provider reads.
#[tokio::test]
async fn readme_manifests_are_valid_wadm_with_the_providers_keys() -> Result<()> {
    let interfaces = wit_interfaces(&repo_root().join("wit"))?;
    let found = manifests(&readme()?);
    let names: Vec<&str> = found.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["consumer-only", "handler-only", "durable-secrets"]);
    for (name, yaml) in &found {
        let problems = check_manifest(yaml, &interfaces, &accepted_config_keys()).await?;
        assert!(
            problems.is_empty(),
            "README manifest {name}:\n{}",
            problems.join("\n")
        );
    }
    let durable = &found[2].1;
    assert!(
        durable.contains("secrets:") && durable.contains("stream: ORDERS"),
        "the durable manifest names its secrets and stream:\n{durable}"
    );
    Ok(())
}
