//! Authentication to NATS: one method per link, chosen by the keys it
//! sets, each method with a parser of its own.

use std::fmt;
use std::path::{Path, PathBuf};

use super::files::read_credentials;
use super::keys::{
    Key, CLIENT_JWT, CLIENT_SEED, CREDENTIALS_FILE, NKEY_SEED, PASSWORD, TOKEN, USERNAME,
};
use super::values::Values;
use super::ConfigError;

/// How the connection authenticates. `Debug` names the method only.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) enum Auth {
    None,
    /// Decentralised auth: user JWT plus the seed that signs the nonce.
    Jwt {
        jwt: String,
        seed: String,
    },
    NKey {
        seed: String,
    },
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
    /// Read at every (re)connect, so that a rotated file takes effect.
    CredentialsFile(PathBuf),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Auth::None => "none",
            Auth::Jwt { .. } => "jwt",
            Auth::NKey { .. } => "nkey",
            Auth::UserPassword { .. } => "user/password",
            Auth::Token(_) => "token",
            Auth::CredentialsFile(_) => "credentials file",
        })
    }
}

/// One way to authenticate: the keys that choose it and its parser.
struct Method {
    name: &'static str,
    keys: &'static [&'static Key],
    parse: fn(&Values<'_>) -> Result<Auth, ConfigError>,
}

const METHODS: &[Method] = &[
    Method {
        name: "client_jwt/client_seed",
        keys: &[&CLIENT_JWT, &CLIENT_SEED],
        parse: jwt,
    },
    Method {
        name: "nkey_seed",
        keys: &[&NKEY_SEED],
        parse: nkey,
    },
    Method {
        name: "username/password",
        keys: &[&USERNAME, &PASSWORD],
        parse: user_password,
    },
    Method {
        name: "token",
        keys: &[&TOKEN],
        parse: token,
    },
    Method {
        name: "credentials_file",
        keys: &[&CREDENTIALS_FILE],
        parse: credentials_file,
    },
];

/// Every key that chooses an authentication method.
pub(crate) fn keys() -> impl Iterator<Item = &'static str> {
    METHODS
        .iter()
        .flat_map(|method| method.keys.iter().map(|key| key.name))
}

/// The method the values choose, `None` if they choose none; two methods
/// are an error naming both.
pub(crate) fn parse(values: &Values<'_>) -> Result<Option<Auth>, ConfigError> {
    let chosen: Vec<&Method> = METHODS
        .iter()
        .filter(|method| method.keys.iter().any(|key| values.has(key)))
        .collect();
    match chosen.as_slice() {
        [] => Ok(None),
        [method] => (method.parse)(values).map(Some),
        [first, second, ..] => Err(ConfigError::about(
            first.keys[0].name,
            format!(
                "choose one authentication method, found both {} and {}",
                first.name, second.name
            ),
        )),
    }
}

fn check_seed(key: &Key, seed: &str) -> Result<(), ConfigError> {
    nkeys::KeyPair::from_seed(seed)
        .map(|_| ())
        .map_err(|_| ConfigError::about(key.name, "not a valid nkey seed"))
}

fn jwt(values: &Values<'_>) -> Result<Auth, ConfigError> {
    match (values.get(&CLIENT_JWT), values.get(&CLIENT_SEED)) {
        (Some(jwt), Some(seed)) => {
            check_seed(&CLIENT_SEED, seed)?;
            Ok(Auth::Jwt {
                jwt: jwt.to_string(),
                seed: seed.to_string(),
            })
        }
        (Some(_), None) => Err(ConfigError::about(
            CLIENT_SEED.name,
            "is required with client_jwt",
        )),
        (None, _) => Err(ConfigError::about(
            CLIENT_JWT.name,
            "is required with client_seed",
        )),
    }
}

fn nkey(values: &Values<'_>) -> Result<Auth, ConfigError> {
    let seed = values.get(&NKEY_SEED).unwrap_or_default();
    check_seed(&NKEY_SEED, seed)?;
    Ok(Auth::NKey {
        seed: seed.to_string(),
    })
}

fn user_password(values: &Values<'_>) -> Result<Auth, ConfigError> {
    match (values.get(&USERNAME), values.get(&PASSWORD)) {
        (Some(user), Some(password)) => Ok(Auth::UserPassword {
            user: user.to_string(),
            password: password.to_string(),
        }),
        (Some(_), None) => Err(ConfigError::about(
            PASSWORD.name,
            "is required with username",
        )),
        (None, _) => Err(ConfigError::about(
            USERNAME.name,
            "is required with password",
        )),
    }
}

fn token(values: &Values<'_>) -> Result<Auth, ConfigError> {
    Ok(Auth::Token(
        values.get(&TOKEN).unwrap_or_default().to_string(),
    ))
}

fn credentials_file(values: &Values<'_>) -> Result<Auth, ConfigError> {
    let path = values.get(&CREDENTIALS_FILE).unwrap_or_default();
    // Checked now so that a missing or broken file rejects the link with a
    // clear error; read again at every connect.
    read_credentials(Path::new(path))
        .map_err(|reason| ConfigError::new(CREDENTIALS_FILE.name, path, reason))?;
    Ok(Auth::CredentialsFile(PathBuf::from(path)))
}
