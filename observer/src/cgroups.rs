//! cgroup v2: finding the mount, resolving cgroup ids to paths (cached), and reading
//! Kubernetes identity (pod UID, container id) out of a path.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::aggregate::IdMap;

/// Labels of one cgroup's series.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels {
    /// Path relative to the cgroup v2 mount, "/" for the root.
    pub cgroup: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// Finds where cgroup v2 is mounted, from a mountinfo text (`/proc/self/mountinfo`).
/// Prefers `/sys/fs/cgroup` (unified layout), then any other cgroup2 mount (hybrid layout,
/// e.g. `/sys/fs/cgroup/unified`).
#[must_use]
pub fn cgroup2_mount_from(mountinfo: &str) -> Option<PathBuf> {
    let mut found: Option<PathBuf> = None;
    for line in mountinfo.lines() {
        // "36 35 0:30 / /sys/fs/cgroup rw,... shared:9 - cgroup2 cgroup2 rw"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let Some(mount_point) = left.split_whitespace().nth(4) else {
            continue;
        };
        let p = PathBuf::from(unescape_mountinfo(mount_point));
        if p == Path::new("/sys/fs/cgroup") {
            return Some(p);
        }
        found.get_or_insert(p);
    }
    found
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The cgroup v2 mount of this machine, or a message naming what is missing.
pub fn cgroup2_mount() -> Result<PathBuf, String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    cgroup2_mount_from(&info).ok_or_else(|| {
        "no cgroup v2 mount found: mount it (mount -t cgroup2 none /sys/fs/cgroup/unified) \
         or, in a container, mount the host's /sys/fs/cgroup read-only"
            .to_string()
    })
}

/// Resolves cgroup ids (the inode numbers of cgroup v2 directories) to labels, with a cache.
/// A miss rescans the tree, at most once per round (a scrape, a garbage collection: see
/// [`Resolver::begin_round`]), never on the event path.
pub struct Resolver {
    root: PathBuf,
    cache: IdMap<Arc<Labels>>,
    rescanned: bool,
}

impl Resolver {
    #[must_use]
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            cache: IdMap::default(),
            rescanned: false,
        }
    }

    /// Starts a round: the next miss may rescan the tree again.
    pub fn begin_round(&mut self) {
        self.rescanned = false;
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
        self.cache.remove(&id);
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
            self.cache
                .entry(meta.ino())
                .or_insert_with(|| Arc::new(labels_for(&rel)));
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

/// Labels for a cgroup path: the path itself, plus pod UID and container id when the path
/// is recognisably a Kubernetes container (names need a runtime or API source).
#[must_use]
pub fn labels_for(path: &str) -> Labels {
    let k = parse_kubernetes(path);
    Labels {
        cgroup: path.to_string(),
        namespace: String::new(),
        pod: k.as_ref().map(|k| k.pod_uid.clone()).unwrap_or_default(),
        container: k.map(|k| k.container_id).unwrap_or_default(),
    }
}

/// What a Kubernetes container's cgroup path says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeIds {
    /// Pod UID with dashes, e.g. `1b6c3d2a-...`.
    pub pod_uid: String,
    /// Container id (64 hex digits), or empty for the pod-level cgroup.
    pub container_id: String,
}

/// Parses the pod UID and container id from a Kubernetes cgroup path, for the systemd
/// driver (`kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `docker-<id>.scope`) and the cgroupfs driver
/// (`kubepods/burstable/pod<uid>/<id>`), in any `QoS` class. Returns `None` for paths that
/// are not under a kubepods hierarchy.
#[must_use]
pub fn parse_kubernetes(path: &str) -> Option<KubeIds> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let kube = segs.iter().position(|s| {
        *s == "kubepods" || *s == "kubepods.slice" || s.ends_with("-kubepods.slice")
    })?;
    let mut pod_uid = None;
    let mut container_id = String::new();
    for (i, seg) in segs.iter().enumerate().skip(kube + 1) {
        if pod_uid.is_none() {
            if let Some(uid) = pod_segment(seg) {
                pod_uid = Some(uid);
            }
            continue;
        }
        // The segment right after the pod is the container; anything deeper is inside it.
        if i > 0 && pod_segment(segs[i - 1]).is_some() {
            match container_segment(seg) {
                Some(id) => container_id = id,
                None => return None,
            }
        }
    }
    Some(KubeIds {
        pod_uid: pod_uid?,
        container_id,
    })
}

fn pod_segment(seg: &str) -> Option<String> {
    // systemd: kubepods-pod<uid>.slice, kubepods-<qos>-pod<uid>.slice
    if let Some(rest) = seg.strip_suffix(".slice") {
        let idx = rest.rfind("-pod")?;
        let uid = rest[idx + 4..].replace('_', "-");
        return is_uid(&uid).then_some(uid);
    }
    // cgroupfs: pod<uid>
    let uid = seg.strip_prefix("pod")?;
    is_uid(uid).then(|| uid.to_string())
}

fn container_segment(seg: &str) -> Option<String> {
    let id = if let Some(scope) = seg.strip_suffix(".scope") {
        ["cri-containerd-", "crio-", "docker-"]
            .iter()
            .find_map(|p| scope.strip_prefix(p))?
    } else {
        seg
    };
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

fn is_uid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "1b6c3d2a-4e5f-4a1b-9c8d-7e6f5a4b3c2d";
    const UID_: &str = "1b6c3d2a_4e5f_4a1b_9c8d_7e6f5a4b3c2d";

    #[test]
    fn kubernetes_paths() {
        let cases: Vec<(String, Option<(&str, &str)>)> = vec![
            // systemd driver, containerd, burstable
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                Some((UID, ID)),
            ),
            // systemd driver, CRI-O, guaranteed
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope"),
                Some((UID, ID)),
            ),
            // systemd driver, docker, besteffort
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{ID}.scope"
                ),
                Some((UID, ID)),
            ),
            // cgroupfs driver
            (
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                Some((UID, ID)),
            ),
            (format!("/kubepods/pod{UID}/{ID}"), Some((UID, ID))),
            (
                format!("/kubepods/besteffort/pod{UID}/{ID}"),
                Some((UID, ID)),
            ),
            // pod-level cgroup: pod known, no container
            (format!("/kubepods/besteffort/pod{UID}"), Some((UID, ""))),
            // nested under a kubelet slice (kind, rootless)
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                Some((UID, ID)),
            ),
        ];
        for (path, want) in cases {
            let got = parse_kubernetes(&path).map(|k| (k.pod_uid, k.container_id));
            let want = want.map(|(p, c)| (p.to_string(), c.to_string()));
            assert_eq!(got, want, "{path}");
        }
    }

    #[test]
    fn non_kubernetes_paths_do_not_match() {
        for path in [
            "/".to_string(),
            "/system.slice/containerd.service".to_string(),
            format!("/system.slice/docker-{ID}.scope"),
            "/user.slice/user-1000.slice/session-2.scope".to_string(),
            format!("/kubepods/burstable/podnot-a-uid/{ID}"),
            // conmon of CRI-O is not a container
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope"),
            // container id of the wrong length
            format!("/kubepods/pod{UID}/abc123"),
        ] {
            assert_eq!(parse_kubernetes(&path), None, "{path}");
        }
    }

    #[test]
    fn mountinfo_unified_and_hybrid() {
        let unified =
            "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_mount_from(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let hybrid = "25 24 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                      27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            cgroup2_mount_from(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount_from("27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw\n"),
            None
        );
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
