//! Privileged tests of socket call counts in the cases real nodes produce besides plain
//! request/response: calls interrupted by signals, socket calls the tracepoint mode cannot
//! time (sendfile, splice, `io_uring`), and raw sockets of protocol TCP. Each worker runs in a
//! cgroup of its own and reports what it did; the daemon's numbers for that cgroup must
//! agree exactly.
//!
//! Run by `cargo xtask test` as root, one test at a time (and in every mode of the kernel
//! matrix).

#![expect(clippy::float_cmp, reason = "counts are small integers, exact in f64")]

pub mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::traffic::{RESPONSE_LEN, delay_server};
use common::{Daemon, Metrics, TestCgroup, env, role, role_output, run_role};

/// One request to the delay server: answer after `delay_us`.
fn request(delay_us: u32) -> [u8; 8] {
    let mut req = [0u8; 8];
    req[..4].copy_from_slice(&delay_us.to_le_bytes());
    req
}

/// Reads one whole answer of the delay server.
fn read_answer(s: &mut TcpStream) {
    let mut buf = [0u8; RESPONSE_LEN];
    s.read_exact(&mut buf).unwrap();
}

static SIGNALS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::Relaxed);
}

/// Sends SIGALRM to the calling thread every `period`, when it is blocked in `recvfrom`
/// (`/proc/self/task/TID/syscall`), until the returned flag is set (the signal is aimed at
/// the thread, not the process: libtest runs a test on a thread of its own, and a
/// process-directed signal would interrupt whichever thread the kernel picks). A signal
/// sent while the thread is elsewhere, as in its handler or on its way back into the
/// restarted call, would interrupt no call (seen in a TCG guest: 61 interrupted receives
/// for 64 signals); one sent while it sleeps in the receive interrupts it.
fn alarm_this_thread(
    period: Duration,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
) {
    // SAFETY: gettid and getpid have no preconditions.
    let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&stop);
    let syscall = format!("/proc/self/task/{tid}/syscall");
    let t = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            std::thread::sleep(period);
            let in_recv = std::fs::read_to_string(&syscall).is_ok_and(|s| {
                s.split_whitespace().next() == Some(&libc::SYS_recvfrom.to_string())
            });
            if in_recv {
                // SAFETY: tgkill to a thread of this process, which handles SIGALRM.
                unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGALRM) };
            }
        }
    });
    (stop, t)
}

/// A client whose blocking receive is interrupted by signals: SIGALRM with `SA_RESTART`
/// every 5 ms, aimed at the receiving thread, while it waits 400 ms for the server's answer (the kernel restarts the call;
/// the application never sees an error), then a normal close. Prints how many signals
/// arrived while it waited (`@signals N`).
#[test]
#[ignore = "worker role, run by the accuracy tests"]
fn role_interrupted() {
    if role().as_deref() != Some("role_interrupted") {
        return;
    }
    // SAFETY: a zeroed sigaction is valid; the handler only touches an atomic. SA_RESTART:
    // the kernel restarts the interrupted receive and the application sees no error.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = count_signal as *const () as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&raw mut sa.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGALRM, &raw const sa, std::ptr::null_mut()),
            0
        );
    }
    let addr: SocketAddr = env("SOCKLAT_TEST_ADDR").parse().unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&request(400_000)).unwrap();
    let (stop, alarms) = alarm_this_thread(Duration::from_millis(5));
    read_answer(&mut s);
    stop.store(true, Ordering::Relaxed);
    alarms.join().unwrap();
    println!("@signals {}", SIGNALS.load(Ordering::Relaxed));
    drop(s);
}

/// The `@name value` lines of a role's output as numbers.
fn reported(lines: &[String], name: &str) -> f64 {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no @{name} in {lines:?}"))
        .parse()
        .unwrap()
}

/// The daemon's count of one call result in one cgroup.
fn calls(m: &Metrics, cg: &TestCgroup, call: &str, result: &str) -> f64 {
    m.get(
        "socklat_tcp_calls_total",
        &[
            ("cgroup", cg.label.as_str()),
            ("call", call),
            ("result", result),
        ],
    )
    .unwrap_or(0.0)
}

