"""deploy/: the cron, systemd, Kubernetes and Docker files are valid of their kind, agree
with each other, and every goprof command line in them parses with goprof's own parser.

No root, BPF or network needed: yamllint, kubernetes-validate (the dev extras),
systemd-analyze and kubectl when installed (else those checks skip, saying so).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
CRONTAB = DEPLOY / "cron" / "goprof.crontab"
DOCKERFILE = DEPLOY / "Dockerfile"
UNITS = sorted([*SYSTEMD.glob("*.service"), *SYSTEMD.glob("*.timer")])
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
CONFIG_MOUNT = "/etc/goprof/agent.yaml"

# `goprof agent`'s long flags, which are also the --config file's keys (without the
# dashes). Checked against the real parser below when it is importable.
AGENT_FLAGS = {
    "pid", "exe", "comm", "cgroup",
    "window", "frequency", "kernel", "mem", "mem-rate", "goroutines", "goroutine-ids",
    "service-name", "hostname",
    "parca", "insecure", "parca-ca", "parca-token-file",
    "pyroscope", "pyroscope-user", "pyroscope-password-file", "pyroscope-token-file",
    "tenant-id",
    "output-dir", "output-template", "retain", "retain-size",
    "spool-dir", "spool-size", "queue-size",
    "metrics-addr", "log-format", "duration",
}

# yamllint's defaults, but a document start (---) is optional and lines may be long
# (commands, URLs and comments explaining them).
YAMLLINT_CONFIG = """
extends: default
rules:
  document-start: disable
  line-length: {max: 120}
  truthy: {allowed-values: ["true", "false"], check-keys: false}
"""

# The oldest Kubernetes with securityContext.appArmorProfile, and the newest
# kubernetes-validate knows.
K8S_OLDEST = "1.30.0"


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def manifest(kind: str) -> dict:
    found = [d for p in MANIFESTS for d in load_all(p) if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} under {K8S}, found {len(found)}"
    return found[0]


def agent_container() -> dict:
    containers = manifest("DaemonSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def configmap_agent_yaml() -> str:
    return manifest("ConfigMap")["data"]["agent.yaml"]


# --- YAML ---------------------------------------------------------------------------


def test_yaml_files_found():
    assert len(YAML_FILES) >= 8, YAML_FILES


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yamllint(path: Path):
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    conf = YamlLintConfig(YAMLLINT_CONFIG)
    problems = list(linter.run(path.read_text(), conf, str(path)))
    assert not problems, "\n".join(f"{path}:{p.line}:{p.column}: {p.desc} ({p.rule})"
                                   for p in problems)


def test_yamllint_configmap_agent_yaml():
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    problems = list(linter.run(configmap_agent_yaml(), YamlLintConfig(YAMLLINT_CONFIG)))
    assert not problems, "\n".join(f"agent.yaml:{p.line}:{p.column}: {p.desc}"
                                   for p in problems)


# --- Kubernetes ---------------------------------------------------------------------


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_validate(path: Path):
    import jsonschema
    import kubernetes_validate

    versions = sorted({K8S_OLDEST, kubernetes_validate.latest_version()})
    docs = load_all(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except jsonschema.ValidationError as e:  # kubernetes-validate's derive from it
                where = ".".join(str(p) for p in e.absolute_path)
                pytest.fail(f"{path.name} ({doc['kind']}), Kubernetes {version}: "
                            f"{where}: {e.message}")


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), f"listed twice: {listed}"
    assert set(listed) == {p.name for p in MANIFESTS}


def test_kustomize_builds():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (kubectl kustomize renders deploy/kubernetes)")
    res = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    objects = [d for d in yaml.safe_load_all(res.stdout) if d]
    assert sorted(o["kind"] for o in objects) == sorted(
        d["kind"] for p in MANIFESTS for d in load_all(p))
    namespaced = [o for o in objects
                  if o["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding")]
    assert {o["metadata"]["namespace"] for o in namespaced} == {"goprof"}


def test_rbac_reads_pods_only():
    rules = manifest("ClusterRole")["rules"]
    assert rules == [{"apiGroups": [""], "resources": ["pods"],
                      "verbs": ["get", "list", "watch"]}]
    binding = manifest("ClusterRoleBinding")
    sa = manifest("ServiceAccount")
    assert binding["roleRef"]["name"] == manifest("ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]
    pod = manifest("DaemonSet")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]


def test_daemonset_shape():
    ds = manifest("DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    c = agent_container()
    assert pod["hostPID"] is True
    assert {"operator": "Exists"} in pod["tolerations"]
    sc = c["securityContext"]
    assert not sc.get("privileged")
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == {"BPF", "PERFMON", "SYS_PTRACE",
                                             "DAC_READ_SEARCH", "SYS_RESOURCE"}
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/sys/kernel/btf", "/lib/modules", "/usr/src"):
        assert mounts[path].get("readOnly") is True, path
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path
    assert volumes[mounts["/var/lib/goprof"]["name"]]["hostPath"]["path"] == "/var/lib/goprof"
    # The BPF object cache and /tmp are writable although the root filesystem is not.
    assert sc["readOnlyRootFilesystem"] is True
    assert env["GOPROF_CACHE_DIR"]["value"] in mounts
    assert "/tmp" in mounts
    # The ConfigMap is mounted where --config looks for it.
    config = mounts[str(Path(CONFIG_MOUNT).parent)]
    cm = manifest("ConfigMap")
    assert volumes[config["name"]]["configMap"]["name"] == cm["metadata"]["name"]
    assert Path(CONFIG_MOUNT).name in cm["data"]
    res = c["resources"]
    assert res["requests"] and res["limits"]


def _port(container: dict, port: int | str) -> int:
    """A port number, or a container port's name resolved to its number."""
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in by_name, f"no container port named {port!r}"
    return by_name[port]


