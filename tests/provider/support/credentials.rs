//! Credentials made by the tests themselves: operator-mode JWTs, `.creds`
//! files and a TLS CA with server and client certificates.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use nkeys::KeyPair;
use serde_json::{json, Value};

use super::NatsServer;

static JWT_IDS: AtomicUsize = AtomicUsize::new(0);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Encodes and signs a NATS JWT v2 (`ed25519-nkey`) with `issuer`'s key.
fn encode_jwt(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let header = json!({ "typ": "JWT", "alg": "ed25519-nkey" });
    let claims = json!({
        "jti": format!(
            "TEST{}X{}",
            std::process::id(),
            JWT_IDS.fetch_add(1, Ordering::Relaxed)
        ),
        "iat": now(),
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = issuer.sign(signed.as_bytes()).expect("sign jwt");
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// A user of an [`Account`]: its nkey and the JWT the account issued.
pub struct User {
    pub key: KeyPair,
    pub jwt: String,
}

impl User {
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    pub fn seed(&self) -> String {
        self.key.seed().expect("user seed")
    }

    /// The `.creds` file text (JWT and seed, decorated).
    pub fn creds(&self) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n",
            self.jwt,
            self.seed()
        )
    }

    /// Writes (or overwrites) the `.creds` file at `path`.
    pub fn write_creds(&self, path: &Path) {
        std::fs::write(path, self.creds()).expect("write creds file");
    }

    /// A client of `server` authenticated as this user.
    pub async fn client(&self, server: &NatsServer) -> async_nats::Client {
        async_nats::ConnectOptions::with_credentials(&self.creds())
            .expect("parse creds")
            .connect(server.url())
            .await
            .expect("connect with creds")
    }
}

/// An account of an [`Operator`]: its nkey and the JWT the operator issued.
pub struct Account {
    pub key: KeyPair,
    pub jwt: String,
}

impl Account {
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// A new user of this account, with a JWT signed by the account.
    pub fn user(&self, name: &str) -> User {
        let key = KeyPair::new_user();
        let jwt = encode_jwt(
            &self.key,
            &key.public_key(),
            name,
            json!({
                "pub": {},
                "sub": {},
                "subs": -1,
                "data": -1,
                "payload": -1,
                "type": "user",
                "version": 2,
            }),
        );
        User { key, jwt }
    }
}

/// A NATS operator (decentralised auth) with one account, and the
/// system account that JetStream in operator mode needs.
pub struct Operator {
    key: KeyPair,
    pub jwt: String,
    pub account: Account,
    system: Account,
}

impl Operator {
    /// A new operator, self-signed, and the accounts it issued.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::new_operator();
        let system_key = KeyPair::new_account();
        let jwt = encode_jwt(
            &key,
            &key.public_key(),
            name,
            json!({
                "system_account": system_key.public_key(),
                "type": "operator",
                "version": 2,
            }),
        );
        let account_key = KeyPair::new_account();
        let account_jwt = account_jwt(&key, &account_key, name, json!({}));
        // Without JetStream, which a system account may not have.
        let system_jwt = encode_jwt(
            &key,
            &system_key.public_key(),
            "SYS",
            json!({ "type": "account", "version": 2 }),
        );
        Self {
            key,
            jwt,
            account: Account {
                key: account_key,
                jwt: account_jwt,
            },
            system: Account {
                key: system_key,
                jwt: system_jwt,
            },
        }
    }

    /// A new user of the operator's account.
    pub fn user(&self, name: &str) -> User {
        self.account.user(name)
    }

    /// nats-server config lines for operator mode with a memory resolver
    /// that knows the account.
    pub fn server_config(&self) -> String {
        self.config_with_account(&self.account.jwt)
    }

    /// The same config, with the account's JWT issued again revoking
    /// `user`: the server drops its connections and refuses it from then
    /// on.
    pub fn server_config_revoking(&self, user: &User) -> String {
        let revoked = account_jwt(
            &self.key,
            &self.account.key,
            "op",
            json!({ user.public_key(): now() }),
        );
        self.config_with_account(&revoked)
    }

    fn config_with_account(&self, account_jwt: &str) -> String {
        format!(
            "operator: {}\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n  \
             {}: {}\n  {}: {}\n}}\n",
            self.jwt,
            self.system.public_key(),
            self.account.public_key(),
            account_jwt,
            self.system.public_key(),
            self.system.jwt
        )
    }
}

