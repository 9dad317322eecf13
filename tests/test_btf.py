"""goprof.bpf.btf: struct member offsets from the running kernel's BTF, checked against
what a BPF program reads there (each thread's FS base, compared with arch_prctl's), and
the parser's encodings and errors on small BTF blobs built here."""

from __future__ import annotations

import ctypes
import json
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from goprof.bpf import btf

from tests.conftest import requires_root

HERE = Path(__file__).resolve().parent
HAVE_BTF = Path(btf.VMLINUX).exists()
requires_btf = pytest.mark.skipif(not HAVE_BTF, reason=f"{btf.VMLINUX} absent: no kernel BTF")

SYS_ARCH_PRCTL = 158
ARCH_GET_FS = 0x1003


def arch_get_fs() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    addr = ctypes.c_ulong()
    if libc.syscall(SYS_ARCH_PRCTL, ARCH_GET_FS, ctypes.byref(addr)) != 0:
        raise OSError(ctypes.get_errno(), "arch_prctl(ARCH_GET_FS)")
    return addr.value


# -- the running kernel ----------------------------------------------------------------

@requires_btf
def test_task_fsbase_offset_is_the_sum_of_its_parts():
    whole = btf.task_fsbase_offset()
    assert whole == btf.member_offset("task_struct", "thread") + \
        btf.member_offset("thread_struct", "fsbase")
    assert whole % 8 == 0 and 0 < whole < 64 * 1024


@requires_btf
def test_parse_is_cached_and_quick():
    btf._load.cache_clear()
    t0 = time.perf_counter()
    first = btf.load()
    btf.task_fsbase_offset()
    took = time.perf_counter() - t0
    assert btf.load() is first
    assert len(first) > 10_000
    # ~0.1 s measured here (5.5 MB, 126k types); the bound leaves room for a busy host.
    assert took < 5, f"parse + lookup took {took:.2f} s"


@requires_btf
def test_anonymous_members_and_bitfields_of_the_kernel():
    b = btf.load()
    # task_struct.__state (a plain member) and sk_buff.pkt_type (a 3-bit field).
    assert btf.member_offset("task_struct", "__state") >= 0
    pkt = b.member("sk_buff", "pkt_type")
    assert pkt.bitfield_size == 3
    with pytest.raises(btf.BTFError, match="bitfield"):
        btf.member_offset("sk_buff", "pkt_type")
    # page.mapping lies in an anonymous struct inside an anonymous union (since 4.18).
    assert not any(name == "mapping" for name, *_ in b.members(b.find("page")))
    assert btf.member_offset("page", "mapping") >= 8


@requires_btf
def test_errors_name_what_is_missing(tmp_path):
    with pytest.raises(btf.BTFError, match="no member 'nosuch'"):
        btf.member_offset("task_struct", "thread.nosuch")
    with pytest.raises(btf.BTFError, match="no struct or union named"):
        btf.member_offset("no_such_struct_anywhere", "x")
    with pytest.raises(btf.BTFError, match="not a struct or union"):
        btf.member_offset("task_struct", "pid.x")
    with pytest.raises(btf.BTFError, match="absent"):
        btf.task_fsbase_offset(str(tmp_path / "vmlinux"))
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x7fELF" + bytes(60))
    with pytest.raises(btf.BTFError, match="not BTF"):
        btf.task_fsbase_offset(str(bad))
    short = tmp_path / "short"
    short.write_bytes(Path(btf.VMLINUX).read_bytes()[:100_000])
    with pytest.raises(btf.BTFError, match="past the end"):
        btf.task_fsbase_offset(str(short))
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(btf.BTFError, match="too short"):
        btf.task_fsbase_offset(str(empty))