/// Issue 14.1: a receive interrupted by a signal (-ERESTARTSYS, restarted by the kernel
/// with `SA_RESTART`) is counted `interrupted`, not `error`, and does not make the connection
/// abnormal.
///
/// Tolerance: the worker counts every SIGALRM it handled while it waited, each sent while
/// the thread slept in the receive; one sent just as the answer arrived interrupts no call,
/// so the daemon may count up to 2 fewer.
#[test]
fn interrupted_calls_are_counted_apart_and_do_not_mark_the_connection() {
    if role().is_some() {
        return;
    }
    let daemon = Daemon::start(&["--probe-mode", &common::mode()]);
    let server = delay_server();
    let cg = TestCgroup::new("interrupted");
    let out = role_output(run_role(
        &cg,
        "role_interrupted",
        &[("SOCKLAT_TEST_ADDR", server.to_string())],
    ));
    let signals = reported(&out, "signals");
    assert!(signals >= 20.0, "only {signals} signals arrived");
    let m = daemon.scrape_settled();
    let interrupted = calls(&m, &cg, "recvmsg", "interrupted");
    eprintln!("@@interrupted {interrupted} receives for {signals} signals");
    assert!(
        interrupted <= signals && interrupted >= signals - 2.0,
        "{interrupted} interrupted receives counted for {signals} signals"
    );
    for call in ["sendmsg", "recvmsg"] {
        assert_eq!(calls(&m, &cg, call, "error"), 0.0, "{call} errors");
    }
    assert_eq!(calls(&m, &cg, "recvmsg", "ok"), 1.0, "the answer");
    let outcome = |o: &str| {
        m.get(
            "socklat_tcp_connections_closed_total",
            &[("cgroup", cg.label.as_str()), ("outcome", o)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(outcome("normal"), 1.0, "the connection closed normally");
    assert_eq!(
        m.get(
            "socklat_tcp_abnormal_connection_ratio",
            &[("cgroup", cg.label.as_str())]
        ),
        Some(0.0)
    );
}

/// Sends one request to the delay server with `sendfile` from a file holding it.
fn send_with_sendfile(s: &TcpStream, req: &[u8; 8]) {
    let path = std::env::temp_dir().join(format!("socklat-sendfile-{}", std::process::id()));
    std::fs::write(&path, req).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    // SAFETY: two valid descriptors; a NULL offset uses the file's own.
    let n = unsafe { libc::sendfile(s.as_raw_fd(), f.as_raw_fd(), std::ptr::null_mut(), 8) };
    assert_eq!(n, 8, "sendfile: {}", std::io::Error::last_os_error());
    std::fs::remove_file(&path).unwrap();
}

/// Sends one request to the delay server with `splice` from a pipe.
fn send_with_splice(s: &TcpStream, req: &[u8; 8]) {
    let mut p = [0i32; 2];
    // SAFETY: a valid array of two descriptors.
    assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
    // SAFETY: the pipe's write end and a valid buffer of 8 bytes.
    assert_eq!(unsafe { libc::write(p[1], req.as_ptr().cast(), 8) }, 8);
    // SAFETY: the pipe's read end and the socket; NULL offsets (neither is seekable).
    let n = unsafe {
        libc::splice(
            p[0],
            std::ptr::null_mut(),
            s.as_raw_fd(),
            std::ptr::null_mut(),
            8,
            0,
        )
    };
    assert_eq!(n, 8, "splice: {}", std::io::Error::last_os_error());
    // SAFETY: our own pipe's descriptors.
    unsafe {
        libc::close(p[0]);
        libc::close(p[1]);
    }
}

/// Sends one request to the delay server with an `io_uring` send (submitted and waited for
/// with `io_uring_enter`).
fn send_with_io_uring(s: &TcpStream, req: &[u8; 8]) {
    let mut ring = io_uring::IoUring::new(4).expect("io_uring_setup");
    let send = io_uring::opcode::Send::new(io_uring::types::Fd(s.as_raw_fd()), req.as_ptr(), 8)
        .build()
        .user_data(1);
    // SAFETY: `req` outlives the submission, which is waited for below.
    unsafe {
        ring.submission()
            .push(&send)
            .expect("submission queue full");
    };
    ring.submit_and_wait(1).expect("io_uring_enter");
    let cqe = ring.completion().next().expect("a completion");
    assert_eq!(cqe.result(), 8, "io_uring send");
}

/// A 32-bit (i386) system call made with `int 0x80` from this 64-bit process: the kernel
/// runs it as a compat syscall, with the i386 table's numbers. Only where [`has_ia32`].
#[cfg(target_arch = "x86_64")]
fn int80(nr: u32, a: u32, b: u32, c: u32) -> i32 {
    let ret: i32;
    // SAFETY: `int 0x80` clobbers only eax (the result) and takes its arguments in eax, ebx,
    // ecx, edx; rbx is saved around it as the compiler reserves it. Pointer arguments are
    // the caller's, below 4 GiB.
    unsafe {
        std::arch::asm!(
            "xchg rsi, rbx",
            "int 0x80",
            "xchg rsi, rbx",
            inout("rsi") u64::from(a) => _,
            inlateout("eax") nr => ret,
            in("ecx") b,
            in("edx") c,
            clobber_abi("C"),
        );
    }
    ret
}

/// Whether i386 syscalls work here (`getpid`, i386 number 20, answers our pid).
#[cfg(target_arch = "x86_64")]
fn has_ia32() -> bool {
    // Without IA-32 emulation `int 0x80` is a general protection fault: ask the kernel's
    // config instead when it says (/proc/config.gz is not always there).
    let disabled = std::fs::read_to_string("/proc/cmdline")
        .is_ok_and(|c| c.split_whitespace().any(|w| w == "ia32_emulation=0"));
    !disabled
        && std::path::Path::new("/proc/sys/abi/vsyscall32").exists()
        && int80(20, 0, 0, 0) == i32::try_from(std::process::id()).unwrap()
}

/// A receive made by a 32-bit syscall (i386 `read`, number 3) after an i386 `getpid`
/// (number 20, which is `writev` in the `x86_64` table) and a 1.5 s sleep: its start must
/// not be the getpid's.
#[cfg(target_arch = "x86_64")]
fn compat_read_after_brk(s: &mut TcpStream) -> bool {
    if !has_ia32() {
        println!("@note no IA-32 emulation: no 32-bit syscalls");
        return false;
    }
    // A buffer below 4 GiB for the 32-bit pointer.
    // SAFETY: a fresh anonymous mapping, unmapped below.
    let buf = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        )
    };
    assert_ne!(buf, libc::MAP_FAILED);
    s.write_all(&request(1_700_000)).unwrap();
    assert!(int80(20, 0, 0, 0) > 0, "i386 getpid");
    std::thread::sleep(Duration::from_millis(1500));
    let fd = u32::try_from(s.as_raw_fd()).unwrap();
    let addr = u32::try_from(buf as usize).unwrap();
    let mut got = 0;
    while got < RESPONSE_LEN {
        let n = int80(3, fd, addr, u32::try_from(RESPONSE_LEN - got).unwrap());
        assert!(n > 0, "i386 read: {n}");
        got += usize::try_from(n).unwrap();
    }
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(buf, 4096) };
    true
}

