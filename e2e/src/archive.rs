//! The provider archive the tests and the demo start the provider from,
//! written by the `messaging-nats-package` crate (what `scripts/package`
//! runs), so that the e2e tests exercise the shipped packaging.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
pub use messaging_nats_package::native_target;
use messaging_nats_package::Package;

/// Writes a provider archive to `destination` holding `provider_bin` for
/// this machine's target and the provider's WIT package, signed with keys
/// kept in a `keys` folder beside `destination` (a test's own folder: the
/// user's `~/.wash/keys` is left alone).
pub async fn build_provider_archive(
    provider_bin: &Path,
    version: &str,
    destination: &Path,
) -> Result<PathBuf> {
    let folder = destination
        .parent()
        .context("the archive path has no folder")?;
    let package = Package {
        executables: vec![(native_target(), provider_bin.to_path_buf())],
        version: version.to_string(),
        wit_dir: crate::paths::repo_root().join("wit"),
        keys_dir: folder.join("keys"),
        fresh_keys: false,
    };
    Ok(package.write(destination).await?.path)
}
