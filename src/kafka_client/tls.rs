//! TLS settings for broker connections (rustls with ring): the CA to trust (the bundled Mozilla
//! roots when none is given), an optional client certificate, and KEDA's `unsafeSsl`, which
//! turns certificate verification off.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::WireError;

/// PEM texts, as the trigger's secrets hold them.
#[derive(Clone, Default)]
pub struct TlsOptions {
    pub ca_pem: Option<String>,
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
    /// Skip certificate verification (KEDA's `unsafeSsl`).
    pub insecure: bool,
}

impl std::fmt::Debug for TlsOptions {
    // Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca", &self.ca_pem.is_some())
            .field("client_cert", &self.cert_pem.is_some())
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl TlsOptions {
    /// The rustls client configuration; a certificate or key that cannot be read is an error.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, WireError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|err| WireError::Config(format!("TLS: {err}")))?;
        let builder = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        } else {
            let mut roots = rustls::RootCertStore::empty();
            match &self.ca_pem {
                Some(pem) => {
                    for cert in certificates(pem, "ca")? {
                        roots
                            .add(cert)
                            .map_err(|err| WireError::Config(format!("ca: {err}")))?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots)
        };
        let config = match (&self.cert_pem, &self.key_pem) {
            (Some(cert), Some(key)) => {
                let key = rustls_pemfile::private_key(&mut key.as_bytes())
                    .map_err(|err| WireError::Config(format!("key: {err}")))?
                    .ok_or_else(|| {
                        WireError::Config("key: no unencrypted PEM private key found".into())
                    })?;
                builder
                    .with_client_auth_cert(certificates(cert, "cert")?, key)
                    .map_err(|err| WireError::Config(format!("cert: {err}")))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(WireError::Config(
                    "cert and key must be given together".into(),
                ));
            }
        };
        Ok(Arc::new(config))
    }
}

fn certificates(pem: &str, field: &str) -> Result<Vec<CertificateDer<'static>>, WireError> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|err| WireError::Config(format!("{field}: {err}")))?;
    if certs.is_empty() {
        return Err(WireError::Config(format!(
            "{field}: no PEM certificate found"
        )));
    }
    Ok(certs)
}

/// `unsafeSsl`: any certificate is accepted, signatures are still checked for form.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
