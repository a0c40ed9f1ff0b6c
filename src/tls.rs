//! HTTPS: the rustls server configuration, from your own PEM files or from
//! Let's Encrypt over ACME.
//!
//! ACME is rustls-acme's: it answers the TLS-ALPN-01 challenge on this very
//! listener (so port 443 is the only port to open), keeps the account key and
//! certificate in `--certs`, reuses them on restart, and renews in the
//! background well before expiry, retrying failed orders (a rejected nonce,
//! say) with backoff.

use crate::config::Config;
use rustls_acme::{AcmeConfig, ResolvesServerCertAcme, caches::DirCache};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_stream::StreamExt;

/// The acceptor for `--secure`. `Err` names the file or setting that
/// failed, for the start-up message.
pub fn acceptor(config: &Config) -> Result<TlsAcceptor, String> {
    // rustls uses ring, the one provider compiled in (not the default
    // aws-lc-rs: no cmake or C++ toolchain to build it); a test fails if a
    // second one ever arrives.
    let builder = ServerConfig::builder().with_no_client_auth();
    let mut server = if config.auto_cert {
        builder.with_cert_resolver(acme(config)?)
    } else {
        let key = PrivateKeyDer::from_pem_file(&config.key_path);
        let path = config.key_path.display();
        let key = key.map_err(|error| format!("cannot read key {path}: {error}"))?;
        let server = builder.with_single_cert(certificates(&config.cert_path)?, key);
        server.map_err(|error| format!("invalid key or certificate: {error}"))?
    };
    // HTTP/2 first (rustls picks in this order among what the client
    // offers), so a browser's tabs share one connection rather than stopping
    // at six; HTTP/1.1 for clients without it; and acme-tls/1 for ACME's
    // validation handshakes, which rustls-acme's resolver answers.
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"acme-tls/1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// Every certificate in a PEM file. (A file with none is refused by rustls,
/// less clearly, as an invalid certificate.)
fn certificates(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let read = CertificateDer::pem_file_iter(path).and_then(Iterator::collect);
    read.map_err(|error| format!("cannot read {path:?}: {error}"))
}

/// Starts obtaining (or loading from `--certs`) and renewing the certificate
/// for `--domain`; the resolver serves whatever is current.
fn acme(config: &Config) -> Result<Arc<ResolvesServerCertAcme>, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if !config.acme_ca.is_empty() {
        roots.add_parsable_certificates(certificates(config.acme_ca.as_ref())?);
    }
    let client = ClientConfig::builder().with_root_certificates(roots);
    let client = Arc::new(client.with_no_client_auth());
    let acme = AcmeConfig::new_with_client_config([&config.domain], client);
    let acme = acme.cache(DirCache::new(config.certs.clone()));
    let mut state = acme.directory(&config.acme_directory).state();
    let resolver = state.resolver();
    tokio::spawn(async move {
        while let Some(event) = state.next().await {
            eprintln!("acme: {event:?}");
        }
    });
    Ok(resolver)
}
