//! TLS client configuration shared by the backends that speak rustls (PostgreSQL, and the
//! HTTPS upstream through reqwest's own builder): PEM loading with errors that name the
//! setting, the three verification levels libpq defines, and the classification of a
//! failed handshake as a configuration error.
//!
//! Kafka is the exception: librdkafka brings OpenSSL and takes the file paths itself
//! (`kafka::base_client_config`).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: cannot read certificates from {path}: {reason}")]
    Pem {
        key: String,
        path: String,
        reason: String,
    },
    #[error("{key}: {path} holds no certificate")]
    Empty { key: String, path: String },
    #[error("{key}: {reason}")]
    Setup { key: String, reason: String },
}

/// How much of the server's certificate is checked (libpq's `sslmode` levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encrypted, but any certificate is accepted (`require`): protects against passive
    /// eavesdropping only.
    Nothing,
    /// The chain must lead to a trusted root; the host name is not compared (`verify-ca`).
    Chain,
    /// Chain and host name (`verify-full`, and every HTTPS connection).
    Full,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificates of a PEM file; `key` names the setting in errors.
pub fn load_certs(key: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            key: key.into(),
            path: path.into(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            key: key.into(),
            path: path.into(),
        });
    }
    Ok(certs)
}

/// The trust anchors: the CA file when given, else the system's roots.
pub fn roots(key: &str, ca_file: &str) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    if ca_file.is_empty() {
        let found = rustls_native_certs::load_native_certs();
        store.add_parsable_certificates(found.certs);
    } else {
        for cert in load_certs(key, ca_file)? {
            store.add(cert).map_err(|e| TlsError::Setup {
                key: key.into(),
                reason: format!("{ca_file}: {e}"),
            })?;
        }
    }
    Ok(store)
}

/// A client configuration at the given verification level; `key` names the CA setting.
pub fn client_config(verify: Verify, key: &str, ca_file: &str) -> Result<ClientConfig, TlsError> {
    let setup = |e: rustls::Error| TlsError::Setup {
        key: key.into(),
        reason: e.to_string(),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(setup)?;
    let config = match verify {
        Verify::Full => builder
            .with_root_certificates(roots(key, ca_file)?)
            .with_no_client_auth(),
        Verify::Chain => {
            let inner = WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(key, ca_file)?),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Setup {
                key: key.into(),
                reason: e.to_string(),
            })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly { inner }))
                .with_no_client_auth()
        }
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// True when an error (anywhere in its source chain) is a TLS certificate rejection or a
/// handshake failure, i.e. a configuration problem rather than a network one.
pub fn is_tls_rejection(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        let text = err.to_string();
        if text.contains("invalid peer certificate")
            || text.contains("UnknownIssuer")
            || text.contains("certificate verify failed")
            || text.contains("received corrupt message")
            || text.contains("InvalidContentType")
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// True when the server refused the handshake for want of an acceptable client certificate
/// (mutual TLS): the alert names it.
pub fn is_client_certificate_refusal(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if text.contains("CertificateRequired")
            || text.contains("BadCertificate")
            || text.contains("UnknownCA")
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// `verify-ca`: the chain is checked, the name is not.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
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

/// `require`: any certificate, but the handshake signatures are still verified.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        verify_tls12_signature(
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
        verify_tls13_signature(
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
