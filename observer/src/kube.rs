//! Kubernetes identity of a cgroup: pod UID and container id from the cgroup path, and pod,
//! namespace and container names from the kubelet's log directories on the node.
//!
//! The kubelet keeps, for every pod on the node and whatever the runtime (containerd,
//! CRI-O, docker), `/var/log/pods/<namespace>_<pod>_<pod-uid>/` and, for every container,
//! a link `/var/log/containers/<pod>_<namespace>_<container>-<container-id>.log`. Those
//! names are all a node-local observer needs: no API credentials, no RBAC, no CRI client.
//! Namespace, pod and container names cannot contain `_` (DNS-1123), so the split is
//! unambiguous. The directories are read on a thread of their own ([`NameSource`]), at most
//! every [`MIN_INTERVAL`] when the resolver meets an unnamed pod and every [`REFRESH`] otherwise;
//! never on the event path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use crate::cgroups::Labels;

/// How often the log directories are read when nothing asks for it.
pub const REFRESH: Duration = Duration::from_secs(30);
/// The shortest time between two reads.
pub const MIN_INTERVAL: Duration = Duration::from_secs(2);

/// Labels for a cgroup path: the path itself, plus pod UID and container id when the path
/// is recognisably a Kubernetes container (names come from a [`NameSource`]).
#[must_use]
pub fn labels_for(path: &str) -> Labels {
    named_labels(path, &Names::default())
}

/// Labels for a cgroup path with names filled from `names` where it knows the pod (and the
/// container). Without names, pod and container carry the UID and id from the path; a
/// Kubernetes path always has a non-empty `pod`, any other path an empty one.
#[must_use]
pub fn named_labels(path: &str, names: &Names) -> Labels {
    let mut l = Labels {
        cgroup: path.to_string(),
        ..Labels::default()
    };
    let Some(k) = parse_kubernetes(path) else {
        return l;
    };
    if let Some(c) = names.containers.get(&k.container_id) {
        l.namespace = c.namespace.to_string();
        l.pod = c.pod.to_string();
        l.container = c.container.to_string();
        return l;
    }
    l.container = k.container_id;
    match names.pods.get(&k.pod_uid) {
        Some(p) => {
            l.namespace = p.namespace.to_string();
            l.pod = p.pod.to_string();
        }
        None => l.pod = k.pod_uid,
    }
    l
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
/// (`kubepods/burstable/pod<uid>/<id>`, `crio-<id>`), in any `QoS` class, also nested under
/// another hierarchy (kind, k3s). Cgroups inside a container's cgroup belong to it.
/// Returns `None` for paths that are not under a kubepods hierarchy, and for a pod's
/// non-container children (CRI-O's conmon).
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
            } else if !is_qos_segment(seg) {
                return None;
            }
            continue;
        }
        // The segment right after the pod is the container; anything deeper is inside it.
        if pod_segment(segs[i - 1]).is_some() {
            container_id = container_segment(seg)?;
        }
    }
    Some(KubeIds {
        pod_uid: pod_uid?,
        container_id,
    })
}

/// A `QoS` level between kubepods and the pod: `burstable`, `besteffort`, or their systemd
/// slices (`kubepods-burstable.slice`, `kubelet-kubepods-besteffort.slice`).
fn is_qos_segment(seg: &str) -> bool {
    let s = seg.strip_suffix(".slice").unwrap_or(seg);
    s == "burstable" || s == "besteffort" || s.ends_with("-burstable") || s.ends_with("-besteffort")
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
    let name = seg.strip_suffix(".scope").unwrap_or(seg);
    let id = ["cri-containerd-", "crio-", "docker-"]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    is_container_id(id).then(|| id.to_string())
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_uid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Names of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodName {
    pub namespace: Arc<str>,
    pub pod: Arc<str>,
}

/// Names of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerName {
    pub namespace: Arc<str>,
    pub pod: Arc<str>,
    pub container: Arc<str>,
}

/// Pod names by pod UID and container names by container id, as read from the kubelet's
/// log directories.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub pods: HashMap<String, PodName>,
    pub containers: HashMap<String, ContainerName>,
}

/// `<namespace>_<pod>_<uid>` (a directory of /var/log/pods) into (uid, names).
#[must_use]
pub fn parse_pod_log_dir(name: &str) -> Option<(String, PodName)> {
    let mut it = name.split('_');
    let (ns, pod, uid) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || !is_dns_name(ns) || !is_dns_name(pod) || !is_uid(uid) {
        return None;
    }
    Some((
        uid.to_string(),
        PodName {
            namespace: ns.into(),
            pod: pod.into(),
        },
    ))
}

