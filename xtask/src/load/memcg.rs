//! A memory cgroup for the daemon under measurement: cgroup v2 where the unified hierarchy
//! has the memory controller, else the v1 memory controller (below this process's own
//! memory cgroup); its usage and peak, as the kernel charges them (ring pages and kernel
//! maps included). Removed on drop.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use observer::cgroups::memory::{Layout, memory_cgroups};

pub struct MemoryCgroup {
    pub dir: PathBuf,
    pub layout: Layout,
}

impl MemoryCgroup {
    /// A new memory cgroup `name`, limited to `limit` bytes when given.
    pub fn create(name: &str, limit: Option<u64>) -> Result<Self> {
        let leaf = format!("socklat-bench-{}-{name}", std::process::id());
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        let v2 = observer::cgroups::cgroup2_mount_from(&info);
        let v2_memory = v2.as_ref().filter(|r| {
            std::fs::read_to_string(r.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
        });
        let (dir, layout) = if let Some(root) = v2_memory {
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory");
            (root.join(&leaf), Layout::V2)
        } else {
            let own = std::fs::read_to_string("/proc/self/cgroup")?;
            let found = memory_cgroups(&own, &info, &|p: &Path| p.exists())
                .into_iter()
                .find(|c| c.layout == Layout::V1)
                .context("no memory controller (cgroup v2 or v1) on this machine")?;
            (found.dir.join(&leaf), Layout::V1)
        };
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let c = Self { dir, layout };
        if let Some(l) = limit {
            std::fs::write(c.dir.join(layout.limit_file()), l.to_string())?;
        }
        Ok(c)
    }

    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    fn number(&self, file: &str) -> u64 {
        std::fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Bytes charged now.
    pub fn usage(&self) -> u64 {
        self.number(self.layout.usage_file())
    }

    /// The highest charge so far (0 where the kernel keeps none).
    pub fn peak(&self) -> u64 {
        self.number(self.layout.peak_file())
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
