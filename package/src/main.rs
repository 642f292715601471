//! `package`: writes the provider archive from an already built provider.
//! `scripts/package` builds the provider and runs this.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _, Result};
use messaging_nats_package::targets::{check_executable, target, TARGETS};
use messaging_nats_package::{default_keys_dir, Package};
use provider_archive::ProviderArchive;

const USAGE: &str = "\
usage: package --target NAME=PATH... [--out PATH] [--keys-dir DIR] [--fresh-keys]
       package --check ARCHIVE
       package --print-targets

Writes, or checks, the messaging-nats provider archive.
  --target NAME=PATH  add the executable at PATH for the host target NAME
                      (x86_64-linux, aarch64-macos, ...); each is checked first
  --out PATH          archive to write (default: build/messaging-nats.par.gz in the repository)
  --keys-dir DIR      folder of the signing keys (default: $WASH_KEYS or ~/.wash/keys);
                      missing keys are created there and reused by later builds
  --fresh-keys        replace the stored keys with new ones (a new provider identity)
  --check ARCHIVE     check that ARCHIVE holds an executable for every target, each one a
                      host of that target can start, and print what each is
  --print-targets     print the targets, one a line: host name, Rust target, executable
                      suffix (or -), oldest macOS (or -)";

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
    let mut executables = Vec::new();
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
            "--keys-dir" => keys_dir = Some(PathBuf::from(value("--keys-dir")?)),
            "--fresh-keys" => fresh_keys = true,
            "--target" => {
                let spec = value("--target")?;
                let Some((name, path)) = spec.split_once('=') else {
                    bail!("--target takes NAME=PATH, not {spec:?}");
                };
                executables.push((name.to_string(), PathBuf::from(path)));
            }
            "--check" => return check(Path::new(&value("--check")?)).await,
            "--print-targets" => {
                for t in TARGETS {
                    let or_dash =
                        |s: Option<&str>| s.filter(|s| !s.is_empty()).unwrap_or("-").to_string();
                    println!(
                        "{} {} {} {}",
                        t.host_name,
                        t.rust_triple,
                        or_dash(Some(t.exe_suffix)),
                        or_dash(t.macos_min)
                    );
                }
                return Ok(());
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if executables.is_empty() {
        bail!("no executable to package: name each with --target NAME=PATH\n{USAGE}");
    }
    for (name, path) in &executables {
        let target = target(name).with_context(|| {
            format!(
                "unknown target {name:?}; the targets are {}",
                target_names()
            )
        })?;
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read the executable {}", path.display()))?;
        check_executable(target, &bytes)?;
    }
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

fn target_names() -> String {
    TARGETS.map(|t| t.host_name).join(", ")
}

/// Checks every executable of the archive at `path` (see `--check`).
async fn check(path: &Path) -> Result<()> {
    let archive = ProviderArchive::try_load_file(path)
        .await
        .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
    let mut held = archive.targets();
    held.sort();
    let mut wanted: Vec<_> = TARGETS.iter().map(|t| t.host_name.to_string()).collect();
    wanted.sort();
    if held != wanted {
        bail!(
            "{} holds executables for {}, not for every target ({})",
            path.display(),
            held.join(", "),
            target_names()
        );
    }
    for target in TARGETS {
        let bytes = archive
            .target_bytes(target.host_name)
            .with_context(|| format!("no executable for {}", target.host_name))?;
        println!("{}", check_executable(&target, &bytes)?);
    }
    println!(
        "{}: {} targets, {:.1} MB",
        path.display(),
        TARGETS.len(),
        std::fs::metadata(path)?.len() as f64 / 1e6
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
