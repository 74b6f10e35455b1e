//! `socklat top`: a live table of a running daemon's `/metrics`, one row per cgroup (or pod
//! container where the daemon knows it): P50/P90/P99 of sendmsg and recvmsg over the
//! daemon's window, calls per second, the abnormal connection ratio, faults per second and
//! lost events. It reads only `/metrics`, so it works through `kubectl port-forward` or
//! `kubectl exec`. On a terminal it redraws every `--interval` and takes keys; with `--once`
//! (or when stdout is not a terminal) it prints one table, rates measured over one interval.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};

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
    #[arg(long, default_value = "1s", value_parser = crate::cli::parse_duration)]
    pub interval: Duration,
    /// Column to sort by (descending); on a terminal `<` and `>` move it, `r` reverses.
    #[arg(long, value_enum, default_value_t = Column::RecvP99)]
    pub sort: Column,
    /// Show only rows whose name or cgroup contains this text (`/` on a terminal).
    #[arg(long, default_value = "")]
    pub filter: String,
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
    const ALL: [Column; 11] = [
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

    const fn header(self) -> &'static str {
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

/// Identity of a row: the daemon's per-cgroup labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub cgroup: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

impl Key {
    /// `namespace/pod/container` where the daemon named the pod, `pod/container` (UID and
    /// id, shortened) where it only knows the ids, else the cgroup path.
    #[must_use]
    pub fn name(&self) -> String {
        if !self.namespace.is_empty() {
            format!("{}/{}/{}", self.namespace, self.pod, self.container)
        } else if !self.pod.is_empty() {
            let short = |s: &str, n: usize| s.chars().take(n).collect::<String>();
            format!(
                "pod {} ctr {}",
                short(&self.pod, 8),
                short(&self.container, 12)
            )
        } else {
            self.cgroup.clone()
        }
    }
}

/// What one scrape says about one cgroup.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// [sendmsg, recvmsg] x [P50, P90, P99], seconds.
    pub quantiles: [[Option<f64>; 3]; 2],
    pub calls: f64,
    pub abnormal: Option<f64>,
    pub faults: f64,
    pub lost: f64,
}

/// One scrape: per-cgroup samples.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub cgroups: BTreeMap<Key, Sample>,
}

/// A sample line: name, labels, value.
type SampleLine<'a> = (&'a str, Vec<(String, String)>, f64);

/// Splits a sample line into name, labels and value.
fn parse_line(line: &str) -> Option<SampleLine<'_>> {
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((name, rest)) = head.split_once('{') else {
        return Some((head, Vec::new(), value));
    };
    let mut labels = Vec::new();
    let mut chars = rest.chars();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let key = key.trim_start_matches(',').to_string();
        if key.is_empty() || key == "}" {
            break;
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut val = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => val.push('\n'),
                    c => val.push(c),
                },
                '"' => break,
                c => val.push(c),
            }
        }
        labels.push((key, val));
    }
    Some((name, labels, value))
}

impl Scrape {
    /// Reads the daemon's exposition text.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        let mut cgroups: BTreeMap<Key, Sample> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, labels, value)) = parse_line(line) else {
                continue;
            };
            let get = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            let Some(cgroup) = get("cgroup") else {
                continue;
            };
            let key = Key {
                cgroup: cgroup.to_string(),
                namespace: get("namespace").unwrap_or("").to_string(),
                pod: get("pod").unwrap_or("").to_string(),
                container: get("container").unwrap_or("").to_string(),
            };
            let call = match get("call") {
                Some("sendmsg") => Some(0),
                Some("recvmsg") => Some(1),
                _ => None,
            };
            let s = cgroups.entry(key).or_default();
            match name {
                "socklat_tcp_call_latency_seconds" => {
                    let q = match get("quantile") {
                        Some("0.5") => 0,
                        Some("0.9") => 1,
                        Some("0.99") => 2,
                        _ => continue,
                    };
                    if let Some(c) = call {
                        s.quantiles[c][q] = Some(value);
                    }
                }
                "socklat_tcp_calls_total" => s.calls += value,
                "socklat_tcp_abnormal_connection_ratio" => s.abnormal = Some(value),
                "socklat_page_faults_total" => s.faults += value,
                "socklat_ringbuf_lost_events_total" => s.lost += value,
                _ => {}
            }
        }
        Self { cgroups }
    }
}

