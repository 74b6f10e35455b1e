//! tracefs, which only the classic tracepoints need: where it is (mounted when absent and
//! allowed), and the check that a tracepoint's record has the layout the program reads.

use std::path::Path;

/// Why a classic tracepoint cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    /// tracefs is not mounted and could not be.
    #[error(
        "tracefs is not mounted: mount -t tracefs tracefs /sys/kernel/tracing \
         (in a container, mount the host's /sys/kernel/tracing)"
    )]
    NotMounted,
    /// The kernel has no such tracepoint.
    #[error("no tracepoint {category}:{name} in this kernel (needs Linux >= 6.3)")]
    NoTracepoint {
        category: &'static str,
        name: &'static str,
    },
    /// The format file cannot be read.
    #[error("cannot read {path}")]
    Format {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A field is not where the program reads it.
    #[error("{category}:{name} has an unexpected record layout ({field} not at offset {offset})")]
    Layout {
        category: &'static str,
        name: &'static str,
        field: &'static str,
        offset: u32,
    },
}

/// Where tracefs is; mounts it when absent and allowed.
///
/// # Errors
/// When it is not mounted and cannot be.
pub fn tracefs() -> Result<&'static Path, TracefsError> {
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(p).join("events").is_dir() {
            return Ok(Path::new(p));
        }
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: valid NUL-terminated strings; mount(2) does not keep the pointers.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 && Path::new("/sys/kernel/tracing/events").is_dir() {
        log::info!("mounted tracefs at /sys/kernel/tracing");
        return Ok(Path::new("/sys/kernel/tracing"));
    }
    Err(TracefsError::NotMounted)
}

/// Checks that every `(field, offset)` of `fields` is where tracepoint `category:name`'s
/// record has it: a program reads them at fixed offsets.
///
/// # Errors
/// When the tracepoint is missing or laid out otherwise.
pub fn check_layout(
    category: &'static str,
    name: &'static str,
    fields: &[(&'static str, u32)],
) -> Result<(), TracefsError> {
    let path = tracefs()?
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text = std::fs::read_to_string(&path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            TracefsError::NoTracepoint { category, name }
        } else {
            TracefsError::Format {
                path: path.display().to_string(),
                source,
            }
        }
    })?;
    check_format(category, name, &text, fields)
}

/// [`check_layout`] on the text of a format file.
fn check_format(
    category: &'static str,
    name: &'static str,
    text: &str,
    fields: &[(&'static str, u32)],
) -> Result<(), TracefsError> {
    for &(field, offset) in fields {
        let ok = text
            .lines()
            .any(|l| l.contains(&format!(" {field};")) && l.contains(&format!("offset:{offset};")));
        if !ok {
            return Err(TracefsError::Layout {
                category,
                name,
                field,
                offset,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = "\tfield:const void * sk;\toffset:8;\tsize:8;\tsigned:0;\n\
                          \tfield:__u16 family;\toffset:16;\tsize:2;\tsigned:0;\n";

    #[test]
    fn fields_are_found_at_their_offsets_or_named() {
        assert!(check_format("sock", "x", FORMAT, &[("sk", 8), ("family", 16)]).is_ok());
        // A record whose sk is elsewhere is refused like one whose family is.
        let moved = FORMAT.replace("sk;\toffset:8;", "sk;\toffset:24;");
        assert!(check_format("sock", "x", &moved, &[("sk", 8)]).is_err());
        let e = check_format("sock", "x", FORMAT, &[("family", 18)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "sock:x has an unexpected record layout (family not at offset 18)"
        );
    }
}
