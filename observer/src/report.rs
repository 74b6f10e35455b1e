//! Reading errors: an error with its sources on one line, and whether an operating system
//! error code is among them (decisions are made from error kinds, never from message text).

use std::fmt::Write as _;

/// An error and its sources on one line: `a: b: c`.
#[must_use]
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let _ = write!(s, ": {inner}");
        src = inner.source();
    }
    s
}

/// Whether `e` or one of its sources is an operating system error `errno`.
#[must_use]
pub fn has_errno(e: &(dyn std::error::Error + 'static), errno: i32) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(errno))
        {
            return true;
        }
        cur = err.source();
    }
    false
}