/// A row of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub key: Key,
    pub name: String,
    pub quantiles: [[Option<f64>; 3]; 2],
    pub calls_per_sec: Option<f64>,
    pub abnormal: Option<f64>,
    pub faults_per_sec: Option<f64>,
    pub lost: f64,
}

impl Row {
    fn sort_value(&self, c: Column) -> f64 {
        let opt = |v: Option<f64>| v.unwrap_or(-1.0);
        match c {
            Column::Name => 0.0,
            Column::SendP50 => opt(self.quantiles[0][0]),
            Column::SendP90 => opt(self.quantiles[0][1]),
            Column::SendP99 => opt(self.quantiles[0][2]),
            Column::RecvP50 => opt(self.quantiles[1][0]),
            Column::RecvP90 => opt(self.quantiles[1][1]),
            Column::RecvP99 => opt(self.quantiles[1][2]),
            Column::Calls => opt(self.calls_per_sec),
            Column::Abnormal => opt(self.abnormal),
            Column::Faults => opt(self.faults_per_sec),
            Column::Lost => self.lost,
        }
    }
}

/// Rows from the current scrape, with rates against the previous one (`dt` apart).
#[must_use]
pub fn rows(prev: Option<&Scrape>, cur: &Scrape, dt: Duration) -> Vec<Row> {
    let secs = dt.as_secs_f64();
    cur.cgroups
        .iter()
        .map(|(k, s)| {
            let before = prev.and_then(|p| p.cgroups.get(k));
            let rate = |now: f64, then: Option<f64>| {
                then.filter(|_| secs > 0.0)
                    .map(|t| ((now - t) / secs).max(0.0))
            };
            Row {
                key: k.clone(),
                name: k.name(),
                quantiles: s.quantiles,
                calls_per_sec: rate(s.calls, before.map(|b| b.calls)),
                abnormal: s.abnormal,
                faults_per_sec: rate(s.faults, before.map(|b| b.faults)),
                lost: s.lost,
            }
        })
        .collect()
}

/// A duration for the table: `850us`, `1.25ms`, `12.5ms`, `1.20s`; `-` when absent.
#[must_use]
pub fn format_seconds(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(s) if s < 1e-3 => format!("{:.0}us", s * 1e6),
        Some(s) if s < 1e-2 => format!("{:.2}ms", s * 1e3),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1e3),
        Some(s) => format!("{s:.2}s"),
    }
}

/// Parses what [`format_seconds`] printed back into seconds (for scripts and tests).
#[must_use]
pub fn parse_seconds(s: &str) -> Option<f64> {
    if let Some(v) = s.strip_suffix("us") {
        return v.parse::<f64>().ok().map(|v| v / 1e6);
    }
    if let Some(v) = s.strip_suffix("ms") {
        return v.parse::<f64>().ok().map(|v| v / 1e3);
    }
    s.strip_suffix('s')?.parse().ok()
}

fn format_rate(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(r) if r >= 10_000.0 => format!("{:.0}k", r / 1000.0),
        Some(r) => format!("{r:.0}"),
    }
}

/// How the table is shown.
#[derive(Clone, Debug)]
pub struct View {
    pub sort: Column,
    pub descending: bool,
    pub filter: String,
}

/// Width of the numeric columns.
const NUM: usize = 9;

