//! `cargo xtask deploy-test` (the manifests: schemas, checkov, cross-checks) and `cargo
//! xtask image` (the image, with `socklat --check` run in it as the `DaemonSet` runs it).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

use crate::arch::Arch;
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

/// The platforms of the image, one instance of the manifest list each.
const PLATFORMS: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

/// The image's name (a manifest list with one image per platform).
fn image_tag() -> String {
    format!("localhost/socklat:{}", env!("CARGO_PKG_VERSION"))
}

/// Builds the multi-architecture image from the static builds of the daemon: one `FROM
/// scratch` image per platform in a manifest list named [`image_tag`], also written as an
/// OCI archive (target/image/socklat-VERSION.oci.tar) for `skopeo copy --all` or a
/// registry push.
fn build_image() -> Result<String> {
    if !is_root() {
        bail!("building and running the image uses podman as root");
    }
    if Command::new("podman").arg("--version").output().is_err() {
        apt_install(&["podman", "runc"], "podman to build and run the image")?;
    }
    let ctx = root().join("target/image/context");
    let _ = std::fs::remove_dir_all(&ctx);
    std::fs::create_dir_all(&ctx)?;
    for arch in PLATFORMS {
        let (daemon, _) = crate::build::static_binaries_for(arch)?;
        std::fs::copy(&daemon, ctx.join(format!("socklat-{}", arch.debian())))?;
    }
    let tag = image_tag();
    // A list of that name from an earlier run would get the new images added to it.
    let _ = podman().args(["manifest", "rm", &tag]).output();
    let _ = podman().args(["rmi", "--force", &tag]).output();
    let platforms: Vec<String> = PLATFORMS
        .iter()
        .map(|a| format!("linux/{}", a.debian()))
        .collect();
    step(&format!(
        "podman build --platform {} --manifest {tag} -f deploy/Containerfile",
        platforms.join(",")
    ));
    // --no-cache: podman 4.3 reuses a cached layer of another platform (measured).
    run(podman()
        .args([
            "build",
            "-q",
            "--no-cache",
            "--platform",
            &platforms.join(","),
        ])
        .args(["--manifest", &tag, "-f"])
        .arg(deploy_dir().join("Containerfile"))
        .arg(&ctx))?;
    let archive = root().join(format!(
        "target/image/socklat-{}.oci.tar",
        env!("CARGO_PKG_VERSION")
    ));
    let _ = std::fs::remove_file(&archive);
    run(podman()
        .args(["manifest", "push", "--all", "--quiet", &tag])
        .arg(format!("oci-archive:{}", archive.display())))?;
    step(&format!(
        "manifest list {tag}; OCI archive {}",
        archive.display()
    ));
    Ok(tag)
}

