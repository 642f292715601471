//! Consistency checks of a wadm application manifest against what this
//! project ships: the components it defines, the WIT interfaces, and the
//! config keys the provider accepts.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Context as _, Result};
use wadm_types::validation::{validate_manifest_bytes, ValidationFailureLevel};
use wadm_types::{ConfigProperty, Manifest, Properties, SecretProperty, TraitProperty};
use wit_parser::Resolve;

/// Every config key the provider accepts, from the provider crate itself.
pub fn accepted_config_keys() -> Vec<&'static str> {
    messaging_nats::known_keys().collect()
}

/// Interfaces defined by the WIT under `wit_dir`, as `namespace:package/name`
/// (versions left out, as wadm links name them). `wit_dir` is either a package
/// folder (with an optional `deps/`) or a folder holding only `deps/`.
pub fn wit_interfaces(wit_dir: &Path) -> Result<BTreeSet<String>> {
    let mut resolve = Resolve::new();
    if has_wit_files(wit_dir)? {
        resolve
            .push_dir(wit_dir)
            .with_context(|| format!("failed to parse WIT in {}", wit_dir.display()))?;
    } else {
        let deps = wit_dir.join("deps");
        let entries = std::fs::read_dir(&deps).with_context(|| {
            format!(
                "no WIT files in {} nor {}",
                wit_dir.display(),
                deps.display()
            )
        })?;
        for entry in entries {
            let path = entry?.path();
            resolve
                .push_path(&path)
                .with_context(|| format!("failed to parse WIT in {}", path.display()))?;
        }
    }
    Ok(resolve
        .interfaces
        .iter()
        .filter_map(|(_, interface)| {
            let package = &resolve.packages[interface.package?].name;
            Some(format!(
                "{}:{}/{}",
                package.namespace,
                package.name,
                interface.name.as_ref()?
            ))
        })
        .collect())
}

fn has_wit_files(dir: &Path) -> Result<bool> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("failed to read {}", dir.display()))?;
    for entry in entries {
        if entry?.path().extension().is_some_and(|ext| ext == "wit") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Problems found in the manifest `yaml`: wadm's own validation errors, links
/// to components the manifest does not define, links in the wrong direction
/// or on interfaces missing from `interfaces`, and provider config keys or
/// link secret names missing from `accepted_keys`. Empty when the manifest is consistent.
pub async fn check_manifest(
    yaml: &str,
    interfaces: &BTreeSet<String>,
    accepted_keys: &[&str],
) -> Result<Vec<String>> {
    let (manifest, failures) = validate_manifest_bytes(yaml)
        .await
        .context("failed to parse manifest")?;
    let mut problems: Vec<String> = failures
        .iter()
        .filter(|f| matches!(f.level, ValidationFailureLevel::Error))
        .map(|f| format!("wadm: {}", f.msg))
        .collect();
    problems.extend(check_parsed(&manifest, interfaces, accepted_keys));
    Ok(problems)
}

/// What kind of entry a manifest name refers to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Component,
    Capability,
}

