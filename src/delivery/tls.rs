//! TLS for outgoing STARTTLS (rustls with ring).
//!
//! Opportunistic TLS between MTAs does not authenticate the server (RFC 7435): a certificate
//! that does not verify is still better than plain text, so the verifier accepts any
//! certificate while still checking the handshake signatures.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, ProtocolVersion, SignatureScheme};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use tokio_rustls::TlsConnector;

#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
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

/// Shared connector (built once).
pub fn connector() -> TlsConnector {
    static C: OnceLock<TlsConnector> = OnceLock::new();
    C.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.dangerous()
                    .with_custom_certificate_verifier(Arc::new(AcceptAny(provider.clone())))
                    .with_no_client_auth()
            });
        match config {
            Ok(c) => TlsConnector::from(Arc::new(c)),
            Err(e) => {
                // ring supports the safe defaults; this cannot happen, but never panic.
                tracing::error!(error = %e, "TLS setup failed; STARTTLS will fail");
                let c = rustls::ClientConfig::builder_with_provider(provider.clone())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .map(|b| {
                        b.dangerous()
                            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
                            .with_no_client_auth()
                    });
                match c {
                    Ok(c) => TlsConnector::from(Arc::new(c)),
                    Err(_) => std::process::abort(),
                }
            }
        }
    })
    .clone()
}

/// SNI name for an MX host (falls back to its IP).
pub fn server_name(host: &str, ip: IpAddr) -> ServerName<'static> {
    ServerName::try_from(host.trim_end_matches('.').to_string())
        .unwrap_or(ServerName::IpAddress(ip.into()))
}

pub fn version_name(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::TLSv1_3 => "TLSv1.3",
        ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "TLS",
    }
}