/// The image of `arch` in the manifest list `tag`, by digest (`tag@sha256:...`).
fn instance(tag: &str, arch: Arch) -> Result<String> {
    let out = output(podman().args(["manifest", "inspect", tag]))?;
    if !out.status.success() {
        bail!(
            "podman manifest inspect {tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    manifest_digest(&text, arch.debian())
        .map(|d| format!("{}@{d}", tag.split(':').next().unwrap_or(tag)))
        .with_context(|| {
            format!(
                "no {} image in the manifest list {tag}:\n{text}",
                arch.debian()
            )
        })
}

/// The digest of the `architecture` entry of a manifest list (podman's JSON: each entry
/// has its `digest` before its `platform`).
fn manifest_digest(json: &str, architecture: &str) -> Option<String> {
    let mut digest = None;
    for line in json.lines() {
        let line = line.trim().trim_end_matches(',');
        if let Some(d) = line.strip_prefix("\"digest\": ") {
            digest = Some(d.trim_matches('"').to_string());
        } else if line == format!("\"architecture\": \"{architecture}\"") {
            return digest;
        }
    }
    None
}

/// Copies `/usr/bin/socklat` out of `image` (created, never run: another architecture's
/// binary does not run here) to `dest`.
fn binary_of(image: &str, dest: &Path) -> Result<()> {
    let out = output(podman().args(["create", image]))?;
    if !out.status.success() {
        bail!(
            "podman create {image}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let copied = run(podman()
        .arg("cp")
        .arg(format!("{id}:/usr/bin/socklat"))
        .arg(dest));
    let _ = podman().args(["rm", &id]).output();
    copied
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

/// Builds the image and runs `socklat --check` in it as the `DaemonSet` would (the amd64
/// image here, under podman; then without `CAP_BPF` it must fail with a line naming it);
/// then the arm64 image's binary, copied out of the image, in the aarch64 guests of every
/// kernel of the matrix, with the `DaemonSet`'s arguments and environment.
pub fn image() -> Result<()> {
    let bin = tools()?;
    let shape = pod_shape(&bin)?;
    let tag = build_image()?;
    seccomp_profile(&bin)?;
    let native = instance(&tag, Arch::host())?;
    step(&format!(
        "socklat --check in {native}, with the DaemonSet's capabilities and mounts"
    ));
    let out = run_like_the_daemonset(&native, &shape, "", &["--check"])?;
    let text = both_streams(&out);
    eprint!("{text}");
    if !out.status.success() {
        bail!("socklat --check failed in the image ({})", out.status);
    }
    signal_lines(&text)?;
    step("the same without CAP_BPF must fail with one clear line");
    let out = run_like_the_daemonset(&native, &shape, "BPF", &["--check"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !err.contains("lacks CAP_BPF") {
        bail!("without CAP_BPF: exit {}, stderr:\n{err}", out.status);
    }
    eprintln!("    {}", err.trim());
    for arch in PLATFORMS.into_iter().filter(|a| *a != Arch::host()) {
        check_in_guests(&tag, arch, &shape)?;
    }
    Ok(())
}

/// `--check` must print a line for every signal.
fn signal_lines(text: &str) -> Result<()> {
    for signal in ["sendmsg", "recvmsg", "connections", "pagefaults"] {
        if !text.lines().any(|l| l.trim_start().starts_with(signal)) {
            bail!("--check output has no line for {signal}");
        }
    }
    Ok(())
}

/// The `arch` image's binary, copied out of the manifest list, run with `--check` and the
/// `DaemonSet`'s arguments and environment in a guest of each kernel of the matrix.
fn check_in_guests(tag: &str, arch: Arch, shape: &PodShape) -> Result<()> {
    let image = instance(tag, arch)?;
    let dest = root().join(format!("target/image/from-image-{}", arch.debian()));
    std::fs::create_dir_all(&dest)?;
    let binary = dest.join("socklat");
    binary_of(&image, &binary)?;
    let built =
        std::fs::read(root().join(format!("target/image/context/socklat-{}", arch.debian())))?;
    if std::fs::read(&binary)? != built {
        bail!("the binary in {image} is not the one built for it");
    }
    let args = shape.args.clone();
    // The port the DaemonSet's SOCKLAT_LISTEN names (the daemon's default otherwise).
    let port = shape
        .env
        .iter()
        .find(|(k, _)| k == "SOCKLAT_LISTEN")
        .and_then(|(_, v)| v.rsplit(':').next()?.parse().ok())
        .unwrap_or(9640);
    step(&format!(
        "{image}: socklat {} --check, then the daemon until /metrics on port {port} answers, \
         in {arch} guests of every kernel",
        args.join(" ")
    ));
    let passes = |run: &crate::vm::CheckRun| {
        run.rc == Some(0)
            && signal_lines(&run.output).is_ok()
            && run.serve.is_some_and(|(lines, rc)| lines > 0 && rc == 0)
    };
    let mut failed = Vec::new();
    for run in crate::vm::run_in_guests(
        arch,
        &crate::vm::all_kernels(),
        &binary,
        &args,
        &shape.env,
        port,
        passes,
    )? {
        eprintln!(
            "--- {} ({arch}): --check exit {:?}; serving: {}{}\n{}",
            run.kernel,
            run.rc,
            match run.serve {
                Some((lines, rc)) =>
                    format!("{lines} socklat_ lines in /metrics, exit {rc} on SIGTERM"),
                None => "no report".to_string(),
            },
            match &run.first_failure {
                Some(why) => format!(" (a rerun: the first guest failed: {why})"),
                None => String::new(),
            },
            run.output
        );
        if !passes(&run) {
            failed.push(run.kernel);
        }
    }
    if !failed.is_empty() {
        bail!(
            "the {arch} image's socklat (--check, or serving /metrics) failed on {}",
            failed.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// `podman manifest inspect` of a list with an amd64 and an arm64 image (podman 4.3).
    const LIST: &str = r#"{
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
    "manifests": [
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "size": 405,
            "digest": "sha256:aaaa",
            "platform": {
                "architecture": "amd64",
                "os": "linux"
            }
        },
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "size": 405,
            "digest": "sha256:bbbb",
            "platform": {
                "architecture": "arm64",
                "os": "linux"
            }
        }
    ]
}"#;

    #[test]
    fn digests_of_a_manifest_list() {
        assert_eq!(
            super::manifest_digest(LIST, "amd64").as_deref(),
            Some("sha256:aaaa")
        );
        assert_eq!(
            super::manifest_digest(LIST, "arm64").as_deref(),
            Some("sha256:bbbb")
        );
        assert_eq!(super::manifest_digest(LIST, "riscv64"), None);
    }
}
