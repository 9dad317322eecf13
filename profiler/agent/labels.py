"""The labels every profile of a process carries (Parca and Pyroscope index by them).

service_name: --service-name, else the process's OTEL_SERVICE_NAME or
GOPROF_SERVICE_NAME (what OpenTelemetry SDKs and users already set), else the
executable's name. The rest say which process, binary, host and container it was.
"""

from __future__ import annotations

import os

from goprof.agent.discovery import Candidate
from goprof.agent.kube import PodDirectory

SERVICE_NAME_VARIABLES = ("OTEL_SERVICE_NAME", "GOPROF_SERVICE_NAME")


def environment_value(pid: int, names: tuple[str, ...]) -> str | None:
    """The first of `names` set in the process's environment (as it was at exec)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    for name in names:
        if env.get(name):
            return env[name]
    return None


def process_labels(c: Candidate, *, hostname: str, node: str | None,
                   service_name: str | None, pods: PodDirectory | None) -> dict[str, str]:
    exe = c.target.exe.removesuffix(" (deleted)")
    labels = {
        "service_name": service_name or environment_value(c.target.pid, SERVICE_NAME_VARIABLES)
        or os.path.basename(exe),
        "pid": str(c.target.pid),
        "comm": c.target.comm,
        "executable": exe,
        "build_id": c.binary.build_id,
        "go_version": c.binary.go_version,
        "hostname": hostname,
    }
    if node:
        labels["node"] = node
    if c.cgroup.container_id:
        labels["container_id"] = c.cgroup.container_id
    if pods is not None:
        labels.update(pods.labels_for(c.cgroup))
    return {k: v for k, v in labels.items() if v}
