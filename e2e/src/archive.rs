//! Packaging of the provider executable as a provider archive (`.par.gz`),
//! the artifact a wasmCloud host starts providers from.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _, Result};
use nkeys::KeyPair;
use provider_archive::ProviderArchive;

/// Name in the archive's claims.
pub const PROVIDER_NAME: &str = "messaging-nats";

/// Vendor in the archive's claims.
pub const PROVIDER_VENDOR: &str = "wasmcloud-community";

/// The target name under which the host looks up the executable for its own
/// machine: `{ARCH}-{OS}` as in `std::env::consts`, e.g. `x86_64-linux`.
pub fn native_target() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

/// Writes a compressed provider archive to `destination` (which should end in
/// `.par.gz`) holding `provider_bin` for this machine's target, with claims
/// signed by keys generated for this call only (no seed is stored).
pub async fn build_provider_archive(
    provider_bin: &Path,
    version: &str,
    destination: &Path,
) -> Result<PathBuf> {
    let executable = tokio::fs::read(provider_bin)
        .await
        .with_context(|| format!("failed to read provider {}", provider_bin.display()))?;
    let mut archive = ProviderArchive::new(
        PROVIDER_NAME,
        PROVIDER_VENDOR,
        None,
        Some(version.to_owned()),
    );
    archive
        .add_library(&native_target(), &executable)
        .map_err(|e| anyhow!("failed to add provider executable to archive: {e}"))?;
    let issuer = KeyPair::new_account();
    let subject = KeyPair::new_service();
    archive
        .write(destination, &issuer, &subject, true)
        .await
        .map_err(|e| anyhow!("failed to write {}: {e}", destination.display()))?;
    Ok(destination.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn archive_holds_executable_for_native_target() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("provider");
        tokio::fs::write(&bin, b"#!/bin/sh\n").await.unwrap();
        let par = dir.path().join("p.par.gz");
        build_provider_archive(&bin, "1.2.3", &par).await.unwrap();

        let loaded = ProviderArchive::try_load_file(&par).await.unwrap();
        assert_eq!(loaded.targets(), vec![native_target()]);
        assert_eq!(
            loaded.target_bytes(&native_target()).unwrap(),
            b"#!/bin/sh\n"
        );
        let claims = loaded.claims().unwrap();
        let meta = claims.metadata.unwrap();
        assert_eq!(meta.name.as_deref(), Some(PROVIDER_NAME));
        assert_eq!(meta.vendor, PROVIDER_VENDOR);
        assert_eq!(meta.ver.as_deref(), Some("1.2.3"));
    }
}
