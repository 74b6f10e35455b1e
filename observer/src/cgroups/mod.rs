//! Resolving cgroup ids to labels (cached); where cgroup v2 is mounted is in [`mount`],
//! the daemon's own memory cgroup and its limit in [`memory`], the Kubernetes part of the
//! labels comes from [`crate::kube`].

pub mod memory;
pub mod mount;

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use mount::{MountError, cgroup2_mount, cgroup2_mount_from, check_cgroup2_root};

use crate::idmap::IdMap;
use crate::kube::{NameSource, labels_for, named_labels, parse_kubernetes};
use crate::labels::Labels;

/// Whether a Kubernetes cgroup's labels have its names: the namespace, and the container's
/// name where the cgroup is a container (not a 64-digit id).
fn fully_named(l: &Labels) -> bool {
    !l.namespace.is_empty() && l.container.len() != 64
}

/// Resolves cgroup ids (the inode numbers of cgroup v2 directories) to labels, with a cache.
/// A miss rescans the tree, at most once per round (a scrape, a garbage collection: see
/// [`Resolver::begin_round`]), never on the event path.
pub struct Resolver {
    root: PathBuf,
    cache: IdMap<Arc<Labels>>,
    /// Path -> the id last found there (a path can be removed and made again: a new id).
    by_path: std::collections::HashMap<String, u64>,
    rescanned: bool,
    names: Option<NameSource>,
    said_unnamed: bool,
    /// Kubernetes cgroups still without all their names, and when each was first seen:
    /// names are asked for again at every round for [`NAME_PATIENCE`], then only at the
    /// source's own refresh (a pod's sandbox container, for one, never has a name).
    unnamed: IdMap<Instant>,
}

/// How long after a Kubernetes cgroup appears its missing names are asked for eagerly.
pub const NAME_PATIENCE: Duration = Duration::from_mins(1);

impl Resolver {
    #[must_use]
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            cache: IdMap::default(),
            by_path: std::collections::HashMap::new(),
            rescanned: false,
            names: None,
            said_unnamed: false,
            unnamed: IdMap::default(),
        }
    }

    /// Names Kubernetes pods and containers from `names`.
    #[must_use]
    pub fn with_names(mut self, names: NameSource) -> Self {
        self.names = Some(names);
        self
    }

    /// Starts a round: the next miss may rescan the tree again, and names read since the
    /// last round are applied to the cached labels.
    pub fn begin_round(&mut self) {
        self.rescanned = false;
        let Some(source) = self.names.as_mut() else {
            return;
        };
        self.unnamed
            .retain(|_, seen| seen.elapsed() < NAME_PATIENCE);
        if !self.unnamed.is_empty() {
            source.nudge();
        }
        if !source.poll() {
            return;
        }
        let names = source.names();
        for (id, l) in &mut self.cache {
            // Kubernetes paths only (a removed cgroup's relabelled path is none any more).
            if parse_kubernetes(&l.cgroup).is_some() {
                let fresh = named_labels(&l.cgroup, names);
                if fully_named(&fresh) {
                    self.unnamed.remove(id);
                }
                if fresh != **l {
                    *l = Arc::new(fresh);
                }
            }
        }
    }

    /// Labels of a newly found cgroup directory; asks for names where they are missing.
    fn label(&mut self, id: u64, rel: &str) -> Labels {
        let Some(source) = &self.names else {
            let l = labels_for(rel);
            if !self.said_unnamed && !l.pod.is_empty() {
                log::info!(
                    "Kubernetes pods found; their names are not looked up (--kubelet-log-dir \
                     not set): labels pod and container carry the pod UID and container id"
                );
                self.said_unnamed = true;
            }
            return l;
        };
        let l = named_labels(rel, source.names());
        if !l.pod.is_empty() && !fully_named(&l) {
            source.nudge();
            self.unnamed.insert(id, Instant::now());
        }
        l
    }

    /// Labels of a cgroup id. An id that is not (or no longer) in the tree gets
    /// `cgroup="unknown:<id>"`.
    pub fn resolve(&mut self, id: u64) -> Arc<Labels> {
        if let Some(l) = self.cache.get(&id) {
            return Arc::clone(l);
        }
        if !self.rescanned {
            self.rescan();
            if let Some(l) = self.cache.get(&id) {
                return Arc::clone(l);
            }
        }
        Arc::new(Labels {
            cgroup: format!("unknown:{id}"),
            ..Labels::default()
        })
    }

    /// Forgets an id (its cgroup is gone).
    pub fn forget(&mut self, id: u64) {
        if let Some(l) = self.cache.remove(&id)
            && self.by_path.get(&l.cgroup) == Some(&id)
        {
            self.by_path.remove(&l.cgroup);
        }
        self.unnamed.remove(&id);
    }

    /// Whether the cgroup directory of `id` still exists (by the cached path).
    #[must_use]
    pub fn exists(&self, id: u64) -> Option<bool> {
        let l = self.cache.get(&id)?;
        let p = self.root.join(l.cgroup.trim_start_matches('/'));
        Some(std::fs::metadata(&p).is_ok_and(|m| m.ino() == id))
    }

    fn rescan(&mut self) {
        self.rescanned = true;
        let mut stack = vec![(self.root.clone(), String::from("/"))];
        while let Some((dir, rel)) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            let id = meta.ino();
            if !self.cache.contains_key(&id) {
                let l = Arc::new(self.label(id, &rel));
                self.cache.insert(id, l);
                // A cgroup removed and made again at the same path is a new cgroup: the
                // old one's series (kept until the TTL) must not carry the same labels.
                if let Some(old) = self.by_path.insert(rel.clone(), id)
                    && old != id
                    && let Some(l) = self.cache.get_mut(&old)
                {
                    *l = Arc::new(Labels {
                        cgroup: format!("{rel} (removed, id {old})"),
                        ..(**l).clone()
                    });
                }
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let child_rel = if rel == "/" {
                        format!("/{name}")
                    } else {
                        format!("{rel}/{name}")
                    };
                    stack.push((e.path(), child_rel));
                }
            }
        }
    }

    /// The id of a cgroup directory (its inode number).
    pub fn id_of(path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.ino())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_made_again_relabels_the_old_id() {
        let dir = std::env::temp_dir().join(format!("socklat-reuse-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("x")).unwrap();
        let mut r = Resolver::new(dir.clone());
        let old = Resolver::id_of(&dir.join("x")).unwrap();
        assert_eq!(r.resolve(old).cgroup, "/x");
        std::fs::remove_dir(dir.join("x")).unwrap();
        // Something in between so that the new directory gets another inode number.
        std::fs::create_dir(dir.join("y")).unwrap();
        std::fs::create_dir(dir.join("x")).unwrap();
        let new = Resolver::id_of(&dir.join("x")).unwrap();
        assert_ne!(old, new);
        r.begin_round();
        assert_eq!(r.resolve(new).cgroup, "/x");
        assert_eq!(r.resolve(old).cgroup, format!("/x (removed, id {old})"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resolver_finds_directories_by_inode() {
        let dir = std::env::temp_dir().join(format!("socklat-resolver-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        let mut r = Resolver::new(dir.clone());
        let id = Resolver::id_of(&dir.join("a/b")).unwrap();
        assert_eq!(r.resolve(id).cgroup, "/a/b");
        assert_eq!(r.resolve(Resolver::id_of(&dir).unwrap()).cgroup, "/");
        assert_eq!(r.exists(id), Some(true));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(r.exists(id), Some(false));
        assert!(r.resolve(u64::MAX - 3).cgroup.starts_with("unknown:"));
    }
}
