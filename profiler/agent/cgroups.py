"""Which container (and pod) a process runs in, from /proc/PID/cgroup.

Every container runtime puts the container id (and Kubernetes the pod uid) into the
cgroup path. This is local, cheap and needs no permission beyond reading /proc:
discovery reads it for every process it looks at (--cgroup filters on the path), and
labels name the container by it. Only the Kubernetes API knows the names that go
with the ids: goprof.agent.kube.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_HEX64 = r"[0-9a-f]{64}"
# A pod uid is a UUID; the systemd driver writes it with underscores (a dash
# separates words in slice names). Static pods use a 32-hex config hash instead.
_POD_UID = (
    r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
    r"|[0-9a-f]{32}"
)
# One path component holding a container id:
#   cri-containerd-<id>.scope, crio-<id>.scope, docker-<id>.scope (systemd driver,
#   docker on systemd), libpod-<id>.scope (podman), <id> (cgroupfs driver, /docker/<id>).
# crio-conmon-<id> and libpod-conmon-<id> are the runtime's monitor, not the
# container, and do not match.
_CONTAINER_PART = re.compile(
    rf"^(?:(?:cri-containerd|containerd|crio|cri-o|docker|libpod)-)?({_HEX64})(?:\.scope)?$"
)
# One path component holding a pod uid: pod<uid> (cgroupfs driver) or
# kubepods-<qos>-pod<uid>.slice / kubelet-kubepods-...-pod<uid>.slice (systemd driver).
_POD_PART = re.compile(rf"(?:^|-)pod({_POD_UID})(?:\.slice)?$")


@dataclass(frozen=True)
class CgroupInfo:
    """The cgroup a process is in and what its path says about the container.

    container_id is the innermost container's id (64 hex digits, as the runtime
    and the Kubernetes API spell it); pod_uid is the uid of the pod around that
    container, with dashes. Both are None for a process on the host.
    """

    path: str
    container_id: str | None
    pod_uid: str | None


def parse_cgroup(text: str) -> CgroupInfo:
    """Parse the content of /proc/PID/cgroup.

    Lines are "hierarchy:controllers:path"; cgroup v2 has the single line
    "0::/path". The v2 path is looked at first; on a hybrid host (v1
    controllers beside a v2 line) the v2 path may be "/" while the v1 paths
    name the container, so then the first v1 path with a container id is taken.
    Without any container id the v2 path (else the first path) is returned as is.
    """
    paths = _candidate_paths(text)
    for path in paths:
        info = parse_cgroup_path(path)
        if info.container_id is not None:
            return info
    for path in paths:
        info = parse_cgroup_path(path)
        if info.pod_uid is not None:
            return info
    return CgroupInfo(paths[0] if paths else "", None, None)


def _candidate_paths(text: str) -> list[str]:
    """The cgroup paths of a /proc/PID/cgroup text: the v2 path first, then v1 in order."""
    v2: list[str] = []
    v1: list[str] = []
    for line in text.splitlines():
        fields = line.strip().split(":", 2)
        if len(fields) != 3 or not fields[2]:
            continue
        hierarchy, controllers, path = fields
        (v2 if hierarchy == "0" and controllers == "" else v1).append(path)
    return v2 + v1


def parse_cgroup_path(path: str) -> CgroupInfo:
    """What one cgroup path says: the innermost container id and its pod's uid.

    Innermost, because containers nest: a pod's container on a kind node is
    /system.slice/docker-<node>.scope/kubelet.slice/.../cri-containerd-<id>.scope,
    and the process belongs to the last one. The pod uid is taken only from
    above that container. Paths seen through a private cgroup namespace start
    with "/../.."; those components simply do not match.
    """
    parts = [p for p in path.split("/") if p]
    container_at = _innermost(parts, _container_id)
    if container_at is None:
        pod_at = _innermost(parts, _pod_uid)
        pod = _pod_uid(parts[pod_at]) if pod_at is not None else None
        return CgroupInfo(path, None, pod)
    pod_at = _innermost(parts[:container_at], _pod_uid)
    pod = _pod_uid(parts[pod_at]) if pod_at is not None else None
    return CgroupInfo(path, _container_id(parts[container_at]), pod)


def _innermost(parts: list[str], extract: Callable[[str], str | None]) -> int | None:
    """Index of the last component extract() finds something in."""
    for i in range(len(parts) - 1, -1, -1):
        if extract(parts[i]) is not None:
            return i
    return None


def _container_id(part: str) -> str | None:
    match = _CONTAINER_PART.match(part)
    return match.group(1) if match else None


def _pod_uid(part: str) -> str | None:
    match = _POD_PART.search(part)
    return match.group(1).replace("_", "-") if match else None


def cgroup_of(pid: int, proc_root: str = "/proc") -> CgroupInfo | None:
    """The cgroup of process pid, or None when it is gone (it may exit any time).

    proc_root is for an agent that sees the host's /proc elsewhere (a pod
    without hostPID mounting it at /host/proc).
    """
    try:
        with open(f"{proc_root}/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:  # gone (ENOENT, ESRCH mid-read), or unreadable: not a target
        return None
    return parse_cgroup(text)
