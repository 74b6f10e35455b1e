//! Where cgroup v2 is mounted: from mountinfo, or checked when given with `--cgroup-root`.

use std::io;
use std::path::{Path, PathBuf};

/// Why no cgroup v2 hierarchy could be used.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// /proc/self/mountinfo cannot be read.
    #[error("cannot read /proc/self/mountinfo")]
    Mountinfo(#[source] io::Error),
    /// No cgroup2 mount is listed.
    #[error(
        "no cgroup v2 mount found: mount it (mount -t cgroup2 none /sys/fs/cgroup/unified) \
         or, in a container, mount the host's /sys/fs/cgroup read-only"
    )]
    NotMounted,
    /// `--cgroup-root` names something that is not a cgroup v2 root.
    #[error(
        "--cgroup-root {0} is not a cgroup v2 mount (nor has one at unified/): give the \
         node's cgroup v2 hierarchy (e.g. a read-only mount of the host's /sys/fs/cgroup)"
    )]
    NotCgroup2(PathBuf),
    /// `--cgroup-root` cannot be examined.
    #[error("--cgroup-root {path}")]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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

/// Undoes mountinfo's octal escapes of space, tab, newline and backslash.
#[must_use]
pub fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The cgroup v2 mount of this machine.
///
/// # Errors
/// When mountinfo cannot be read or lists no cgroup2 mount.
pub fn cgroup2_mount() -> Result<PathBuf, MountError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(MountError::Mountinfo)?;
    cgroup2_mount_from(&info).ok_or(MountError::NotMounted)
}

/// Checks that `path` (given with --cgroup-root) is the root of a cgroup v2 hierarchy; on
/// a hybrid-layout node, where the host's /sys/fs/cgroup is a tmpfs of v1 hierarchies,
/// takes its `unified` child instead.
///
/// # Errors
/// When `path` cannot be examined or is no cgroup v2 root.
pub fn check_cgroup2_root(path: &Path) -> Result<PathBuf, MountError> {
    match is_cgroup2(path) {
        Ok(true) => Ok(path.to_path_buf()),
        Ok(false) if is_cgroup2(&path.join("unified")).unwrap_or(false) => Ok(path.join("unified")),
        Ok(false) => Err(MountError::NotCgroup2(path.to_path_buf())),
        Err(source) => Err(MountError::Root {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn is_cgroup2(path: &Path) -> io::Result<bool> {
    const CGROUP2_SUPER_MAGIC: libc::__fsword_t = 0x6367_7270;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: statfs is plain old data; zeroed is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a NUL-terminated path, st a valid out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &raw mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type == CGROUP2_SUPER_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn cgroup_root_flag_is_checked() {
        let e = crate::report::chain(
            &check_cgroup2_root(Path::new("/nonexistent-socklat")).unwrap_err(),
        );
        assert!(e.starts_with("--cgroup-root /nonexistent-socklat: "), "{e}");
        let e = check_cgroup2_root(&std::env::temp_dir())
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a cgroup v2 mount"), "{e}");
        if let Some(m) = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|i| cgroup2_mount_from(&i))
        {
            assert_eq!(check_cgroup2_root(&m).ok(), Some(m.clone()));
            if m.ends_with("unified") {
                assert_eq!(
                    check_cgroup2_root(m.parent().unwrap()).ok(),
                    Some(m.clone())
                );
            }
        }
    }
}