def test_probe_service_and_metrics_addr_agree():
    c = agent_container()
    metrics_addr = yaml.safe_load(configmap_agent_yaml())["metrics-addr"]
    host, _, port = metrics_addr.rpartition(":")
    assert host in ("0.0.0.0", "::", "[::]", ""), \
        f"metrics-addr {metrics_addr}: the kubelet and Prometheus reach the pod's IP"
    ports = {"metrics-addr": int(port)}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] == "/healthz"
        ports[probe] = _port(c, c[probe]["httpGet"]["port"])
    svc = manifest("Service")
    assert svc["spec"]["selector"].items() <= \
        manifest("DaemonSet")["spec"]["template"]["metadata"]["labels"].items()
    for p in svc["spec"]["ports"]:
        ports[f"Service {p['name']} targetPort"] = _port(c, p["targetPort"])
    assert len(set(ports.values())) == 1, ports


# --- the agent's configuration files ------------------------------------------------

CONFIGS = {
    "systemd/agent.yaml": lambda: (SYSTEMD / "agent.yaml").read_text(),
    "kubernetes/configmap.yaml agent.yaml": configmap_agent_yaml,
}
# "# key: value" lines: examples to uncomment, which must be valid keys as well.
COMMENTED_KEY = re.compile(r"^#\s?([a-z][a-z0-9-]*):\s", re.M)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_keys_are_agent_flags(name: str):
    text = CONFIGS[name]()
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict) and doc, f"{name}: expected a mapping of settings"
    unknown = set(doc) - AGENT_FLAGS
    assert not unknown, f"{name}: not goprof agent flags: {sorted(unknown)}"
    commented = set(COMMENTED_KEY.findall(text)) - AGENT_FLAGS
    assert not commented, f"{name}: commented-out examples of unknown keys: {commented}"


def _agent_parser() -> argparse.ArgumentParser | None:
    if importlib.util.find_spec("goprof.commands.agent") is None:
        return None
    from goprof import cli

    return _subcommands(cli.parser()).get("agent")


def _subcommands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_agent_flags_match_the_parser():
    agent = _agent_parser()
    if agent is None:
        pytest.skip("goprof.commands.agent is not importable (or not registered in "
                    "goprof.cli): AGENT_FLAGS cannot be compared with the real parser")
    longs = {s[2:] for a in agent._actions for s in a.option_strings if s.startswith("--")}
    # --no-kernel and the like: BooleanOptionalAction's negations.
    longs = {f for f in longs if not (f.startswith("no-") and f[3:] in longs)}
    longs -= {"help", "config"}
    assert longs == AGENT_FLAGS, (f"missing from AGENT_FLAGS: {sorted(longs - AGENT_FLAGS)}; "
                                  f"not flags of goprof agent: {sorted(AGENT_FLAGS - longs)}")


