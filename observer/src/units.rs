//! Parsers of the command line's values: durations and byte sizes. Each error is one line.

use std::time::Duration;

/// Parses `60s`, `1500ms`, `5m`, `1h`: one whole number, one unit (`2s500ms` is refused),
/// from 1 s to 24 h.
///
/// # Errors
/// One line naming the problem.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("'{s}' has no unit: write e.g. 60s, 1500ms, 5m or 1h"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' does not start with a whole number (e.g. 60s)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("unknown unit '{unit}' in '{s}': use ms, s, m or h")),
    };
    if d < Duration::from_secs(1) || d > Duration::from_hours(24) {
        return Err(format!(
            "'{s}' is out of range: a duration here is from 1s to 24h"
        ));
    }
    Ok(d)
}

/// Largest `--ring-size`: the shared ring is four times a cgroup's ring, and a ring may have
/// at most 2 GiB (its size is a 32-bit power of two).
pub const MAX_RING_SIZE: u64 = 512 << 20;

/// Parses a ring size: bytes, or with a K or M suffix (KiB, MiB); a power of two and a
/// multiple of the page size, at most [`MAX_RING_SIZE`].
///
/// # Errors
/// One line naming the problem.
pub fn parse_ring_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("KiB").or_else(|| t.strip_suffix('K')) {
        (n, 1024u64)
    } else if let Some(n) = t.strip_suffix("MiB").or_else(|| t.strip_suffix('M')) {
        (n, 1024 * 1024)
    } else {
        (t, 1)
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size in bytes (e.g. 262144 or 256K)"))?;
    let bytes = n.saturating_mul(mult);
    let page = page_size();
    if !bytes.is_power_of_two() || bytes % page != 0 {
        return Err(format!(
            "{bytes} bytes is not a power of two and a multiple of the page size ({page}): try 256K"
        ));
    }
    if bytes > MAX_RING_SIZE {
        return Err(format!(
            "{bytes} bytes is too large: the shared ring is 4 times this size and a ring may \
             have at most 2 GiB, so at most 512M"
        ));
    }
    u32::try_from(bytes).map_err(|_| format!("{bytes} bytes is too large"))
}

/// Smallest size of a kernel table set on the command line: the kernel's LRU keeps up to
/// 128 free entries per CPU aside, so a smaller table evicts long before it is full.
pub const MIN_TABLE_ENTRIES: u32 = 1024;
/// Largest `--max-connections` (1.4 GiB of kernel memory at 88 bytes an entry).
pub const MAX_CONNECTIONS: u32 = 1 << 24;
/// Largest `--max-threads`: the kernel's limit on thread ids (`PID_MAX_LIMIT`).
pub const MAX_THREADS: u32 = 1 << 22;

/// Parses a table size from `min` to `max` entries of `entry_bytes` each.
fn parse_table(s: &str, max: u32, entry_bytes: u32) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of entries (e.g. 65536)"))?;
    if !(MIN_TABLE_ENTRIES..=max).contains(&n) {
        return Err(format!(
            "{n} is out of range: from {MIN_TABLE_ENTRIES} to {max} entries \
             ({entry_bytes} bytes of kernel memory each)"
        ));
    }
    Ok(n)
}

/// Parses `--max-connections`.
///
/// # Errors
/// One line naming the problem.
pub fn parse_max_connections(s: &str) -> Result<u32, String> {
    parse_table(s, MAX_CONNECTIONS, 88)
}

/// Parses `--max-threads`.
///
/// # Errors
/// One line naming the problem.
pub fn parse_max_threads(s: &str) -> Result<u32, String> {
    parse_table(s, MAX_THREADS, 96)
}

/// The page size of this machine.
#[must_use]
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("500ms"),
            Err("'500ms' is out of range: a duration here is from 1s to 24h".into())
        );
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_mins(5)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_hours(1)));
        assert!(parse_duration("60").unwrap_err().contains("no unit"));
        assert!(parse_duration("60x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_size("256K"), Ok(262_144));
        assert_eq!(parse_ring_size("1M"), Ok(1 << 20));
        assert_eq!(parse_ring_size("65536"), Ok(65536));
        assert!(
            parse_ring_size("100000")
                .unwrap_err()
                .contains("power of two")
        );
        assert!(parse_ring_size("1024").unwrap_err().contains("page size"));
        assert!(parse_ring_size("4G").is_err());
        assert!(
            parse_ring_size("2048M")
                .unwrap_err()
                .contains("at most 512M")
        );
        // 1 GiB fits in u32, but the shared ring (4x) would not.
        assert!(
            parse_ring_size("1024M")
                .unwrap_err()
                .contains("shared ring")
        );
        assert_eq!(parse_ring_size("512M"), Ok(512 << 20));
        assert!(parse_ring_size("-1").is_err());
    }
}
