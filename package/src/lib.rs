//! Packaging of the provider as a provider archive (`.par.gz`), the artifact
//! a wasmCloud host starts providers from, without building a host.
//!
//! The archive holds one executable per target (`{arch}-{os}`, as the host
//! looks it up), the provider's WIT package encoded as `wash build` embeds
//! it, and claims signed with keys from a key folder laid out as `wash`
//! keeps it (`<user>_account.nk`, `<binary>_service.nk`), so that every
//! build carries the same identity and `wash build` signs alike.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use nkeys::KeyPair;
use provider_archive::ProviderArchive;

pub mod targets;

/// Name in the archive's claims.
pub const PROVIDER_NAME: &str = "messaging-nats";
/// Vendor in the archive's claims (the `vendor` of `wasmcloud.toml`).
pub const PROVIDER_VENDOR: &str = "wasmcloud-community";
/// The provider executable's name (the `bin_name` of `wasmcloud.toml`).
pub const BINARY_NAME: &str = "messaging-nats";

/// The target the host looks up for its own machine: `{ARCH}-{OS}` as in
/// `std::env::consts`, e.g. `x86_64-linux`.
pub fn native_target() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

/// Where signing keys live unless told otherwise: `$WASH_KEYS`, else
/// `~/.wash/keys`, as `wash` has it.
pub fn default_keys_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WASH_KEYS").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow!("HOME is not set; name a key folder with --keys-dir"))?;
    Ok(Path::new(&home).join(".wash").join("keys"))
}

/// What goes into an archive.
pub struct Package {
    /// Executables by target name; the first is usually [`native_target`].
    pub executables: Vec<(String, PathBuf)>,
    /// Version in the claims (the crate's version).
    pub version: String,
    /// The `wit/` folder whose package is embedded.
    pub wit_dir: PathBuf,
    /// Folder of the signing keys; created, with the keys, when missing.
    pub keys_dir: PathBuf,
    /// Replace the keys in `keys_dir` with new ones (a new identity).
    pub fresh_keys: bool,
}

/// What a build produced.
#[derive(Debug)]
pub struct Built {
    pub path: PathBuf,
    /// Public key of the provider (the claims' subject).
    pub subject: String,
    /// Public key of the signing account (the claims' issuer).
    pub issuer: String,
}

impl Package {
    /// Writes the compressed archive to `destination` (ending in `.par.gz`).
    pub async fn write(&self, destination: &Path) -> Result<Built> {
        if self.executables.is_empty() {
            bail!("no executable to package");
        }
        let mut archive = ProviderArchive::new(
            PROVIDER_NAME,
            PROVIDER_VENDOR,
            None,
            Some(self.version.clone()),
        );
        archive
            .add_wit_world(&encode_wit(&self.wit_dir)?)
            .map_err(|e| anyhow!("cannot embed the WIT package: {e}"))?;
        for (target, path) in &self.executables {
            let executable = tokio::fs::read(path)
                .await
                .with_context(|| format!("cannot read the executable {}", path.display()))?;
            archive
                .add_library(target, &executable)
                .map_err(|e| anyhow!("cannot add {} as {target}: {e}", path.display()))?;
        }
        let issuer = signing_key(
            &self.keys_dir,
            &account_key_file(),
            Role::Account,
            self.fresh_keys,
        )?;
        let subject = signing_key(
            &self.keys_dir,
            &format!("{BINARY_NAME}_service.nk"),
            Role::Service,
            self.fresh_keys,
        )?;
        if let Some(parent) = destination.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        archive
            .write(destination, &issuer, &subject, true)
            .await
            .map_err(|e| anyhow!("cannot write {}: {e}", destination.display()))?;
        Ok(Built {
            path: destination.to_path_buf(),
            subject: subject.public_key(),
            issuer: issuer.public_key(),
        })
    }
}

/// The provider's WIT package, encoded as a wasm package the way
/// `wash build` embeds it (`world.wasm` in the archive).
pub fn encode_wit(wit_dir: &Path) -> Result<Vec<u8>> {
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve
        .push_dir(wit_dir)
        .with_context(|| format!("cannot read the WIT package in {}", wit_dir.display()))?;
    wit_component::encode(&resolve, package)
        .with_context(|| format!("cannot encode the WIT package in {}", wit_dir.display()))
}

/// `wash`'s name for the account key: `<user>_account.nk`.
fn account_key_file() -> String {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "user".to_string());
    format!("{user}_account.nk")
}

#[derive(Clone, Copy)]
enum Role {
    Account,
    Service,
}

