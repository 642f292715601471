//! Packages the provider executable as a provider archive for this machine.
//!
//! Usage: `make-par [OUT.par.gz [PROVIDER_BIN]]`. Defaults:
//! `messaging-nats.par.gz` in the current folder, and the release build of
//! the provider (see `paths::provider_bin`).

use std::path::PathBuf;

use anyhow::Result;
use messaging_nats_e2e::archive::native_target;
use messaging_nats_e2e::{build_provider_archive, paths};

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let out = args
        .next()
        .map_or_else(|| PathBuf::from("messaging-nats.par.gz"), PathBuf::from);
    let provider = match args.next() {
        Some(path) => PathBuf::from(path),
        None => paths::provider_bin()?,
    };
    let version = paths::provider_version()?;
    let par = build_provider_archive(&provider, &version, &out).await?;
    println!(
        "{} (messaging-nats {version} for {}, from {})",
        par.display(),
        native_target(),
        provider.display()
    );
    Ok(())
}
