//! Where the artifacts under test live, overridable through the environment.

use std::env;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

/// Overrides the path of the provider executable.
pub const PROVIDER_BIN_ENV: &str = "MESSAGING_NATS_PROVIDER_BIN";

/// Overrides the path of the example component.
pub const COMPONENT_WASM_ENV: &str = "ECHO_COMPONENT_WASM";

/// The repository root (the parent of the e2e crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// The cargo target dir of a crate whose manifest is in `crate_dir`,
/// honouring `CARGO_TARGET_DIR` as cargo does.
fn target_dir(crate_dir: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => crate_dir.join("target"),
    }
}

/// The cargo target dir of the provider's workspace, where a `wash build`
/// in a copy of the repository finds its dependencies already built.
pub fn provider_target_dir() -> PathBuf {
    target_dir(&repo_root())
}

/// The provider executable the archive ships for this machine (the static
/// x86_64-linux one here), as `scripts/package` builds it.
pub fn provider_bin() -> Result<PathBuf> {
    let host_name = messaging_nats_package::native_target();
    let target = messaging_nats_package::targets::target(&host_name)
        .with_context(|| format!("the archive has no executable for {host_name}"))?;
    existing(
        PROVIDER_BIN_ENV,
        target_dir(&repo_root())
            .join(target.rust_triple)
            .join("release")
            .join(format!("messaging-nats{}", target.exe_suffix)),
        "scripts/package --native",
    )
}

/// The release build of `examples/echo-component` for `wasm32-wasip2`.
pub fn echo_component_wasm() -> Result<PathBuf> {
    let crate_dir = repo_root().join("examples").join("echo-component");
    existing(
        COMPONENT_WASM_ENV,
        target_dir(&crate_dir)
            .join("wasm32-wasip2")
            .join("release")
            .join("echo_component.wasm"),
        "cargo build --release --target wasm32-wasip2 --manifest-path examples/echo-component/Cargo.toml",
    )
}

fn existing(env_name: &str, default: PathBuf, build_hint: &str) -> Result<PathBuf> {
    let path = env::var_os(env_name).map_or(default, PathBuf::from);
    if !path.is_file() {
        bail!(
            "{} not found; build it with `{build_hint}` or set {env_name}",
            path.display()
        );
    }
    Ok(path)
}

/// The `[package] version` of the provider's Cargo.toml at the repository root.
pub fn provider_version() -> Result<String> {
    let manifest_path = repo_root().join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("failed to read {}", manifest_path.display()))?;
    package_version(&text).with_context(|| format!("in {}", manifest_path.display()))
}

fn package_version(manifest: &str) -> Result<String> {
    let value: toml::Table = toml::from_str(manifest).context("invalid TOML")?;
    value
        .get("package")
        .and_then(|package| package.get("version"))
        .and_then(toml::Value::as_str)
        .map(str::to_owned)
        .context("no string [package] version")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_package_version() {
        let manifest =
            "[package]\nname = \"x\"\nversion = \"1.2.3\"\n[dependencies]\nversion = \"9\"\n";
        assert_eq!(package_version(manifest).unwrap(), "1.2.3");
    }

    #[test]
    fn rejects_manifest_without_version() {
        assert!(package_version("[package]\nname = \"x\"\n").is_err());
    }
}
