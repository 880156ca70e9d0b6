//! The link's configuration ([`GrpcLinkConfig`]: auth mode, TLS files, the shared secret) and
//! the credentials loaded from it ([`LinkCredentials`]), checked on both ends of every call.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use nexus_model::secret::Secret;

/// Environment variable holding the shared secret; it takes precedence over `grpc.secret_file`.
pub(crate) const SECRET_ENV: &str = "NEXUS_GRPC_SECRET";

/// Shortest accepted shared secret, in bytes (after trimming whitespace).
pub(crate) const MIN_SECRET_LEN: usize = 16;

/// How components authenticate each other on the gRPC link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkAuth {
    /// `authorization: Bearer <secret>` on every call (over TLS when TLS is configured).
    #[default]
    SharedSecret,
    /// Mutual TLS: client certificates signed by `grpc.tls_ca`.
    Mtls,
    /// No authentication: only for a trusted network, and only when written explicitly.
    None,
}

/// The `grpc` configuration section, shared by scheduler, receiver and supervisor.
///
/// TLS is on when `tls_cert` or `tls_ca` is given. A server needs `tls_cert` + `tls_key`; a
/// client needs `tls_ca` (or trusts the system roots). `mtls` needs all three on both sides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcLinkConfig {
    /// How components authenticate each other (`shared-secret`, `mtls` or `none`).
    pub auth: LinkAuth,
    /// File holding the shared secret (at least 16 bytes). `NEXUS_GRPC_SECRET`, when set, wins.
    pub secret_file: Option<PathBuf>,
    /// PEM CA bundle: verifies the server (client side) and client certificates (mtls, server
    /// side).
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate of this component (server identity; client identity with mtls).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Name to verify in the server certificate, when it differs from the endpoint's host.
    pub tls_server_name: Option<String>,
}

impl GrpcLinkConfig {
    /// Returns true when TLS is configured.
    #[must_use]
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some() || self.tls_ca.is_some()
    }

    /// Checks the shape of the section (files are read by [`GrpcLinkConfig::load`]).
    ///
    /// # Errors
    /// A message naming the key and what to do.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_with(std::env::var_os(SECRET_ENV).is_some_and(|v| !v.is_empty()))
    }

    /// [`GrpcLinkConfig::validate`], told whether `NEXUS_GRPC_SECRET` holds a value.
    fn validate_with(&self, env_secret: bool) -> Result<(), String> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(
                "grpc.tls_cert and grpc.tls_key: set both (the certificate and its private key) or neither"
                    .into(),
            );
        }
        if self.tls_server_name.is_some() && !self.tls_enabled() {
            return Err(
                "grpc.tls_server_name: only used with TLS; set grpc.tls_ca (and grpc.tls_cert/tls_key) or remove it"
                    .into(),
            );
        }
        match self.auth {
            LinkAuth::SharedSecret => {
                if self.secret_file.is_none() && !env_secret {
                    return Err(format!(
                        "grpc.secret_file: required with grpc.auth: shared-secret; point it at a file holding \
                         at least {MIN_SECRET_LEN} bytes, set {SECRET_ENV}, or choose grpc.auth: mtls"
                    ));
                }
            }
            LinkAuth::Mtls => {
                for (key, v) in [
                    ("tls_ca", &self.tls_ca),
                    ("tls_cert", &self.tls_cert),
                    ("tls_key", &self.tls_key),
                ] {
                    if v.is_none() {
                        return Err(format!(
                            "grpc.{key}: required with grpc.auth: mtls (set grpc.tls_ca, grpc.tls_cert and grpc.tls_key)"
                        ));
                    }
                }
            }
            LinkAuth::None => {
                if self.secret_file.is_some() {
                    return Err(
                        "grpc.secret_file: set while grpc.auth is none, so it would be ignored; remove it or use grpc.auth: shared-secret"
                            .into(),
                    );
                }
            }
        }
        Ok(())
    }

    /// Validates, then reads the secret (from `NEXUS_GRPC_SECRET` or `secret_file`) and the PEM
    /// files once.
    ///
    /// # Errors
    /// A message naming the key: missing or unreadable file, short secret, bad PEM.
    pub fn load(&self) -> Result<LinkCredentials, String> {
        self.load_with_env(std::env::var(SECRET_ENV).ok())
    }

    /// [`GrpcLinkConfig::load`] with the value of `NEXUS_GRPC_SECRET` given (tests never mutate
    /// the process environment).
    ///
    /// # Errors
    /// As [`GrpcLinkConfig::load`].
    pub fn load_with_env(&self, env_secret: Option<String>) -> Result<LinkCredentials, String> {
        let env_secret = env_secret.filter(|s| !s.trim().is_empty());
        self.validate_with(env_secret.is_some())?;
        let secret = match self.auth {
            LinkAuth::SharedSecret => Some(match env_secret {
                Some(s) => check_secret(s.trim(), SECRET_ENV)?,
                None => {
                    // Checked above: shared-secret without the env variable has a file.
                    let Some(path) = &self.secret_file else {
                        return Err("grpc.secret_file: required".into());
                    };
                    let raw = read_file("grpc.secret_file", path)?;
                    let text = String::from_utf8(raw).map_err(|_| {
                        format!(
                            "grpc.secret_file: {} is not UTF-8 text; write the secret as text",
                            path.display()
                        )
                    })?;
                    check_secret(text.trim(), "grpc.secret_file")?
                }
            }),
            LinkAuth::Mtls | LinkAuth::None => None,
        };
        let ca_pem = match &self.tls_ca {
            Some(p) => {
                let pem = read_file("grpc.tls_ca", p)?;
                check_certs("grpc.tls_ca", p, &pem)?;
                Some(pem)
            }
            None => None,
        };
        let cert_pem = match &self.tls_cert {
            Some(p) => {
                let pem = read_file("grpc.tls_cert", p)?;
                check_certs("grpc.tls_cert", p, &pem)?;
                Some(pem)
            }
            None => None,
        };
        let key_pem = match &self.tls_key {
            Some(p) => {
                let pem = read_file("grpc.tls_key", p)?;
                PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                    format!(
                        "grpc.tls_key: {} holds no usable PEM private key ({e}); give the key of grpc.tls_cert",
                        p.display()
                    )
                })?;
                Some(pem)
            }
            None => None,
        };
        Ok(LinkCredentials(Arc::new(CredsInner {
            auth: self.auth,
            secret: secret.map(Secret::new),
            ca_pem,
            cert_pem,
            key_pem: key_pem.map(Secret::new),
            server_name: self.tls_server_name.clone(),
        })))
    }
}

