//! TLS to Cassandra nodes with rustls (aws-lc-rs, the provider the rest of Nexus uses).
//!
//! The driver checks a node's certificate against the node's IP address. Clusters whose
//! certificates name a DNS name instead set `tls_server_name`: the certificate is then verified
//! (chain, expiry, signature) against that name.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::config::Tls;
use crate::StoreError;
use nexus_model::error::ErrorKind;

fn bad(msg: String) -> StoreError {
    StoreError::backend(ErrorKind::InvalidInput, msg)
}

/// Builds the rustls client configuration for `tls`.
///
/// # Errors
/// `InvalidInput` naming the file or setting that is wrong.
pub(crate) fn client_config(tls: &Tls) -> Result<Arc<rustls::ClientConfig>, StoreError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    if let Some(ca) = &tls.ca {
        let certs = CertificateDer::pem_file_iter(ca)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| bad(format!("cannot read CA bundle {}: {e}", ca.display())))?;
        if certs.is_empty() {
            return Err(bad(format!(
                "CA bundle {} holds no certificate",
                ca.display()
            )));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| bad(format!("CA bundle {}: {e}", ca.display())))?;
        }
    } else {
        let found = rustls_native_certs::load_native_certs();
        for c in found.certs {
            // Unparseable system certificates are skipped, as every TLS client does.
            let _ = roots.add(c);
        }
        if roots.is_empty() {
            return Err(bad(
                "TLS is on but no CA bundle is given (ca=...) and the system has no root certificates"
                    .into(),
            ));
        }
    }
    let roots = Arc::new(roots);
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS: {e}")))?;
    let builder = match &tls.server_name {
        Some(name) => {
            let name = ServerName::try_from(name.clone())
                .map_err(|e| bad(format!("tls_server_name '{name}': {e}")))?;
            let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| bad(format!("TLS verifier: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NamedVerifier { inner, name }))
        }
        None => builder.with_root_certificates(roots),
    };
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| {
                    bad(format!(
                        "cannot read client certificate {}: {e}",
                        cert.display()
                    ))
                })?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| bad(format!("cannot read client key {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| bad(format!("client certificate {}: {e}", cert.display())))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Full WebPKI verification against a configured name instead of the node's IP address.
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Tls {
            ca: Some(dir.path().join("nope.pem")),
            ..Tls::default()
        };
        let e = client_config(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = client_config(&Tls {
            ca: Some(empty),
            ..Tls::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("holds no certificate"), "{e}");
    }
}
