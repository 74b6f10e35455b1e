"""Reads deploy/ for `cargo xtask deploy-test` and `cargo xtask image` (YAML needs a parser;
PyYAML comes with kubernetes-validate in the venv xtask makes).

  deploy.py check DEPLOY_DIR       cross-checks the manifests; exit 1 with one line per problem
  deploy.py podman DEPLOY_DIR      prints the DaemonSet container's privileges and mounts as
                                   lines: cap NAME | mount HOST CONTAINER ro|rw TYPE |
                                   arg ARG | env NAME VALUE | port NAME NUMBER
  deploy.py seccomp SRC DST        writes podman's profile SRC with bpf and perf_event_open
                                   allowed to DST (see seccomp())
  deploy.py component DEPLOY_DIR OUT_DIR
                                   applies components/tls-auth to the manifests (its JSON
                                   patches, as kustomize does), cross-checks the result and
                                   writes the patched manifests to OUT_DIR (for the schemas)
"""
import pathlib
import sys

import yaml


def load(deploy):
    docs = {}
    for f in sorted(pathlib.Path(deploy).glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if d:
                docs[(d["kind"], f.name)] = d
    return docs


def one(docs, kind):
    found = [d for (k, _), d in docs.items() if k == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def check(deploy):
    docs = load(deploy)
    problems = []
    kust = one(docs, "Kustomization")
    files = sorted(f for (_, f) in docs if f != "kustomization.yaml")
    if sorted(kust["resources"]) != files:
        problems.append(f"kustomization resources {sorted(kust['resources'])} != files {files}")
    ns = one(docs, "Namespace")["metadata"]["name"]
    ds = one(docs, "DaemonSet")
    svc = one(docs, "Service")
    sm = one(docs, "ServiceMonitor")
    np = one(docs, "NetworkPolicy")
    sa = one(docs, "ServiceAccount")
    for (kind, f), d in docs.items():
        if kind not in ("Namespace", "Kustomization") and d["metadata"].get("namespace") != ns:
            problems.append(f"{f}: {kind} not in namespace {ns}")
    pod = ds["spec"]["template"]
    labels = pod["metadata"]["labels"]
    if ds["spec"]["selector"]["matchLabels"].items() - labels.items():
        problems.append("DaemonSet selector does not match its pod labels")
    if svc["spec"]["selector"].items() - labels.items():
        problems.append("Service selector does not match the DaemonSet's pods")
    if np["spec"]["podSelector"]["matchLabels"].items() - labels.items():
        problems.append("NetworkPolicy does not select the DaemonSet's pods")
    if sm["spec"]["selector"]["matchLabels"].items() - svc["metadata"]["labels"].items():
        problems.append("ServiceMonitor selector does not match the Service")
    if ns not in sm["spec"]["namespaceSelector"]["matchNames"]:
        problems.append("ServiceMonitor does not look in the namespace")
    if pod["spec"]["serviceAccountName"] != sa["metadata"]["name"]:
        problems.append("DaemonSet does not use the ServiceAccount")
    (c,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    svc_ports = {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        if ep["port"] not in svc_ports:
            problems.append(f"ServiceMonitor port {ep['port']} is not a Service port")
    for name, target in svc_ports.items():
        if target not in ports:
            problems.append(f"Service port {name} targets {target}, not a container port")
    for rule in np["spec"]["ingress"]:
        for p in rule["ports"]:
            if p["port"] not in ports:
                problems.append(f"NetworkPolicy allows {p['port']}, not a container port")
    listen = {e["name"]: e.get("value") for e in c.get("env", [])}.get("SOCKLAT_LISTEN", "0.0.0.0:9640")
    if int(listen.rsplit(":", 1)[1]) != ports.get("metrics"):
        problems.append(f"daemon listens on {listen} but the metrics port is {ports.get('metrics')}")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        h = c.get(probe, {}).get("httpGet", {})
        if h.get("path") != "/healthz" or h.get("port") not in ports:
            problems.append(f"{probe} is not /healthz on a container port")
    sc = c["securityContext"]
    if sc.get("privileged") or sc.get("allowPrivilegeEscalation", True):
        problems.append("container may be privileged or escalate privileges")
    if sc["capabilities"]["drop"] != ["ALL"]:
        problems.append("container does not drop ALL capabilities")
    if not set(sc["capabilities"]["add"]) <= {"BPF", "PERFMON", "SYS_RESOURCE"}:
        problems.append(f"unexpected capabilities {sc['capabilities']['add']}")
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    for m in c["volumeMounts"]:
        if not m.get("readOnly"):
            problems.append(f"mount {m['name']} is not read-only")
        if m["name"] not in vols:
            problems.append(f"mount {m['name']} has no volume")
    problems += check_dashboard(pathlib.Path(deploy) / "grafana" / "socklat.json")
    for p in problems:
        print(p)
    return 1 if problems else 0


def check_dashboard(path):
    """The Grafana dashboard: valid JSON, unique panel ids, a Prometheus query on every
    panel that is not a row, and only template variables it defines."""
    import json
    import re

    problems = []
    d = json.loads(path.read_text())
    ids = [p["id"] for p in d["panels"]]
    if len(ids) != len(set(ids)):
        problems.append(f"{path.name}: duplicate panel ids")
    defined = {v["name"] for v in d["templating"]["list"]} | {"__rate_interval"}
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        if not p.get("targets"):
            problems.append(f"{path.name}: panel '{p['title']}' has no query")
        for t in p.get("targets", []):
            for var in re.findall(r"\$(\w+)", t["expr"]):
                if var not in defined:
                    problems.append(f"{path.name}: panel '{p['title']}' uses undefined ${var}")
    return problems


def podman(deploy):
    ds = one(load(deploy), "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    for cap in c["securityContext"]["capabilities"]["add"]:
        print("cap", cap)
    vols = {v["name"]: v for v in spec["volumes"]}
    for m in c["volumeMounts"]:
        hp = vols[m["name"]]["hostPath"]
        print("mount", hp["path"], m["mountPath"], "ro" if m.get("readOnly") else "rw", hp.get("type", ""))
    for a in c.get("args", []):
        print("arg", a)
    for e in c.get("env", []):
        print("env", e["name"], e["value"])
    for p in c["ports"]:
        print("port", p["name"], p["containerPort"])
    return 0


def seccomp(src, dst):
    """podman's default seccomp profile as newer runtimes have it: bpf and perf_event_open
    allowed (containerd and Docker's current defaults allow them to containers granted
    CAP_BPF and CAP_PERFMON; Debian 12's podman allows them only with CAP_SYS_ADMIN)."""
    import json

    prof = json.loads(pathlib.Path(src).read_text())
    wanted = {"bpf", "perf_event_open"}
    rules = []
    for r in prof["syscalls"]:
        names = [n for n in r["names"] if n not in wanted]
        if names:
            rules.append(dict(r, names=names))
    rules.append({"names": sorted(wanted), "action": "SCMP_ACT_ALLOW", "args": []})
    prof["syscalls"] = rules
    pathlib.Path(dst).write_text(json.dumps(prof))
    return 0


def json_patch(doc, ops):
    """The JSON patch operations kustomize applies (RFC 6902 add and replace; `-` appends)."""
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            if op["op"] == "add":
                node.insert(len(node) if last == "-" else int(last), op["value"])
            else:
                node[int(last)] = op["value"]
        else:
            if op["op"] == "replace" and last not in node:
                raise KeyError(f"replace of missing {op['path']}")
            node[last] = op["value"]


def component(deploy, out):
    """components/tls-auth applied to the base: the daemon reads its web configuration from
    a mounted Secret, serves /healthz on a plain port the probes use, the ServiceMonitor
    scrapes over https with the CA and basic auth from Secrets, and the NetworkPolicy lets
    the probes in."""
    deploy = pathlib.Path(deploy)
    comp = yaml.safe_load((deploy / "components/tls-auth/kustomization.yaml").read_text())
    overlay = yaml.safe_load((deploy / "overlays/tls-auth/kustomization.yaml").read_text())
    problems = []
    if comp["kind"] != "Component":
        problems.append("components/tls-auth is not a kustomize Component")
    if overlay.get("components") != ["../../components/tls-auth"] or overlay.get("resources") != ["../../"]:
        problems.append("overlays/tls-auth does not apply the component to deploy/")
    docs = load(deploy)
    for p in comp["patches"]:
        t = p["target"]
        (doc,) = [d for (k, _), d in docs.items() if k == t["kind"] and d["metadata"]["name"] == t["name"]]
        json_patch(doc, yaml.safe_load(p["patch"]))
    ds = one(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    args = dict(a.split("=", 1) for a in c["args"] if a.startswith("--web."))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    web = args.get("--web.config.file", "")
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    mount = mounts.get(str(pathlib.PurePosixPath(web).parent))
    if not mount or "secret" not in vols.get(mount["name"], {}) or not mount.get("readOnly"):
        problems.append(f"--web.config.file {web!r} is not in a read-only Secret mount")
    healthz = args.get("--web.healthz-listen", "")
    if not healthz or int(healthz.rsplit(":", 1)[1]) != ports.get("healthz"):
        problems.append(f"--web.healthz-listen {healthz!r} is not the container port healthz")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        h = c[probe]["httpGet"]
        if h.get("path") != "/healthz" or h.get("port") != "healthz" or h.get("scheme", "HTTP") != "HTTP":
            problems.append(f"{probe} is not plain /healthz on the healthz port")
    (ep,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    tls = ep.get("tlsConfig", {})
    if ep.get("scheme") != "https":
        problems.append("ServiceMonitor does not scrape over https")
    if "secret" not in tls.get("ca", {}) or "caFile" in tls or not tls.get("serverName"):
        problems.append("ServiceMonitor tlsConfig needs ca from a Secret (not also caFile) and serverName")
    if ("cert" in tls) != ("keySecret" in tls):
        problems.append("ServiceMonitor tlsConfig: client cert and key go together")
    auth = ep.get("basicAuth", {})
    if not all("name" in auth.get(k, {}) and "key" in auth.get(k, {}) for k in ("username", "password")):
        problems.append("ServiceMonitor basicAuth needs username and password Secret keys")
    mounted = vols[mount["name"]].get("secret", {}).get("secretName") if mount else None
    if tls.get("ca", {}).get("secret", {}).get("name") != mounted:
        problems.append("the ServiceMonitor's CA is not from the Secret the daemon mounts")
    np = one(docs, "NetworkPolicy")
    allowed = {p["port"] for r in np["spec"]["ingress"] for p in r["ports"]}
    if not {"metrics", "healthz"} <= allowed:
        problems.append(f"NetworkPolicy lets in {sorted(allowed)}, not metrics and healthz")
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for (kind, f), d in docs.items():
        if kind in ("DaemonSet", "NetworkPolicy"):
            (out / f).write_text(yaml.safe_dump(d, sort_keys=False))
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit({"check": check, "podman": podman, "seccomp": seccomp, "component": component}[sys.argv[1]](*sys.argv[2:]))