@pytest.mark.parametrize("name", CONFIGS)
def test_config_reads_with_the_agent(name: str, tmp_path: Path):
    """The agent's own reader (types too: booleans, integers, lists)."""
    if importlib.util.find_spec("goprof.agent.config") is None:
        pytest.skip("goprof.agent.config is not importable yet")
    from goprof.agent import config

    path = tmp_path / "agent.yaml"
    path.write_text(CONFIGS[name]())
    settings = config.read_config(str(path))
    assert settings


# --- goprof command lines -----------------------------------------------------------


def _goprof_argvs(words: list[str]) -> list[list[str]]:
    """goprof's arguments in a shell command line: each pipeline or list element whose
    program is goprof, redirections left out."""
    argvs, current = [], []
    for w in [*words, ";"]:
        if w in (";", "&&", "||", "|", "&"):
            if current and Path(current[0]).name == "goprof":
                argvs.append(current[1:])
            current = []
        elif re.fullmatch(r"\d*[<>]&?\S*", w):
            continue
        else:
            current.append(w)
    return argvs


def crontab_jobs() -> list[tuple[list[str], str, str]]:
    """(schedule fields, user, command) of each job in the crontab."""
    jobs = []
    for line in CRONTAB.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", line):
            continue
        fields = line.split(None, 6)
        assert len(fields) == 7, f"not 'm h dom mon dow user command': {line}"
        jobs.append((fields[:5], fields[5], fields[6]))
    return jobs


def crontab_commands() -> list[tuple[str, list[str]]]:
    out = []
    for i, (_, _, command) in enumerate(crontab_jobs()):
        for argv in _goprof_argvs(shlex.split(command)):
            out.append((f"crontab job {i + 1}", argv))
    return out


EXEC_LINE = re.compile(r"^#?(Exec(?:Start|StartPre|StartPost|Stop|StopPost|Reload))=(.*)$",
                       re.M)


def systemd_commands() -> list[tuple[str, list[str]]]:
    """Exec lines of the units (commented-out examples too), with the template's %i as
    the instance "api"."""
    out = []
    for unit in UNITS:
        for m in EXEC_LINE.finditer(unit.read_text()):
            value = m.group(2).lstrip("-@+!:")
            value = value.replace("%i", "api").replace("%%", "%")
            assert "%" not in value, f"{unit.name}: an unexpected specifier in {value!r}"
            words = shlex.split(value)
            assert words[0].startswith("/"), f"{unit.name}: {m.group(1)} needs a full path"
            argvs = _goprof_argvs(words)
            out += [(f"{unit.name} {m.group(1)}", a) for a in argvs]
    return out


def daemonset_command() -> list[tuple[str, list[str]]]:
    c = agent_container()
    assert "command" not in c, "the image's ENTRYPOINT (goprof) runs; args are its arguments"
    return [("DaemonSet args", [str(a) for a in c["args"]])]


def dockerfile_instruction(name: str) -> list[str]:
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith(name + " ")]
    assert len(lines) == 1, f"expected one {name} in the Dockerfile"
    value = json.loads(lines[0][len(name) + 1:])  # the exec (JSON) form
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def dockerfile_command() -> list[tuple[str, list[str]]]:
    assert dockerfile_instruction("ENTRYPOINT") == ["goprof"]
    return [("Dockerfile CMD", dockerfile_instruction("CMD"))]


COMMANDS = [*crontab_commands(), *systemd_commands(), *daemonset_command(),
            *dockerfile_command()]


def test_commands_found():
    sources = " ".join(s for s, _ in COMMANDS)
    for expected in ("crontab", "goprof-agent.service", "goprof-profile@.service ExecStartPost",
                     "DaemonSet", "Dockerfile"):
        assert expected in sources, f"no goprof command found in {expected}"
    subcommands = [a[0] for _, a in COMMANDS]
    for sub in ("cpu", "mem", "prune", "agent"):
        assert sub in subcommands


@pytest.mark.parametrize("argv", [a for _, a in COMMANDS],
                         ids=[f"{s}: goprof {a[0]}" for s, a in COMMANDS])
