//! The two system objects the collector waits on: an epoll set and an eventfd.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An epoll set whose events carry a `u64` token.
pub struct Epoll(OwnedFd);

impl Epoll {
    /// A new epoll set.
    ///
    /// # Errors
    /// When `epoll_create1` fails.
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: epoll_create1 has no pointer arguments.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Stops watching `fd` (no error when it was not watched).
    pub fn remove(&self, fd: RawFd) {
        // SAFETY: a NULL event is allowed for EPOLL_CTL_DEL since Linux 2.6.9.
        let _ = unsafe {
            libc::epoll_ctl(
                self.0.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
    }

    /// Watches `fd` for input; its events carry `token`.
    ///
    /// # Errors
    /// When `epoll_ctl` fails.
    pub fn add(&self, fd: RawFd, token: u64) -> std::io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` outlives the call; fds are valid.
        let rc =
            unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &raw mut ev) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` for events; returns how many of `out` were filled.
    pub fn wait(&self, out: &mut [libc::epoll_event], timeout_ms: i32) -> usize {
        let max = i32::try_from(out.len()).unwrap_or(i32::MAX);
        // SAFETY: `out` is valid for `max` entries.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), out.as_mut_ptr(), max, timeout_ms) };
        usize::try_from(n).unwrap_or(0)
    }
}

/// A non-blocking eventfd: one side signals, the other drains.
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A new eventfd.
    ///
    /// # Errors
    /// When `eventfd` fails.
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd has no pointer arguments.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the eventfd readable.
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Makes it unreadable again.
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), (&raw mut v).cast(), 8) };
    }

    /// Its descriptor, for epoll.
    #[must_use]
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_eventfd_wakes_the_epoll_set_until_drained() {
        let epoll = Epoll::new().unwrap();
        let efd = EventFd::new().unwrap();
        epoll.add(efd.raw(), 7).unwrap();
        let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
        assert_eq!(epoll.wait(&mut out, 0), 0);
        efd.signal();
        assert_eq!(epoll.wait(&mut out, 100), 1);
        let token = out[0].u64;
        assert_eq!(token, 7);
        efd.drain();
        assert_eq!(epoll.wait(&mut out, 0), 0);
        epoll.remove(efd.raw());
        efd.signal();
        assert_eq!(epoll.wait(&mut out, 0), 0);
    }
}
