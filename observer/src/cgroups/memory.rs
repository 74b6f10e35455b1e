//! The daemon's own memory cgroup: where it is (cgroup v2, or the v1 memory controller of a
//! hybrid-layout node), its limit (the lowest `memory.max` / `memory.limit_in_bytes` of it
//! and its ancestors up to the mount) and its usage, read from `/proc/self/cgroup` and
//! `/proc/self/mountinfo`. Pure parsing plus plain file reads: no privileges needed.

use std::path::{Path, PathBuf};

use super::mount::unescape_mountinfo;

/// Which cgroup layout holds the memory controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v2: `memory.max`, `memory.current`.
    V2,
    /// cgroup v1's memory controller: `memory.limit_in_bytes`, `memory.usage_in_bytes`.
    V1,
}

impl Layout {
    /// The file holding the limit.
    #[must_use]
    pub const fn limit_file(self) -> &'static str {
        match self {
            Layout::V2 => "memory.max",
            Layout::V1 => "memory.limit_in_bytes",
        }
    }

    /// The file holding the current usage.
    #[must_use]
    pub const fn usage_file(self) -> &'static str {
        match self {
            Layout::V2 => "memory.current",
            Layout::V1 => "memory.usage_in_bytes",
        }
    }

    /// The file holding the highest usage so far (v2: Linux >= 5.19).
    #[must_use]
    pub const fn peak_file(self) -> &'static str {
        match self {
            Layout::V2 => "memory.peak",
            Layout::V1 => "memory.max_usage_in_bytes",
        }
    }
}

/// A memory cgroup directory of this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryCgroup {
    pub layout: Layout,
    /// The directory (under the mount point of its hierarchy).
    pub dir: PathBuf,
    /// The mount point: ancestors are looked at up to here.
    pub mount: PathBuf,
}

/// The memory limit that applies to this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLimit {
    pub bytes: u64,
    /// The directory whose limit it is (this process's cgroup or an ancestor).
    pub from: PathBuf,
    pub layout: Layout,
}

/// v1 writes "no limit" as `PAGE_COUNTER_MAX` pages (9223372036854771712 on 4 KiB pages);
/// anything from 2^62 on is no limit.
const V1_UNLIMITED: u64 = 1 << 62;

/// Parses one limit file's text: `None` for no limit (`max`, or v1's huge value) and for
/// text that is no number.
#[must_use]
pub fn parse_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    t.parse::<u64>().ok().filter(|&b| b < V1_UNLIMITED)
}

/// The cgroup paths of this process (`/proc/self/cgroup`): the v2 one (`0::/path`), and the
/// v1 memory controller's (`N:...memory...:/path`).
#[must_use]
pub fn own_paths(proc_cgroup: &str) -> (Option<String>, Option<String>) {
    let mut v2 = None;
    let mut v1 = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(path.to_string());
        }
    }
    (v2, v1)
}

/// One cgroup mount of mountinfo: its layout, the cgroup path at its root, its mount point.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mount {
    layout: Layout,
    root: String,
    point: PathBuf,
}

/// The cgroup2 mounts and the v1 mounts of the memory controller.
fn cgroup_mounts(mountinfo: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        // "26 25 0:23 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut l = left.split_whitespace();
        let (Some(root), Some(point)) = (l.nth(3), l.next()) else {
            continue;
        };
        let mut r = right.split_whitespace();
        let layout = match (r.next(), r.nth(1)) {
            (Some("cgroup2"), _) => Layout::V2,
            (Some("cgroup"), Some(opts)) if opts.split(',').any(|o| o == "memory") => Layout::V1,
            _ => continue,
        };
        out.push(Mount {
            layout,
            root: unescape_mountinfo(root),
            point: PathBuf::from(unescape_mountinfo(point)),
        });
    }
    out
}

/// `path` below `root` (both cgroup paths), or `None` when it is not below it (a mount of
/// another part of the tree, e.g. the host's hierarchy seen from a cgroup namespace, whose
/// root mountinfo shows as `/../..`).
fn below(path: &str, root: &str) -> Option<String> {
    let root = root.trim_end_matches('/');
    let rest = path.strip_prefix(root)?;
    if !rest.is_empty() && !rest.starts_with('/') {
        return None;
    }
    Some(rest.trim_start_matches('/').to_string())
}

