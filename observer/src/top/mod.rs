//! `socklat top`: a live table of a running daemon's `/metrics`, one row per cgroup (or pod
//! container where the daemon knows it): P50/P90/P99 of sendmsg and recvmsg over the
//! daemon's window, calls per second, the abnormal connection ratio, faults per second and
//! lost events. It reads only `/metrics`, so it works through `kubectl port-forward` or
//! `kubectl exec`. On a terminal it redraws every `--interval` and takes keys; with `--once`
//! (or when stdout is not a terminal) it prints one table, rates measured over one interval.

mod fetch;
mod table;
mod terminal;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};

pub use fetch::{Client, FetchError, Options, fetch};
pub use table::{
    CgroupSample, Key, Row, Scrape, View, format_seconds, parse_seconds, render, rows,
};
use terminal::{RawTerminal, key, terminal_width};

/// Why `socklat top` stopped.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    /// The metrics could not be fetched.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The answer is not exposition text.
    #[error("the daemon's answer is not exposition text")]
    Parse(#[from] crate::exposition::parse::ParseError),
    /// The terminal cannot be put in raw mode.
    #[error("cannot put the terminal in raw mode (tcgetattr)")]
    Terminal(#[source] std::io::Error),
}

/// `socklat top` flags.
#[derive(Args, Debug, Clone)]
pub struct TopArgs {
    /// The daemon's metrics endpoint.
    #[arg(long, default_value = "http://127.0.0.1:9640/metrics")]
    pub url: String,
    /// Print one table and exit (the default when stdout is not a terminal).
    #[arg(long)]
    pub once: bool,
    /// Time between refreshes, and the interval rates are measured over.
    #[arg(long, default_value = "1s", value_parser = crate::units::parse_duration)]
    pub interval: Duration,
    /// Column to sort by (descending); on a terminal `<` and `>` move it, `r` reverses.
    #[arg(long, value_enum, default_value_t = Column::RecvP99)]
    pub sort: Column,
    /// Show only rows whose name or cgroup contains this text (`/` on a terminal).
    #[arg(long, default_value = "")]
    pub filter: String,
    /// For an https:// URL: the CA certificate(s), PEM, that signed the daemon's
    /// certificate (its name is checked against the URL's host).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM) for a daemon that requires one; with --key-file.
    #[arg(long, requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// Basic authentication user; the password comes from `SOCKLAT_TOP_PASSWORD` or
    /// --password-file (never the command line, which other users can read).
    #[arg(long)]
    pub user: Option<String>,
    /// A file holding the basic authentication password (one line).
    #[arg(long, requires = "user")]
    pub password_file: Option<PathBuf>,
}

impl TopArgs {
    /// The client these flags describe.
    fn client(&self) -> Result<Client, FetchError> {
        let password = match &self.password_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|source| FetchError::File {
                        path: p.clone(),
                        source,
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            None => std::env::var("SOCKLAT_TOP_PASSWORD").ok(),
        };
        Client::new(
            &self.url,
            &Options {
                ca_file: self.ca_file.clone(),
                cert_file: self.cert_file.clone(),
                key_file: self.key_file.clone(),
                user: self.user.clone(),
                password,
            },
        )
    }
}

/// A column of the table.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Name,
    SendP50,
    SendP90,
    SendP99,
    RecvP50,
    RecvP90,
    RecvP99,
    Calls,
    Abnormal,
    Faults,
    Lost,
}

impl Column {
    pub(crate) const ALL: [Column; 11] = [
        Column::Name,
        Column::SendP50,
        Column::SendP90,
        Column::SendP99,
        Column::RecvP50,
        Column::RecvP90,
        Column::RecvP99,
        Column::Calls,
        Column::Abnormal,
        Column::Faults,
        Column::Lost,
    ];

    pub(crate) const fn header(self) -> &'static str {
        match self {
            Column::Name => "NAME",
            Column::SendP50 => "SEND P50",
            Column::SendP90 | Column::RecvP90 => "P90",
            Column::SendP99 | Column::RecvP99 => "P99",
            Column::RecvP50 => "RECV P50",
            Column::Calls => "CALLS/S",
            Column::Abnormal => "ABNORMAL",
            Column::Faults => "FAULTS/S",
            Column::Lost => "LOST",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }
}

/// Runs `socklat top`; returns the exit code.
#[must_use]
pub fn run(a: &TopArgs) -> i32 {
    let view = View {
        sort: a.sort,
        descending: a.sort != Column::Name,
        filter: a.filter.clone(),
    };
    // SAFETY: isatty only inspects the descriptor.
    let tty = unsafe { libc::isatty(1) == 1 && libc::isatty(0) == 1 };
    let r = if a.once || !tty {
        once(a, &view)
    } else {
        live(a, view)
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("socklat top: {}", crate::report::chain(&e));
            1
        }
    }
}

fn once(a: &TopArgs, view: &View) -> Result<(), TopError> {
    let client = a.client()?;
    let first = Scrape::parse(&client.fetch()?)?;
    let t = Instant::now();
    std::thread::sleep(a.interval);
    let second = Scrape::parse(&client.fetch()?)?;
    print!(
        "{}",
        render(&rows(Some(&first), &second, t.elapsed()), view, 160)
    );
    Ok(())
}

fn live(a: &TopArgs, mut view: View) -> Result<(), TopError> {
    let client = a.client()?;
    let _raw = RawTerminal::enter().map_err(TopError::Terminal)?;
    let mut prev: Option<(Scrape, Instant)> = None;
    let mut editing: Option<String> = None;
    let mut status = String::new();
    loop {
        let (table, now) = match client
            .fetch()
            .map_err(TopError::from)
            .and_then(|text| Ok(Scrape::parse(&text)?))
        {
            Ok(cur) => {
                let now = Instant::now();
                let dt = prev.as_ref().map_or(Duration::ZERO, |(_, t)| now - *t);
                let r = rows(prev.as_ref().map(|(s, _)| s), &cur, dt);
                prev = Some((cur, now));
                status.clear();
                (render(&r, &view, terminal_width()), now)
            }
            Err(e) => {
                status = crate::report::chain(&e);
                (String::new(), Instant::now())
            }
        };
        let prompt = match &editing {
            Some(f) => format!("filter: {f}_"),
            None => format!(
                "{}  sort {:?}  filter '{}'  keys: < > sort, r reverse, / filter, q quit {status}",
                a.url, view.sort, view.filter
            ),
        };
        print!("\x1b[H\x1b[2J{prompt}\r\n{}", table.replace('\n', "\r\n"));
        let _ = std::io::stdout().flush();
        while now.elapsed() < a.interval {
            let Some(k) = key(a.interval.saturating_sub(now.elapsed())) else {
                continue;
            };
            if let Some(f) = editing.as_mut() {
                match k {
                    b'\r' | b'\n' => {
                        view.filter = std::mem::take(f);
                        editing = None;
                    }
                    0x1b => editing = None,
                    0x7f | 0x08 => {
                        f.pop();
                    }
                    c if c.is_ascii_graphic() || c == b' ' => f.push(char::from(c)),
                    _ => {}
                }
                break;
            }
            let i = view.sort.index();
            match k {
                b'q' | 0x03 => return Ok(()),
                b'<' | b',' => {
                    view.sort = Column::ALL[(i + Column::ALL.len() - 1) % Column::ALL.len()];
                }
                b'>' | b'.' => view.sort = Column::ALL[(i + 1) % Column::ALL.len()],
                b'r' => view.descending = !view.descending,
                b'/' => editing = Some(String::new()),
                _ => continue,
            }
            break;
        }
    }
}
