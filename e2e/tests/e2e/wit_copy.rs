//! The example component builds against the same messaging WIT as the provider.

use anyhow::{Context as _, Result};
use messaging_nats_e2e::paths::repo_root;

#[test]
fn component_wit_copy_is_identical() -> Result<()> {
    let root = repo_root();
    let read = |path: std::path::PathBuf| {
        std::fs::read(&path).with_context(|| format!("failed to read {}", path.display()))
    };
    let provider = read(root.join("wit/deps/messaging/messaging.wit"))?;
    let component = read(root.join("examples/echo-component/wit/deps/messaging/messaging.wit"))?;
    assert!(provider == component, "examples/echo-component/wit/deps/messaging/messaging.wit differs from wit/deps/messaging/messaging.wit");
    Ok(())
}