def test_command_parses(argv: list[str]):
    from goprof import cli

    p = cli.parser()
    sub = argv[0]
    if sub not in _subcommands(p):
        pytest.xfail(f"`goprof {sub}` is not registered in goprof.cli yet")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            args = p.parse_args(argv)
        except SystemExit:
            msg = err.getvalue().strip().splitlines()[-1]
            if sub in ("cpu", "mem") and "unrecognized arguments: --exe" in msg:
                pytest.xfail(f"`goprof {sub}` has no --exe yet: {msg}")
            pytest.fail(f"goprof {shlex.join(argv)}: {msg}")
    if sub == "agent":
        assert args.config == CONFIG_MOUNT
    for output in getattr(args, "output", None) or []:
        _check_template(output)


def _check_template(output: str) -> None:
    if "{" not in output:
        return
    if importlib.util.find_spec("goprof.exporters.sink") is None:
        return
    from goprof.exporters.sink import check_template

    check_template(output)


def test_config_mount_is_the_systemd_config():
    """goprof-agent.service reads the file the DaemonSet mounts: one path everywhere."""
    agents = [a for s, a in COMMANDS if a[0] == "agent"]
    assert len(agents) == 3
    for argv in agents:
        assert argv[argv.index("--config") + 1] == CONFIG_MOUNT


# --- cron ---------------------------------------------------------------------------

CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")


def test_crontab():
    text = CRONTAB.read_text()
    assert text.endswith("\n"), "cron ignores a last line without a newline"
    jobs = crontab_jobs()
    assert len(jobs) == 3
    for schedule, user, command in jobs:
        assert all(CRON_FIELD.match(f) for f in schedule), schedule
        assert user == "root"
        # cron turns an unescaped % into a newline (the rest becomes stdin).
        assert not re.search(r"(?<!\\)%", command), f"unescaped % in {command!r}"
        assert shlex.split(command)[0] == "/usr/local/bin/goprof"


# --- systemd ------------------------------------------------------------------------

AGENT_CAPS = {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH",
              "CAP_SYS_RESOURCE"}


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.mark.parametrize("name", ["goprof-agent.service", "goprof-profile@.service"])
def test_unit_sandbox(name: str):
    s = unit_settings(SYSTEMD / name)
    assert set(s["CapabilityBoundingSet"][0].split()) == AGENT_CAPS
    assert set(s["AmbientCapabilities"][0].split()) == AGENT_CAPS
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                       ("ReadWritePaths", "/var/lib/goprof")):
        assert s[key] == [value], key
    assert "goprof" in s["StateDirectory"][0].split()
    # bcc reads the kernel headers under /lib/modules, and symbols in /proc/kallsyms.
    assert "ProtectKernelModules" not in s and "ProtectKernelTunables" not in s
    assert s["Environment"] == ["GOPROF_CACHE_DIR=/var/cache/goprof"]
    assert s["CacheDirectory"] == ["goprof"]


def test_agent_unit():
    s = unit_settings(SYSTEMD / "goprof-agent.service")
    assert s["ExecStart"] == [f"/usr/local/bin/goprof agent --config {CONFIG_MOUNT}"]
    assert s["EnvironmentFile"] == ["-/etc/goprof/agent.env"]
    assert s["Restart"] == ["on-failure"]


def _systemd_root(tmp_path: Path) -> Path:
    """A root for `systemd-analyze verify --root`: the system's own units (targets the
    ones here depend on), ours, and an executable /usr/local/bin/goprof, so that the
    check does not depend on this host's installation (`make setup` links
    /usr/local/bin/goprof to a virtualenv that may live elsewhere)."""
    root = tmp_path / "root"
    for units in ("/usr/lib/systemd/system", "/lib/systemd/system"):
        if Path(units).is_dir() and not (root / units.lstrip("/")).exists():
            shutil.copytree(units, root / units.lstrip("/"), symlinks=True)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(unit, etc / unit.name)
    goprof = root / "usr/local/bin/goprof"
    goprof.parent.mkdir(parents=True)
    goprof.write_text("#!/bin/sh\n")
    goprof.chmod(0o755)
    return root


def _verify(root: Path, units: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", "--man=no",
                           *units], capture_output=True, text=True, timeout=120)


VERIFIED_UNITS = ["goprof-agent.service", "goprof-profile@api.service",
                  "goprof-profile@api.timer"]


@pytest.fixture
def systemd_root(tmp_path: Path) -> Path:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    return _systemd_root(tmp_path)


