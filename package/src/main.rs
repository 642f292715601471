//! `package`: writes the provider archive from an already built provider.
//! `scripts/package` builds the provider and runs this.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use messaging_nats_package::{default_keys_dir, native_target, Package, BINARY_NAME};

const USAGE: &str = "\
usage: package [--out PATH] [--bin PATH] [--target NAME=PATH]... [--keys-dir DIR] [--fresh-keys]

Writes the messaging-nats provider archive.
  --out PATH          archive to write (default: build/messaging-nats.par.gz in the repository)
  --bin PATH          provider executable for this machine's target
                      (default: $CARGO_TARGET_DIR or target/, then release/messaging-nats)
  --target NAME=PATH  also add the executable at PATH for target NAME (e.g. aarch64-linux)
  --keys-dir DIR      folder of the signing keys (default: $WASH_KEYS or ~/.wash/keys);
                      missing keys are created there and reused by later builds
  --fresh-keys        replace the stored keys with new ones (a new provider identity)";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("package: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf();
    let mut out = repo.join("build").join("messaging-nats.par.gz");
    let mut bin = None;
    let mut others = Vec::new();
    let mut keys_dir = None;
    let mut fresh_keys = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--out" => out = PathBuf::from(value("--out")?),
            "--bin" => bin = Some(PathBuf::from(value("--bin")?)),
            "--keys-dir" => keys_dir = Some(PathBuf::from(value("--keys-dir")?)),
            "--fresh-keys" => fresh_keys = true,
            "--target" => {
                let spec = value("--target")?;
                let Some((name, path)) = spec.split_once('=') else {
                    bail!("--target takes NAME=PATH, not {spec:?}");
                };
                others.push((name.to_string(), PathBuf::from(path)));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let bin = match bin {
        Some(bin) => bin,
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| repo.join("target"), PathBuf::from)
            .join("release")
            .join(BINARY_NAME),
    };
    if !bin.is_file() {
        bail!(
            "no provider executable at {}: build it first (cargo build --release --bin {BINARY_NAME}) or name it with --bin",
            bin.display()
        );
    }
    let mut executables = vec![(native_target(), bin)];
    executables.extend(others);
    let keys_dir = match keys_dir {
        Some(dir) => dir,
        None => default_keys_dir()?,
    };
    let package = Package {
        executables,
        version: provider_version(&repo)?,
        wit_dir: repo.join("wit"),
        keys_dir,
        fresh_keys,
    };
    let built = package.write(&out).await?;
    println!(
        "wrote {} (version {}, targets {}, provider key {}, keys in {})",
        built.path.display(),
        package.version,
        package
            .executables
            .iter()
            .map(|(target, _)| target.as_str())
            .collect::<Vec<_>>()
            .join(","),
        built.subject,
        package.keys_dir.display()
    );
    Ok(())
}

/// The provider crate's version, from its `Cargo.toml`.
fn provider_version(repo: &Path) -> Result<String> {
    let manifest = repo.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let value: toml::Table = text
        .parse()
        .with_context(|| format!("cannot parse {}", manifest.display()))?;
    value
        .get("package")
        .and_then(|p| p.get("version"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .with_context(|| format!("no [package] version in {}", manifest.display()))
}
