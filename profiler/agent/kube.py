"""Which container and which Kubernetes pod a process runs in.

`goprof agent` labels every profile with `container_id` and, inside Kubernetes,
`namespace`, `pod` and `container`, so that a profile of "some Go process, pid
4711" becomes a profile of "checkout/api-7d9f/server". Two sources are needed:

* /proc/PID/cgroup names the container: every runtime puts the container id
  (and Kubernetes the pod uid) into the cgroup path. This is local, cheap and
  needs no permission beyond reading /proc.
* Only the Kubernetes API knows the names: `PodDirectory` lists the pods on this
  node now and then and maps container ids and pod uids to them.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import requests

# --- /proc/PID/cgroup ------------------------------------------------------------

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


# --- the Kubernetes API -----------------------------------------------------------

SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# A miss for a pod uid not seen yet (a pod started since the last list) refreshes
# early, but no more often than this: a process in a pod the API does not show
# (yet) must not turn every profile window into a list of all pods.
EARLY_REFRESH_S = 10.0
# The annotation a mirror pod carries with the static pod's uid, which is what
# the kubelet (and so the cgroup path) uses; the mirror's metadata.uid differs.
_MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
_RBAC_HINT = (
    "profiles get container ids but no pod names — grant the ClusterRole in deploy/kubernetes"
)


@dataclass(frozen=True)
class _Pod:
    namespace: str
    name: str
    container_ids: frozenset[str]


@dataclass(frozen=True)
class _Container:
    namespace: str
    pod: str
    name: str


@dataclass(frozen=True)
class _Index:
    """One pod list, indexed the two ways labels_for looks things up."""

    pods: dict[str, _Pod]
    containers: dict[str, _Container]


_EMPTY_INDEX = _Index({}, {})


class PodDirectory:
    """Namespace, pod and container names for the containers on this node.

    The pod list is cached and refreshed lazily from labels_for, at most every
    refresh_s: one list per minute is nothing for the API server, and a
    container's name does not change. A pod started since the last list is
    picked up early (at most every EARLY_REFRESH_S). When RBAC forbids listing
    pods the directory says so once and gives up: the profiles are still useful
    with container ids. Other failures (API server restarting, network) keep the
    old list and are retried at the next refresh.

    Thread-safe: a lock serializes lookups and refreshes (a refresh holds it for
    at most timeout_s, so two threads never list at the same time).
    """

    def __init__(
        self,
        api_url: str,
        token: str | None,
        ca_file: str | None,
        node_name: str | None,
        refresh_s: float = 60.0,
        timeout_s: float = 5.0,
        log: logging.Logger | None = None,
        *,
        token_file: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """token_file, when given, is read before every list instead of token:
        projected service account tokens are rotated by the kubelet (they expire
        after an hour), and a token read once would end in 401 and disable the
        directory. clock is for tests."""
        self.api_url = api_url.rstrip("/")
        self.node_name = node_name
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self._token = token
        self._token_file = token_file
        self._verify: str | bool = ca_file if ca_file else True
        self._log = log or logging.getLogger(__name__)
        self._clock = clock
        self._lock = threading.Lock()
        self._session = requests.Session()
        self._index = _EMPTY_INDEX
        self._last_attempt: float | None = None
        self._last_error_log: float | None = None
        self._disabled = False

    @classmethod
    def from_environment(
        cls,
        node_name: str | None,
        log: logging.Logger | None = None,
        *,
        environ: dict[str, str] | None = None,
        serviceaccount_dir: str = SERVICEACCOUNT_DIR,
    ) -> PodDirectory | None:
        """The directory for an agent running in a pod, or None outside Kubernetes.

        Inside a pod, Kubernetes sets KUBERNETES_SERVICE_HOST/PORT and mounts the
        service account's token and the cluster CA; outside, there is no API to
        ask and the agent labels profiles with container ids only.
        """
        env = os.environ if environ is None else environ
        host = env.get("KUBERNETES_SERVICE_HOST")
        port = env.get("KUBERNETES_SERVICE_PORT")
        token_file = os.path.join(serviceaccount_dir, "token")
        if not host or not port or not os.path.isfile(token_file):
            return None
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        ca_file = os.path.join(serviceaccount_dir, "ca.crt")
        return cls(
            f"https://{host}:{port}",
            _read_token(token_file),
            ca_file if os.path.isfile(ca_file) else None,
            node_name,
            log=log,
            token_file=token_file,
        )

    @property
    def disabled(self) -> bool:
        """True once the API refused to list pods (401/403): no more requests."""
        return self._disabled

    def labels_for(self, info: CgroupInfo) -> dict[str, str]:
        """{"namespace", "pod", "container"} for the container info describes.

        Only namespace and pod when the pod is known but not the container (a
        status not yet updated, a container the kubelet did not start); {} for
        a process outside any known pod or when the directory is disabled.
        """
        if info.container_id is None and info.pod_uid is None:
            return {}
        with self._lock:
            if self._disabled:
                return {}
            now = self._clock()
            if self._due(now, self.refresh_s):
                self._refresh(now)
            elif self._incomplete(info) and self._due(now, EARLY_REFRESH_S):
                self._refresh(now)
            return _lookup(self._index, info)

    def _due(self, now: float, interval: float) -> bool:
        return self._last_attempt is None or now - self._last_attempt >= interval

    def _incomplete(self, info: CgroupInfo) -> bool:
        """Whether a newer pod list could tell more about info.

        Only for processes in a pod (a pod uid in the cgroup): containers outside
        Kubernetes (plain docker on the node) are never in the list, and must
        not cause early refreshes.
        """
        if info.pod_uid is None:
            return False
        pod = self._index.pods.get(info.pod_uid)
        if pod is None:
            return True
        return info.container_id is not None and info.container_id not in pod.container_ids

    def _refresh(self, now: float) -> None:
        """List the pods and replace the index; on failure keep the old one."""
        self._last_attempt = now
        try:
            response = self._session.get(
                f"{self.api_url}/api/v1/pods",
                params=self._params(),
                headers=self._headers(),
                verify=self._verify,
                timeout=self.timeout_s,
            )
        except (requests.RequestException, OSError) as e:
            self._failed(now, f"cannot list pods from {self.api_url}: {e}")
            return
        if response.status_code in (401, 403):
            self._disable(response)
            return
        if response.status_code != 200:
            self._failed(
                now, f"cannot list pods: HTTP {response.status_code} {_api_message(response)}"
            )
            return
        try:
            self._index = _index_pods(response.json().get("items") or [])
        except (ValueError, AttributeError, TypeError) as e:
            self._failed(now, f"cannot list pods: unexpected answer from {self.api_url}: {e}")

    def _params(self) -> dict[str, str]:
        if self.node_name is None:
            return {}
        return {"fieldSelector": f"spec.nodeName={self.node_name}"}

    def _headers(self) -> dict[str, str]:
        token = self._token
        if self._token_file is not None:
            try:
                token = _read_token(self._token_file)
            except OSError:
                pass  # keep the last token: the kubelet replaces the file atomically
            else:
                self._token = token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _disable(self, response: requests.Response) -> None:
        self._disabled = True
        self._index = _EMPTY_INDEX
        self._log.warning(
            "cannot list pods: HTTP %d %s; %s",
            response.status_code,
            _api_message(response),
            _RBAC_HINT,
        )

    def _failed(self, now: float, message: str) -> None:
        """Log a failure, at most once per refresh_s (the API may be down for long)."""
        if self._last_error_log is None or now - self._last_error_log >= self.refresh_s:
            self._last_error_log = now
            self._log.warning("%s; keeping the pods listed before", message)


def _read_token(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def _api_message(response: requests.Response) -> str:
    """The reason and, from a Kubernetes Status body, its message (which names
    the user and the verb RBAC refused)."""
    try:
        message = response.json().get("message")
    except (ValueError, AttributeError):
        message = None
    reason = response.reason or ""
    return f"{reason} ({message})" if message else reason


def _lookup(index: _Index, info: CgroupInfo) -> dict[str, str]:
    if info.container_id is not None:
        container = index.containers.get(info.container_id)
        if container is not None:
            return {
                "namespace": container.namespace,
                "pod": container.pod,
                "container": container.name,
            }
    if info.pod_uid is not None:
        pod = index.pods.get(info.pod_uid)
        if pod is not None:
            return {"namespace": pod.namespace, "pod": pod.name}
    return {}


def _index_pods(items: Iterable[dict[str, Any]]) -> _Index:
    """Index a PodList's items by pod uid (and a mirror pod's static uid) and
    by container id."""
    pods: dict[str, _Pod] = {}
    containers: dict[str, _Container] = {}
    for item in items:
        meta = item.get("metadata") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        ids: set[str] = set()
        for status in _container_statuses(item.get("status") or {}):
            container_id = _strip_runtime(status.get("containerID") or "")
            if container_id:
                ids.add(container_id)
                containers[container_id] = _Container(namespace, name, status.get("name", ""))
        pod = _Pod(namespace, name, frozenset(ids))
        for uid in (meta.get("uid"), (meta.get("annotations") or {}).get(_MIRROR_ANNOTATION)):
            if uid:
                pods[uid.lower()] = pod
    return _Index(pods, containers)


def _container_statuses(status: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """All container statuses: init containers (sidecars run all along) and
    ephemeral debug containers run Go programs too."""
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        yield from status.get(key) or []


def _strip_runtime(container_id: str) -> str:
    """"containerd://<id>", "docker://<id>", "cri-o://<id>" -> "<id>"."""
    return container_id.rpartition("://")[2].lower()
