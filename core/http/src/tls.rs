//! TLS for every HTTP listener (rustls on aws-lc-rs, the one TLS stack of the workspace) and the
//! client side's trust store.
//!
//! Server: [`TlsConfig`] (`server.tls` of every component) names a PEM certificate chain and its
//! private key. [`ServerTls::load`] reads them once (so a bad file stops start-up with a message
//! naming it) and [`ServerTls::watch`] re-reads them whenever either file changes (checked every
//! `reload_interval`): renewed certificates (cert-manager, a rotated Secret) are served to new
//! connections without a restart. A change that does not load (a half-written file, a key that
//! does not match) keeps the certificate in use and is logged; the next change is tried again.
//! ALPN offers `h2` and `http/1.1`, so gRPC works over TLS on the same port.
//!
//! Client: [`client_config`] trusts the system's roots plus an optional CA file (a private CA).
//!
//! What it must not do: log key material, or stop serving because a reload failed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// TLS of an HTTP listener (section `server.tls`): off unless both files are set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first).
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf certificate.
    pub key_file: Option<PathBuf>,
    /// How often both files are checked for changes (reloaded when they change).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            reload_interval: Duration::from_secs(10),
        }
    }
}

impl TlsConfig {
    /// True when TLS is configured.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Checks the values (not the files: [`ServerTls::load`] reads them); messages name the key
    /// under `section` (e.g. `server.tls`).
    ///
    /// # Errors
    /// Every problem, joined by "; ".
    pub fn validate(&self, section: &str) -> Result<(), String> {
        let mut e = Vec::new();
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => e.push(format!(
                "{section}.key_file: required with {section}.cert_file (the certificate's private key, PEM)"
            )),
            (None, Some(_)) => e.push(format!(
                "{section}.cert_file: required with {section}.key_file (the PEM certificate chain)"
            )),
            _ => {}
        }
        if self.reload_interval < Duration::from_secs(1)
            || self.reload_interval > Duration::from_secs(3600)
        {
            e.push(format!(
                "{section}.reload_interval: {} must be between 1s and 1h",
                humantime::format_duration(self.reload_interval)
            ));
        }
        if e.is_empty() {
            Ok(())
        } else {
            Err(e.join("; "))
        }
    }
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The key does not fit the certificate, or rustls refused the configuration.
    #[error("{0}")]
    Config(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads a PEM certificate chain.
///
/// # Errors
/// The file cannot be read, or holds no certificate.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |message: String| TlsError::File {
        path: path.to_owned(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| file_err(format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(
            "holds no certificate (expected '-----BEGIN CERTIFICATE-----')".into(),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::File {
        path: path.to_owned(),
        message: format!("cannot read: {e}"),
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::File {
        path: path.to_owned(),
        message: format!("no PEM private key (PKCS#8, PKCS#1 or SEC1) found: {e}"),
    })
}

fn certified_key(cert: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = read_certs(cert)?;
    let key = read_key(key_file)?;
    let ck = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        TlsError::Config(format!(
            "{} and {}: {e} (does the key belong to the certificate?)",
            cert.display(),
            key_file.display()
        ))
    })?;
    Ok(Arc::new(ck))
}

/// The certificate in use, swapped when the files change.
#[derive(Debug)]
struct Reloading(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A swap is one pointer store: consistent after a panic elsewhere.
        Some(
            self.0
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

/// A listener's TLS: the acceptor and the certificate it serves (reloaded by [`Self::watch`]).
#[derive(Clone)]
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
    current: Arc<Reloading>,
    config: TlsConfig,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the certificate and key of `config`; `None` when TLS is off.
    ///
    /// # Errors
    /// A file is missing or unreadable, holds no certificate or key, or the key does not match.
    pub fn load(config: &TlsConfig) -> Result<Option<Self>, TlsError> {
        let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) else {
            if config.enabled() {
                return Err(TlsError::Config(
                    "server.tls: cert_file and key_file go together".into(),
                ));
            }
            return Ok(None);
        };
        let current = Arc::new(Reloading(RwLock::new(certified_key(cert, key)?)));
        let mut sc = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(sc)),
            current,
            config: config.clone(),
        }))
    }

    /// The acceptor (serves the current certificate).
    #[must_use]
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.acceptor.clone()
    }

    /// Re-reads the files when they change, every `reload_interval`, until `stop`.
    pub async fn watch(self, stop: CancellationToken) {
        let (Some(cert), Some(key)) = (self.config.cert_file.clone(), self.config.key_file.clone())
        else {
            return;
        };
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        };
        let mut seen = (stamp(&cert), stamp(&key));
        let mut tick = tokio::time::interval(self.config.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = (stamp(&cert), stamp(&key));
            if now == seen {
                continue;
            }
            let (c, k) = (cert.clone(), key.clone());
            let loaded = tokio::task::spawn_blocking(move || certified_key(&c, &k)).await;
            match loaded {
                Ok(Ok(ck)) => {
                    *self
                        .current
                        .0
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = ck;
                    seen = now;
                    reloaded(true);
                    tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
                }
                Ok(Err(e)) => {
                    // Tried again at the next change; most often a file half-written.
                    seen = now;
                    reloaded(false);
                    tracing::warn!(error = %e, "TLS certificate changed but cannot be loaded; still serving the previous one");
                }
                Err(e) => tracing::warn!(error = %e, "TLS reload task failed"),
            }
        }
    }
}

/// Name of the reload counter.
pub const RELOADS: &str = "nexus_tls_certificate_reloads_total";

/// Declares the TLS metrics (HELP texts).
pub fn describe() {
    metrics::describe_counter!(
        RELOADS,
        "Changes of a listener's TLS certificate or key files, by outcome (ok: serving the new \
         certificate; failed: the files did not load, the previous certificate is still served)"
    );
}

fn reloaded(ok: bool) {
    metrics::counter!(RELOADS, "outcome" => if ok { "ok" } else { "failed" }).increment(1);
}

/// A client configuration trusting the system's roots and, when given, the CA certificates of
/// `ca_file` (PEM).
///
/// # Errors
/// The CA file cannot be read or holds no certificate; no root at all could be found.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        // A system certificate rustls cannot use is skipped, as browsers do.
        let _ = roots.add(c);
    }
    if let Some(ca) = ca_file {
        for c in read_certs(ca)? {
            roots.add(c).map_err(|e| TlsError::File {
                path: ca.to_owned(),
                message: format!("not a usable CA certificate: {e}"),
            })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::Config(
            "no trusted CA certificate: the system has none (install ca-certificates) and no CA file was given".into(),
        ));
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