/// The memory cgroups of this process, best first: its cgroup v2 directory where that has
/// `memory.max` (the memory controller is enabled there), then its v1 memory controller
/// directory. `exists` says whether a file exists (the real file system, or a test's).
#[must_use]
pub fn memory_cgroups(
    proc_cgroup: &str,
    mountinfo: &str,
    exists: &dyn Fn(&Path) -> bool,
) -> Vec<MemoryCgroup> {
    let (v2, v1) = own_paths(proc_cgroup);
    let mut out = Vec::new();
    for layout in [Layout::V2, Layout::V1] {
        let path = match layout {
            Layout::V2 => v2.as_deref(),
            Layout::V1 => v1.as_deref(),
        };
        let Some(path) = path else { continue };
        for m in cgroup_mounts(mountinfo)
            .into_iter()
            .filter(|m| m.layout == layout)
        {
            let Some(rel) = below(path, &m.root) else {
                continue;
            };
            let dir = if rel.is_empty() {
                m.point.clone()
            } else {
                m.point.join(rel)
            };
            // The usage file is there in every non-root memory cgroup (the limit file is
            // missing at a v2 root, which has no limit).
            if exists(&dir.join(layout.usage_file())) || exists(&dir.join(layout.limit_file())) {
                out.push(MemoryCgroup {
                    layout,
                    dir,
                    mount: m.point,
                });
                break;
            }
        }
    }
    out
}

impl MemoryCgroup {
    /// The lowest limit of this directory and its ancestors up to the mount point (each
    /// applies: a pod's limit above a container's); `read` reads a file's text.
    #[must_use]
    pub fn limit(&self, read: &dyn Fn(&Path) -> Option<String>) -> Option<MemoryLimit> {
        let mut best: Option<MemoryLimit> = None;
        let mut dir = self.dir.as_path();
        loop {
            if let Some(bytes) = read(&dir.join(self.layout.limit_file()))
                .as_deref()
                .and_then(parse_limit)
                && best.as_ref().is_none_or(|b| bytes < b.bytes)
            {
                best = Some(MemoryLimit {
                    bytes,
                    from: dir.to_path_buf(),
                    layout: self.layout,
                });
            }
            if dir == self.mount {
                break;
            }
            match dir.parent() {
                Some(p) if p.starts_with(&self.mount) => dir = p,
                _ => break,
            }
        }
        best
    }

    /// Bytes charged to this cgroup now.
    #[must_use]
    pub fn usage(&self) -> Option<u64> {
        read_number(&self.dir.join(self.layout.usage_file()))
    }

    /// The highest usage so far, where the kernel keeps it.
    #[must_use]
    pub fn peak(&self) -> Option<u64> {
        read_number(&self.dir.join(self.layout.peak_file()))
    }
}

