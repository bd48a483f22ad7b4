//! The CA and the one server certificate, made fresh at every start.
//!
//! A fresh CA per run means no key material lives in the repository and no test can pass
//! because some CA happened to be trusted already. One certificate covers every name and
//! address, and a resolver that ignores the ClientHello always presents it: whatever SNI a
//! client sends (or none), the handshake proceeds, so it is the sandbox's SNI policy, not this
//! server, that decides what gets through.

use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

pub struct Material {
    pub ca_pem: String,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Material {
    /// A CA and a leaf certificate whose SANs are `san` (DNS names and IP addresses as text).
    pub fn generate(san: Vec<String>) -> anyhow::Result<Material> {
        let ca_key = KeyPair::generate().context("generating the CA key")?;
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "exec-sandbox testnet CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).context("signing the CA")?;
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate().context("generating the server key")?;
        let mut leaf = CertificateParams::new(san).context("server certificate names")?;
        leaf.distinguished_name
            .push(DnType::CommonName, "exec-sandbox testnet server");
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = leaf
            .signed_by(&key, &issuer)
            .context("signing the server certificate")?;

        Ok(Material {
            ca_pem: ca_cert.pem(),
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        })
    }

    /// A server config presenting the one certificate to every client.
    pub fn server_config(&self) -> anyhow::Result<Arc<ServerConfig>> {
        // An explicit provider rather than the process default: if some other crate in the
        // build enables a second rustls backend, the default becomes ambiguous and panics.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified =
            CertifiedKey::from_der(vec![self.cert.clone()], self.key.clone_key(), &provider)
                .context("loading the server key")?;
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(AnySni(Arc::new(certified))));
        Ok(Arc::new(config))
    }
}

/// Answers every ClientHello, whatever its SNI, with the same certificate.
#[derive(Debug)]
struct AnySni(Arc<CertifiedKey>);

impl ResolvesServerCert for AnySni {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}
