//! Pod UID and container id from a Kubernetes container's cgroup path.

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

pub(super) fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub(super) fn is_uid(s: &str) -> bool {
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
}