@requires_root
@requires_btf
def test_fsbase_read_by_bpf_is_each_threads_fs_base():
    """The ground truth: a BPF program on sys_enter reads task + task_fsbase_offset() for
    threads of this process, and each value is what arch_prctl says that thread's FS base
    is (threads differ, so a wrong offset cannot match them all by chance)."""
    offset = btf.task_fsbase_offset()
    probe = subprocess.Popen([sys.executable, str(HERE / "fsbase_probe.py"), "--pid",
                              str(os.getpid()), "--offset", str(offset)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert probe.stdout.readline().strip() == "ready"
        truth: dict[int, int] = {}
        # All alive at once: a thread started after another ended may get its TLS block.
        together = threading.Barrier(4)

        def thread_body() -> None:
            truth[threading.get_native_id()] = arch_get_fs()
            os.getppid()  # one more system call, after the probe is attached
            together.wait(timeout=30)

        threads = [threading.Thread(target=thread_body) for _ in range(3)]
        for t in threads:
            t.start()
        thread_body()  # the main thread too
        for t in threads:
            t.join()
        out, _ = probe.communicate("done\n", timeout=60)
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait()
    seen = {int(k): v for k, v in json.loads(out)["fsbase"].items()}
    assert len(set(truth.values())) == len(truth) == 4
    assert {tid: seen.get(tid) for tid in truth} == truth


# -- encodings, on BTF built here --------------------------------------------------------

class Blob:
    """A minimal BTF writer: enough kinds to exercise the lookup."""

    def __init__(self, order: str = "<") -> None:
        self.o = order
        self.strings = bytearray(b"\0")
        self.types = bytearray()
        self.count = 0

    def s(self, text: str) -> int:
        if not text:
            return 0
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def add(self, name: str, kind: int, vlen: int, kind_flag: bool, size_or_type: int,
            tail: bytes = b"") -> int:
        info = (kind << 24) | vlen | (int(kind_flag) << 31)
        self.types += struct.pack(self.o + "III", self.s(name), info, size_or_type) + tail
        self.count += 1
        return self.count

    def int_(self, name: str, size: int, bits: int | None = None, bit_off: int = 0) -> int:
        enc = (bit_off << 16) | (bits if bits is not None else size * 8)
        return self.add(name, btf.INT, 0, False, size, struct.pack(self.o + "I", enc))

    def struct_(self, name: str, size: int, members: list[tuple[str, int, int]],
                kind_flag: bool = False, kind: int = btf.STRUCT) -> int:
        tail = b"".join(struct.pack(self.o + "III", self.s(n), t, off) for n, t, off in members)
        return self.add(name, kind, len(members), kind_flag, size, tail)

    def bytes(self) -> bytes:
        hdr = struct.pack(self.o + "HBBIIIII", btf.MAGIC, 1, 0, 24, 0, len(self.types),
                          len(self.types), len(self.strings))
        return hdr + bytes(self.types) + bytes(self.strings)


def sample_btf(order: str = "<") -> bytes:
    b = Blob(order)
    u64 = b.int_("unsigned long", 8)  # 1
    u32 = b.int_("unsigned int", 4)  # 2
    field3 = b.int_("", 4, bits=3, bit_off=5)  # 3: an old-style (no kind_flag) bitfield type
    b.add("u64_t", btf.TYPEDEF, 0, False, u64)  # 4
    const_u64 = b.add("", btf.CONST, 0, False, 4)  # 5: const u64_t
    inner = b.struct_("", 16, [("fsbase", const_u64, 0), ("gsbase", u64, 64)])  # 6 (anon)
    union = b.struct_("", 16, [("a", u32, 0), ("", inner, 0)], kind=btf.UNION)  # 7 (anon)
    thread = b.struct_("thread_struct", 32, [("sp", u64, 0), ("", union, 128)])  # 8
    thread_t = b.add("thread_t", btf.TYPEDEF, 0, False, thread)  # 9
    flags = b.struct_("flags", 8, [("lo", u32, (4 << 24) | 0), ("hi", u32, (4 << 24) | 36),
                                   ("word", u32, 32)], kind_flag=True)  # 10
    b.struct_("task_struct", 64, [("pid", u32, 0), ("f", flags, 64), ("old", field3, 128),
                                  ("thread", thread_t, 256)])  # 11
    return b.bytes()


@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
def test_nested_anonymous_typedefs_and_bitfields(tmp_path, order):
    path = tmp_path / "btf"
    path.write_bytes(sample_btf(order))
    # thread at 32 bytes, the anonymous union at 16 in it, the anonymous struct at 0.
    assert btf.task_fsbase_offset(str(path)) == 48
    assert btf.member_offset("task_struct", "thread.gsbase", str(path)) == 56
    assert btf.member_offset("thread_struct", "a", str(path)) == 16
    b = btf.load(str(path))
    assert b.member("task_struct", "f.hi") == btf.Member(64 + 36, 4, 2)
    assert b.member("task_struct", "f.lo").bitfield_size == 4
    assert btf.member_offset("task_struct", "f.word", str(path)) == 12
    old = b.member("task_struct", "old")  # the INT's own encoding: 3 bits at +5
    assert (old.bit_offset, old.bitfield_size) == (133, 3)
    with pytest.raises(btf.BTFError, match="bitfield"):
        btf.member_offset("task_struct", "f.hi", str(path))
    with pytest.raises(btf.BTFError, match="has no members"):
        btf.member_offset("task_struct", "f.hi.x", str(path))
    with pytest.raises(btf.BTFError, match=r"task_struct\.thread has no member 'fs'"):
        btf.member_offset("task_struct", "thread.fs", str(path))


def test_unknown_kind_and_loops_are_errors(tmp_path):
    b = Blob()
    b.add("", 31, 0, False, 0)
    (tmp_path / "kind").write_bytes(b.bytes())
    with pytest.raises(btf.BTFError, match="unknown BTF kind 31"):
        btf.load(str(tmp_path / "kind"))
    b = Blob()
    b.add("loop", btf.TYPEDEF, 0, False, 1)  # a typedef of itself
    b.struct_("s", 8, [("x", 1, 0)])
    (tmp_path / "loop").write_bytes(b.bytes())
    with pytest.raises(btf.BTFError, match="too long"):
        btf.member_offset("s", "x.y", str(tmp_path / "loop"))
