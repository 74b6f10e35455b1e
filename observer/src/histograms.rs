//! Which histogram buckets the exposition carries (`--histograms`).

use clap::ValueEnum;

/// The buckets of `socklat_tcp_call_duration_seconds` and
/// `socklat_page_fault_duration_seconds` that a scrape shows.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Histograms {
    /// The 94 classic buckets (`_bucket{le}` series) only, in both formats.
    Classic,
    /// Native exponential buckets only, in the protobuf format; the text format then has
    /// no histogram families (their `_sum` and `_count` are the summaries' own).
    Native,
    /// Native buckets in the protobuf format next to the classic buckets, classic buckets
    /// in the text format: what each scraper can read.
    #[default]
    Both,
}

impl Histograms {
    /// The flag's value.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Histograms::Classic => "classic",
            Histograms::Native => "native",
            Histograms::Both => "both",
        }
    }

    /// Whether classic `_bucket` series are exported.
    #[must_use]
    pub const fn classic(self) -> bool {
        matches!(self, Histograms::Classic | Histograms::Both)
    }

    /// Whether native buckets are exported (protobuf only: the text format cannot carry
    /// them).
    #[must_use]
    pub const fn native(self) -> bool {
        matches!(self, Histograms::Native | Histograms::Both)
    }
}