/// An account JWT without limits (JetStream included), revoking the users
/// in `revocations` (public key: the time before which their JWTs are no
/// longer valid).
fn account_jwt(operator: &KeyPair, account: &KeyPair, name: &str, revocations: Value) -> String {
    encode_jwt(
        operator,
        &account.public_key(),
        &format!("{name}-account"),
        json!({
            "limits": {
                "subs": -1,
                "data": -1,
                "payload": -1,
                "imports": -1,
                "exports": -1,
                "wildcards": true,
                "conn": -1,
                "leaf": -1,
                "mem_storage": -1,
                "disk_storage": -1,
                "streams": -1,
                "consumer": -1,
            },
            "revocations": revocations,
            "type": "account",
            "version": 2,
        }),
    )
}

/// A connection as the server's monitoring endpoint (`/connz?auth=1`)
/// shows it.
#[derive(Debug, Clone)]
pub struct ServerConnection {
    pub name: String,
    /// The user's public key for JWT/nkey users, else the user name.
    pub authorized_user: String,
    pub account: String,
}

/// The client connections `server` has, with their authentication.
pub fn authenticated_connections(server: &NatsServer) -> Vec<ServerConnection> {
    let field = |c: &Value, key: &str| c[key].as_str().unwrap_or_default().to_string();
    server
        .connections()
        .iter()
        .map(|c| ServerConnection {
            name: field(c, "name"),
            authorized_user: field(c, "authorized_user"),
            account: field(c, "account"),
        })
        .collect()
}

/// A certificate and its key, as PEM text and as files.
pub struct CertFiles {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A test CA with a server certificate (for `127.0.0.1` and `localhost`)
/// and a client certificate it signed, written into a temp dir; it can
/// sign more client certificates.
pub struct TestPki {
    pub ca_pem: String,
    pub ca_file: PathBuf,
    pub server: CertFiles,
    pub client: CertFiles,
    name: String,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    dir: tempfile::TempDir,
}

impl TestPki {
    pub fn new(name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
        let dir = tempfile::tempdir().expect("temp dir");

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let ca = ca_params.self_signed(&ca_key).expect("self-sign ca");
        let ca_pem = ca.pem();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca_pem).expect("write ca");
        let placeholder = || CertFiles {
            cert_pem: String::new(),
            key_pem: String::new(),
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
        };
        let mut pki = Self {
            ca_pem,
            ca_file,
            server: placeholder(),
            client: placeholder(),
            name: name.to_string(),
            ca,
            ca_key,
            dir,
        };
        pki.server = pki.issue(
            "server",
            vec!["127.0.0.1".into(), "localhost".into()],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        pki.client = pki.issue_client("client", "client.test");
        pki
    }

    /// A client certificate for DNS name `dns` (what a server that maps
    /// certificates to users, `verify_and_map`, takes as the user), written
    /// as `<file>.pem` and `<file>-key.pem`.
    pub fn issue_client(&self, file: &str, dns: &str) -> CertFiles {
        self.issue(
            file,
            vec![dns.to_string()],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    fn issue(
        &self,
        file: &str,
        sans: Vec<String>,
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> CertFiles {
        use rcgen::{CertificateParams, DnType, KeyUsagePurpose};
        let mut params = CertificateParams::new(sans).expect("cert params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{} {file}", self.name));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("sign cert");
        let files = CertFiles {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_file: self.dir.path().join(format!("{file}.pem")),
            key_file: self.dir.path().join(format!("{file}-key.pem")),
        };
        std::fs::write(&files.cert_file, &files.cert_pem).expect("write cert");
        std::fs::write(&files.key_file, &files.key_pem).expect("write key");
        files
    }

    /// The nats-server `tls` block: the server certificate, this CA, and
    /// whether clients must present a certificate the CA signed.
    pub fn server_config(&self, verify: bool) -> String {
        format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: {verify}\n  timeout: 2\n}}\n",
            self.server.cert_file.display().to_string(),
            self.server.key_file.display().to_string(),
            self.ca_file.display().to_string(),
        )
    }

    /// A client of `server` (TLS, trusting this CA, presenting the client
    /// certificate).
    pub async fn client(&self, server: &NatsServer) -> async_nats::Client {
        async_nats::ConnectOptions::new()
            .require_tls(true)
            .add_root_certificates(self.ca_file.clone())
            .add_client_certificate(self.client.cert_file.clone(), self.client.key_file.clone())
            .connect(format!("tls://127.0.0.1:{}", server.port()))
            .await
            .expect("connect with TLS")
    }
}
