//! Pod, namespace and container names from the kubelet's log directories:
//! `pods/<namespace>_<pod>_<pod-uid>/` and `containers/<pod>_<namespace>_<container>-<id>.log`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::path::{is_container_id, is_uid};

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

/// Writes what the kubelet keeps for a container under `dir`:
/// `pods/<ns>_<pod>_<uid>/<name>/0.log` and the link `containers/<pod>_<ns>_<name>-<id>.log`
/// to it (for tests: a fake kubelet log directory).
///
/// # Errors
/// When a file cannot be written.
#[doc(hidden)]
pub fn write_fake_kubelet_logs(
    dir: &Path,
    ns: &str,
    pod: &str,
    uid: &str,
    name: &str,
    id: &str,
) -> std::io::Result<()> {
    let pod_dir = dir.join(format!("pods/{ns}_{pod}_{uid}/{name}"));
    std::fs::create_dir_all(&pod_dir)?;
    std::fs::create_dir_all(dir.join("containers"))?;
    std::fs::write(pod_dir.join("0.log"), "")?;
    std::os::unix::fs::symlink(
        pod_dir.join("0.log"),
        dir.join(format!("containers/{pod}_{ns}_{name}-{id}.log")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "1b6c3d2a-4e5f-4a1b-9c8d-7e6f5a4b3c2d";

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
}