fn read_number(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// This process's memory cgroup and the limit that applies to it, from `/proc/self`: the
/// first memory cgroup (v2, then v1) that has a limit; else the first one found, without a
/// limit; `None` when there is no memory controller at all.
#[must_use]
pub fn own() -> Option<(MemoryCgroup, Option<MemoryLimit>)> {
    let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let found = memory_cgroups(&proc_cgroup, &mountinfo, &|p| p.exists());
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let with_limit = found
        .iter()
        .find_map(|c| c.limit(&read).map(|l| (c.clone(), Some(l))));
    with_limit.or_else(|| found.into_iter().next().map(|c| (c, None)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
25 24 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
27 25 0:24 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
28 25 0:25 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
4:memory:/process_api/abc
1:cpu:/
0::/
";

    fn fs(files: &[(&str, &str)]) -> BTreeMap<PathBuf, String> {
        files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), (*t).to_string()))
            .collect()
    }

    #[test]
    fn limits_parse_with_no_limit_as_none() {
        assert_eq!(parse_limit("201326592\n"), Some(192 << 20));
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("garbage"), None);
    }

    #[test]
    fn own_paths_of_both_layouts() {
        assert_eq!(
            own_paths(HYBRID_CGROUP),
            (Some("/".into()), Some("/process_api/abc".into()))
        );
        assert_eq!(
            own_paths("0::/kubepods.slice/pod1/cri-x.scope\n"),
            (Some("/kubepods.slice/pod1/cri-x.scope".into()), None)
        );
        assert_eq!(
            own_paths("5:cpuacct,cpu,memory:/docker/x\n"),
            (None, Some("/docker/x".into()))
        );
    }

    /// This machine's layout: the memory controller in v1 (the unified hierarchy has none),
    /// the limit on an ancestor of the process's cgroup.
    #[test]
    fn hybrid_layout_reads_the_v1_limit_of_the_lowest_ancestor() {
        let files = fs(&[
            (
                "/sys/fs/cgroup/memory/process_api/abc/memory.usage_in_bytes",
                "1000",
            ),
            (
                "/sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes",
                "9223372036854771712",
            ),
            (
                "/sys/fs/cgroup/memory/process_api/memory.limit_in_bytes",
                "201326592",
            ),
            (
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712",
            ),
        ]);
        let found = memory_cgroups(HYBRID_CGROUP, HYBRID_MOUNTINFO, &|p| files.contains_key(p));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].layout, Layout::V1);
        assert_eq!(
            found[0].dir,
            PathBuf::from("/sys/fs/cgroup/memory/process_api/abc")
        );
        let limit = found[0].limit(&|p| files.get(p).cloned()).unwrap();
        assert_eq!(limit.bytes, 192 << 20);
        assert_eq!(
            limit.from,
            PathBuf::from("/sys/fs/cgroup/memory/process_api")
        );
    }

    /// A container with its own cgroup namespace: its cgroup is the root of the mount, and
    /// the node's hierarchy mounted read-only elsewhere (root shown as `/../..`) is not it.
    #[test]
    fn unified_layout_in_a_container_reads_memory_max_of_its_own_mount() {
        let mountinfo = "\
600 500 0:30 /../.. /host/sys/fs/cgroup ro,relatime - cgroup2 cgroup2 rw
601 500 0:30 / /sys/fs/cgroup ro,relatime - cgroup2 cgroup2 rw
";
        let files = fs(&[
            ("/sys/fs/cgroup/memory.max", "201326592\n"),
            ("/sys/fs/cgroup/memory.current", "1000\n"),
            ("/host/sys/fs/cgroup/memory.current", "1000\n"),
        ]);
        let found = memory_cgroups("0::/\n", mountinfo, &|p| files.contains_key(p));
        assert_eq!(found[0].dir, PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(found[0].layout, Layout::V2);
        let limit = found[0].limit(&|p| files.get(p).cloned()).unwrap();
        assert_eq!(limit.bytes, 192 << 20);
    }

    /// A node with the unified layout, no cgroup namespace: the process's cgroup under
    /// /sys/fs/cgroup; the pod's lower limit above the container's counts.
    #[test]
    fn unified_layout_takes_the_lowest_limit_up_to_the_mount() {
        let mountinfo = "29 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let files = fs(&[
            ("/sys/fs/cgroup/kubepods/pod1/c1/memory.max", "max\n"),
            ("/sys/fs/cgroup/kubepods/pod1/c1/memory.current", "5\n"),
            ("/sys/fs/cgroup/kubepods/pod1/memory.max", "100000000\n"),
            ("/sys/fs/cgroup/kubepods/memory.max", "900000000\n"),
        ]);
        let found = memory_cgroups("0::/kubepods/pod1/c1\n", mountinfo, &|p| {
            files.contains_key(p)
        });
        let limit = found[0].limit(&|p| files.get(p).cloned()).unwrap();
        assert_eq!(limit.bytes, 100_000_000);
        assert_eq!(limit.from, PathBuf::from("/sys/fs/cgroup/kubepods/pod1"));
        // Without any limit on the way: none.
        let none = fs(&[("/sys/fs/cgroup/a/memory.current", "5\n")]);
        let found = memory_cgroups("0::/a\n", mountinfo, &|p| none.contains_key(p));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].limit(&|p| none.get(p).cloned()), None);
    }

    /// The v2 hierarchy without the memory controller (no memory files) is passed over.
    #[test]
    fn a_hierarchy_without_the_memory_controller_is_not_a_memory_cgroup() {
        let found = memory_cgroups(HYBRID_CGROUP, HYBRID_MOUNTINFO, &|_| false);
        assert!(found.is_empty());
        assert_eq!(below("/a/b", "/a"), Some("b".into()));
        assert_eq!(below("/ab", "/a"), None);
        assert_eq!(below("/", "/../.."), None);
        assert_eq!(below("/x", "/"), Some("x".into()));
    }
}
