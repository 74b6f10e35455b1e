//! The guests' initramfs: busybox, the static binaries and the `/init` script, packed into a
//! gzip'd newc cpio that xtask writes itself (no root or mknod needed).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use super::guest::Guest;
use crate::util::run;

/// Writes the initramfs at `path`: busybox (and what else `guest` needs), an `/init` that
/// tests `modes`, the daemon and the test binaries (each at its host path).
pub fn write(
    path: &Path,
    guest: &Guest,
    daemon: &Path,
    tests: &[(String, PathBuf)],
    modes: &[String],
) -> Result<()> {
    let mut cpio = Cpio::new();
    cpio.dir("/bin");
    for (inside, host) in guest.files()? {
        cpio.file(inside, &std::fs::read(host)?, true);
    }
    let init = init_script(daemon, tests, modes) + guest.exit_script();
    cpio.file("/init", init.as_bytes(), true);
    cpio.file(&daemon.to_string_lossy(), &std::fs::read(daemon)?, true);
    for (_, exe) in tests {
        cpio.file(&exe.to_string_lossy(), &std::fs::read(exe)?, true);
    }
    cpio.finish(path)
}

/// Writes an initramfs whose `/init` runs `binary` (as `/socklat`) with `args` and `env`
/// after making the paths a `DaemonSet` pod sees (the node's cgroup v2 tree at
/// /host/sys/fs/cgroup, the kubelet's log directories under /host/var/log): once with
/// `--check` (`@@check image`, then `@@checkrc image RC`), then as the daemon itself until
/// its `/metrics` on `port` answers (at most 90 s), stopped by SIGTERM: `@@serve image
/// LINES RC`, the number of `socklat_` lines of that scrape (0: none came) and its exit code
/// (137: it outlived SIGTERM by 30 s and was killed; `@@stuck` lines give its kernel stacks).
pub fn write_check(
    path: &Path,
    guest: &Guest,
    binary: &Path,
    args: &[String],
    env: &[(String, String)],
    port: u16,
) -> Result<()> {
    let mut cpio = Cpio::new();
    cpio.dir("/bin");
    for (inside, host) in guest.files()? {
        cpio.file(inside, &std::fs::read(host)?, true);
    }
    let mut s = prologue();
    s.push_str(
        "mkdir -p /host/sys/fs/cgroup /host/var/log/pods /host/var/log/containers
         mount -t cgroup2 cgroup2 /host/sys/fs/cgroup
echo '@@check image'
",
    );
    let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}='{v}'")).collect();
    let run = format!(
        "env {} /socklat {}",
        env.join(" "),
        args.iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(
        s,
        "{run} --check 2>&1; rc=$?; echo \"@@checkrc image $rc\"
{run} > /tmp/serve.log 2>&1 &
pid=$!; n=0; i=0
while [ $i -lt 90 ]; do
  if wget -q -O /tmp/metrics http://127.0.0.1:{port}/metrics 2>/dev/null; then
    n=$(grep -c '^socklat_' /tmp/metrics); break
  fi
  sleep 1; i=$((i + 1))
done
if [ $n -eq 0 ]; then echo '@@stuck image: no /metrics answer in 90 s'; cat /proc/$pid/task/*/stack 2>/dev/null; fi
kill -TERM $pid
# A daemon that outlives SIGTERM by 30 s is reported with its kernel stacks, then killed.
( sleep 30; if kill -0 $pid 2>/dev/null; then echo '@@stuck image: alive 30 s after SIGTERM'; \
  for t in /proc/$pid/task/*; do echo \"$t $(cat $t/comm) $(cat $t/wchan)\"; cat $t/stack; done; \
  kill -KILL $pid; fi ) 2>/dev/null &
wait $pid; src=$?
tail -n 5 /tmp/serve.log
echo \"@@serve image $n $src\"
rc=0
echo \"@@done $rc\""
    );
    s.push_str(guest.exit_script());
    cpio.file("/init", s.as_bytes(), true);
    cpio.file("/socklat", &std::fs::read(binary)?, true);
    cpio.finish(path)
}

/// The start of every `/init`: busybox, the file systems the daemon needs, loopback up,
/// and the `@@kernel` line.
fn prologue() -> String {
    String::from(PREAMBLE)
}

/// Writes the initramfs of `vm-bench` at `path`: busybox, an `/init` that runs the guest's
/// half of the bench (`driver guest-bench ARGS`), the daemon, the driver and the kernel
/// objects (each at its host path).
pub fn write_bench(
    path: &Path,
    daemon: &Path,
    driver: &Path,
    objects: &[PathBuf],
    args: &[String],
) -> Result<()> {
    let mut cpio = Cpio::new();
    cpio.dir("/bin");
    cpio.file("/bin/busybox", &std::fs::read("/bin/busybox")?, true);
    let mut init = String::from(PREAMBLE);
    let _ = writeln!(
        init,
        "{} guest-bench --daemon {} {} 2>&1; rc=$?",
        driver.display(),
        daemon.display(),
        args.join(" ")
    );
    init.push_str(EPILOGUE);
    cpio.file("/init", init.as_bytes(), true);
    cpio.file(&daemon.to_string_lossy(), &std::fs::read(daemon)?, true);
    cpio.file(&driver.to_string_lossy(), &std::fs::read(driver)?, true);
    for o in objects {
        cpio.file(&o.to_string_lossy(), &std::fs::read(o)?, false);
    }
    cpio.finish(path)
}

/// The start of every guest's /init (see [`prologue`]): busybox, the file systems the daemon needs, loopback,
/// and the kernel release (`@@kernel`).
const PREAMBLE: &str = "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexport PATH=/bin\n\
     mkdir -p /proc /sys /dev /tmp /run\nmount -t proc proc /proc\nmount -t sysfs sys /sys\n\
     mount -t devtmpfs dev /dev\nmount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null\n\
     mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null\nmount -t bpf bpf /sys/fs/bpf 2>/dev/null\n\
     mount -t cgroup2 cgroup2 /sys/fs/cgroup\nip link set lo up\nexport SOCKLAT_VM=1 RUST_BACKTRACE=0\n\
     echo \"@@kernel $(uname -r)\"\nrc=0\n";

/// The end of the `x86_64` bench guest's /init: `@@done RC`, the exit code to QEMU, power
/// off (the test guests end with their [`Guest::exit_script`]).
const EPILOGUE: &str = "echo \"@@done $rc\"\nprintf \"\\\\$(printf %o $rc)\" | dd of=/dev/port bs=1 seek=244 2>/dev/null\npoweroff -f\n";

/// The guest's /init: mounts what the daemon needs, then for each mode asks `socklat
/// --check` whether the mode attaches here and, if so, runs the test binaries in it.
///
/// What it prints on the serial console is what `verdict.rs` reads: `@@kernel`, then per
/// mode `@@check MODE` followed by the `--check` output, and `@@result MODE TEST RC` per
/// test binary or `@@skip MODE`; then `@@done RC`, also the QEMU exit code (2 x RC + 1,
/// reported by the guest's exit script).
fn init_script(daemon: &Path, tests: &[(String, PathBuf)], modes: &[String]) -> String {
    let mut s = prologue();
    let d = daemon.display();
    let _ = writeln!(
        s,
        "echo '@@check auto'; {d} --check 2>&1; echo \"@@checkrc auto $?\""
    );
    for m in modes {
        let _ = writeln!(
            s,
            "echo '@@check {m}'; {d} --check --probe-mode {m} 2>&1 | tee /tmp/check-{m}; c=$?"
        );
        let _ = writeln!(s, "if {d} --check --probe-mode {m} >/dev/null 2>&1; then");
        for (name, exe) in tests {
            let _ = writeln!(
                s,
                "  SOCKLAT_TEST_MODE={m} {} --test-threads=1 2>&1; r=$?; echo \"@@result {m} {name} $r\"; [ $r = 0 ] || rc=1",
                exe.display()
            );
        }
        let _ = writeln!(s, "else echo \"@@skip {m}\"; fi");
    }
    s.push_str("echo \"@@done $rc\"\n");
    s
}

/// A gzip'd newc cpio archive written without root: directories, files, symlinks.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Self {
        Self {
            out: Vec::new(),
            ino: 1,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        let name = name.trim_start_matches('/');
        let mut h = String::new();
        let _ = write!(
            h,
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.ino += 1;
        self.out.extend_from_slice(h.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    /// Zeros up to the next multiple of 4 bytes, as newc aligns names and data.
    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, &[]);
    }

    /// A file and every directory above it.
    fn file(&mut self, name: &str, data: &[u8], exec: bool) {
        let mut path = String::new();
        let parts: Vec<&str> = name.trim_start_matches('/').split('/').collect();
        for p in &parts[..parts.len() - 1] {
            path.push('/');
            path.push_str(p);
            self.dir(&path);
        }
        self.entry(name, if exec { 0o100_755 } else { 0o100_644 }, data);
    }

    fn finish(mut self, path: &Path) -> Result<()> {
        self.entry("TRAILER!!!", 0, &[]);
        let raw = path.with_extension("");
        std::fs::write(&raw, &self.out)?;
        run(Command::new("gzip").arg("-f").arg("-1").arg(&raw))?;
        let gz = PathBuf::from(format!("{}.gz", raw.display()));
        if gz != path {
            std::fs::rename(gz, path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::{Cpio, init_script};

    #[test]
    fn script_reports_every_mode_and_test() {
        let tests = [("privileged".to_string(), PathBuf::from("/t/privileged-1a"))];
        let modes = ["fentry".to_string(), "tracepoint".to_string()];
        let s = init_script(Path::new("/b/socklat"), &tests, &modes);
        assert!(s.starts_with("#!/bin/busybox sh\n"));
        assert!(s.contains("echo '@@check auto'; /b/socklat --check 2>&1;"));
        for m in modes {
            assert!(s.contains(&format!(
                "echo '@@check {m}'; /b/socklat --check --probe-mode {m}"
            )));
            assert!(s.contains(&format!(
                "SOCKLAT_TEST_MODE={m} /t/privileged-1a --test-threads=1 2>&1; r=$?; echo \"@@result {m} privileged $r\""
            )));
            assert!(s.contains(&format!("else echo \"@@skip {m}\"; fi\n")));
        }
        assert!(s.ends_with("echo \"@@done $rc\"\n"));
    }

    #[test]
    fn cpio_entries_are_aligned_newc() {
        let mut c = Cpio::new();
        c.file("/b/x", b"abc", true);
        // "/b" then "b/x", each a 110-byte header, the name and its NUL, padded to 4.
        assert!(c.out.starts_with(b"07070100000001000041ED"));
        assert_eq!(c.out.len() % 4, 0);
        let second = 112;
        assert_eq!(&c.out[second..second + 14], b"07070100000002");
        assert_eq!(&c.out[second + 110..second + 114], b"b/x\0");
        assert_eq!(&c.out[second + 116..second + 119], b"abc");
    }
}
