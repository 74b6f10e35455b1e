//! The daemon: checks the environment, loads and attaches the probes, starts the collector
//! and the HTTP server, and shuts down cleanly on SIGTERM/SIGINT.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::cgroups::{Resolver, cgroup2_mount, check_cgroup2_root, memory};
use crate::cli::Cli;
use crate::collector::{self, Maps, Settings};
use crate::error::Error;
use crate::kernel::attach::Choice;
use crate::kernel::caps::{self, CAP_BPF, CAP_PERFMON};
use crate::kernel::load::{self, LoadError};
use crate::kube::NameSource;
use crate::probe_mode::ProbeMode;
use crate::report::has_errno;
use crate::ring_budget::{self, Budget, MemoryFacts, mib};

/// Size of the shared ring: it carries every cgroup's events until the cgroup has a ring
/// of its own, and all events of cgroups over `--max-cgroups`.
fn shared_ring_size(ring_size: u32) -> u32 {
    ring_size.saturating_mul(4).max(1 << 20)
}

/// Before Linux 5.11 BPF memory is charged to `RLIMIT_MEMLOCK`; raise it where allowed.
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct; failure is harmless on memcg-accounted kernels.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) };
    if rc != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK (fine on Linux >= 5.11)");
    }
}

/// The server keeps up to `Limits::max_connections` connections next to a ring per
/// cgroup: raise the soft open-file limit to the hard one.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) != 0 {
                log::debug!("could not raise RLIMIT_NOFILE");
            }
        }
    }
}

/// Why BPF may be refused: the capabilities this process lacks, else a seccomp filter
/// (`Seccomp: 2` in /proc/self/status).
fn refusal_hint() -> Option<String> {
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(c, _)| caps::effective(*c) == Some(false))
        .map(|(_, n)| n)
        .collect();
    if !missing.is_empty() {
        return Some(format!("this process lacks {}", missing.join(" and ")));
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .any(|l| l.strip_prefix("Seccomp:").map(str::trim) == Some("2"))
        .then(|| {
            "this process has CAP_BPF and CAP_PERFMON but runs under a seccomp filter, which \
             is then what refuses bpf(): the container's profile must allow bpf and \
             perf_event_open (recent containerd, CRI-O and Docker defaults do for CAP_BPF and \
             CAP_PERFMON)"
                .to_string()
        })
}

/// A load error whose cause is EPERM is a matter of privileges: say which.
fn classify_load_error(e: LoadError) -> Error {
    if has_errno(&e, libc::EPERM) {
        Error::Privileges {
            hint: refusal_hint(),
            source: e,
        }
    } else {
        Error::Load(e)
    }
}

/// The cgroup resolver, with pod and container names if a source is given.
fn resolver(cli: &Cli, cgroup_root: std::path::PathBuf) -> Result<Resolver, Error> {
    let resolver = Resolver::new(cgroup_root);
    let Some(dir) = &cli.kubelet_log_dir else {
        return Ok(resolver);
    };
    let names = NameSource::spawn(dir.clone()).map_err(|e| Error::Io("names thread", e))?;
    log::info!("pod and container names from {}", names.dir().display());
    Ok(resolver.with_names(names))
}

/// The daemon's memory cgroup, its limit and what it uses now (once loaded), and a line
/// saying so.
fn memory_facts() -> (MemoryFacts, String) {
    let Some((cg, limit)) = memory::own() else {
        return (
            MemoryFacts::default(),
            "no memory cgroup found: no limit".to_string(),
        );
    };
    let in_use = cg.usage();
    let layout = match cg.layout {
        memory::Layout::V2 => "cgroup v2",
        memory::Layout::V1 => "cgroup v1",
    };
    let mut line = format!("memory cgroup {} ({layout}): ", cg.dir.display());
    match &limit {
        Some(l) => {
            let _ = write!(
                line,
                "limit {} ({} of {})",
                mib(l.bytes),
                l.layout.limit_file(),
                l.from.display()
            );
        }
        None => line.push_str("no limit"),
    }
    if let Some(u) = in_use {
        let _ = write!(line, ", in use after loading {}", mib(u));
    }
    (
        MemoryFacts {
            limit: limit.map(|l| l.bytes),
            in_use,
        },
        line,
    )
}

/// The ring memory budget, and the lines that say how it was set.
fn ring_budget(cli: &Cli) -> Result<(Budget, String), Error> {
    let (facts, line) = memory_facts();
    let budget = ring_budget::budget(
        cli.ring_memory,
        &facts,
        cli.max_cgroups,
        cli.ring_size,
        shared_ring_size(cli.ring_size),
    )?;
    Ok((budget, line))
}

/// What `--check` prints: the mode chosen per signal and why the better ones were not, the
/// memory budget and the kernel's tables.
fn print_check(
    cli: &Cli,
    cgroup_root: &std::path::Path,
    loaded: &load::Loaded,
    (budget, memory): &(Budget, String),
) {
    println!(
        "socklat {} --check (probe mode {})",
        env!("CARGO_PKG_VERSION"),
        cli.probe_mode.name()
    );
    println!("cgroup v2 at {}", cgroup_root.display());
    println!("{memory}");
    println!("ring memory budget: {} ({})", mib(budget.bytes), budget.how);
    println!("kernel tables: {}", loaded.describe_tables(cli));
    println!("kernel object: {}", loaded.form.describe());
    for c in &loaded.choices {
        for line in c.describe().lines() {
            println!("  {line}");
        }
    }
}

