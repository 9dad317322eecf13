"""The few bpf(2) calls goprof needs, through ctypes (perf events: goprof.bpf.events).

Why not bcc's own loader in the profiling process: compiling with bcc costs about
1 s and 170 MB of RSS (its clang) in the process that does it, measured here.
goprof compiles once in a short-lived helper (`goprof.bpf.compile`), caches the
bytecode, and the long-lived process only creates maps, loads the cached
instructions and reads maps with these calls: no clang, no LLVM in its memory,
first sample in milliseconds. No well-kept Python library exposes raw bpf(2) on
top of file descriptors (bcc's Table needs a bcc module object).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long

SYS_BPF = 321  # x86-64

# enum bpf_cmd
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_PROG_GET_NEXT_ID = 11
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_MAP_LOOKUP_AND_DELETE_BATCH = 25

# enum bpf_map_type
MAP_HASH = 1
MAP_ARRAY = 2
MAP_PERCPU_ARRAY = 6
MAP_STACK_TRACE = 7

# enum bpf_prog_type
PROG_KPROBE = 2  # also the type of uprobe programs
PROG_PERF_EVENT = 7
PROG_RAW_TRACEPOINT = 17

BPF_ANY = 0
BPF_NOEXIST = 1

ENOTSUPP = 524  # the kernel's own "operation not supported" (not in Python's errno)



class BPFError(OSError):
    """A bpf(2) or perf_event_open(2) call failed; errno says why."""


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    ret = _libc.syscall(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise BPFError(err, f"bpf(cmd {cmd}): {os.strerror(err)}")
    return ret


def _attr(size: int = 128) -> ctypes.Array:
    return ctypes.create_string_buffer(size)


def _addr(buf: ctypes.Array) -> int:
    return ctypes.addressof(buf)


def _cpu_list(path: str) -> list[int]:
    """A sysfs CPU list such as "0-3,6"."""
    with open(path) as f:
        spec = f.read().strip()
    cpus: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


@functools.cache
def possible_cpus() -> int:
    """Number of possible CPUs: the slot count of per-CPU map values (fixed at boot)."""
    return len(_cpu_list("/sys/devices/system/cpu/possible"))


def online_cpus() -> list[int]:
    return _cpu_list("/sys/devices/system/cpu/online")


# The most a take_all() batch buffers (keys and values together).
BATCH_BYTES = 256 * 1024


@dataclass
class Map:
    """An open BPF map: its fd and the sizes needed to read it."""

    fd: int
    name: str
    map_type: int
    key_size: int
    value_size: int
    max_entries: int

    @classmethod
    def create(cls, name: str, map_type: int, key_size: int, value_size: int,
               max_entries: int, flags: int = 0) -> Map:
        attr = _attr()
        struct.pack_into("<IIIII", attr, 0, map_type, key_size, value_size, max_entries, flags)
        raw_name = name.encode()[:15]
        ctypes.memmove(_addr(attr) + 28, raw_name, len(raw_name))
        fd = _bpf(BPF_MAP_CREATE, attr)
        return cls(fd, name, map_type, key_size, value_size, max_entries)

    @property
    def percpu(self) -> bool:
        return self.map_type == MAP_PERCPU_ARRAY

    def _value_buffer(self) -> ctypes.Array:
        if self.percpu:
            return ctypes.create_string_buffer(((self.value_size + 7) // 8 * 8) * possible_cpus())
        return ctypes.create_string_buffer(self.value_size)

    def _elem_attr(self, key: ctypes.Array, value: ctypes.Array | None, flags: int = 0):
        attr = _attr(32)
        struct.pack_into("<IIQQQ", attr, 0, self.fd, 0, _addr(key),
                         _addr(value) if value is not None else 0, flags)
        return attr

    def lookup(self, key: bytes) -> bytes | None:
        k = ctypes.create_string_buffer(key, self.key_size)
        v = self._value_buffer()
        try:
            _bpf(BPF_MAP_LOOKUP_ELEM, self._elem_attr(k, v))
        except BPFError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return v.raw

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        k = ctypes.create_string_buffer(key, self.key_size)
        v = ctypes.create_string_buffer(value, len(value))
        _bpf(BPF_MAP_UPDATE_ELEM, self._elem_attr(k, v, flags))

    def delete(self, key: bytes) -> bool:
        k = ctypes.create_string_buffer(key, self.key_size)
        try:
            _bpf(BPF_MAP_DELETE_ELEM, self._elem_attr(k, None))
        except BPFError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def keys(self) -> Iterator[bytes]:
        """Every key, by BPF_MAP_GET_NEXT_KEY (safe to delete the yielded key meanwhile)."""
        prev: ctypes.Array | None = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while True:
            attr = _attr(32)
            struct.pack_into("<IIQQ", attr, 0, self.fd, 0, _addr(prev) if prev else 0, _addr(nxt))
            try:
                _bpf(BPF_MAP_GET_NEXT_KEY, attr)
            except BPFError as e:
                if e.errno == errno.ENOENT:
                    return
                raise
            key = nxt.raw
            yield key
            prev = ctypes.create_string_buffer(key, self.key_size)

    def items(self) -> list[tuple[bytes, bytes]]:
        out = []
        for key in list(self.keys()):
            value = self.lookup(key)
            if value is not None:
                out.append((key, value))
        return out

    def take_all(self, chunk: int = 4096) -> list[tuple[bytes, bytes]]:
        """Every entry, removed from the map as it is read: BPF_MAP_LOOKUP_AND_DELETE_BATCH
        (a few syscalls for the whole map instead of four per entry, which was most of
        what draining a window cost). Hash maps only; a kernel without batch operations
        (before 5.6) gets items() then clear().

        A batch holds `chunk` entries, fewer for large values (stacks are 1 KiB, label
        sets 2 KiB): the buffers are allocated per call, and an empty window must not cost
        megabytes of zeroed memory."""
        if self.map_type != MAP_HASH:
            raise ValueError(f"map {self.name}: take_all is for hash maps")
        n = max(1, min(chunk, self.max_entries, BATCH_BYTES // (self.key_size + self.value_size)))
        keys = ctypes.create_string_buffer(self.key_size * n)
        values = ctypes.create_string_buffer(self.value_size * n)
        # The batch token of a hash map is a bucket index (u32); 8 bytes to be safe.
        token_in, token_out = ctypes.create_string_buffer(8), ctypes.create_string_buffer(8)
        out: list[tuple[bytes, bytes]] = []
        first = True
        while True:
            attr = _attr(56)
            struct.pack_into("<QQQQIIQQ", attr, 0, 0 if first else _addr(token_in),
                             _addr(token_out), _addr(keys), _addr(values), n, self.fd, 0, 0)
            done = False
            try:
                _bpf(BPF_MAP_LOOKUP_AND_DELETE_BATCH, attr)
            except BPFError as e:
                if e.errno in (errno.EINVAL, errno.EOPNOTSUPP, ENOTSUPP) and first:
                    entries = self.items()
                    self.clear()
                    return entries
                if e.errno == errno.ENOSPC:
                    # One bucket holds more entries than fit: nothing was taken; again
                    # from the same bucket with room for twice as many.
                    n *= 2
                    keys = ctypes.create_string_buffer(self.key_size * n)
                    values = ctypes.create_string_buffer(self.value_size * n)
                    continue
                if e.errno != errno.ENOENT:  # ENOENT: this was the last batch
                    raise
                done = True
            count = struct.unpack_from("<I", attr, 32)[0]
            ks, vs = self.key_size, self.value_size
            # Only what the kernel filled in is copied out of the buffers.
            kraw = ctypes.string_at(keys, ks * count)
            vraw = ctypes.string_at(values, vs * count)
            out.extend((kraw[i * ks:(i + 1) * ks], vraw[i * vs:(i + 1) * vs])
                       for i in range(count))
            if done:
                return out
            ctypes.memmove(token_in, token_out, 8)
            first = False

    def clear(self) -> int:
        """Deletes every entry; returns how many."""
        n = 0
        for key in list(self.keys()):
            n += self.delete(key)
        return n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def load_program(prog_type: int, insns: bytes, name: str, license: str = "GPL") -> int:
    """BPF_PROG_LOAD; the verifier's log is in the error when it refuses."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(1 << 20)
    attr = _attr(128)
    struct.pack_into("<IIQQIIQII", attr, 0, prog_type, len(insns) // 8, _addr(code), _addr(lic),
                     0, 0, 0, 0, 0)
    raw_name = name.encode()[:15]
    ctypes.memmove(_addr(attr) + 48, raw_name, len(raw_name))
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except BPFError:
        # Load again with the verifier log on, only to say why.
        struct.pack_into("<IIQ", attr, 24, 1, len(log), _addr(log))
        try:
            return _bpf(BPF_PROG_LOAD, attr)
        except BPFError as e:
            text = log.value.decode(errors="replace").strip().splitlines()[-8:]
            raise BPFError(e.errno, f"loading BPF program {name}: {os.strerror(e.errno)}\n"
                           + "\n".join(text)) from None


