//! TLS for the boundary: a certificate and key from files (PEM, as a node's config disk
//! holds them), or, for a local network, a local CA made once and kept in the state
//! directory (clients trust its file across restarts) that mints a leaf per name asked.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the certificate chain {path}: {source}")]
    Certificate {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("reading the private key {path}: {source}")]
    Key {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("making a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A server configuration from PEM files: the chain (leaf first) and its private key.
/// ALPN offers HTTP/2 and HTTP/1.1.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|source| TlsError::Certificate {
            path: cert.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.to_path_buf(),
        source,
    })?;
    let config = builder(provider())?.with_single_cert(chain, key)?;
    Ok(with_alpn(config))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// rustls' safe defaults (TLS 1.2 and 1.3), no client certificates.
fn builder(
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>, TlsError>
{
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth())
}

/// ALPN offers HTTP/2, then HTTP/1.1.
fn with_alpn(mut config: rustls::ServerConfig) -> Arc<rustls::ServerConfig> {
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The local CA of a network without a real certificate: `tls-ca.pem` (what clients
/// trust) and its key, made once in `dir` and kept across restarts. Each name a client asks
/// for (SNI) under one of `names` gets its own leaf certificate, minted on first use:
/// wildcards right under a one-label name (`*.localhost`) are refused by strict clients,
/// a leaf per name is not. Returns the server configuration and the CA's path.
pub fn local_ca(
    dir: &Path,
    names: &[String],
) -> Result<(Arc<rustls::ServerConfig>, PathBuf), TlsError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io { what, path, source }
    };
    let ca_path = dir.join("tls-ca.pem");
    let key_path = dir.join("tls-ca-key.pem");
    let ca_key = if key_path.is_file() {
        let pem = std::fs::read_to_string(&key_path).map_err(io("reading", &key_path))?;
        rcgen::KeyPair::from_pem(&pem)?
    } else {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let key = rcgen::KeyPair::generate()?;
        daemon_support::write_private(&key_path, key.serialize_pem().as_bytes())
            .map_err(io("writing", &key_path))?;
        key
    };
    // The same parameters and key make the same issuer every start, so leaves minted now
    // chain to the CA file written at the first.
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "icos local network CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = params.self_signed(&ca_key)?;
    if !ca_path.is_file() {
        std::fs::write(&ca_path, ca.pem()).map_err(io("writing", &ca_path))?;
    }
    let provider = provider();
    let resolver = Minting {
        ca_der: ca.der().clone(),
        ca,
        ca_key,
        names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
        minted: Mutex::new(HashMap::new()),
        provider: provider.clone(),
    };
    let config = builder(provider)?.with_cert_resolver(Arc::new(resolver));
    Ok((with_alpn(config), ca_path))
}

/// Minted leaves are kept up to this many names, then all are dropped and minted again.
const MAX_MINTED: usize = 4096;

/// Certificates for the names clients ask for, signed by the local CA.
struct Minting {
    ca: rcgen::Certificate,
    ca_der: CertificateDer<'static>,
    ca_key: rcgen::KeyPair,
    names: Vec<String>,
    minted: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl std::fmt::Debug for Minting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minting")
            .field("names", &self.names)
            .finish()
    }
}

impl Minting {
    /// The name to certify: the client's, when it is one of ours or under one; else the
    /// first of ours (a client that sent no name, or another name, sees that one).
    fn name_for(&self, asked: Option<&str>) -> String {
        let ours = |n: &str| {
            self.names
                .iter()
                .any(|d| n == d || n.strip_suffix(d.as_str()).is_some_and(|p| p.ends_with('.')))
        };
        match asked.map(str::to_ascii_lowercase) {
            Some(n) if ours(&n) => n,
            _ => self
                .names
                .first()
                .cloned()
                .unwrap_or_else(|| "localhost".into()),
        }
    }

    fn mint(&self, name: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let leaf = params.signed_by(&key, &self.ca, &self.ca_key)?;
        let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signing = self.provider.key_provider.load_private_key(der)?;
        Ok(Arc::new(CertifiedKey::new(
            vec![leaf.der().clone(), self.ca_der.clone()],
            signing,
        )))
    }
}

impl ResolvesServerCert for Minting {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = self.name_for(hello.server_name());
        let lock = || self.minted.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = lock().get(&name) {
            return Some(k.clone());
        }
        // Minted without the lock, so other handshakes do not wait on a key generation; two
        // clients asking for a new name at once may both mint, and one leaf is kept.
        match self.mint(&name) {
            Ok(k) => {
                let mut minted = lock();
                if minted.len() >= MAX_MINTED {
                    minted.clear();
                }
                minted.insert(name, k.clone());
                Some(k)
            }
            Err(e) => {
                tracing::warn!("minting a certificate for {name}: {e}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("icos-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_local_ca_is_made_once_and_names_are_ours_only() {
        let dir = tmp("ca");
        let names = vec!["localhost".to_string(), "icp.local".to_string()];
        let (config, ca) = local_ca(&dir, &names).unwrap();
        assert_eq!(config.alpn_protocols[0], b"h2");
        let first = std::fs::read(&ca).unwrap();
        local_ca(&dir, &names).unwrap();
        assert_eq!(std::fs::read(&ca).unwrap(), first, "made once, then kept");
        let m = Minting {
            ca: rcgen::CertificateParams::new(Vec::<String>::new())
                .unwrap()
                .self_signed(&rcgen::KeyPair::generate().unwrap())
                .unwrap(),
            ca_der: CertificateDer::from(Vec::new()),
            ca_key: rcgen::KeyPair::generate().unwrap(),
            names,
            minted: Mutex::new(HashMap::new()),
            provider: provider(),
        };
        assert_eq!(m.name_for(Some("abc.localhost")), "abc.localhost");
        assert_eq!(m.name_for(Some("a.raw.ICP.local")), "a.raw.icp.local");
        assert_eq!(m.name_for(Some("evil.example")), "localhost");
        assert_eq!(m.name_for(Some("notlocalhost")), "localhost");
        assert_eq!(m.name_for(None), "localhost");
        m.mint("abc.localhost").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tmp("bad");
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let pair = |sub: &str, name: &str| {
            let k = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cert.pem"), k.cert.pem()).unwrap();
            std::fs::write(d.join("key.pem"), k.key_pair.serialize_pem()).unwrap();
            (d.join("cert.pem"), d.join("key.pem"))
        };
        let (cert, key) = pair("a", "localhost");
        load(&cert, &key).unwrap();
        let e = load(&junk, &key).unwrap_err().to_string();
        assert!(e.contains("junk.pem holds no certificate"), "{e}");
        let e = load(&cert, &junk).unwrap_err().to_string();
        assert!(
            e.contains("reading the private key") && e.contains("junk.pem"),
            "{e}"
        );
        let e = load(&dir.join("missing.pem"), &key)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.pem"), "{e}");
        // A key that is not the certificate's.
        let (_, other_key) = pair("b", "example.org");
        let e = load(&cert, &other_key).unwrap_err().to_string();
        assert!(e.contains("do not make a TLS configuration"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