/// Reads the seed in `dir/file`, or makes one (and the folder) when it is
/// missing or `fresh` is asked for. Seeds are written readable by the owner
/// only.
fn signing_key(dir: &Path, file: &str, role: Role, fresh: bool) -> Result<KeyPair> {
    let path = dir.join(file);
    if !fresh {
        match std::fs::read_to_string(&path) {
            Ok(seed) => {
                return KeyPair::from_seed(seed.trim()).with_context(|| {
                    format!("{} does not hold a valid nkey seed", path.display())
                });
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
        }
    }
    let key = match role {
        Role::Account => KeyPair::new_account(),
        Role::Service => KeyPair::new_service(),
    };
    let seed = key
        .seed()
        .map_err(|e| anyhow!("cannot take the new key's seed: {e}"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_private(&path, seed.as_bytes())?;
    Ok(key)
}

/// Writes `bytes` to a temporary file and renames it into place, so that
/// a build running at the same time reads a whole seed or none.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&temporary)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wit_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit")
    }

    fn package(dir: &Path, fresh_keys: bool) -> Package {
        let bin = dir.join("provider");
        std::fs::write(&bin, b"#!/bin/sh\n").unwrap();
        Package {
            executables: vec![(native_target(), bin)],
            version: "1.2.3".to_string(),
            wit_dir: wit_dir(),
            keys_dir: dir.join("keys"),
            fresh_keys,
        }
    }

    #[tokio::test]
    async fn archive_holds_the_executable_claims_and_wit_package() {
        let dir = tempfile::tempdir().unwrap();
        let built = package(dir.path(), false)
            .write(&dir.path().join("out/p.par.gz"))
            .await
            .unwrap();

        let loaded = ProviderArchive::try_load_file(&built.path).await.unwrap();
        assert_eq!(loaded.targets(), vec![native_target()]);
        assert_eq!(
            loaded.target_bytes(&native_target()).unwrap(),
            b"#!/bin/sh\n"
        );
        let claims = loaded.claims().unwrap();
        assert_eq!(claims.subject, built.subject);
        assert_eq!(claims.issuer, built.issuer);
        let meta = claims.metadata.unwrap();
        assert_eq!(meta.name.as_deref(), Some(PROVIDER_NAME));
        assert_eq!(meta.vendor, PROVIDER_VENDOR);
        assert_eq!(meta.ver.as_deref(), Some("1.2.3"));
        let world = loaded.wit_world().expect("WIT package embedded");
        assert_eq!(world, encode_wit(&wit_dir()).unwrap().as_slice());
        // A wasm package that names the interfaces the provider serves.
        let text = String::from_utf8_lossy(world);
        assert!(world.starts_with(b"\0asm"));
        assert!(
            text.contains("wasmcloud:messaging/consumer@0.2.0"),
            "consumer interface"
        );
    }

    #[tokio::test]
    async fn every_build_signs_with_the_keys_of_the_key_folder() {
        let dir = tempfile::tempdir().unwrap();
        let first = package(dir.path(), false)
            .write(&dir.path().join("a.par.gz"))
            .await
            .unwrap();
        let second = package(dir.path(), false)
            .write(&dir.path().join("b.par.gz"))
            .await
            .unwrap();
        assert_eq!(first.subject, second.subject);
        assert_eq!(first.issuer, second.issuer);
        let keys: Vec<_> = std::fs::read_dir(dir.path().join("keys"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            keys.contains(&format!("{BINARY_NAME}_service.nk")),
            "{keys:?}"
        );
        assert!(keys.iter().any(|k| k.ends_with("_account.nk")), "{keys:?}");
    }

    #[tokio::test]
    async fn fresh_keys_give_a_new_identity_and_replace_the_stored_ones() {
        let dir = tempfile::tempdir().unwrap();
        let old = package(dir.path(), false)
            .write(&dir.path().join("a.par.gz"))
            .await
            .unwrap();
        let fresh = package(dir.path(), true)
            .write(&dir.path().join("b.par.gz"))
            .await
            .unwrap();
        let again = package(dir.path(), false)
            .write(&dir.path().join("c.par.gz"))
            .await
            .unwrap();
        assert_ne!(old.subject, fresh.subject);
        assert_ne!(old.issuer, fresh.issuer);
        assert_eq!(fresh.subject, again.subject, "the fresh keys are kept");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn seeds_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        package(dir.path(), false)
            .write(&dir.path().join("a.par.gz"))
            .await
            .unwrap();
        let seed = dir
            .path()
            .join("keys")
            .join(format!("{BINARY_NAME}_service.nk"));
        let mode = std::fs::metadata(seed).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn a_broken_seed_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        std::fs::write(
            dir.path()
                .join("keys")
                .join(format!("{BINARY_NAME}_service.nk")),
            "not a seed",
        )
        .unwrap();
        let err = package(dir.path(), false)
            .write(&dir.path().join("a.par.gz"))
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("_service.nk"), "{err:#}");
    }

    #[tokio::test]
    async fn other_targets_are_added_beside_the_native_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut package = package(dir.path(), false);
        let arm = dir.path().join("arm");
        std::fs::write(&arm, b"arm binary").unwrap();
        package.executables.push(("aarch64-linux".to_string(), arm));
        let built = package.write(&dir.path().join("a.par.gz")).await.unwrap();
        let loaded = ProviderArchive::try_load_file(&built.path).await.unwrap();
        let mut targets = loaded.targets();
        targets.sort();
        let mut expected = vec!["aarch64-linux".to_string(), native_target()];
        expected.sort();
        assert_eq!(targets, expected);
        assert_eq!(loaded.target_bytes("aarch64-linux").unwrap(), b"arm binary");
    }
}
