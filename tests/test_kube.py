"""goprof.agent.cgroups and .kube: container ids from /proc/PID/cgroup, names from a (fake)
Kubernetes API."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from goprof.agent.cgroups import CgroupInfo, cgroup_of, parse_cgroup
from goprof.agent.kube import EARLY_REFRESH_S, PodDirectory

CID = "3f8a1c2b9d7e4f60a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718"
CID2 = "9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d"
NODE_CID = "4f797c539e6c745de61a93ca3ff892358ecbcaccd8414d5db545c38428142970"
UID = "74c13223-5a00-11e9-b385-42010a80018d"
UID_ = UID.replace("-", "_")
STATIC_UID = "9b0a5fcd0b3fcd7e4d1dbb2b5f9b7e2d"

V1_CONTROLLERS = [
    "12:hugetlb", "11:pids", "10:net_cls,net_prio", "9:perf_event", "8:memory",
    "7:freezer", "6:cpu,cpuacct", "5:blkio", "4:devices", "3:cpuset", "2:rdma",
    "1:name=systemd",
]  # fmt: skip


def v1(path: str, v2_line: str | None = "0::/") -> str:
    """A cgroup v1 (hybrid, when v2_line) /proc/PID/cgroup with path in every hierarchy."""
    lines = [f"{c}:{path}" for c in V1_CONTROLLERS]
    if v2_line is not None:
        lines.append(v2_line)
    return "\n".join(lines) + "\n"


def v2(path: str) -> str:
    return f"0::{path}\n"


SYSTEMD_CONTAINERD = (
    "/kubepods.slice/kubepods-burstable.slice/"
    f"kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope"
)
SYSTEMD_CRIO = (
    f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope"
)
SYSTEMD_DOCKER = f"/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope"  # guaranteed QoS
CGROUPFS = f"/kubepods/burstable/pod{UID}/{CID}"
KIND = (
    f"/system.slice/docker-{NODE_CID}.scope/kubelet.slice/kubelet-kubepods.slice/"
    f"kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/"
    f"cri-containerd-{CID}.scope"
)
KIND_V1 = f"/docker/{NODE_CID}/kubepods/besteffort/pod{UID}/{CID}"
PODMAN = f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope/container"
HOST = "/user.slice/user-1000.slice/session-3.scope"

CASES = [
    # cgroup v2, systemd driver, each runtime
    ("v2-containerd", v2(SYSTEMD_CONTAINERD), CgroupInfo(SYSTEMD_CONTAINERD, CID, UID)),
    ("v2-crio", v2(SYSTEMD_CRIO), CgroupInfo(SYSTEMD_CRIO, CID, UID)),
    ("v2-docker-shim", v2(SYSTEMD_DOCKER), CgroupInfo(SYSTEMD_DOCKER, CID, UID)),
    # cgroup v1, systemd driver and cgroupfs driver
    ("v1-containerd", v1(SYSTEMD_CONTAINERD), CgroupInfo(SYSTEMD_CONTAINERD, CID, UID)),
    ("v1-cgroupfs", v1(CGROUPFS, None), CgroupInfo(CGROUPFS, CID, UID)),
    ("v2-cgroupfs", v2(CGROUPFS), CgroupInfo(CGROUPFS, CID, UID)),
    ("v1-cgroupfs-guaranteed", v1(f"/kubepods/pod{UID}/{CID}"),
     CgroupInfo(f"/kubepods/pod{UID}/{CID}", CID, UID)),
    # a static pod: the kubelet names its cgroup after the config hash
    ("v2-static-pod", v2(f"/kubepods.slice/kubepods-burstable.slice/"
                         f"kubepods-burstable-pod{STATIC_UID}.slice/cri-containerd-{CID}.scope"),
     CgroupInfo(f"/kubepods.slice/kubepods-burstable.slice/"
                f"kubepods-burstable-pod{STATIC_UID}.slice/cri-containerd-{CID}.scope",
                CID, STATIC_UID)),
    # plain docker
    ("v1-docker", v1(f"/docker/{CID}", None), CgroupInfo(f"/docker/{CID}", CID, None)),
    ("v1-docker-systemd", v1(f"/system.slice/docker-{CID2}.scope"),
     CgroupInfo(f"/system.slice/docker-{CID2}.scope", CID2, None)),
    ("v2-docker-systemd", v2(f"/system.slice/docker-{CID2}.scope"),
     CgroupInfo(f"/system.slice/docker-{CID2}.scope", CID2, None)),
    # podman (rootless, v2), and its monitor process which is not the container
    ("v2-podman", v2(PODMAN), CgroupInfo(PODMAN, CID, None)),
    ("v2-podman-rootful", v2(f"/machine.slice/libpod-{CID}.scope"),
     CgroupInfo(f"/machine.slice/libpod-{CID}.scope", CID, None)),
    ("v2-podman-conmon", v2(f"/machine.slice/libpod-conmon-{CID}.scope"),
     CgroupInfo(f"/machine.slice/libpod-conmon-{CID}.scope", None, None)),
    # nested: a pod's container on a kind node (a docker container)
    ("v2-kind", v2(KIND), CgroupInfo(KIND, CID, UID)),
    ("v1-kind", v1(KIND_V1, None), CgroupInfo(KIND_V1, CID, UID)),
    # seen through a private cgroup namespace (the agent's own pod)
    ("v2-cgroupns", v2(f"/../../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"),
     CgroupInfo(f"/../../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope",
                CID, UID)),
    # a pod's own cgroup (no container below it)
    ("v2-pod-only", v2(f"/kubepods/burstable/pod{UID}"),
     CgroupInfo(f"/kubepods/burstable/pod{UID}", None, UID)),
    # host processes
    ("v2-host", v2(HOST), CgroupInfo(HOST, None, None)),
    ("v1-host", v1(HOST, "0::" + HOST), CgroupInfo(HOST, None, None)),
    ("v2-root", v2("/"), CgroupInfo("/", None, None)),
    ("v2-init", v2("/init.scope"), CgroupInfo("/init.scope", None, None)),
    ("empty", "", CgroupInfo("", None, None)),
]  # fmt: skip


@pytest.mark.parametrize("text,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parse_cgroup(text: str, expected: CgroupInfo) -> None:
    assert parse_cgroup(text) == expected


def test_v2_path_preferred_over_v1() -> None:
    text = v1(f"/docker/{CID2}", f"0::/system.slice/docker-{CID}.scope")
    assert parse_cgroup(text) == CgroupInfo(f"/system.slice/docker-{CID}.scope", CID, None)


def test_first_v1_path_with_a_container_id() -> None:
    text = "\n".join([
        "3:cpuset:/",
        f"2:cpu,cpuacct:/kubepods/burstable/pod{UID}/{CID}",
        f"1:name=systemd:/docker/{CID2}",
        "0::/",
    ])  # fmt: skip
    assert parse_cgroup(text) == CgroupInfo(f"/kubepods/burstable/pod{UID}/{CID}", CID, UID)


def test_cgroup_of_this_process() -> None:
    info = cgroup_of(os.getpid())
    assert info is not None
    with open("/proc/self/cgroup") as f:
        assert info == parse_cgroup(f.read())


def test_cgroup_of_a_gone_process() -> None:
    assert cgroup_of(2**31 - 1) is None  # above pid_max (at most 2**22)


def test_cgroup_of_proc_root(tmp_path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text(v2(CGROUPFS))
    assert cgroup_of(42, proc_root=str(tmp_path)) == CgroupInfo(CGROUPFS, CID, UID)


# --- a fake Kubernetes API ----------------------------------------------------------

TOKEN = "t0ken"
NODE = "node-a"


def pod(
    name: str,
    uid: str,
    containers: dict[str, str | None],
    namespace: str = "shop",
    node: str = NODE,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A pod as GET /api/v1/pods lists it (the fields the directory reads, and a few more)."""
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "resourceVersion": "12345",
            "labels": {"app": name.rsplit("-", 1)[0]},
            "annotations": annotations or {},
        },
        "spec": {"nodeName": node, "containers": [{"name": n, "image": "x"} for n in containers]},
        "status": {
            "phase": "Running",
            "podIP": "10.244.1.7",
            "containerStatuses": [
                {
                    "name": n,
                    "ready": cid is not None,
                    "restartCount": 0,
                    "image": "x",
                    **({"containerID": cid} if cid else {}),
                    "state": {"running": {}} if cid else {"waiting": {"reason": "Pending"}},
                }
                for n, cid in containers.items()
            ],
        },
    }


