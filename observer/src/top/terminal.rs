//! The raw terminal of the live `socklat top`: no echo, keys one at a time, its width.

use std::io::Write;
use std::time::Duration;

/// The terminal in raw mode (no echo, no line buffering, no signals from keys) until drop.
pub struct RawTerminal(libc::termios);

impl RawTerminal {
    /// Puts the terminal (fd 0) in raw mode.
    ///
    /// # Errors
    /// When fd 0 is not a terminal.
    pub fn enter() -> std::io::Result<Self> {
        // SAFETY: termios is plain old data, filled by tcgetattr.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 is a terminal (checked by the caller); t is a valid out pointer.
        if unsafe { libc::tcgetattr(0, &raw mut t) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let saved = t;
        t.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
        t.c_cc[libc::VMIN] = 0;
        t.c_cc[libc::VTIME] = 0;
        // SAFETY: a termios derived from the current one.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw const t) };
        print!("\x1b[?25l");
        Ok(Self(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in enter().
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw const self.0) };
        println!("\x1b[?25h");
        let _ = std::io::stdout().flush();
    }
}

/// Columns of the terminal on fd 1 (160 when it does not say).
#[must_use]
pub fn terminal_width() -> usize {
    // SAFETY: winsize is plain old data; TIOCGWINSZ fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: fd 1 and a valid out pointer.
    if unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &raw mut ws) } == 0 && ws.ws_col > 0 {
        usize::from(ws.ws_col)
    } else {
        160
    }
}

/// Waits up to `timeout` for a key on stdin.
#[must_use]
pub fn key(timeout: Duration) -> Option<u8> {
    let mut p = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&raw mut p, 1, ms) } <= 0 {
        return None;
    }
    let mut b = [0u8; 1];
    // SAFETY: reads one byte into b.
    (unsafe { libc::read(0, b.as_mut_ptr().cast(), 1) } == 1).then_some(b[0])
}
