//! HTTPS: the rustls server configuration, from your own PEM files or from
//! Let's Encrypt over ACME.
//!
//! ACME is rustls-acme's: it answers the TLS-ALPN-01 challenge on this very
//! listener (so port 443 is the only port to open), keeps the account key and
//! certificate in `--certs`, reuses them on restart, and renews in the
//! background well before expiry, retrying failed orders with backoff.

use crate::config::Config;
use rustls_acme::{AcmeConfig, ResolvesServerCertAcme, caches::DirCache};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_stream::StreamExt;

/// The acceptor for `--secure`, or `None` for plain HTTP. `Err` names the
/// file or setting that failed, for the start-up message.
pub async fn acceptor(config: &Config) -> Result<Option<TlsAcceptor>, String> {
    if !config.secure {
        return Ok(None);
    }
    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone());
    let builder = builder.with_safe_default_protocol_versions();
    let builder = builder
        .map_err(|error| error.to_string())?
        .with_no_client_auth();
    let mut server = match config.auto_cert {
        true => builder.with_cert_resolver(acme(config, provider)?),
        false => {
            let key = PrivateKeyDer::from_pem_file(&config.key_path);
            let path = config.key_path.display();
            let key = key.map_err(|error| format!("cannot read key {path}: {error}"))?;
            let chain = certificates(&config.cert_path)?;
            let server = builder.with_single_cert(chain, key);
            server.map_err(|error| format!("invalid key or certificate: {error}"))?
        }
    };
    // HTTP/1.1 only (SSE needs nothing more), and acme-tls/1 for ACME's
    // validation handshakes, which rustls-acme's resolver answers.
    server.alpn_protocols = vec![b"http/1.1".to_vec(), b"acme-tls/1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

/// Every certificate in a PEM file; none at all is an error too.
fn certificates(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path).and_then(Iterator::collect);
    let chain: Vec<_> =
        chain.map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    match chain.is_empty() {
        true => Err(format!("no certificate in {}", path.display())),
        false => Ok(chain),
    }
}

/// Starts obtaining (or loading from `--certs`) and renewing the certificate
/// for `--domain`; the resolver serves whatever is current.
fn acme(
    config: &Config,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ResolvesServerCertAcme>, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if !config.acme_ca.is_empty() {
        roots.add_parsable_certificates(certificates(config.acme_ca.as_ref())?);
    }
    let client = ClientConfig::builder_with_provider(provider);
    let client = client.with_safe_default_protocol_versions();
    let client = client
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots);
    let acme = AcmeConfig::new_with_client_config(
        [&config.domain],
        Arc::new(client.with_no_client_auth()),
    );
    let acme = acme.cache(DirCache::new(config.certs.clone()));
    let mut state = acme.directory(&config.acme_directory).state();
    let resolver = state.resolver();
    tokio::spawn(async move {
        while let Some(event) = state.next().await {
            match event {
                Ok(event) => eprintln!("acme: {event:?}"),
                Err(error) => eprintln!("acme: {error}"),
            }
        }
    });
    Ok(resolver)
}