/// The table as text, `width` columns wide at most (names are cut on the left).
#[must_use]
pub fn render(rows: &[Row], view: &View, width: usize) -> String {
    let mut shown: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            view.filter.is_empty()
                || r.name.contains(&view.filter)
                || r.key.cgroup.contains(&view.filter)
        })
        .collect();
    shown.sort_by(|a, b| {
        let o = if view.sort == Column::Name {
            a.name.cmp(&b.name)
        } else {
            a.sort_value(view.sort).total_cmp(&b.sort_value(view.sort))
        };
        let o = if view.descending { o.reverse() } else { o };
        o.then_with(|| a.name.cmp(&b.name))
    });
    let name_width = width
        .saturating_sub(NUM * (Column::ALL.len() - 1))
        .clamp(12, 60);
    let mut out = String::new();
    for c in Column::ALL {
        let mut h = c.header().to_string();
        if c == view.sort {
            h.push(if view.descending { 'v' } else { '^' });
        }
        if c == Column::Name {
            let _ = write!(out, "{h:<name_width$}");
        } else {
            let _ = write!(out, "{h:>NUM$}");
        }
    }
    out.push('\n');
    for r in shown {
        let n = r.name.chars().count();
        let name: String = if n > name_width {
            let tail: String = r.name.chars().skip(n - (name_width - 1)).collect();
            format!("~{tail}")
        } else {
            r.name.clone()
        };
        let _ = write!(out, "{name:<name_width$}");
        for call in r.quantiles {
            for q in call {
                let _ = write!(out, "{:>NUM$}", format_seconds(q));
            }
        }
        let abnormal = r
            .abnormal
            .map_or_else(|| "-".to_string(), |a| format!("{:.1}%", a * 100.0));
        let _ = write!(
            out,
            "{:>NUM$}{abnormal:>NUM$}{:>NUM$}{:>NUM$}",
            format_rate(r.calls_per_sec),
            format_rate(r.faults_per_sec),
            format!("{:.0}", r.lost)
        );
        out.push('\n');
    }
    out
}

/// GETs `url` (plain `http://host:port/path`) and returns the body.
///
/// # Errors
/// A line naming the URL and what failed.
pub fn fetch(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (hostport, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/metrics" } else { path };
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("cannot reach the daemon at {url}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{url}: {e}"))?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)
        .map_err(|e| format!("{url}: {e}"))?;
    let text = String::from_utf8_lossy(&body);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{url}: not an HTTP response"))?;
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200") {
        return Err(format!("{url}: {status}"));
    }
    Ok(body.to_string())
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
            eprintln!("socklat top: {e}");
            1
        }
    }
}

fn once(a: &TopArgs, view: &View) -> Result<(), String> {
    let first = Scrape::parse(&fetch(&a.url)?);
    let t = Instant::now();
    std::thread::sleep(a.interval);
    let second = Scrape::parse(&fetch(&a.url)?);
    print!(
        "{}",
        render(&rows(Some(&first), &second, t.elapsed()), view, 160)
    );
    Ok(())
}

/// The terminal in raw mode (no echo, no line buffering, no signals from keys) until drop.
struct RawTerminal(libc::termios);