@dataclass
class FakeApi:
    """What the server serves and what it was asked."""

    url: str = ""
    pods: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    requests: list[dict[str, list[str]]] = field(default_factory=list)


def make_handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            api.requests.append(query)
            if url.path != "/api/v1/pods":
                return self.reply(404, status("NotFound", f"the path {url.path} is unknown"))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self.reply(401, status("Unauthorized", "Unauthorized"))
            if api.status != 200:
                return self.reply(api.status, status(
                    "Forbidden",
                    'pods is forbidden: User "system:serviceaccount:goprof:goprof" cannot list '
                    'resource "pods" in API group "" at the cluster scope',
                ))  # fmt: skip
            items = api.pods
            for selector in query.get("fieldSelector", []):
                key, _, value = selector.partition("=")
                assert key == "spec.nodeName", selector
                items = [p for p in items if p["spec"]["nodeName"] == value]
            self.reply(200, {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": "12345"},
                "items": items,
            })  # fmt: skip

        def reply(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def status(reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": message, "reason": reason}  # fmt: skip


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(fake))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def directory(api: FakeApi, clock: Clock, node: str | None = NODE, **kw: Any) -> PodDirectory:
    return PodDirectory(api.url, TOKEN, None, node, refresh_s=60.0, timeout_s=2.0,
                        log=logging.getLogger("test.kube"), clock=clock, **kw)  # fmt: skip


def container(cid: str, uid: str | None = UID) -> CgroupInfo:
    return CgroupInfo("/", cid, uid)


OTHER_UID = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
NEW_UID = "22222222-3333-4444-5555-666666666666"


@pytest.fixture
def shop(api: FakeApi) -> FakeApi:
    api.pods = [
        pod("api-7d9f", UID,
            {"server": f"containerd://{CID}", "envoy": "containerd://" + "e" * 64}),
        pod("db-0", OTHER_UID, {"postgres": f"cri-o://{CID2}"}, namespace="data"),
        pod("elsewhere-1", "11111111-2222-3333-4444-555555555555",
            {"main": "docker://" + "a" * 64}, node="node-b"),
    ]  # fmt: skip
    return api


def test_labels_for_a_container(shop: FakeApi) -> None:
    pods = directory(shop, Clock())
    assert pods.labels_for(container(CID)) == {
        "namespace": "shop", "pod": "api-7d9f", "container": "server"}  # fmt: skip
    assert pods.labels_for(container("e" * 64)) == {
        "namespace": "shop", "pod": "api-7d9f", "container": "envoy"}  # fmt: skip
    assert pods.labels_for(container(CID2, OTHER_UID)) == {
        "namespace": "data", "pod": "db-0", "container": "postgres"}  # fmt: skip
    assert shop.requests == [{"fieldSelector": [f"spec.nodeName={NODE}"]}]


def test_pod_only_when_the_container_is_unknown(shop: FakeApi) -> None:
    pods = directory(shop, Clock())
    assert pods.labels_for(container("b" * 64)) == {"namespace": "shop", "pod": "api-7d9f"}
    assert pods.labels_for(CgroupInfo("/", None, UID)) == {"namespace": "shop", "pod": "api-7d9f"}


def test_unknown_is_empty(shop: FakeApi) -> None:
    pods = directory(shop, Clock())
    assert pods.labels_for(CgroupInfo("/", "c" * 64, None)) == {}  # plain docker
    assert pods.labels_for(CgroupInfo(HOST, None, None)) == {}  # host process
    assert pods.labels_for(container("a" * 64, "11111111-2222-3333-4444-555555555555")) == {}


def test_only_this_nodes_pods(shop: FakeApi) -> None:
    assert directory(shop, Clock()).labels_for(container("a" * 64, None)) == {}
    everywhere = directory(shop, Clock(), node=None)
    assert everywhere.labels_for(container("a" * 64, None))["pod"] == "elsewhere-1"
    assert shop.requests[-1] == {}


def test_mirror_pod_by_static_uid(api: FakeApi) -> None:
    api.pods = [pod("kube-apiserver-node-a", "d8f0e1a2-0000-4000-8000-000000000001",
                    {"kube-apiserver": None}, namespace="kube-system",
                    annotations={"kubernetes.io/config.mirror": STATIC_UID})]  # fmt: skip
    info = CgroupInfo("/", CID, STATIC_UID)
    assert directory(api, Clock()).labels_for(info) == {
        "namespace": "kube-system", "pod": "kube-apiserver-node-a"}  # fmt: skip


def test_refresh_rate(shop: FakeApi) -> None:
    clock = Clock()
    pods = directory(shop, clock)
    known, plain_docker = container(CID), CgroupInfo("/", "c" * 64, None)
    for _ in range(5):
        pods.labels_for(known)
        pods.labels_for(plain_docker)  # never in the list, never refreshes early
        clock.now += 11
    assert len(shop.requests) == 1
    clock.now += 5  # 60 s after the first list
    pods.labels_for(known)
    assert len(shop.requests) == 2


def test_new_pod_refreshes_early_at_most_every_10s(shop: FakeApi) -> None:
    clock = Clock()
    pods = directory(shop, clock)
    new_uid, new_cid = NEW_UID, "d" * 64
    new = container(new_cid, new_uid)
    assert pods.labels_for(new) == {}
    assert len(shop.requests) == 1
    clock.now += EARLY_REFRESH_S - 1
    assert pods.labels_for(new) == {}
    assert len(shop.requests) == 1
    shop.pods.append(pod("worker-5c8b", new_uid, {"worker": f"containerd://{new_cid}"}))
    clock.now += 1
    assert pods.labels_for(new) == {
        "namespace": "shop", "pod": "worker-5c8b", "container": "worker"}  # fmt: skip
    assert len(shop.requests) == 2
    clock.now += EARLY_REFRESH_S
    pods.labels_for(new)
    assert len(shop.requests) == 2  # known now: no early refresh


def test_restarted_container_refreshes_early(shop: FakeApi) -> None:
    clock = Clock()
    pods = directory(shop, clock)
    restarted = container("f" * 64)
    assert pods.labels_for(restarted) == {"namespace": "shop", "pod": "api-7d9f"}
    shop.pods[0]["status"]["containerStatuses"][0]["containerID"] = "containerd://" + "f" * 64
    clock.now += EARLY_REFRESH_S
    assert pods.labels_for(restarted)["container"] == "server"


def test_forbidden_disables_with_one_warning(shop: FakeApi, caplog) -> None:
    shop.status = 403
    clock = Clock()
    pods = directory(shop, clock)
    with caplog.at_level(logging.WARNING, logger="test.kube"):
        for _ in range(3):
            assert pods.labels_for(container(CID)) == {}
            assert pods.labels_for(container("d" * 64, NEW_UID)) == {}
            clock.now += 61
    assert pods.disabled
    assert len(shop.requests) == 1
    [record] = caplog.records
    message = record.getMessage()
    assert message.startswith("cannot list pods: HTTP 403 ")
    assert "cannot list resource" in message  # the API's own explanation
    assert "grant the ClusterRole in deploy/kubernetes" in message


def test_wrong_token_disables(shop: FakeApi, caplog) -> None:
    pods = PodDirectory(shop.url, "wrong", None, NODE, log=logging.getLogger("test.kube"))
    with caplog.at_level(logging.WARNING, logger="test.kube"):
        assert pods.labels_for(container(CID)) == {}
    assert pods.disabled
    assert "HTTP 401" in caplog.records[0].getMessage()


def test_server_error_keeps_the_old_list(shop: FakeApi, caplog) -> None:
    clock = Clock()
    pods = directory(shop, clock)
    expected = {"namespace": "shop", "pod": "api-7d9f", "container": "server"}
    assert pods.labels_for(container(CID)) == expected
    shop.status = 500
    with caplog.at_level(logging.WARNING, logger="test.kube"):
        for _ in range(4):
            clock.now += 60
            assert pods.labels_for(container(CID)) == expected
        clock.now += 30  # 30 s after the last warning: not yet another one
        pods.labels_for(container("d" * 64, NEW_UID))
    assert len(shop.requests) == 6
    assert not pods.disabled
    assert len(caplog.records) == 4  # once per refresh_s
    assert "HTTP 500" in caplog.records[0].getMessage()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_down(caplog) -> None:
    clock = Clock()
    pods = PodDirectory(f"http://127.0.0.1:{free_port()}", TOKEN, None, NODE, timeout_s=2.0,
                        log=logging.getLogger("test.kube"), clock=clock)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="test.kube"):
        assert pods.labels_for(container(CID)) == {}
        assert pods.labels_for(container(CID)) == {}
        clock.now += 60
        assert pods.labels_for(container(CID)) == {}
    assert not pods.disabled
    assert len(caplog.records) == 2
    assert "cannot list pods from http://127.0.0.1:" in caplog.records[0].getMessage()


