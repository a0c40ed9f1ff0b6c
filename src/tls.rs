//! HTTPS: the rustls server configuration, from your own PEM files.

use crate::config::Config;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{ServerConfig, crypto::ring};

/// The acceptor for `--secure`, or `None` for plain HTTP. `Err` names the
/// file that failed, for the start-up message.
pub async fn acceptor(config: &Config) -> Result<Option<TlsAcceptor>, String> {
    if !config.secure {
        return Ok(None);
    }
    if config.auto_cert {
        return Err("--auto_cert is not available yet; use --auto_cert=false".into());
    }
    let (key_path, cert_path) = (config.key_path.display(), config.cert_path.display());
    let key = PrivateKeyDer::from_pem_file(&config.key_path);
    let key = key.map_err(|error| format!("cannot read private key {key_path}: {error}"))?;
    let chain = CertificateDer::pem_file_iter(&config.cert_path).and_then(Iterator::collect);
    let chain: Vec<_> = chain.map_err(|error| format!("cannot read {cert_path}: {error}"))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {cert_path}"));
    }
    let builder = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()));
    let builder = builder
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let server = builder.with_no_client_auth().with_single_cert(chain, key);
    let mut server = server.map_err(|error| format!("invalid key or certificate: {error}"))?;
    // HTTP/1.1 only: SSE needs nothing more, and hyper is built without HTTP/2.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}
