//! The web configuration in force, re-read when its files change.
//!
//! Each new connection asks for the configuration in force ([`WebState::active`]), which
//! first compares the modification time, size and inode of the web configuration file and
//! of the certificate, key and client CA files it names with what they were when last read
//! (a few `stat` calls; a Kubernetes Secret update swaps a symlink, which changes the
//! inode). When one changed, everything is read and checked again; a configuration that does
//! not read or check is logged and the last good one stays in force (connections already
//! open keep theirs). At start, [`WebState::load`] is strict: any problem is the daemon's
//! error. Turning TLS on or off needs a restart (the listener's scheme is fixed).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use http::{HeaderName, HeaderValue};
use tokio_rustls::TlsAcceptor;

use super::auth::Users;
use super::config_error::WebConfigError;
use super::tls::server_config;
use super::web_config::{WebConfig, load};

/// What a connection is served with.
pub struct Active {
    /// TLS, when configured.
    pub tls: Option<TlsAcceptor>,
    /// Basic authentication, when users are configured.
    pub users: Option<Arc<Users>>,
    /// Headers added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(p: &Path) -> Stamp {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

struct Inner {
    stamps: Vec<(PathBuf, Stamp)>,
    users: BTreeMap<String, String>,
    active: Arc<Active>,
}

/// The web configuration file and what is in force from it.
pub struct WebState {
    path: PathBuf,
    tls: bool,
    inner: Mutex<Inner>,
}

fn build(c: &WebConfig, users: Option<Arc<Users>>) -> Result<Active, WebConfigError> {
    let tls = match &c.tls {
        Some(t) => Some(TlsAcceptor::from(server_config(t, &c.path)?)),
        None => None,
    };
    let headers = c
        .headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect();
    let users = match users {
        Some(u) => Some(u),
        None => (!c.users.is_empty()).then(|| Users::new(c.users.clone())),
    };
    Ok(Active {
        tls,
        users,
        headers,
    })
}

impl WebState {
    /// Reads and checks the file and everything it names.
    ///
    /// # Errors
    /// The first problem, naming the file and key.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let stamps_before: Vec<(PathBuf, Stamp)> = vec![(path.to_path_buf(), stamp(path))];
        let c = load(path)?;
        let active = build(&c, None)?;
        let mut stamps = stamps_before;
        stamps.extend(c.files().into_iter().skip(1).map(|f| {
            let s = stamp(&f);
            (f, s)
        }));
        Ok(Self {
            path: path.to_path_buf(),
            tls: active.tls.is_some(),
            inner: Mutex::new(Inner {
                stamps,
                users: c.users,
                active: Arc::new(active),
            }),
        })
    }

    /// Whether the listener speaks TLS.
    #[must_use]
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The configuration for a new connection, re-read first if a file changed.
    pub fn active(&self) -> Arc<Active> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = inner.stamps.iter().any(|(p, s)| stamp(p) != *s);
        if changed {
            self.reload(&mut inner);
        }
        Arc::clone(&inner.active)
    }

    fn reload(&self, inner: &mut Inner) {
        // Stamped before reading: a change made while reading is seen next time.
        let mut stamps = vec![(self.path.clone(), stamp(&self.path))];
        let result = load(&self.path).and_then(|c| {
            stamps.extend(c.files().into_iter().skip(1).map(|f| {
                let s = stamp(&f);
                (f, s)
            }));
            if c.tls.is_some() != self.tls {
                return Err(WebConfigError::Invalid {
                    path: self.path.clone(),
                    key: "tls_server_config",
                    why: "turning TLS on or off takes a restart".into(),
                });
            }
            let keep = (c.users == inner.users)
                .then(|| inner.active.users.clone())
                .flatten();
            let active = build(&c, keep)?;
            Ok((c.users, active))
        });
        match result {
            Ok((users, active)) => {
                log::info!("web configuration {} re-read", self.path.display());
                inner.users = users;
                inner.active = Arc::new(active);
                inner.stamps = stamps;
            }
            Err(e) => {
                log::warn!(
                    "web configuration not changed: {}",
                    crate::report::chain(&e)
                );
                // Not retried (nor logged again) until a file changes again: the files of
                // the configuration in force and those the new one names (one that does
                // not exist yet is noticed when it appears).
                let mut paths: Vec<PathBuf> = inner.stamps.iter().map(|(p, _)| p.clone()).collect();
                for (p, _) in stamps {
                    if !paths.contains(&p) {
                        paths.push(p);
                    }
                }
                inner.stamps = paths
                    .into_iter()
                    .map(|p| {
                        let s = stamp(&p);
                        (p, s)
                    })
                    .collect();
            }
        }
    }
}
