//! `wasmcloud.toml` and `wit/deps.toml` checked against what `wash build`
//! reads (wash is not installable here): the field lists of wash's parser
//! (`WasmcloudDotToml`, `ProviderConfig`, `RustConfig`) and wit-deps'
//! manifest entries. wash ignores unknown keys silently, so a misspelt key
//! would be lost without a word: these mirrors refuse them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use messaging_nats_package::{BINARY_NAME, PROVIDER_NAME, PROVIDER_VENDOR};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Fields are read by serde to refuse unknown keys.
struct WasmcloudToml {
    name: Option<String>,
    version: Option<String>,
    revision: Option<i32>,
    language: String,
    #[serde(rename = "type")]
    project_type: String,
    path: Option<PathBuf>,
    wit: Option<PathBuf>,
    build: Option<PathBuf>,
    provider: Option<Provider>,
    rust: Option<Rust>,
    component: Option<toml::Table>,
    tinygo: Option<toml::Table>,
    go: Option<toml::Table>,
    dev: Option<toml::Table>,
    registry: Option<toml::Table>,
    overrides: Option<toml::Table>,
    metadata: Option<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Provider {
    vendor: Option<String>,
    wit_world: Option<String>,
    os: Option<String>,
    arch: Option<String>,
    rust_target: Option<String>,
    bin_name: Option<String>,
    key_directory: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Rust {
    cargo_path: Option<PathBuf>,
    target_path: Option<PathBuf>,
    debug: Option<bool>,
}

/// A wit-deps manifest entry: a URL or path as a string, or a table.
#[derive(Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum DepsEntry {
    Text(String),
    Table(DepsTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct DepsTable {
    url: Option<String>,
    sha256: Option<String>,
    sha512: Option<String>,
    path: Option<PathBuf>,
    prefix: Option<String>,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn wasmcloud_toml() -> WasmcloudToml {
    toml::from_str(&read(&repo().join("wasmcloud.toml"))).expect("wasmcloud.toml as wash reads it")
}

#[test]
fn wasmcloud_toml_declares_a_rust_provider_named_as_the_archive() {
    let file = wasmcloud_toml();
    assert_eq!(file.language, "rust");
    assert_eq!(file.project_type, "provider");
    assert_eq!(file.name.as_deref(), Some(PROVIDER_NAME));
    // No version: wash then takes Cargo.toml's, as scripts/package does.
    assert_eq!(file.version, None);
    // wash signs with `<bin_name>_service.nk` and writes
    // `build/<bin_name>.par.gz`, which these defaults must match.
    assert_eq!(file.build, None);
    let provider = file
        .provider
        .expect("a [provider] table (without it wash uses an empty vendor)");
    assert_eq!(provider.vendor.as_deref(), Some(PROVIDER_VENDOR));
    assert_eq!(provider.key_directory, None, "keys in wash's own folder");
    assert_eq!(provider.bin_name.as_deref(), Some(BINARY_NAME));
}

#[test]
fn wasmcloud_toml_bin_name_is_the_provider_binary_of_cargo_toml() {
    let cargo: toml::Table = read(&repo().join("Cargo.toml")).parse().unwrap();
    let bins: Vec<&str> = cargo["bin"]
        .as_array()
        .expect("[[bin]] entries")
        .iter()
        .filter_map(|bin| bin.get("name")?.as_str())
        .collect();
    let bin_name = wasmcloud_toml().provider.unwrap().bin_name.unwrap();
    assert!(
        bins.contains(&bin_name.as_str()),
        "{bin_name} not in {bins:?}"
    );
}

#[test]
fn wasmcloud_toml_wit_world_is_a_world_of_the_wit_package() {
    let file = wasmcloud_toml();
    let wit = repo().join(file.wit.unwrap_or_else(|| PathBuf::from("wit")));
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve.push_dir(&wit).expect("the WIT package parses");
    let world = file.provider.unwrap().wit_world.expect("wit_world");
    let worlds = &resolve.packages[package].worlds;
    assert!(
        worlds.contains_key(&world),
        "{world} not in {:?}",
        worlds.keys()
    );
}

#[test]
fn deps_toml_is_a_wit_deps_manifest_whose_paths_exist() {
    let wit = repo().join("wit");
    let entries: BTreeMap<String, DepsEntry> =
        toml::from_str(&read(&wit.join("deps.toml"))).expect("wit/deps.toml as wit-deps reads it");
    for (name, entry) in &entries {
        let path = match entry {
            DepsEntry::Text(text) if text.contains("://") => None,
            DepsEntry::Text(text) => Some(PathBuf::from(text)),
            DepsEntry::Table(table) => {
                assert!(
                    table.url.is_some() != table.path.is_some(),
                    "{name}: exactly one of url and path"
                );
                table.path.clone()
            }
        };
        if let Some(path) = path {
            assert!(
                wit.join(&path).is_dir(),
                "{name}: {} missing",
                path.display()
            );
        }
    }
    // With deps.toml present wash fetches nothing: every package the world
    // uses must already be in wit/deps.
    let mut resolve = wit_parser::Resolve::default();
    resolve
        .push_dir(&wit)
        .expect("wit/ resolves with wit/deps as it is");
}
