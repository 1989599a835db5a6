//! The serving certificate and key, re-read from disk when they change: cert-manager renews
//! the certificate (and, with `rotationPolicy: Always`, the key) into the mounted Secret, and
//! the next TLS handshake after the files change serves the new pair, without a restart.
//!
//! A handshake looks at the files' size, modification time and inode at most once per
//! [`CHECK_INTERVAL`] (Kubernetes replaces a Secret volume's files through a symlink swap, so
//! a renewal is a new inode). A pair that does not load (half written, or a certificate whose
//! key has not arrived yet) keeps the previous one in service, with a warning, until the
//! files change again.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio_rustls::rustls;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use super::ApiError;
use crate::config::TlsFiles;

/// How often a handshake may look at the files.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What identifies one version of a file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: (u64, u64),
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        // Follows symlinks: a Secret volume's `tls.crt` is a link into its current data dir.
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: (meta.dev(), meta.ino()),
        })
    }
}

#[derive(Debug)]
struct Checked {
    at: Instant,
    stamps: (Option<FileStamp>, Option<FileStamp>),
}

/// The certificate handshakes are served with; a rustls certificate resolver.
#[derive(Debug)]
pub struct ServingCertificate {
    /// `None`: a self-signed certificate made at start, never reloaded.
    files: Option<TlsFiles>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    checked: Mutex<Checked>,
}

impl ServingCertificate {
    /// Loads `files` (an error when they do not hold a matching certificate and key), or makes
    /// a self-signed certificate for localhost without them.
    pub fn load(
        files: Option<&TlsFiles>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, ApiError> {
        let stamps = files.map_or((None, None), stamps_of);
        let key = match files {
            Some(files) => load_pair(files, &provider)?,
            None => {
                let (certs, key) = super::self_signed()?;
                CertifiedKey::from_der(certs, key, &provider)?
            }
        };
        Ok(Self {
            files: files.cloned(),
            provider,
            current: RwLock::new(Arc::new(key)),
            checked: Mutex::new(Checked {
                at: Instant::now(),
                stamps,
            }),
        })
    }

    /// The pair to serve now, re-read first if the files changed since the last look (at most
    /// once per [`CHECK_INTERVAL`]).
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.refresh(Instant::now());
        Arc::clone(&self.current.read().expect("certificate lock"))
    }

    fn refresh(&self, now: Instant) {
        let Some(files) = &self.files else {
            return;
        };
        let mut checked = self.checked.lock().expect("certificate check lock");
        if now.saturating_duration_since(checked.at) < CHECK_INTERVAL {
            return;
        }
        checked.at = now;
        let stamps = stamps_of(files);
        if stamps == checked.stamps {
            return;
        }
        // Remembered even when the load fails: retried when the files change again, not
        // warned about on every handshake.
        checked.stamps = stamps;
        match load_pair(files, &self.provider) {
            Ok(key) => {
                *self.current.write().expect("certificate lock") = Arc::new(key);
                tracing::info!(cert = %files.cert_file.display(), "serving certificate changed on disk; reloaded");
            }
            Err(err) => {
                tracing::warn!(error = %err, "serving certificate changed on disk but does not load; still serving the previous one");
            }
        }
    }
}

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn stamps_of(files: &TlsFiles) -> (Option<FileStamp>, Option<FileStamp>) {
    (
        FileStamp::of(&files.cert_file),
        FileStamp::of(&files.key_file),
    )
}

fn load_pair(
    files: &TlsFiles,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, ApiError> {
    let certs = super::read_certs(&files.cert_file)?;
    let key = super::read_key(&files.key_file)?;
    Ok(CertifiedKey::from_der(certs, key, provider)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String, Vec<u8>) {
        let made = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        (
            made.cert.pem(),
            made.signing_key.serialize_pem(),
            made.cert.der().to_vec(),
        )
    }

    /// Writes `text` to `path` through a rename, as Kubernetes and cert-manager tools do.
    fn replace(path: &Path, text: &str) {
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, text).unwrap();
        std::fs::rename(&temporary, path).unwrap();
    }

    #[test]
    fn a_changed_pair_is_served_and_a_broken_one_is_not() {
        let dir = std::env::temp_dir().join(format!(
            "spillway-reload-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let files = TlsFiles {
            cert_file: dir.join("tls.crt"),
            key_file: dir.join("tls.key"),
        };
        let (a_cert, a_key, a_der) = pair("a.test");
        let (b_cert, b_key, b_der) = pair("b.test");
        replace(&files.cert_file, &a_cert);
        replace(&files.key_file, &a_key);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let serving = ServingCertificate::load(Some(&files), provider).unwrap();
        let served = |at: Instant| {
            serving.refresh(at);
            serving.current.read().unwrap().cert[0].to_vec()
        };
        let start = Instant::now();
        let later = |n: u32| start + CHECK_INTERVAL * n;
        assert_eq!(served(start), a_der);
        // Half a rotation: B's certificate with A's key does not load; A stays.
        replace(&files.cert_file, &b_cert);
        assert_eq!(served(later(1)), a_der);
        // Not looked at again within the interval.
        replace(&files.key_file, &b_key);
        assert_eq!(served(later(1) + CHECK_INTERVAL / 2), a_der);
        assert_eq!(served(later(2)), b_der);
        // Garbage keeps B.
        replace(&files.cert_file, "not a certificate");
        assert_eq!(served(later(3)), b_der);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
