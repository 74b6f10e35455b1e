//! `cargo xtask deploy-test` (the manifests: schemas, checkov, cross-checks) and `cargo
//! xtask image` (the image, with `socklat --check` run in it as the `DaemonSet` runs it).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

use crate::toolchain::apt_install;
use crate::util::{is_root, root, run, step};

const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
const CHECKOV: &str = "checkov==3.3.30";
/// Kubernetes versions the manifests must validate against: the oldest we claim and the
/// newest the validator knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.28.0", "1.37.0"];
/// Kinds kubernetes-validate has no schema for; deploy.py cross-checks them instead.
const NO_SCHEMA: &[&str] = &["kustomization.yaml", "servicemonitor.yaml"];

fn venv() -> PathBuf {
    root().join("target/deploy-venv")
}

/// The venv with the validators, made on first use. The Python tools come from `PyPI`
/// (pinned versions); YAML is read by `xtask/deploy.py` with the `PyYAML` that
/// kubernetes-validate brings.
fn tools() -> Result<PathBuf> {
    let bin = venv().join("bin");
    if bin.join("checkov").exists() && bin.join("kubernetes-validate").exists() {
        return Ok(bin);
    }
    step("installing kubernetes-validate and checkov from PyPI into target/deploy-venv");
    run(Command::new("python3").arg("-m").arg("venv").arg(venv()))?;
    run(Command::new(bin.join("pip")).args([
        "install",
        "-q",
        "--disable-pip-version-check",
        KUBERNETES_VALIDATE,
        CHECKOV,
    ]))?;
    Ok(bin)
}

fn deploy_dir() -> PathBuf {
    root().join("deploy")
}

fn output(cmd: &mut Command) -> Result<Output> {
    cmd.output().with_context(|| format!("cannot run {cmd:?}"))
}

/// Standard output then standard error, as one text.
fn both_streams(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// `xtask/deploy.py SUBCOMMAND` with the venv's Python (for its `PyYAML`).
fn deploy_py(bin: &Path, subcommand: &str) -> Command {
    let mut cmd = Command::new(bin.join("python"));
    cmd.arg(root().join("xtask/deploy.py")).arg(subcommand);
    cmd
}

/// Validates and lints the manifests and the image definition.
pub fn deploy_test() -> Result<()> {
    let bin = tools()?;
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(deploy_dir())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    manifests.sort();
    for version in KUBERNETES_VERSIONS {
        step(&format!(
            "kubernetes-validate --strict (Kubernetes {version})"
        ));
        for m in &manifests {
            let name = m.file_name().unwrap_or_default().to_string_lossy();
            if NO_SCHEMA.contains(&name.as_ref()) {
                continue;
            }
            let out = output(
                Command::new(bin.join("kubernetes-validate"))
                    .args(["--strict", "-k", version])
                    .arg(m),
            )?;
            let text = both_streams(&out);
            if !out.status.success() || !text.contains("passed") {
                bail!("{name} does not validate against Kubernetes {version}:\n{text}");
            }
            eprint!("    {text}");
        }
    }
    step("cross-checks of the manifests (selectors, ports, probes, privileges, mounts)");
    run(deploy_py(&bin, "check").arg(deploy_dir()))?;
    step("the tls-auth component applied and cross-checked (Secret mount, probes, ServiceMonitor)");
    let patched = root().join("target/deploy-check/tls-auth");
    run(deploy_py(&bin, "component").arg(deploy_dir()).arg(&patched))?;
    for version in KUBERNETES_VERSIONS {
        for m in ["daemonset.yaml", "networkpolicy.yaml"] {
            let out = output(
                Command::new(bin.join("kubernetes-validate"))
                    .args(["--strict", "-k", version])
                    .arg(patched.join(m)),
            )?;
            let text = both_streams(&out);
            if !out.status.success() || !text.contains("passed") {
                bail!("{m} with tls-auth does not validate against Kubernetes {version}:\n{text}");
            }
        }
    }
    step("promtool check rules, promtool test rules (the alerts fire on injected series)");
    let prom = deploy_dir().join("prometheus");
    run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(prom.join("rules.yaml")))
    .context("promtool comes with Debian's prometheus package")?;
    run(Command::new("promtool")
        .current_dir(&prom)
        .args(["test", "rules", "rules_test.yaml"]))?;
    step("checkov (kubernetes); accepted findings are annotated in daemonset.yaml");
    checkov(&bin, &deploy_dir(), "kubernetes")?;
    step("checkov (dockerfile) on deploy/Containerfile");
    // checkov finds Dockerfiles by name: check a copy under that name.
    let dir = root().join("target/deploy-check");
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(deploy_dir().join("Containerfile"), dir.join("Dockerfile"))?;
    checkov(&bin, &dir, "dockerfile")?;
    Ok(())
}

