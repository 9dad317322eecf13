"""perf_event_open(2) for cpu-clock events and uprobes, raw tracepoints, and attaching
goprof's programs to them: file descriptors only (closing one detaches it)."""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import struct

from goprof.bpf.syscalls import (
    BPF_RAW_TRACEPOINT_OPEN,
    BPFError,
    _addr,
    _attr,
    _bpf,
    _libc,
)

SYS_PERF_EVENT_OPEN = 298  # x86-64
# perf_event_open
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_CPU_CLOCK = 0
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_DISABLE = 0x2401
PERF_EVENT_IOC_SET_BPF = 0x40042408


def perf_event_open(cpu: int, sample_period: int, pid: int = -1,
                    event_type: int = PERF_TYPE_SOFTWARE,
                    config: int = PERF_COUNT_SW_CPU_CLOCK) -> int:
    """A disabled sampling event on one CPU (every task on it when pid is -1)."""
    attr = ctypes.create_string_buffer(112)
    # type, size, config, sample_period, sample_type, read_format, flags (bit 0: disabled)
    struct.pack_into("<IIQQQQQ", attr, 0, event_type, 112, config, sample_period, 0, 0, 1)
    fd = _libc.syscall(SYS_PERF_EVENT_OPEN, ctypes.byref(attr), pid, cpu, -1, 0x8)  # CLOEXEC
    if fd < 0:
        err = ctypes.get_errno()
        raise BPFError(err, f"perf_event_open(cpu {cpu}): {os.strerror(err)}")
    return fd


UPROBE_PMU_TYPE = "/sys/bus/event_source/devices/uprobe/type"


@functools.cache
def uprobe_pmu_type() -> int:
    """The dynamic PMU number of uprobes (8 here); raises BPFError when the kernel has none."""
    try:
        with open(UPROBE_PMU_TYPE) as f:
            return int(f.read())
    except (OSError, ValueError) as e:
        raise BPFError(errno.ENOENT, f"this kernel has no uprobe PMU ({UPROBE_PMU_TYPE}: {e})") \
            from None


def uprobe_open(path: str, file_offset: int, pid: int = -1, cpu: int = 0) -> int:
    """A disabled uprobe perf event on the instruction at file_offset of path.

    One event per probe, for every process (pid -1; the BPF program filters by
    tgid: a per-task uprobe event would fire for that one thread only). The
    attached program runs for hits on every CPU; it is the uprobe's, not the
    CPU's: one event per CPU would run it once per event, counting each hit twice.
    """
    attr = ctypes.create_string_buffer(112)
    c_path = ctypes.create_string_buffer(os.fsencode(path))
    # type, size, config, sample_period=1, sample_type, read_format, flags (disabled)
    struct.pack_into("<IIQQQQQ", attr, 0, uprobe_pmu_type(), 112, 0, 1, 0, 0, 1)
    # config1 = uprobe_path, config2 = probe_offset
    struct.pack_into("<QQ", attr, 56, _addr(c_path), file_offset)
    fd = _libc.syscall(SYS_PERF_EVENT_OPEN, ctypes.byref(attr), pid, cpu, -1, 0x8)  # CLOEXEC
    if fd < 0:
        err = ctypes.get_errno()
        raise BPFError(err, f"uprobe on {path}+{file_offset:#x} (cpu {cpu}): {os.strerror(err)}")
    return fd


def raw_tracepoint_open(name: str, prog_fd: int) -> int:
    """Attaches a raw tracepoint program (no tracefs needed); closing the returned fd
    detaches it."""
    c_name = ctypes.create_string_buffer(name.encode())
    attr = _attr(16)
    struct.pack_into("<QI", attr, 0, _addr(c_name), prog_fd)
    try:
        return _bpf(BPF_RAW_TRACEPOINT_OPEN, attr)
    except BPFError as e:
        raise BPFError(e.errno, f"raw tracepoint {name}: {os.strerror(e.errno)}") from None


def _ioctl(fd: int, request: int, arg: int = 0) -> None:
    if _libc.ioctl(fd, ctypes.c_ulong(request), ctypes.c_long(arg)) < 0:
        err = ctypes.get_errno()
        raise BPFError(err, f"ioctl({request:#x}): {os.strerror(err)}")


def attach_perf_event(event_fd: int, prog_fd: int) -> None:
    _ioctl(event_fd, PERF_EVENT_IOC_SET_BPF, prog_fd)


def enable_perf_event(event_fd: int) -> None:
    _ioctl(event_fd, PERF_EVENT_IOC_ENABLE)


def disable_perf_event(event_fd: int) -> None:
    _ioctl(event_fd, PERF_EVENT_IOC_DISABLE)
