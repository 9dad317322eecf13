"""Ground truth for the tests of goprof.bpf.btf and goprof.golang.tls: the FS base of each
thread of a process as the kernel holds it, read by a BPF program at
`bpf_get_current_task() + OFFSET` exactly as goprof's will, and optionally the word at
`fsbase + G_OFFSET` read from user memory at the same moment (Go's g).

Run as a helper process (`python tests/fsbase_probe.py --pid PID --offset N`) so the test's
own process does not load bcc: it compiles and attaches, prints "ready", records until a
line (or EOF) arrives on stdin, then prints one JSON object
{"fsbase": {tid: fsbase}, "g": {tid: g}} and exits.

Events: the raw sys_enter tracepoint (every system call of the process's threads; needs
no tracefs) and/or a cpu-clock perf event (threads that run without system calls).
"""

from __future__ import annotations

import argparse
import json
import sys

PROGRAM = r"""
#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>

BPF_HASH(fsbases, u32, u64, 4096);
BPF_HASH(gs, u32, u64, 4096);

static __always_inline void record(void) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TGID)
        return;
    u32 tid = (u32)id;
    u64 fsbase = 0;
    char *task = (char *)bpf_get_current_task();
    if (bpf_probe_read_kernel(&fsbase, sizeof(fsbase), task + FSBASE_OFFSET) != 0)
        return;
    fsbases.update(&tid, &fsbase);
#ifdef G_OFFSET
    u64 g = 0;
    if (fsbase && bpf_probe_read_user(&g, sizeof(g), (void *)(fsbase + G_OFFSET)) == 0)
        gs.update(&tid, &g);
#endif
}

RAW_TRACEPOINT_PROBE(sys_enter) {
    record();
    return 0;
}

int on_sample(struct bpf_perf_event_data *ctx) {
    record();
    return 0;
}
"""


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True, help="the process (tgid) to watch")
    ap.add_argument("--offset", type=int, required=True, help="task_struct -> fsbase")
    ap.add_argument("--g-offset", type=int, help="also read the word at fsbase + this")
    ap.add_argument("--events", choices=("syscalls", "samples", "both"), default="syscalls")
    args = ap.parse_args(argv)

    from bcc import BPF, PerfSWConfig, PerfType

    cflags = [f"-DTGID={args.pid}", f"-DFSBASE_OFFSET={args.offset}"]
    if args.g_offset is not None:
        cflags.append(f"-DG_OFFSET={args.g_offset}")
    bpf = BPF(text=PROGRAM, cflags=cflags)
    if args.events in ("samples", "both"):
        bpf.attach_perf_event(ev_type=PerfType.SOFTWARE, ev_config=PerfSWConfig.CPU_CLOCK,
                              fn_name=b"on_sample", sample_freq=997)
    if args.events == "samples":  # RAW_TRACEPOINT_PROBE attached itself at load
        bpf.detach_raw_tracepoint(b"sys_enter")
    print("ready", flush=True)
    sys.stdin.readline()
    fsbases = {k.value: v.value for k, v in bpf[b"fsbases"].items()}
    gs = {k.value: v.value for k, v in bpf[b"gs"].items()}
    bpf.cleanup()
    print(json.dumps({"fsbase": fsbases, "g": gs}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
