//! `cluster_uris`: the servers a link connects to, parsed once into the
//! client's own address type, and the one way they are shown.

use std::fmt;
use std::str::FromStr as _;

use async_nats::ServerAddr;
use tracing::warn;

use super::auth::Auth;
use super::keys::CLUSTER_URIS;
use super::ConfigError;

/// Server used when neither the link nor the provider names one and the
/// host did not say where the lattice's NATS is.
pub(crate) const DEFAULT_SERVER: &str = "nats://127.0.0.1:4222";

/// The servers of a link. `Debug` and `Display` never show user info.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Servers(Vec<ServerAddr>);

impl Servers {
    /// Parses a comma-separated list. Empty entries are skipped with a
    /// warning, as is a malformed entry after a good first one (the v1
    /// provider used only the first); a list with no server is an error.
    pub(crate) fn parse(value: &str) -> Result<Self, ConfigError> {
        let mut servers = Vec::new();
        for (index, entry) in value.split(',').map(str::trim).enumerate() {
            let position = index + 1;
            if entry.is_empty() {
                warn!(
                    key = CLUSTER_URIS.name,
                    position, "empty entry in the list is skipped"
                );
                continue;
            }
            match ServerAddr::from_str(entry) {
                Ok(addr) => servers.push(addr),
                Err(err) => {
                    // An unparseable URL cannot be redacted: one that may
                    // hold user info (an '@') is named by its position only.
                    let named = if entry.contains('@') {
                        format!("entry {position}")
                    } else {
                        format!("entry {position} ({entry:?})")
                    };
                    let reason = format!("{named} is not a NATS server URL: {err}");
                    if servers.is_empty() {
                        return Err(ConfigError::about(CLUSTER_URIS.name, reason));
                    }
                    warn!(key = CLUSTER_URIS.name, reason, "entry left out");
                }
            }
        }
        if servers.is_empty() {
            return Err(ConfigError::about(CLUSTER_URIS.name, "names no server"));
        }
        Ok(Self(servers))
    }

    /// The addresses, for the client.
    pub(crate) fn addrs(&self) -> &[ServerAddr] {
        &self.0
    }

    /// Credentials written into a server URL (`nats://user:password@host`
    /// or `nats://token@host`): the NATS client does not apply them itself.
    /// The first URL that has any wins.
    pub(crate) fn credentials(&self) -> Option<Auth> {
        let decode = |text: &str| {
            percent_encoding::percent_decode_str(text)
                .decode_utf8_lossy()
                .into_owned()
        };
        self.0
            .iter()
            .find_map(|addr| match (addr.username(), addr.password()) {
                (None, None) => None,
                (user, Some(password)) => Some(Auth::UserPassword {
                    user: decode(user.unwrap_or_default()),
                    password: decode(password),
                }),
                (Some(token), None) => Some(Auth::Token(decode(token))),
            })
    }
}

/// One server as it may be shown: user info replaced by `<redacted>@`.
pub(crate) fn shown(addr: &ServerAddr) -> String {
    let user_info = if addr.username().is_some() || addr.password().is_some() {
        "<redacted>@"
    } else {
        ""
    };
    format!(
        "{}://{user_info}{}:{}",
        addr.scheme(),
        addr.host(),
        addr.port()
    )
}

impl fmt::Display for Servers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self.0.iter().map(shown).collect();
        f.write_str(&shown.join(","))
    }
}

impl fmt::Debug for Servers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Servers({self})")
    }
}

/// A server list as written in config, fit to show (for errors and logs
/// about the raw value): each URL that parses loses its user info, one that
/// does not is not shown.
pub(crate) fn shown_list(value: &str) -> String {
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| match ServerAddr::from_str(entry) {
            Ok(addr) => shown(&addr),
            Err(_) => "<unparseable URL>".to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}