/// `<pod>_<namespace>_<container>-<id>.log` (a link in /var/log/containers) into
/// (container id, names).
#[must_use]
pub fn parse_container_log(name: &str) -> Option<(String, ContainerName)> {
    let stem = name.strip_suffix(".log")?;
    let (rest, id) = stem.rsplit_once('-')?;
    let mut it = rest.split('_');
    let (pod, ns, container) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some()
        || !is_container_id(id)
        || !is_dns_name(ns)
        || !is_dns_name(pod)
        || !is_dns_name(container)
    {
        return None;
    }
    Some((
        id.to_string(),
        ContainerName {
            namespace: ns.into(),
            pod: pod.into(),
            container: container.into(),
        },
    ))
}

/// A DNS-1123 name as Kubernetes allows for namespaces, pods and containers.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Reads the kubelet's log directories under `dir` (`dir/pods`, `dir/containers`).
///
/// # Errors
/// When `dir/pods` cannot be read; an unreadable `dir/containers` only leaves containers
/// unnamed.
pub fn read_names(dir: &Path) -> std::io::Result<Names> {
    let mut names = Names::default();
    for e in std::fs::read_dir(dir.join("pods"))?.flatten() {
        if let Some((uid, p)) = parse_pod_log_dir(&e.file_name().to_string_lossy()) {
            names.pods.insert(uid, p);
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir.join("containers")) {
        for e in entries.flatten() {
            if let Some((id, c)) = parse_container_log(&e.file_name().to_string_lossy()) {
                names.containers.insert(id, c);
            }
        }
    }
    Ok(names)
}

/// Pod and container names, kept fresh by a thread that reads the kubelet's log
/// directories. The resolver polls it without blocking.
pub struct NameSource {
    dir: PathBuf,
    current: Arc<Names>,
    updates: Receiver<Arc<Names>>,
    nudge: SyncSender<()>,
}

impl NameSource {
    /// Starts the reader thread for the log directories under `dir` (the node's `/var/log`,
    /// or where the `DaemonSet` mounts it).
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn spawn(dir: PathBuf) -> std::io::Result<Self> {
        let (tx, updates) = mpsc::channel();
        let (nudge, nudged) = mpsc::sync_channel(1);
        let d = dir.clone();
        std::thread::Builder::new()
            .name("socklat-names".into())
            .spawn(move || reader(&d, &tx, &nudged))?;
        Ok(Self {
            dir,
            current: Arc::new(Names::default()),
            updates,
            nudge,
        })
    }

    /// Where the names come from.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the newest names read, if any arrived; true if they changed.
    pub fn poll(&mut self) -> bool {
        let mut changed = false;
        loop {
            match self.updates.try_recv() {
                Ok(n) => {
                    self.current = n;
                    changed = true;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return changed,
            }
        }
    }

    /// The names known now.
    #[must_use]
    pub fn names(&self) -> &Names {
        &self.current
    }

    /// Asks for a fresh read soon (a pod without a name was met).
    pub fn nudge(&self) {
        let _ = self.nudge.try_send(());
    }
}

fn reader(dir: &Path, tx: &mpsc::Sender<Arc<Names>>, nudged: &Receiver<()>) {
    let mut last: Option<Names> = None;
    let mut failing = false;
    loop {
        let started = Instant::now();
        match read_names(dir) {
            Ok(n) => {
                if failing {
                    log::info!("pod names: {} readable again", dir.join("pods").display());
                    failing = false;
                }
                if last.as_ref() != Some(&n) {
                    if tx.send(Arc::new(n.clone())).is_err() {
                        return;
                    }
                    last = Some(n);
                }
            }
            Err(e) => {
                if !failing {
                    log::warn!(
                        "pod names: cannot read {}: {e}; labels carry the pod UID and container \
                         id from the cgroup path (mount the node's /var/log/pods and \
                         /var/log/containers read-only, or unset --kubelet-log-dir)",
                        dir.join("pods").display()
                    );
                    failing = true;
                }
            }
        }
        match nudged.recv_timeout(REFRESH) {
            Ok(()) => std::thread::sleep(MIN_INTERVAL.saturating_sub(started.elapsed())),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
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
            // cgroupfs driver, CRI-O
            (
                format!("/kubepods/burstable/pod{UID}/crio-{ID}"),
                Some((UID, ID)),
            ),
            // systemd driver, CRI-O with crun's inner cgroup, and a cgroup made inside a
            // container: both belong to the container
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope/container"
                ),
                Some((UID, ID)),
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/{ID}/app/worker"),
                Some((UID, ID)),
            ),
            // k3s/kind with cgroupfs, nested under the node container's cgroup
            (
                format!("/kubelet/kubepods/burstable/pod{UID}/{ID}"),
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
            // container id of the wrong length, or not lower-case hex
            format!("/kubepods/pod{UID}/abc123"),
            format!("/kubepods/pod{UID}/{}", ID.to_uppercase()),
            // kubepods and QoS levels without a pod
            "/kubepods".to_string(),
            "/kubepods.slice/kubepods-burstable.slice".to_string(),
            "/kubepods/besteffort".to_string(),
            // a pod-shaped name that is not under a QoS level or kubepods
            format!("/kubepods/other/pod{UID}/{ID}"),
            format!("/system.slice/pod{UID}/{ID}"),
            // a UID with the wrong grouping
            format!("/kubepods/pod1b6c3d2a4e5f-4a1b-9c8d-7e6f5a4b3c2d/{ID}"),
        ] {
            assert_eq!(parse_kubernetes(&path), None, "{path}");
        }
    }

    #[test]
    fn kubelet_log_names() {
        let (uid, p) =
            parse_pod_log_dir(&format!("kube-system_coredns-5d78c9869d-abcde_{UID}")).unwrap();
        assert_eq!(uid, UID);
        assert_eq!(
            (&*p.namespace, &*p.pod),
            ("kube-system", "coredns-5d78c9869d-abcde")
        );
        let (id, c) = parse_container_log(&format!(
            "coredns-5d78c9869d-abcde_kube-system_coredns-{ID}.log"
        ))
        .unwrap();
        assert_eq!(id, ID);
        assert_eq!(
            (&*c.namespace, &*c.pod, &*c.container),
            ("kube-system", "coredns-5d78c9869d-abcde", "coredns")
        );
        // A container name with dashes: the id is after the last one.
        let (_, c) = parse_container_log(&format!("web-0_shop_istio-proxy-{ID}.log")).unwrap();
        assert_eq!(&*c.container, "istio-proxy");
        for bad in [
            format!("kube-system_coredns_{UID}_extra"),
            format!("kube-system_{UID}"),
            "kube-system_coredns_not-a-uid".to_string(),
            format!("Kube-System_coredns_{UID}"),
            format!("_coredns_{UID}"),
        ] {
            assert_eq!(parse_pod_log_dir(&bad), None, "{bad}");
        }
        for bad in [
            format!("web-0_shop_app-{ID}"),
            format!("web-0_shop_app-{}.log", &ID[1..]),
            format!("web-0_shop-{ID}.log"),
            format!("web-0_shop_app_x-{ID}.log"),
            "web-0_shop_app.log".to_string(),
        ] {
            assert_eq!(parse_container_log(&bad), None, "{bad}");
        }
    }

    #[test]
    fn names_fill_labels_and_fall_back_to_ids() {
        let dir = std::env::temp_dir().join(format!("socklat-kube-{}", std::process::id()));
        let pod_dir = dir.join(format!("pods/shop_web-0_{UID}/app"));
        std::fs::create_dir_all(&pod_dir).unwrap();
        std::fs::create_dir_all(dir.join("containers")).unwrap();
        std::fs::write(pod_dir.join("0.log"), "").unwrap();
        std::os::unix::fs::symlink(
            pod_dir.join("0.log"),
            dir.join(format!("containers/web-0_shop_app-{ID}.log")),
        )
        .unwrap();
        let names = read_names(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();

        let path = format!("/kubepods/burstable/pod{UID}/{ID}");
        let l = named_labels(&path, &names);
        assert_eq!(
            (l.namespace.as_str(), l.pod.as_str(), l.container.as_str()),
            ("shop", "web-0", "app")
        );
        // The pause container has no log: pod named, container by id.
        let other = "f".repeat(64);
        let l = named_labels(&format!("/kubepods/burstable/pod{UID}/{other}"), &names);
        assert_eq!(
            (l.pod.as_str(), l.container.as_str()),
            ("web-0", other.as_str())
        );
        // Unknown pod: what the path gives.
        let l = named_labels(&path, &Names::default());
        assert_eq!(
            (l.namespace.as_str(), l.pod.as_str(), l.container.as_str()),
            ("", UID, ID)
        );
        // Not Kubernetes: no identity at all.
        let l = named_labels("/system.slice/sshd.service", &names);
        assert_eq!(l, labels_for("/system.slice/sshd.service"));
        assert!(read_names(&dir).is_err());
    }
}
