//! The TLS client configuration of a link's connection.
//!
//! PEM given as a key's value is fixed; PEM from a file (`tls_ca_file`,
//! `tls_cert_file`, `tls_key_file`) is read again at every TLS handshake,
//! which the client makes at every connect and reconnect: a CA or client
//! certificate renewed on disk is used from the next reconnect on. A file
//! that has become unreadable or invalid fails that handshake with an error
//! naming the key and the file, and the client tries again as it does for
//! any failed connect.

use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use async_nats::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use async_nats::rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use async_nats::rustls::crypto::{self, CryptoProvider};
use async_nats::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use async_nats::rustls::sign::CertifiedKey;
use async_nats::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tracing::warn;

use crate::config::{Pem, TlsSettings};

/// A TLS client configuration: trusts the configured CA (else the
/// platform's roots, as async-nats would) and presents the client
/// certificate when one is set.
pub(super) fn client_config(tls: &TlsSettings) -> anyhow::Result<ClientConfig> {
    let provider = Arc::new(crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS set-up failed")?;
    let builder = match &tls.ca {
        Some(text @ Pem::Text { pem, .. }) => builder.with_root_certificates(
            roots(pem).map_err(|reason| anyhow!("{}: {reason}", text.origin()))?,
        ),
        Some(file @ Pem::File { .. }) => {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(CaFromFile {
                    ca: file.clone(),
                    provider: Arc::clone(&provider),
                }))
        }
        None => {
            let mut roots = RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs()
                .context("cannot load the platform's CA certificates")?;
            roots.add_parsable_certificates(native);
            builder.with_root_certificates(roots)
        }
    };
    Ok(match &tls.client {
        Some((cert, key)) => builder.with_client_cert_resolver(Arc::new(ClientCertificate {
            cert: cert.clone(),
            key: key.clone(),
            provider,
        })),
        None => builder.with_no_client_auth(),
    })
}

/// The certificates of a CA's PEM text.
fn roots(pem: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
        let cert = cert.map_err(|err| format!("invalid PEM: {err}"))?;
        roots
            .add(cert)
            .map_err(|err| format!("invalid certificate: {err}"))?;
    }
    Ok(roots)
}

/// Verifies the server's certificate against the CA in a file, read at
/// each handshake; the checks themselves are rustls's own (WebPKI).
#[derive(Debug)]
struct CaFromFile {
    ca: Pem,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for CaFromFile {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let roots = self
            .ca
            .read()
            .and_then(|pem| roots(&pem).map_err(|reason| format!("{}: {reason}", self.ca.origin())))
            .map_err(rustls::Error::General)?;
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|err| rustls::Error::General(format!("{}: {err}", self.ca.origin())))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The client certificate and its key, loaded when a server asks for them
/// (files read then).
#[derive(Debug)]
struct ClientCertificate {
    cert: Pem,
    key: Pem,
    provider: Arc<CryptoProvider>,
}

impl ClientCertificate {
    /// The error names keys and files, never key material.
    fn load(&self) -> Result<CertifiedKey, String> {
        let chain = rustls_pemfile::certs(&mut self.cert.read()?.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| format!("{}: invalid PEM: {err}", self.cert.origin()))?;
        if chain.is_empty() {
            return Err(format!("{} holds no PEM certificate", self.cert.origin()));
        }
        let key = rustls_pemfile::private_key(&mut self.key.read()?.as_bytes())
            .ok()
            .flatten()
            .ok_or_else(|| format!("{} holds no usable private key", self.key.origin()))?;
        let signer = self
            .provider
            .key_provider
            .load_private_key(key)
            .map_err(|_| format!("{}: the key type is not supported", self.key.origin()))?;
        let certified = CertifiedKey::new(chain, signer);
        certified.keys_match().map_err(|_| {
            format!(
                "the certificate in {} does not match the key in {}",
                self.cert.origin(),
                self.key.origin()
            )
        })?;
        Ok(certified)
    }
}

impl ResolvesClientCert for ClientCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        match self.load() {
            Ok(certified) => Some(Arc::new(certified)),
            Err(reason) => {
                // The server then refuses the handshake; this says why.
                warn!(reason = %reason, "no client certificate for the TLS handshake");
                None
            }
        }
    }

    fn has_certs(&self) -> bool {
        true
    }
}
