//! HTTPS: the rustls server configuration from your own PEM files.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

/// Builds the acceptor from the key at `key_path` and the chain (leaf first)
/// at `cert_path`. `Err` names the path that failed, for the start-up message.
pub fn from_files(key_path: &Path, cert_path: &Path) -> Result<TlsAcceptor, String> {
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|error| format!("cannot read private key {}: {error}", key_path.display()))?;
    let chain = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| {
            format!(
                "cannot read certificate chain {}: {error}",
                cert_path.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", cert_path.display()));
    }
    let config = ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
    .map_err(|error| format!("invalid key or certificate: {error}"))?;
    Ok(acceptor(config))
}

/// HTTP/1.1 only: SSE needs nothing more, and hyper is built without HTTP/2.
fn acceptor(mut config: ServerConfig) -> TlsAcceptor {
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}