impl RawTerminal {
    fn enter() -> Result<Self, String> {
        // SAFETY: termios is plain old data, filled by tcgetattr.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 is a terminal (checked by the caller); t is a valid out pointer.
        if unsafe { libc::tcgetattr(0, &raw mut t) } != 0 {
            return Err(format!("tcgetattr: {}", std::io::Error::last_os_error()));
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

fn terminal_width() -> usize {
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
fn key(timeout: Duration) -> Option<u8> {
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

fn live(a: &TopArgs, mut view: View) -> Result<(), String> {
    let _raw = RawTerminal::enter()?;
    let mut prev: Option<(Scrape, Instant)> = None;
    let mut editing: Option<String> = None;
    let mut status = String::new();
    loop {
        let (table, now) = match fetch(&a.url) {
            Ok(text) => {
                let cur = Scrape::parse(&text);
                let now = Instant::now();
                let dt = prev.as_ref().map_or(Duration::ZERO, |(_, t)| now - *t);
                let r = rows(prev.as_ref().map(|(s, _)| s), &cur, dt);
                prev = Some((cur, now));
                status.clear();
                (render(&r, &view, terminal_width()), now)
            }
            Err(e) => {
                status = e;
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

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP x
socklat_tcp_call_latency_seconds{cgroup="/a",namespace="",pod="",container="",call="sendmsg",quantile="0.5"} 0.0001
socklat_tcp_call_latency_seconds{cgroup="/a",namespace="",pod="",container="",call="recvmsg",quantile="0.99"} 0.025
socklat_tcp_calls_total{cgroup="/a",namespace="",pod="",container="",call="sendmsg",result="ok"} 100
socklat_tcp_calls_total{cgroup="/a",namespace="",pod="",container="",call="recvmsg",result="ok"} 100
socklat_page_faults_total{cgroup="/a",namespace="",pod="",container="",mode="user"} 50
socklat_tcp_call_latency_seconds{cgroup="/k",namespace="shop",pod="web-0",container="app",call="recvmsg",quantile="0.99"} 0.002
socklat_tcp_abnormal_connection_ratio{cgroup="/k",namespace="shop",pod="web-0",container="app"} 0.25
socklat_ringbuf_lost_events_total{cgroup="_other",namespace="",pod="",container=""} 3
socklat_events_total{signal="sendmsg"} 5
"#;

    #[test]
    fn rows_rates_and_table() {
        let first = Scrape::parse(TEXT);
        let second = Scrape::parse(
            &TEXT
                .replace("result=\"ok\"} 100", "result=\"ok\"} 300")
                .replace("mode=\"user\"} 50", "mode=\"user\"} 150"),
        );
        let r = rows(Some(&first), &second, Duration::from_secs(2));
        assert_eq!(r.len(), 3);
        let a = r.iter().find(|r| r.key.cgroup == "/a").unwrap();
        assert_eq!(a.calls_per_sec, Some(200.0));
        assert_eq!(a.faults_per_sec, Some(50.0));
        assert_eq!(a.quantiles[0][0], Some(0.0001));
        assert_eq!(a.quantiles[1][2], Some(0.025));
        let k = r.iter().find(|r| r.key.cgroup == "/k").unwrap();
        assert_eq!(k.name, "shop/web-0/app");
        assert_eq!(k.abnormal, Some(0.25));
        let view = View {
            sort: Column::RecvP99,
            descending: true,
            filter: String::new(),
        };
        let t = render(&r, &view, 160);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("NAME") && lines[0].contains("P99v"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("/a ") && lines[1].contains("25.0ms"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("shop/web-0/app") && lines[2].contains("25.0%"),
            "{t}"
        );
        assert!(lines[3].starts_with("_other"), "{t}");
        let only = render(
            &r,
            &View {
                filter: "web".into(),
                ..view
            },
            160,
        );
        assert_eq!(only.lines().count(), 2, "{only}");
    }

    #[test]
    fn seconds_round_trip() {
        for v in [0.000_85, 0.001_25, 0.0125, 0.125, 1.5] {
            let back = parse_seconds(&format_seconds(Some(v))).unwrap();
            assert!((back - v).abs() <= v * 0.01, "{v} -> {back}");
        }
        assert_eq!(format_seconds(None), "-");
        assert_eq!(parse_seconds("-"), None);
    }

    #[test]
    fn label_values_with_escapes() {
        let (n, l, v) = parse_line(r#"m{cgroup="/a\"b",x="c\\d"} 2"#).unwrap();
        assert_eq!((n, v), ("m", 2.0));
        assert_eq!(l[0], ("cgroup".into(), "/a\"b".into()));
        assert_eq!(l[1], ("x".into(), "c\\d".into()));
    }

    #[test]
    fn fetch_names_the_problem() {
        assert!(
            fetch("https://x/metrics")
                .unwrap_err()
                .contains("only http://")
        );
        let e = fetch("http://127.0.0.1:1/metrics").unwrap_err();
        assert!(e.contains("cannot reach the daemon"), "{e}");
    }
}
