//! Kubernetes identity of a cgroup: pod UID and container id from the cgroup path, and pod,
//! namespace and container names from the kubelet's log directories on the node.
//!
//! The kubelet keeps, for every pod on the node and whatever the runtime (containerd,
//! CRI-O, docker), `/var/log/pods/<namespace>_<pod>_<pod-uid>/` and, for every container,
//! a link `/var/log/containers/<pod>_<namespace>_<container>-<container-id>.log`. Those
//! names are all a node-local observer needs: no API credentials, no RBAC, no CRI client.
//! Namespace, pod and container names cannot contain `_` (DNS-1123), so the split is
//! unambiguous. The directories are read on a thread of their own ([`NameSource`]).

mod logs;
mod path;
mod source;

pub use logs::{
    ContainerName, Names, PodName, parse_container_log, parse_pod_log_dir, read_names,
    write_fake_kubelet_logs,
};
pub use path::{KubeIds, parse_kubernetes};
pub use source::{MIN_INTERVAL, NameSource, REFRESH};

use crate::labels::Labels;

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

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "1b6c3d2a-4e5f-4a1b-9c8d-7e6f5a4b3c2d";

    #[test]
    fn names_fill_labels_and_fall_back_to_ids() {
        let dir = std::env::temp_dir().join(format!("socklat-kube-{}", std::process::id()));
        write_fake_kubelet_logs(&dir, "shop", "web-0", UID, "app", ID).unwrap();
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