/// A thread that makes a timed receive, then reaches its socket in ways the tracepoint mode
/// does not time: a 32-bit receive after a 32-bit syscall whose number is a timed one in the
/// 64-bit table (where IA-32 emulation is on), then (after a 1.5 s sleep) sends by sendfile, splice and `io_uring`, each
/// followed by a timed receive of the answer. Prints what it did (`@timed_sends`,
/// `@untimed_sends`, `@untimed_recvs`).
#[test]
#[ignore = "worker role, run by the accuracy tests"]
fn role_untimed_paths() {
    if role().as_deref() != Some("role_untimed_paths") {
        return;
    }
    let addr: SocketAddr = env("SOCKLAT_TEST_ADDR").parse().unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(&request(1000)).unwrap();
    read_answer(&mut s);
    let mut timed_sends = 1;
    let mut untimed_recvs = 0;
    #[cfg(target_arch = "x86_64")]
    if compat_read_after_brk(&mut s) {
        timed_sends += 1;
        untimed_recvs += 1;
    }
    std::thread::sleep(Duration::from_millis(1500));
    let mut untimed = 0;
    send_with_sendfile(&s, &request(1000));
    read_answer(&mut s);
    untimed += 1;
    send_with_splice(&s, &request(1000));
    read_answer(&mut s);
    untimed += 1;
    if std::env::var_os("SOCKLAT_TEST_NO_IO_URING").is_none() {
        send_with_io_uring(&s, &request(1000));
        read_answer(&mut s);
        untimed += 1;
    }
    println!("@timed_sends {timed_sends}");
    println!("@untimed_sends {untimed}");
    println!("@untimed_recvs {untimed_recvs}");
}