fn checkov(bin: &Path, dir: &Path, framework: &str) -> Result<()> {
    let out = output(
        Command::new(bin.join("checkov"))
            .arg("-d")
            .arg(dir)
            .args(["--framework", framework, "--compact", "--skip-download"])
            .env("BC_SKIP_MAPPING", "TRUE"),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text
        .lines()
        .find(|l| l.starts_with("Passed checks:"))
        .with_context(|| format!("no checkov summary:\n{text}"))?;
    eprintln!("    {summary}");
    if !out.status.success() || !summary.contains("Failed checks: 0,") {
        bail!("checkov {framework} found problems:\n{text}");
    }
    Ok(())
}

/// What the `DaemonSet` gives its container, read from `deploy/daemonset.yaml`.
#[derive(Default)]
struct PodShape {
    caps: Vec<String>,
    /// (host path, container path, read-only, hostPath type)
    mounts: Vec<(String, String, bool, String)>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// The seccomp profile of the test runs: podman's default (the runtime's default is what
/// the `DaemonSet` asks for, `RuntimeDefault`) with `bpf` and `perf_event_open` allowed, as in
/// containerd's and Docker's current defaults for containers with `CAP_BPF` and `CAP_PERFMON`.
fn seccomp_profile(bin: &Path) -> Result<()> {
    run(deploy_py(bin, "seccomp")
        .arg("/usr/share/containers/seccomp.json")
        .arg(root().join("target/image/seccomp.json")))
}

fn pod_shape(bin: &Path) -> Result<PodShape> {
    let out = output(deploy_py(bin, "podman").arg(deploy_dir()))?;
    if !out.status.success() {
        bail!(
            "reading daemonset.yaml: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut s = PodShape::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let fields: Vec<&str> = line.splitn(5, ' ').collect();
        match fields.as_slice() {
            ["cap", cap] => s.caps.push((*cap).to_string()),
            ["mount", host, inside, ro, kind] => {
                s.mounts.push((
                    (*host).into(),
                    (*inside).into(),
                    *ro == "ro",
                    (*kind).into(),
                ));
            }
            ["arg", a] => s.args.push((*a).to_string()),
            ["env", k, v] => s.env.push(((*k).into(), (*v).into())),
            ["port", ..] => {}
            _ => bail!("unexpected line from deploy.py: {line}"),
        }
    }
    Ok(s)
}

/// Builds the image from a static build of the daemon.
fn build_image() -> Result<String> {
    if !is_root() {
        bail!("building and running the image uses podman as root");
    }
    if Command::new("podman").arg("--version").output().is_err() {
        apt_install(&["podman", "runc"], "podman to build and run the image")?;
    }
    let (daemon, _) = crate::build::static_binaries()?;
    let ctx = root().join("target/image");
    std::fs::create_dir_all(&ctx)?;
    std::fs::copy(&daemon, ctx.join("socklat"))?;
    let tag = format!("localhost/socklat:{}", env!("CARGO_PKG_VERSION"));
    step(&format!("podman build -f deploy/Containerfile -t {tag}"));
    run(podman()
        .args(["build", "-q", "-f"])
        .arg(deploy_dir().join("Containerfile"))
        .args(["-t", &tag])
        .arg(&ctx))?;
    Ok(tag)
}

/// podman with a containers.conf of ours that sets no default ulimits: podman's defaults
/// (nofile and nproc of 1048576) can exceed the limits this process has, and runc then
/// fails with "error setting rlimits". The host's configuration is not touched.
fn podman() -> Command {
    let conf = root().join("target/image/containers.conf");
    let _ = std::fs::create_dir_all(root().join("target/image"));
    let _ = std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n");
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", conf);
    c
}

/// `podman run` of the image with the `DaemonSet`'s capabilities (minus `drop`), mounts,
/// arguments and environment, plus `extra` daemon arguments.
fn run_like_the_daemonset(
    tag: &str,
    shape: &PodShape,
    drop: &str,
    extra: &[&str],
) -> Result<Output> {
    let mut cmd = podman();
    let profile = root().join("target/image/seccomp.json");
    cmd.args([
        "run",
        "--rm",
        "--read-only",
        // --check serves nothing; no network backend needed.
        "--network",
        "none",
        "--user",
        "0:0",
        "--security-opt",
        "no-new-privileges",
        "--security-opt",
        &format!("seccomp={}", profile.display()),
        "--cap-drop",
        "all",
    ]);
    for c in shape.caps.iter().filter(|c| *c != drop) {
        cmd.arg("--cap-add").arg(format!("CAP_{c}"));
    }
    let spare = root().join("target/image/empty");
    std::fs::create_dir_all(&spare)?;
    for (host, inside, ro, kind) in &shape.mounts {
        // A DirectoryOrCreate path this machine lacks (it is no Kubernetes node) is an
        // empty directory, as the kubelet would make it.
        let host = if kind == "DirectoryOrCreate" && !Path::new(host).exists() {
            spare.to_string_lossy().into_owned()
        } else {
            host.clone()
        };
        cmd.arg("-v")
            .arg(format!("{host}:{inside}:{}", if *ro { "ro" } else { "rw" }));
    }
    for (k, v) in &shape.env {
        cmd.arg("-e").arg(format!("{k}={v}"));
    }
    cmd.arg(tag).args(&shape.args).args(extra);
    output(&mut cmd)
}

/// Builds the image and runs `socklat --check` in it as the `DaemonSet` would; then checks
/// that without `CAP_BPF` it fails with a line naming it.
pub fn image() -> Result<()> {
    let bin = tools()?;
    let shape = pod_shape(&bin)?;
    let tag = build_image()?;
    seccomp_profile(&bin)?;
    step("socklat --check in the image, with the DaemonSet's capabilities and mounts");
    let out = run_like_the_daemonset(&tag, &shape, "", &["--check"])?;
    let text = both_streams(&out);
    eprint!("{text}");
    if !out.status.success() {
        bail!("socklat --check failed in the image ({})", out.status);
    }
    for signal in ["sendmsg", "recvmsg", "connections", "pagefaults"] {
        if !text.lines().any(|l| l.trim_start().starts_with(signal)) {
            bail!("--check output has no line for {signal}");
        }
    }
    step("the same without CAP_BPF must fail with one clear line");
    let out = run_like_the_daemonset(&tag, &shape, "BPF", &["--check"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !err.contains("lacks CAP_BPF") {
        bail!("without CAP_BPF: exit {}, stderr:\n{err}", out.status);
    }
    eprintln!("    {}", err.trim());
    Ok(())
}
