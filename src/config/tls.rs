//! TLS to the server: the CA to trust and the client certificate, from PEM
//! text or files, checked when the link is put.

use std::fmt;
use std::path::Path;

use super::files::read_bounded;
use super::keys::{Key, TLS_CA, TLS_CA_FILE, TLS_CERT, TLS_CERT_FILE, TLS_KEY, TLS_KEY_FILE};
use super::values::Values;
use super::ConfigError;

/// TLS to the server. `Debug` says what is set, never the key.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct TlsSettings {
    /// PEM text of the CA, from `tls_ca` or read from `tls_ca_file`.
    pub(crate) ca: Option<String>,
    /// Client certificate chain and private key, both PEM text.
    pub(crate) client: Option<(String, String)>,
}

impl TlsSettings {
    /// True when the connection must use TLS.
    pub(crate) fn required(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }

    pub(crate) fn parse(values: &Values<'_>) -> Result<Self, ConfigError> {
        let ca = match pem_from(values, &TLS_CA, &TLS_CA_FILE)? {
            Some((key, pem)) => {
                check_certificates(key, &pem)?;
                Some(pem)
            }
            None => None,
        };
        let cert = pem_from(values, &TLS_CERT, &TLS_CERT_FILE)?;
        let key = pem_from(values, &TLS_KEY, &TLS_KEY_FILE)?;
        let client = match (cert, key) {
            (Some((cert_key, cert)), Some((key_key, key))) => {
                check_certificates(cert_key, &cert)?;
                // The parser's error could quote key material: not passed on.
                if !matches!(
                    rustls_pemfile::private_key(&mut key.as_bytes()),
                    Ok(Some(_))
                ) {
                    return Err(ConfigError::about(
                        key_key.name,
                        "holds no PEM private key (expected -----BEGIN PRIVATE KEY----- or an \
                         RSA or EC key)",
                    ));
                }
                Some((cert, key))
            }
            (Some((cert_key, _)), None) => {
                return Err(ConfigError::about(
                    cert_key.name,
                    format!(
                        "needs the client certificate's key in {} or {}",
                        TLS_KEY.name, TLS_KEY_FILE.name
                    ),
                ))
            }
            (None, Some((key_key, _))) => {
                return Err(ConfigError::about(
                    key_key.name,
                    format!(
                        "needs the client certificate in {} or {}",
                        TLS_CERT.name, TLS_CERT_FILE.name
                    ),
                ))
            }
            (None, None) => None,
        };
        Ok(Self { ca, client })
    }
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("ca", &self.ca.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

/// PEM text from a key holding it or a key naming a file; not both.
fn pem_from(
    values: &Values<'_>,
    text_key: &'static Key,
    file_key: &'static Key,
) -> Result<Option<(&'static Key, String)>, ConfigError> {
    match (values.get(text_key), values.get(file_key)) {
        (Some(_), Some(_)) => Err(ConfigError::about(
            file_key.name,
            format!(
                "set either {} or {}, not both",
                text_key.name, file_key.name
            ),
        )),
        (Some(text), None) => Ok(Some((text_key, text.to_string()))),
        (None, Some(path)) => read_bounded(Path::new(path))
            .map(|pem| Some((file_key, pem)))
            .map_err(|reason| ConfigError::new(file_key.name, path, reason)),
        (None, None) => Ok(None),
    }
}

/// Checks that `pem` (the value of `key`) holds at least one certificate.
fn check_certificates(key: &Key, pem: &str) -> Result<(), ConfigError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| ConfigError::about(key.name, format!("not valid PEM: {err}")))?;
    if certs.is_empty() {
        return Err(ConfigError::about(
            key.name,
            "holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(())
}