pub(crate) fn read_file(key: &str, path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        format!(
            "{key}: cannot read {} ({e}); check the path and the file's permissions",
            path.display()
        )
    })
}

pub(crate) fn check_secret(s: &str, key: &str) -> Result<String, String> {
    if s.len() < MIN_SECRET_LEN {
        return Err(format!(
            "{key}: the grpc secret is {} bytes; use at least {MIN_SECRET_LEN} (e.g. `openssl rand -hex 32`)",
            s.len()
        ));
    }
    if AsciiMetadataValue::try_from(format!("Bearer {s}")).is_err() {
        return Err(format!(
            "{key}: the grpc secret must be printable ASCII (it travels as a header)"
        ));
    }
    Ok(s.to_owned())
}

pub(crate) fn check_certs(key: &str, path: &std::path::Path, pem: &[u8]) -> Result<(), String> {
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(pem) {
        c.map_err(|e| format!("{key}: {} is not valid PEM ({e})", path.display()))?;
        n += 1;
    }
    if n == 0 {
        return Err(format!(
            "{key}: {} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(())
}

/// The loaded credentials of the gRPC link: what clients and servers need, read once. Cheap to
/// clone. Its `Debug` never shows the secret or the private key.
#[derive(Clone, Debug)]
pub struct LinkCredentials(Arc<CredsInner>);

#[derive(Debug)]
pub(crate) struct CredsInner {
    auth: LinkAuth,
    secret: Option<Secret<String>>,
    ca_pem: Option<Vec<u8>>,
    cert_pem: Option<Vec<u8>>,
    key_pem: Option<Secret<Vec<u8>>>,
    server_name: Option<String>,
}

impl LinkCredentials {
    /// Returns plain-text, unauthenticated credentials (`auth: none`, no TLS).
    #[must_use]
    pub fn none() -> Self {
        Self(Arc::new(CredsInner {
            auth: LinkAuth::None,
            secret: None,
            ca_pem: None,
            cert_pem: None,
            key_pem: None,
            server_name: None,
        }))
    }

    /// Returns shared-secret credentials without TLS.
    ///
    /// # Errors
    /// A secret shorter than 16 bytes or not printable ASCII.
    pub fn shared_secret(secret: &str) -> Result<Self, String> {
        let secret = check_secret(secret.trim(), "grpc secret")?;
        Ok(Self(Arc::new(CredsInner {
            auth: LinkAuth::SharedSecret,
            secret: Some(Secret::new(secret)),
            ca_pem: None,
            cert_pem: None,
            key_pem: None,
            server_name: None,
        })))
    }

    /// Returns the authentication mode.
    #[must_use]
    pub fn auth(&self) -> LinkAuth {
        self.0.auth
    }

    /// Returns true when TLS is configured.
    #[must_use]
    pub fn tls_enabled(&self) -> bool {
        self.0.ca_pem.is_some() || self.0.cert_pem.is_some()
    }

    /// Returns the client TLS config for an `https://` endpoint: the configured CA (or the system
    /// roots), the client certificate with mtls, the server name override.
    #[must_use]
    pub fn client_tls(&self) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::new();
        tls = match &self.0.ca_pem {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
            None => tls.with_native_roots(),
        };
        if self.0.auth == LinkAuth::Mtls
            && let (Some(cert), Some(key)) = (
                &self.0.cert_pem,
                self.0.key_pem.as_ref().map(Secret::expose),
            )
        {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.0.server_name {
            tls = tls.domain_name(name.clone());
        }
        tls
    }

    /// Returns [`LinkCredentials::client_tls`] for an endpoint dialled by address but named
    /// `host`: the server certificate is verified against `host` (or `grpc.tls_server_name`),
    /// not against the address.
    #[must_use]
    pub fn client_tls_for(&self, host: &str) -> ClientTlsConfig {
        let tls = self.client_tls();
        if self.0.server_name.is_some() {
            tls
        } else {
            tls.domain_name(host.to_owned())
        }
    }

    /// Returns the server TLS config, or `None` without TLS. With mtls, client certificates are
    /// verified against `grpc.tls_ca` but optional at the handshake: algorithms calling the
    /// CompletionService have none, so [`authorize_component`] requires a verified one on the
    /// ShardService instead.
    ///
    /// # Errors
    /// TLS is configured but this component has no certificate and key to serve with.
    pub fn server_tls(&self) -> Result<Option<ServerTlsConfig>, String> {
        if !self.tls_enabled() {
            return Ok(None);
        }
        let (Some(cert), Some(key)) = (
            &self.0.cert_pem,
            self.0.key_pem.as_ref().map(Secret::expose),
        ) else {
            return Err(
                "grpc.tls_cert and grpc.tls_key: required to serve gRPC over TLS (grpc.tls_ca alone only configures clients)"
                    .into(),
            );
        };
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if self.0.auth == LinkAuth::Mtls {
            let Some(ca) = &self.0.ca_pem else {
                return Err("grpc.tls_ca: required with grpc.auth: mtls".into());
            };
            tls = tls
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(true);
        }
        Ok(Some(tls))
    }

    pub(crate) fn bearer(&self) -> Option<AsciiMetadataValue> {
        let secret = self.0.secret.as_ref()?.expose();
        // check_secret proved the value is a valid header when the credentials were built.
        AsciiMetadataValue::try_from(format!("Bearer {secret}"))
            .ok()
            .map(|mut v| {
                v.set_sensitive(true);
                v
            })
    }
}

/// Returns the bearer token of the `authorization` metadata, if any.
#[must_use]
pub fn bearer_token(metadata: &MetadataMap) -> Option<&str> {
    metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Checks the component credential of a call to a component-only service (ShardService):
/// the shared secret (constant-time compare), a verified client certificate (mtls), or nothing
/// (`auth: none`).
///
/// # Errors
/// `UNAUTHENTICATED` with a message saying what to check.
#[allow(clippy::result_large_err)] // tonic's Status is what handlers return
pub fn authorize_component<T>(
    creds: &LinkCredentials,
    request: &tonic::Request<T>,
) -> Result<(), tonic::Status> {
    match creds.0.auth {
        LinkAuth::None => Ok(()),
        LinkAuth::Mtls => match request.peer_certs() {
            Some(certs) if !certs.is_empty() => Ok(()),
            _ => Err(tonic::Status::unauthenticated(
                "client certificate required: configure grpc.tls_cert and grpc.tls_key signed by the receiver's grpc.tls_ca",
            )),
        },
        LinkAuth::SharedSecret => {
            let Some(expected) = creds.0.secret.as_ref().map(|s| s.expose().as_str()) else {
                return Err(tonic::Status::internal("grpc secret not loaded"));
            };
            let Some(given) = bearer_token(request.metadata()) else {
                return Err(tonic::Status::unauthenticated(
                    "missing component credential: send 'authorization: Bearer <grpc secret>' (grpc.secret_file or NEXUS_GRPC_SECRET)",
                ));
            };
            // Hashing first makes the comparison constant-time whatever the lengths.
            let a = Sha256::digest(given.as_bytes());
            let b = Sha256::digest(expected.as_bytes());
            if bool::from(a.ct_eq(&b)) {
                Ok(())
            } else {
                Err(tonic::Status::unauthenticated(
                    "grpc secret refused: every component of a deployment needs the same secret \
                     (grpc.secret_file or NEXUS_GRPC_SECRET); `nexus secrets init` writes one \
                     file to share and prints the environment that points every component at it",
                ))
            }
        }
    }
}