def test_systemd_analyze_verify(systemd_root: Path):
    assert {u.name for u in UNITS} == {"goprof-agent.service", "goprof-profile@.service",
                                       "goprof-profile@.timer"}
    res = _verify(systemd_root, VERIFIED_UNITS)
    # verify exits 0 on some problems (unknown keys are only warnings): any output is one.
    assert res.returncode == 0 and not res.stderr.strip() and not res.stdout.strip(), \
        res.stderr + res.stdout


def test_systemd_analyze_verify_catches_mistakes(systemd_root: Path):
    """The check above would see a mistake: a misspelt setting, a missing program."""
    unit = systemd_root / "etc/systemd/system/goprof-agent.service"
    unit.write_text(unit.read_text().replace("PrivateTmp=", "PrivateTemp="))
    assert "PrivateTemp" in _verify(systemd_root, ["goprof-agent.service"]).stderr
    (systemd_root / "usr/local/bin/goprof").unlink()
    res = _verify(systemd_root, ["goprof-profile@api.service"])
    assert res.returncode != 0 and "/usr/local/bin/goprof" in res.stderr


# --- Dockerfile ---------------------------------------------------------------------


def _copied_sources() -> set[str]:
    copied = set()
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):
            words = line.split()[1:]
            assert not any(w.startswith("--") for w in words), line
            copied.update(w.rstrip("/") for w in words[:-1])
    return copied


def test_dockerfile():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM debian:bookworm(-slim)?$", text, re.M)
    for package in ("python3-bpfcc", "python3-venv", "linux-headers-amd64"):
        assert package in text
    assert "--system-site-packages" in text
    assert dockerfile_instruction("CMD") == ["agent", "--config", CONFIG_MOUNT]
    # What the image copies is what the package is built from.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_dirs = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    needed = {"pyproject.toml", pyproject["project"]["readme"], *package_dirs}
    assert _copied_sources() == needed


def test_dockerfile_copy_builds_goprof(tmp_path: Path):
    """A wheel built from only what the Dockerfile copies holds goprof and its BPF C."""
    src = tmp_path / "src"
    src.mkdir()
    for name in _copied_sources():
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(path, src / name)
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed (the wheel is built without the network)")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "--disable-pip-version-check", "-q",
                          "-w", str(tmp_path / "dist"), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    import zipfile

    (wheel,) = (tmp_path / "dist").glob("goprof-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("goprof/cli.py", "goprof/bpf/cpu.c", "goprof/bpf/mem.c",
                   "goprof/commands/cpu.py", "goprof/symbolizer/__init__.py",
                   "goprof/exporters/__init__.py"):
        assert needed in names, f"{needed} not in the wheel"
    scripts = [n for n in names if n.endswith("entry_points.txt")]
    assert scripts and "goprof = goprof.cli:main" in zipfile.ZipFile(wheel).read(
        scripts[0]).decode()


# --- setup.sh and the launcher it installs -------------------------------------------

SETUP = DEPLOY / "setup.sh"
LAUNCHER = DEPLOY / "launcher.sh"


def test_setup_installs_the_launcher_not_a_symlink():
    """/usr/local/bin/goprof is the launcher (a symlink into a checkout others cannot
    read gave them Python's "can't open file"): tests/test_cli_errors.py runs it."""
    text = SETUP.read_text()
    assert 'bash deploy/launcher.sh "$VENV/bin/goprof" /usr/local/bin/goprof' in text
    assert not re.search(r"ln\s.*/usr/local/bin/goprof", text)
    for script in (SETUP, LAUNCHER):
        res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr


def test_launcher_is_sh_and_quotes_any_path(tmp_path: Path):
    folder = tmp_path / "it's a \"checkout\" $HOME `x`"
    folder.mkdir()
    goprof = folder / "goprof"
    goprof.write_text('#!/bin/sh\nprintf "%s|" "$@"\n')
    goprof.chmod(0o755)
    dest = tmp_path / "launcher"
    subprocess.run(["bash", str(LAUNCHER), str(goprof), str(dest)], check=True, timeout=30)
    assert dest.stat().st_mode & 0o777 == 0o755
    assert dest.read_text().startswith("#!/bin/sh\n")
    assert subprocess.run(["sh", "-n", str(dest)]).returncode == 0
    res = subprocess.run([str(dest), "a b", "", "c"], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0 and res.stdout == "a b||c|", res
    goprof.unlink()  # gone: exit 2 and a line naming it, whoever runs it
    res = subprocess.run([str(dest)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "goprof: " in res.stderr
