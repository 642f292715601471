//! TLS to the server: the CA to trust and the client certificate, from PEM
//! text or files, checked when the link is put. Files are kept by path and
//! read again at every connect (see [`Pem`]).

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use super::files::read_bounded;
use super::keys::{Key, TLS_CA, TLS_CA_FILE, TLS_CERT, TLS_CERT_FILE, TLS_KEY, TLS_KEY_FILE};
use super::values::Values;
use super::ConfigError;

/// TLS to the server. `Debug` says what is set, never the key.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct TlsSettings {
    /// The CA, from `tls_ca` or `tls_ca_file`.
    pub(crate) ca: Option<Pem>,
    /// Client certificate chain and private key.
    pub(crate) client: Option<(Pem, Pem)>,
}

/// PEM given as a key's value, or the file a key names. A file is read
/// again each time it is needed (at every TLS handshake, so at every
/// connect), as `credentials_file` is: a certificate that cert-manager or a
/// secrets agent renews on disk is used from the next reconnect on, without
/// a new link put. Links naming the same file share a connection.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) enum Pem {
    Text { key: &'static str, pem: String },
    File { key: &'static str, path: PathBuf },
}

impl Pem {
    /// The PEM text: the value, or the file read now. The error names the
    /// key and the file, never the content.
    pub(crate) fn read(&self) -> Result<Cow<'_, str>, String> {
        match self {
            Self::Text { pem, .. } => Ok(Cow::Borrowed(pem)),
            Self::File { key, path } => read_bounded(path)
                .map(Cow::Owned)
                .map_err(|reason| format!("{key} {}: {reason}", path.display())),
        }
    }

    /// Where it comes from, for errors: the key, and the file's path.
    pub(crate) fn origin(&self) -> String {
        match self {
            Self::Text { key, .. } => (*key).to_string(),
            Self::File { key, path } => format!("{key} {}", path.display()),
        }
    }
}

/// Names the key and the file; PEM text (a private key among it) is never
/// shown.
impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin())
    }
}

impl TlsSettings {
    /// True when the connection must use TLS.
    pub(crate) fn required(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }

    pub(crate) fn parse(values: &Values<'_>) -> Result<Self, ConfigError> {
        let ca = match pem_from(values, &TLS_CA, &TLS_CA_FILE)? {
            Some((key, source, pem)) => {
                check_certificates(key, &pem)?;
                Some(source)
            }
            None => None,
        };
        let cert = pem_from(values, &TLS_CERT, &TLS_CERT_FILE)?;
        let key = pem_from(values, &TLS_KEY, &TLS_KEY_FILE)?;
        let client = match (cert, key) {
            (Some((cert_key, cert, cert_pem)), Some((key_key, key, key_pem))) => {
                check_certificates(cert_key, &cert_pem)?;
                // The parser's error could quote key material: not passed on.
                if !matches!(
                    rustls_pemfile::private_key(&mut key_pem.as_bytes()),
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
            (Some((cert_key, ..)), None) => {
                return Err(ConfigError::about(
                    cert_key.name,
                    format!(
                        "needs the client certificate's key in {} or {}",
                        TLS_KEY.name, TLS_KEY_FILE.name
                    ),
                ))
            }
            (None, Some((key_key, ..))) => {
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

/// PEM from a key holding it or a key naming a file (not both): the key,
/// where the PEM comes from, and its text now (read to check it).
fn pem_from(
    values: &Values<'_>,
    text_key: &'static Key,
    file_key: &'static Key,
) -> Result<Option<(&'static Key, Pem, String)>, ConfigError> {
    match (values.get(text_key), values.get(file_key)) {
        (Some(_), Some(_)) => Err(ConfigError::about(
            file_key.name,
            format!(
                "set either {} or {}, not both",
                text_key.name, file_key.name
            ),
        )),
        (Some(text), None) => Ok(Some((
            text_key,
            Pem::Text {
                key: text_key.name,
                pem: text.to_string(),
            },
            text.to_string(),
        ))),
        (None, Some(path)) => read_bounded(Path::new(path))
            .map(|pem| {
                let source = Pem::File {
                    key: file_key.name,
                    path: PathBuf::from(path),
                };
                Some((file_key, source, pem))
            })
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