fn check_parsed(
    manifest: &Manifest,
    interfaces: &BTreeSet<String>,
    accepted_keys: &[&str],
) -> Vec<String> {
    let mut problems = Vec::new();
    let kinds: HashMap<&str, Kind> = manifest
        .components()
        .map(|c| {
            let kind = match c.properties {
                Properties::Component { .. } => Kind::Component,
                Properties::Capability { .. } => Kind::Capability,
            };
            (c.name.as_str(), kind)
        })
        .collect();
    let mut check_keys = |owner: &str, configs: &[ConfigProperty], secrets: &[SecretProperty]| {
        for secret in secrets {
            if !accepted_keys.contains(&secret.name.as_str()) {
                problems.push(format!(
                    "{owner}: secret {:?} names no key the provider accepts",
                    secret.name
                ));
            }
        }
        for config in configs {
            for key in config.properties.iter().flat_map(HashMap::keys) {
                if !accepted_keys.contains(&key.as_str()) {
                    problems.push(format!(
                        "{owner}: config {} has key {key:?}, which the provider does not accept",
                        config.name
                    ));
                }
            }
        }
    };

    for component in manifest.components() {
        if let Properties::Capability { properties } = &component.properties {
            check_keys(
                &format!("capability {}", component.name),
                &properties.config,
                &properties.secrets,
            );
        }
    }

    let mut link_problems = Vec::new();
    for component in manifest.components() {
        let source = component.name.as_str();
        let links = component
            .traits
            .iter()
            .flatten()
            .filter_map(|t| match &t.properties {
                TraitProperty::Link(link) => Some(link),
                _ => None,
            });
        for link in links {
            let target = link.target.name.as_str();
            let what = format!("link {source} -> {target}");
            let source_kind = kinds.get(source).copied();
            let Some(target_kind) = kinds.get(target).copied() else {
                link_problems.push(format!(
                    "{what}: target {target} is not defined in the manifest"
                ));
                continue;
            };
            for interface in &link.interfaces {
                let name = format!("{}:{}/{interface}", link.namespace, link.package);
                if !interfaces.contains(&name) {
                    link_problems.push(format!("{what}: interface {name} is not in our WIT"));
                }
                let expected = match interface.as_str() {
                    "handler" => Some((Kind::Capability, Kind::Component)),
                    "consumer" => Some((Kind::Component, Kind::Capability)),
                    _ => None,
                };
                if expected.is_some_and(|e| Some(e) != source_kind.map(|s| (s, target_kind))) {
                    link_problems.push(format!(
                        "{what}: {interface} links go from {} to {}",
                        if interface == "handler" {
                            "the provider"
                        } else {
                            "a component"
                        },
                        if interface == "handler" {
                            "a component"
                        } else {
                            "the provider"
                        },
                    ));
                }
            }
            if source_kind == Some(Kind::Capability) {
                if let Some(config) = &link.source {
                    check_keys(&format!("{what} source"), &config.config, &config.secrets);
                }
            }
            if target_kind == Kind::Capability {
                check_keys(
                    &format!("{what} target"),
                    &link.target.config,
                    &link.target.secrets,
                );
            }
        }
    }
    problems.extend(link_problems);
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messaging_interfaces() -> BTreeSet<String> {
        ["handler", "consumer", "types"]
            .iter()
            .map(|i| format!("wasmcloud:messaging/{i}"))
            .collect()
    }

    const GOOD: &str = r#"
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: echo
  annotations:
    version: v0.1.0
spec:
  components:
    - name: echo
      type: component
      properties:
        image: file://./echo.wasm
      traits:
        - type: spreadscaler
          properties:
            instances: 1
        - type: link
          properties:
            target:
              name: nats
            namespace: wasmcloud
            package: messaging
            interfaces: [consumer]
    - name: nats
      type: capability
      properties:
        image: file://./messaging-nats.par.gz
        config:
          - name: nats-defaults
            properties:
              cluster_uris: nats://127.0.0.1:4222
      traits:
        - type: link
          properties:
            target:
              name: echo
            namespace: wasmcloud
            package: messaging
            interfaces: [handler]
            source:
              config:
                - name: echo-subscriptions
                  properties:
                    subscriptions: demo.in
"#;

    async fn problems(yaml: &str) -> Vec<String> {
        check_manifest(yaml, &messaging_interfaces(), &accepted_config_keys())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn consistent_manifest_has_no_problems() {
        assert_eq!(problems(GOOD).await, Vec::<String>::new());
    }

    #[tokio::test]
    async fn unknown_target_is_reported() {
        let yaml = GOOD.replace(
            "name: echo\n            namespace",
            "name: nope\n            namespace",
        );
        let found = problems(&yaml).await;
        assert!(found.iter().any(|p| p.contains("nope")), "{found:?}");
    }

    #[tokio::test]
    async fn unknown_interface_is_reported() {
        let yaml = GOOD.replace("[consumer]", "[producer]");
        let found = problems(&yaml).await;
        assert!(
            found
                .iter()
                .any(|p| p.contains("wasmcloud:messaging/producer")),
            "{found:?}"
        );
    }

    #[tokio::test]
    async fn unknown_config_key_is_reported() {
        let yaml = GOOD.replace("subscriptions: demo.in", "subscription: demo.in");
        let found = problems(&yaml).await;
        assert!(
            found.iter().any(|p| p.contains("\"subscription\"")),
            "{found:?}"
        );
    }

    #[tokio::test]
    async fn unknown_secret_name_is_reported() {
        let yaml = format!(
            "{}              secrets:\n                - name: pasword\n                  \
             properties:\n                    policy: kv\n                    key: k\n",
            GOOD.replace(
                "spec:\n  components:",
                "spec:\n  policies:\n    - name: kv\n      \
                 type: policy.secret.wasmcloud.dev/v1alpha1\n      \
                 properties:\n        backend: nats-kv\n  components:",
            )
        );
        let found = problems(&yaml).await;
        assert!(
            found.iter().any(|p| p.contains("secret \"pasword\"")),
            "{found:?}"
        );
        let fixed = problems(&yaml.replace("pasword", "password")).await;
        assert_eq!(fixed, Vec::<String>::new());
    }

    #[tokio::test]
    async fn reversed_handler_link_is_reported() {
        let yaml = GOOD.replacen("[consumer]", "[handler]", 1);
        let found = problems(&yaml).await;
        assert!(
            found
                .iter()
                .any(|p| p.contains("handler links go from the provider")),
            "{found:?}"
        );
    }

    #[test]
    fn reads_interfaces_of_example_wit() {
        let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/echo-component/wit");
        let found = wit_interfaces(&wit).unwrap();
        for interface in messaging_interfaces() {
            assert!(
                found.contains(&interface),
                "{interface} missing from {found:?}"
            );
        }
    }
}
