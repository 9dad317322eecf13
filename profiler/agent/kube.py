"""Which Kubernetes pod and container a process runs in.

`goprof agent` labels every profile with `container_id` and, inside Kubernetes,
`namespace`, `pod` and `container`, so that a profile of "some Go process, pid
4711" becomes a profile of "checkout/api-7d9f/server". Two sources are needed:

* /proc/PID/cgroup names the container: every runtime puts the container id
  (and Kubernetes the pod uid) into the cgroup path (goprof.agent.cgroups).
* Only the Kubernetes API knows the names: `PodDirectory` lists the pods on this
  node now and then and maps container ids and pod uids to them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import requests
from goprof.agent.cgroups import CgroupInfo

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
