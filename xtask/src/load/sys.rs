//! The raw libc calls of the loads, behind safe wrappers: the anonymous mapping the fault
//! load touches, the write that moves a forked client into its cgroup, and CPU pinning.

use std::ffi::{CStr, c_char};

// Minimal bindings (xtask keeps to std + anyhow + clap).
// SAFETY: these are the C library's declarations of mmap(2), munmap(2), madvise(2),
// open(2), write(2), close(2) and sched_setaffinity(2) on 64-bit Linux (`off_t` is i64,
// `ssize_t` is isize, `pid_t` is i32; the CPU set is passed as its size and bytes).
unsafe extern "C" {
    fn mmap(addr: *mut u8, len: usize, prot: i32, flags: i32, fd: i32, off: i64) -> *mut u8;
    fn munmap(addr: *mut u8, len: usize) -> i32;
    fn madvise(addr: *mut u8, len: usize, advice: i32) -> i32;
    fn open(path: *const c_char, flags: i32, ...) -> i32;
    fn write(fd: i32, buf: *const u8, len: usize) -> isize;
    fn close(fd: i32) -> i32;
    fn sched_setaffinity(pid: i32, size: usize, mask: *const u64) -> i32;
}

/// Pins the calling thread to CPU 0 (the pinned loads: on these VMs cross-CPU wakeups are
/// slow and erratic, a one-CPU ping-pong repeats within about 1%).
pub fn pin_to_cpu0() {
    let mask: u64 = 1;
    // SAFETY: pid 0 is the calling thread; `mask` is a valid 8-byte CPU set.
    let rc = unsafe { sched_setaffinity(0, 8, &raw const mask) };
    assert_eq!(
        rc,
        0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
}

/// A private anonymous mapping without huge pages (so that every 4 KiB page touched is a
/// fault), unmapped on drop.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes; panics if the kernel refuses.
    pub fn anonymous(len: usize) -> Self {
        const PROT_RW: i32 = 0x1 | 0x2;
        const MAP_PRIVATE_ANON: i32 = 0x02 | 0x20;
        const MADV_NOHUGEPAGE: i32 = 15;
        // SAFETY: an anonymous mapping at an address of the kernel's choice, no fd; it
        // aliases nothing of ours.
        let ptr = unsafe { mmap(std::ptr::null_mut(), len, PROT_RW, MAP_PRIVATE_ANON, -1, 0) };
        assert!(!ptr.is_null() && ptr as isize != -1, "mmap failed");
        // SAFETY: `ptr..ptr + len` is the mapping just made; advice changes no contents.
        unsafe { madvise(ptr, len, MADV_NOHUGEPAGE) };
        Self { ptr, len }
    }

    /// Writes one byte at `off`, faulting its page in if it is not yet.
    pub fn touch(&mut self, off: usize) {
        assert!(off < self.len, "offset {off} outside the mapping");
        // SAFETY: `off < len`, so the byte is inside the mapping, which is readable and
        // writable and owned by `self`.
        unsafe { std::ptr::write_volatile(self.ptr.add(off), 1) };
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are those of our own mapping, which nothing else refers
        // to once `self` goes.
        unsafe { munmap(self.ptr, self.len) };
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `procs`. Runs between
/// fork and exec, so only async-signal-safe calls.
pub fn move_self(procs: &CStr) -> std::io::Result<()> {
    const O_WRONLY: i32 = 1;
    // SAFETY: a valid C string; the fd is closed below.
    let fd = unsafe { open(procs.as_ptr(), O_WRONLY) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: writes two bytes from a static buffer.
    let n = unsafe { write(fd, b"0\n".as_ptr(), 2) };
    // SAFETY: our fd.
    unsafe { close(fd) };
    if n == 2 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