/// Issue 14.2: no call is timed from a stale start. A 32-bit receive 1.7 s after a 32-bit
/// syscall numbered like a 64-bit `writev`, and, after a 1.5 s sleep, sends made by
/// sendfile, splice and `io_uring`, reach the TCP socket without an entry of the syscall the
/// thread is in: the tracepoint mode counts them `untimed` (one each), and no duration near
/// the sleep's length appears. In the fentry and kprobe modes the same calls are timed from
/// `tcp_sendmsg`/`tcp_recvmsg` themselves (counted `ok`).
#[test]
fn no_call_is_timed_from_a_stale_start() {
    if role().is_some() {
        return;
    }
    let daemon = Daemon::start(&["--probe-mode", &common::mode()]);
    let server = delay_server();
    let cg = TestCgroup::new("untimed");
    let out = role_output(run_role(
        &cg,
        "role_untimed_paths",
        &[("SOCKLAT_TEST_ADDR", server.to_string())],
    ));
    let timed_sends = reported(&out, "timed_sends");
    let untimed_sends = reported(&out, "untimed_sends");
    let untimed_recvs = reported(&out, "untimed_recvs");
    std::thread::sleep(Duration::from_millis(300));
    let m = daemon.scrape();
    let label = cg.label.as_str();
    for call in ["sendmsg", "recvmsg"] {
        let count = m
            .get(
                "socklat_tcp_call_duration_seconds_count",
                &[("cgroup", label), ("call", call)],
            )
            .unwrap_or(0.0);
        // The bucket bound at 2^20 us (1.05 s): every duration is below the sleep.
        let below = m
            .get(
                "socklat_tcp_call_duration_seconds_bucket",
                &[("cgroup", label), ("call", call), ("le", "1.048576")],
            )
            .unwrap_or(0.0);
        assert_eq!(below, count, "{call}: a duration of the sleep's length");
        assert_eq!(calls(&m, &cg, call, "error"), 0.0, "{call} errors");
    }
    // One answer per request, each read with one receive (the answers are small).
    let answers = timed_sends + untimed_sends;
    if common::mode() == "tracepoint" {
        assert_eq!(
            calls(&m, &cg, "sendmsg", "ok"),
            timed_sends,
            "send syscalls"
        );
        assert_eq!(calls(&m, &cg, "sendmsg", "untimed"), untimed_sends);
        assert_eq!(calls(&m, &cg, "recvmsg", "ok"), answers - untimed_recvs);
        assert_eq!(calls(&m, &cg, "recvmsg", "untimed"), untimed_recvs);
    } else {
        assert_eq!(calls(&m, &cg, "sendmsg", "ok"), answers);
        assert_eq!(calls(&m, &cg, "recvmsg", "ok"), answers);
        for call in ["sendmsg", "recvmsg"] {
            assert_eq!(calls(&m, &cg, call, "untimed"), 0.0, "{call} untimed");
        }
    }
}

