//! The labels of a per-cgroup series.

use std::sync::Arc;

/// The `cgroup` label of the series that sums cgroups beyond `--max-cgroups`.
pub const OTHER: &str = "_other";

/// Labels of one cgroup's series.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Labels {
    /// Path relative to the cgroup v2 mount, "/" for the root.
    pub cgroup: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

impl Labels {
    /// The labels of the `_other` row.
    #[must_use]
    pub fn other() -> Arc<Labels> {
        Arc::new(Labels {
            cgroup: OTHER.into(),
            ..Labels::default()
        })
    }

    /// Whether these are the `_other` row's labels.
    #[must_use]
    pub fn is_other(&self) -> bool {
        self.cgroup == OTHER
    }

    /// `(name, value)` pairs in exposition order.
    #[must_use]
    pub fn pairs(&self) -> [(&'static str, &str); 4] {
        [
            ("cgroup", &self.cgroup),
            ("namespace", &self.namespace),
            ("pod", &self.pod),
            ("container", &self.container),
        ]
    }
}