@dataclass(frozen=True)
class ProgInfo:
    id: int
    name: str
    run_time_ns: int  # counted only while kernel.bpf_stats_enabled is 1
    run_cnt: int
    recursion_misses: int  # runs skipped because the program was already running on that CPU


def prog_info(fd: int) -> ProgInfo:
    info = ctypes.create_string_buffer(256)
    attr = _attr(16)
    struct.pack_into("<IIQ", attr, 0, fd, len(info), _addr(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    prog_id = struct.unpack_from("<I", info, 4)[0]
    name = info.raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
    run_time_ns, run_cnt, misses = struct.unpack_from("<QQQ", info, 192)
    return ProgInfo(prog_id, name, run_time_ns, run_cnt, misses)


def loaded_programs() -> list[ProgInfo]:
    """Every BPF program loaded on the host (for doctor and the leak tests)."""
    out: list[ProgInfo] = []
    start = 0
    while True:
        attr = _attr(16)
        struct.pack_into("<I", attr, 0, start)
        try:
            _bpf(BPF_PROG_GET_NEXT_ID, attr)
        except BPFError as e:
            if e.errno == errno.ENOENT:
                return out
            raise
        start = struct.unpack_from("<I", attr, 4)[0]
        attr = _attr(16)
        struct.pack_into("<I", attr, 0, start)
        try:
            fd = _bpf(BPF_PROG_GET_FD_BY_ID, attr)
        except BPFError:
            continue  # gone meanwhile
        try:
            out.append(prog_info(fd))
        finally:
            os.close(fd)
