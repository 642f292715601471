//! What the lattice knows about links, asked through the wasmCloud control
//! interface on the lattice's NATS: the link list (`link.get`) and named
//! config (`config.get.<name>`), as `wash get links` and `wash config get`
//! ask for them.
//!
//! A host hands a starting provider the links it knows in the start-up
//! data and publishes later ones on `linkdefs.put`, a core NATS publish: one
//! sent before the provider has subscribed (or while its lattice
//! connection is down) is lost. The provider asks for the list once it
//! listens, and applies what it is missing (see `provider::reconcile`).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_nats::client::RequestErrorKind;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// The control interface's subject prefix and version, as hosts 1.x use
/// them by default.
const CTL_PREFIX: &str = "wasmbus.ctl.v1";

/// Config names with this prefix name secrets: the host fetches them from
/// a secrets backend and seals them for the provider; only it can.
const SECRET_PREFIX: &str = "SECRET_";

/// Bound on one control interface request: a host answers from memory
/// (links) or its KV bucket (config) in milliseconds.
pub(crate) const CTL_TIMEOUT: Duration = Duration::from_secs(3);

/// A link as the lattice stores it: its config by name, not yet resolved.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub(crate) struct StoredLink {
    pub(crate) source_id: String,
    pub(crate) target: String,
    #[serde(default = "default_link_name")]
    pub(crate) name: String,
    pub(crate) wit_namespace: String,
    pub(crate) wit_package: String,
    pub(crate) interfaces: Vec<String>,
    #[serde(default)]
    pub(crate) source_config: Vec<String>,
    #[serde(default)]
    pub(crate) target_config: Vec<String>,
}

fn default_link_name() -> String {
    "default".to_string()
}

impl StoredLink {
    /// The config names that apply to `provider_id`'s end of the link.
    pub(crate) fn config_names_for(&self, provider_id: &str) -> &[String] {
        if self.source_id == provider_id {
            &self.source_config
        } else {
            &self.target_config
        }
    }
}

/// The names among `names` that refer to secrets.
pub(crate) fn secret_names(names: &[String]) -> Vec<&str> {
    names
        .iter()
        .map(String::as_str)
        .filter(|name| name.starts_with(SECRET_PREFIX))
        .collect()
}

/// Why the lattice could not tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LatticeError {
    /// No host listens on the control subject: the control interface is on
    /// another NATS server, or under another topic prefix.
    NoHost {
        subject: String,
    },
    TimedOut {
        subject: String,
    },
    Request {
        subject: String,
        detail: String,
    },
    /// A host answered with `success: false`, or with something that is not
    /// a control interface response.
    Refused {
        subject: String,
        detail: String,
    },
    /// A link names config that the lattice does not hold.
    ConfigNotFound {
        name: String,
    },
}

impl fmt::Display for LatticeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoHost { subject } => write!(
                f,
                "no wasmCloud host answers on {subject:?} (is the control interface on another \
                 NATS server or topic prefix?)"
            ),
            Self::TimedOut { subject } => {
                write!(f, "no answer on {subject:?} within {CTL_TIMEOUT:?}")
            }
            Self::Request { subject, detail } => {
                write!(f, "request on {subject:?} failed: {detail}")
            }
            Self::Refused { subject, detail } => {
                write!(f, "the host refused {subject:?}: {detail}")
            }
            Self::ConfigNotFound { name } => write!(f, "named config {name:?} does not exist"),
        }
    }
}

impl std::error::Error for LatticeError {}

/// A control interface answer.
#[derive(Deserialize)]
struct CtlResponse<T> {
    success: bool,
    #[serde(default)]
    message: String,
    response: Option<T>,
}

/// The control interface of one lattice, over the provider's lattice
/// connection.
pub(crate) struct ControlInterface<'a> {
    pub(crate) nats: &'a async_nats::Client,
    pub(crate) lattice: &'a str,
}

impl ControlInterface<'_> {
    /// Every link of the lattice.
    pub(crate) async fn links(&self) -> Result<Vec<StoredLink>, LatticeError> {
        let subject = format!("{CTL_PREFIX}.{}.link.get", self.lattice);
        let answer: CtlResponse<Vec<StoredLink>> = self.ask(&subject).await?;
        Ok(answer.response.unwrap_or_default())
    }

    /// Named configs merged in the order given, later names winning, as the
    /// host merges a link's config.
    pub(crate) async fn merged_config(
        &self,
        names: &[String],
    ) -> Result<HashMap<String, String>, LatticeError> {
        let mut merged = HashMap::new();
        for name in names {
            let subject = format!("{CTL_PREFIX}.{}.config.get.{name}", self.lattice);
            let answer: CtlResponse<HashMap<String, String>> = self.ask(&subject).await?;
            // A name the lattice does not hold is answered with success and
            // no data; the host itself skips such a link.
            let config = answer
                .response
                .ok_or_else(|| LatticeError::ConfigNotFound { name: name.clone() })?;
            merged.extend(config);
        }
        Ok(merged)
    }

    /// One request, bounded by [`CTL_TIMEOUT`], its answer decoded.
    async fn ask<T: DeserializeOwned>(
        &self,
        subject: &str,
    ) -> Result<CtlResponse<T>, LatticeError> {
        let request = self.nats.request(subject.to_string(), Bytes::new());
        let reply = match tokio::time::timeout(CTL_TIMEOUT, request).await {
            Err(_) => {
                return Err(LatticeError::TimedOut {
                    subject: subject.to_string(),
                })
            }
            Ok(Err(err)) if err.kind() == RequestErrorKind::NoResponders => {
                return Err(LatticeError::NoHost {
                    subject: subject.to_string(),
                })
            }
            Ok(Err(err)) if err.kind() == RequestErrorKind::TimedOut => {
                return Err(LatticeError::TimedOut {
                    subject: subject.to_string(),
                })
            }
            Ok(Err(err)) => {
                return Err(LatticeError::Request {
                    subject: subject.to_string(),
                    detail: err.to_string(),
                })
            }
            Ok(Ok(reply)) => reply,
        };
        let answer: CtlResponse<T> =
            serde_json::from_slice(&reply.payload).map_err(|err| LatticeError::Refused {
                subject: subject.to_string(),
                detail: format!("not a control interface response ({err})"),
            })?;
        if !answer.success {
            return Err(LatticeError::Refused {
                subject: subject.to_string(),
                detail: answer.message,
            });
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_link_reads_as_the_host_writes_it() {
        let json = r#"{"source_id":"comp","target":"prov","name":"orders",
            "wit_namespace":"wasmcloud","wit_package":"messaging","interfaces":["consumer"],
            "source_config":[],"target_config":["a","SECRET_b"]}"#;
        let link: StoredLink = serde_json::from_str(json).unwrap();
        assert_eq!(link.config_names_for("prov"), ["a", "SECRET_b"]);
        assert_eq!(secret_names(link.config_names_for("prov")), ["SECRET_b"]);
        assert!(link.config_names_for("comp").is_empty());
    }

    #[test]
    fn a_link_without_a_name_is_the_default_link() {
        let json = r#"{"source_id":"prov","target":"comp","wit_namespace":"wasmcloud",
            "wit_package":"messaging","interfaces":["handler"]}"#;
        let link: StoredLink = serde_json::from_str(json).unwrap();
        assert_eq!(link.name, "default");
        assert!(link.source_config.is_empty());
    }
}