def test_token_file_is_reread(shop: FakeApi, tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    clock = Clock()
    pods = directory(shop, clock, token_file=str(token_file))
    pods._token = "expired"  # as if read an hour ago
    assert pods.labels_for(container(CID))["container"] == "server"


def test_concurrent_lookups(shop: FakeApi) -> None:
    pods = directory(shop, Clock())
    results: list[dict[str, str]] = []

    def look() -> None:
        results.append(pods.labels_for(container(CID)))

    threads = [threading.Thread(target=look) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r["container"] == "server" for r in results) and len(results) == 8
    assert len(shop.requests) == 1


def test_from_environment(tmp_path) -> None:
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    pods = PodDirectory.from_environment(NODE, None, environ=env, serviceaccount_dir=str(tmp_path))
    assert pods is not None
    assert pods.api_url == "https://10.96.0.1:443"
    assert pods.node_name == NODE
    assert pods._token == TOKEN and pods._verify == str(tmp_path / "ca.crt")

    env6 = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    pods6 = PodDirectory.from_environment(
        None, None, environ=env6, serviceaccount_dir=str(tmp_path)
    )
    assert pods6 is not None and pods6.api_url == "https://[fd00::1]:443"


def test_not_in_kubernetes(tmp_path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert PodDirectory.from_environment(NODE, None, environ={},
                                         serviceaccount_dir=str(tmp_path)) is None  # fmt: skip
    assert PodDirectory.from_environment(NODE, None, environ=env,
                                         serviceaccount_dir=str(tmp_path)) is None  # no token