/// Sets an integer socket option of `fd`.
fn set_sockopt(fd: i32, level: i32, name: i32, value: i32) {
    // SAFETY: a valid descriptor and a pointer to an int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            u32::try_from(size_of::<i32>()).unwrap(),
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

/// A send that `io_uring` completes as task work of a thread that is in another syscall: the
/// thread fills its socket's send buffer (non-blocking writes until EAGAIN), submits an
/// `io_uring` send that cannot go out yet (the kernel arms a poll for it), then blocks in a
/// `read` of a pipe, a syscall of the timed family that makes no socket call. 1.5 s later a
/// helper thread drains the peer: the poll fires, `io_uring` queues the send's retry as task
/// work of the reading thread (`TWA_SIGNAL`), which interrupts the read; the kernel runs the
/// work on the read's way out (it then restarts the read), and the helper's byte into the
/// pipe ends it. Prints the writes that sent (`@writes_ok`). Fails if the send did not
/// complete during the read.
#[test]
#[ignore = "worker role, run by the accuracy tests"]
fn role_task_work_send() {
    if role().as_deref() != Some("role_task_work_send") {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // Small buffers: the peer's window and our send buffer fill with little data.
    set_sockopt(
        listener.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUF,
        8192,
    );
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut peer, _) = listener.accept().unwrap();
    set_sockopt(client.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, 8192);
    client.set_nonblocking(true).unwrap();
    let chunk = vec![1u8; 1 << 16];
    let (mut sent, mut writes_ok) = (0, 0);
    // Until the buffer stays full: acks of data in flight free some of it after an EAGAIN,
    // and a send that finds room would not wait for the helper.
    let mut full_since_pause = false;
    while !full_since_pause {
        full_since_pause = true;
        loop {
            match (&client).write(&chunk) {
                Ok(n) => {
                    sent += n;
                    writes_ok += 1;
                    full_since_pause = false;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("write: {e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut ring = io_uring::IoUring::new(4).expect("io_uring_setup");
    let data = [2u8; 8];
    let entry =
        io_uring::opcode::Send::new(io_uring::types::Fd(client.as_raw_fd()), data.as_ptr(), 8)
            .build()
            .user_data(1);
    // SAFETY: `data` outlives the submission, which completes before this function returns.
    unsafe {
        ring.submission()
            .push(&entry)
            .expect("submission queue full");
    };
    ring.submit().expect("io_uring_enter");
    assert!(
        ring.completion().next().is_none(),
        "the io_uring send completed at once: the send buffer was not full"
    );
    let mut p = [0i32; 2];
    // SAFETY: a valid array of two descriptors.
    assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
    let (rd, wr) = (p[0], p[1]);
    let helper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        let mut buf = vec![0u8; sent + 8];
        peer.read_exact(&mut buf).unwrap();
        // SAFETY: the pipe's write end and a valid one-byte buffer.
        assert_eq!(unsafe { libc::write(wr, [0u8].as_ptr().cast(), 1) }, 1);
    });
    let mut b = [0u8; 1];
    let started = std::time::Instant::now();
    // SAFETY: the pipe's read end and a valid one-byte buffer.
    assert_eq!(unsafe { libc::read(rd, b.as_mut_ptr().cast(), 1) }, 1);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1),
        "the read returned after {waited:?}: the helper did not hold it"
    );
    // No syscall since the read: a completion here was posted by task work run in it.
    let cqe = ring.completion().next();
    assert!(
        cqe.is_some(),
        "the io_uring send did not complete while the thread was in read()"
    );
    assert_eq!(cqe.unwrap().result(), 8, "io_uring send");
    helper.join().unwrap();
    // SAFETY: our own pipe's descriptors.
    unsafe {
        libc::close(rd);
        libc::close(wr);
    }
    println!("@writes_ok {writes_ok}");
}

/// A socket call run as task work on the way out of another syscall is not timed from that
/// syscall's entry: the tracepoint mode counts the `io_uring` send of
/// [`role_task_work_send`] `untimed` (`x86_64`: `ax` holds the read's -ERESTARTSYS, not
/// -ENOSYS; arm64: signal handling forgot the syscall, `syscallno` is -1), never `ok` with
/// the 1.5 s of the pipe read it interrupted; fentry and kprobe time it in `tcp_sendmsg`.
/// Without the in-syscall check (the `ablate-syscall-check` object) it is timed from the
/// read's entry.
#[test]
fn a_send_completed_as_task_work_is_not_timed_from_the_syscall_it_interrupted() {
    if role().is_some() {
        return;
    }
    let daemon = Daemon::start(&["--probe-mode", &common::mode()]);
    let cg = TestCgroup::new("taskwork");
    let out = role_output(run_role(&cg, "role_task_work_send", &[]));
    let writes_ok = reported(&out, "writes_ok");
    std::thread::sleep(Duration::from_millis(300));
    let m = daemon.scrape();
    let label = cg.label.as_str();
    for call in ["sendmsg", "recvmsg"] {
        let count = m
            .get(
                "socklat_tcp_call_duration_seconds_count",
                &[("cgroup", label), ("call", call)],
            )
            .unwrap_or(0.0);
        let below = m
            .get(
                "socklat_tcp_call_duration_seconds_bucket",
                &[("cgroup", label), ("call", call), ("le", "1.048576")],
            )
            .unwrap_or(0.0);
        assert_eq!(below, count, "{call}: a duration of the pipe read's length");
        assert_eq!(calls(&m, &cg, call, "error"), 0.0, "{call} errors");
    }
    if common::mode() == "tracepoint" {
        assert_eq!(calls(&m, &cg, "sendmsg", "ok"), writes_ok, "timed sends");
        assert!(
            calls(&m, &cg, "sendmsg", "untimed") >= 1.0,
            "the task work's send is not counted untimed"
        );
    } else {
        assert_eq!(calls(&m, &cg, "sendmsg", "ok"), writes_ok + 1.0, "sends");
        assert_eq!(calls(&m, &cg, "sendmsg", "untimed"), 0.0, "untimed sends");
    }
}

/// A raw IPv4 socket of protocol TCP sends `SOCKLAT_TEST_COUNT` hand-made segments to a
/// closed loopback port: socket calls of a socket that is not a TCP stream.
#[test]
#[ignore = "worker role, run by the accuracy tests"]
fn role_raw_tcp() {
    if role().as_deref() != Some("role_raw_tcp") {
        return;
    }
    let n: usize = env("SOCKLAT_TEST_COUNT").parse().unwrap();
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // A 20-byte TCP header with the RST flag, to a port nobody listens on.
    let mut seg = [0u8; 20];
    seg[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    seg[2..4].copy_from_slice(&9u16.to_be_bytes());
    seg[12] = 5 << 4;
    seg[13] = 0x04;
    let to = libc::sockaddr_in {
        sin_family: u16::try_from(libc::AF_INET).unwrap(),
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    };
    for _ in 0..n {
        // SAFETY: a valid buffer and address of the right length.
        let sent = unsafe {
            libc::sendto(
                fd,
                seg.as_ptr().cast(),
                seg.len(),
                0,
                (&raw const to).cast(),
                u32::try_from(size_of::<libc::sockaddr_in>()).unwrap(),
            )
        };
        assert_eq!(sent, 20, "sendto: {}", std::io::Error::last_os_error());
    }
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    println!("@sent {n}");
}

/// Issue 14.8: a raw socket opened with `IPPROTO_TCP` is not a TCP socket: its calls are not
/// counted (the protocol field alone would say TCP; its type is `SOCK_RAW`).
#[test]
fn raw_sockets_of_protocol_tcp_are_not_tcp_calls() {
    if role().is_some() {
        return;
    }
    let daemon = Daemon::start(&["--probe-mode", &common::mode()]);
    let cg = TestCgroup::new("rawtcp");
    let out = role_output(run_role(
        &cg,
        "role_raw_tcp",
        &[("SOCKLAT_TEST_COUNT", "200".into())],
    ));
    assert_eq!(reported(&out, "sent"), 200.0);
    std::thread::sleep(Duration::from_millis(300));
    let m = daemon.scrape();
    for result in ["ok", "eagain", "interrupted", "untimed", "error"] {
        assert_eq!(calls(&m, &cg, "sendmsg", result), 0.0, "sendmsg {result}");
    }
}