/// Serves `/metrics` (and `/healthz` on its own listener when asked) until SIGTERM or
/// SIGINT.
fn serve_until_stopped(
    cli: &Cli,
    handle: &Arc<collector::Handle>,
    listener: std::net::TcpListener,
    healthz_listener: Option<std::net::TcpListener>,
    web: Option<Arc<crate::server::WebState>>,
) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io("tokio runtime", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Io("set_nonblocking", e))?;
    let addr = cli.listen;
    let scheme = if web.as_ref().is_some_and(|w| w.tls()) {
        "https"
    } else {
        "http"
    };
    let settings = crate::server::Settings {
        web,
        ..crate::server::Settings::plain(cli.histograms)
    };
    rt.block_on(async {
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|e| Error::Io("listener", e))?;
        log::info!(
            "serving /metrics and /healthz on {scheme}://{addr} (histograms: {})",
            cli.histograms.name()
        );
        let source = Arc::clone(handle) as Arc<dyn crate::server::Source>;
        let server = tokio::spawn(crate::server::serve(
            listener,
            Arc::clone(&source),
            settings,
        ));
        let healthz = match healthz_listener {
            Some(l) => {
                l.set_nonblocking(true)
                    .map_err(|e| Error::Io("set_nonblocking", e))?;
                let l = tokio::net::TcpListener::from_std(l)
                    .map_err(|e| Error::Io("healthz listener", e))?;
                log::info!(
                    "serving /healthz on http://{}",
                    cli.healthz_listen
                        .map_or_else(String::new, |a| a.to_string())
                );
                Some(tokio::spawn(crate::server::serve(
                    l,
                    source,
                    crate::server::Settings {
                        routes: crate::server::Routes::HealthOnly,
                        ..crate::server::Settings::plain(cli.histograms)
                    },
                )))
            }
            None => None,
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Error::Io("signal handler", e))?;
        tokio::select! {
            _ = term.recv() => log::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => log::info!("SIGINT: stopping"),
        }
        server.abort();
        if let Some(h) = healthz {
            h.abort();
        }
        Ok::<(), Error>(())
    })?;
    Ok(())
}

/// Runs the daemon; returns the process exit code.
///
/// # Errors
/// What stops the daemon from starting, named so that the operator knows what to do.
pub fn run(cli: &Cli) -> Result<i32, Error> {
    let cgroup_root = match &cli.cgroup_root {
        Some(p) => check_cgroup2_root(p),
        None => cgroup2_mount(),
    }?;
    // Bind first: a port in use is reported before anything is loaded.
    let listener = if cli.check {
        None
    } else {
        Some(
            std::net::TcpListener::bind(cli.listen).map_err(|source| Error::Listen {
                addr: cli.listen,
                source,
            })?,
        )
    };
    // The web configuration, strictly, before anything is loaded: a bad one is one line.
    let web = cli
        .web_config_file
        .as_deref()
        .map(crate::server::WebState::load)
        .transpose()?
        .map(Arc::new);
    let healthz_listener = match (cli.check, cli.healthz_listen) {
        (false, Some(addr)) => Some(
            std::net::TcpListener::bind(addr).map_err(|source| Error::Listen { addr, source })?,
        ),
        _ => None,
    };
    raise_memlock();
    raise_nofile();
    let mut loaded =
        load::load(cli, shared_ring_size(cli.ring_size)).map_err(classify_load_error)?;
    let missing: Vec<String> = loaded
        .choices
        .iter()
        .filter(|c| c.mode.is_none())
        .map(Choice::describe)
        .collect();

    // Loading parsed kernel BTF and the object (tens of MiB, freed by now): give the freed
    // heap back to the system instead of keeping it resident for the daemon's lifetime
    // (and before the memory cgroup's usage is read for the budget).
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe { libc::malloc_trim(0) };
    let budget = ring_budget(cli)?;
    if cli.check {
        print_check(cli, &cgroup_root, &loaded, &budget);
        return Ok(i32::from(!missing.is_empty()));
    }
    if loaded.choices.iter().all(|c| c.mode.is_none())
        || (cli.probe_mode != ProbeMode::Auto && !missing.is_empty())
    {
        return Err(Error::NotAttached(missing));
    }
    for m in &missing {
        log::warn!("signal not observed: {m}");
    }
    log::info!("{}", budget.1);
    log::info!(
        "ring memory budget: {} ({})",
        mib(budget.0.bytes),
        budget.0.how
    );
    log::info!("kernel tables: {}", loaded.describe_tables(cli));
    // Attached: from here on only ring creation and map access, which need CAP_BPF alone.
    // Before any thread starts, so that all inherit the reduced sets.
    match caps::keep_only(&[CAP_BPF]) {
        Ok(()) => log::info!("probes attached; capabilities dropped to CAP_BPF"),
        Err(e) => log::warn!("could not drop capabilities after attaching: {e}"),
    }
    let resolver = resolver(cli, cgroup_root)?;
    let maps = Maps::take(&mut loaded.ebpf)?;
    let probes = loaded
        .choices
        .iter()
        .filter_map(|c| c.mode.map(|m| (c.signal, m)))
        .collect();
    let (handle, collector) = collector::spawn(
        maps,
        Settings {
            programs: std::mem::take(&mut loaded.programs),
            max_cgroups: usize::try_from(cli.max_cgroups).unwrap_or(usize::MAX),
            window: cli.window,
            ring_size: cli.ring_size,
            ring_budget: budget.0.bytes,
            shared_ring_size: shared_ring_size(cli.ring_size),
            tables: loaded.tables(cli),
            max_connections: cli.max_connections,
            cgroup_ttl: cli.cgroup_ttl,
            probes,
            resolver,
        },
    )?;
    let handle = Arc::new(handle);

    let listener = listener.expect("bound unless --check");
    serve_until_stopped(cli, &handle, listener, healthz_listener, web)?;
    handle.stop();
    let _ = collector.join();
    // Dropping the object detaches every program and frees the maps.
    drop(loaded);
    log::info!("stopped; all probes detached");
    Ok(0)
}
